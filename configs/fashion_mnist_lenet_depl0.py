"""LeNet-5-Caffe on Fashion-MNIST with Dep-L0 gates (Li & Ji 2021), model density <= 10%.

The log_alphas of the four gated layers come from the gate generator
(l0jax/dependency.py) instead of each layer's own parameters; everything else is
configs/fashion_mnist_lenet.py. The generator trains with the gates' optimizer, Adam at
the paper's 1e-3 (a generator weight moves every log_alpha of the next layer, so the
independent gates' 0.02 is far too large for it).

    python train.py --config=configs/fashion_mnist_lenet_depl0.py --workdir=/tmp/fmnist_depl0
    python train.py --config=configs/fashion_mnist_lenet_depl0.py:runlocal --workdir=/tmp/quick
    # backward order / penalized as published:
    ... --config.gate_source=dep_backward
    ... --config.method=penalized --config.penalty=0.1
"""

from configs import default, fashion_mnist_lenet


def get_config(arg=None):
  config = fashion_mnist_lenet.get_config()
  config.gate_source = "dep_forward"
  config.dep_input_size = 64
  config.dep_bias_init = "paper"
  config.gate_optimizer = "adam"
  config.gate_learning_rate = 1e-3
  return default.variant(config, arg)
