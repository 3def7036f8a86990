"""784-300-100 MLP on Fashion-MNIST, expected model density <= 33%.

    python train.py --config=configs/fashion_mnist_mlp.py --workdir=/tmp/fmnist_mlp
    python train.py --config=configs/fashion_mnist_mlp.py:runlocal --workdir=/tmp/quick

Gates need a larger learning rate than the weights to reach the target within 10 epochs.
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = "fashion_mnist"
  config.model = "mlp"
  config.target_density = 0.33
  config.gate_learning_rate = 0.05
  config.dual_learning_rate = 1e-2
  return default.variant(config, arg)
