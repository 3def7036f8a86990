"""LeNet-5-Caffe on Fashion-MNIST, expected model density <= 10%.

    python train.py --config=configs/fashion_mnist_lenet.py --workdir=/tmp/fmnist_lenet
    python train.py --config=configs/fashion_mnist_lenet.py:runlocal --workdir=/tmp/quick
"""

from configs import default


def get_config(arg=None):
  config = default.get_config()
  config.dataset = "fashion_mnist"
  config.model = "lenet5"
  config.target_density = 0.10
  config.gate_learning_rate = 0.02
  config.dual_learning_rate = 0.05
  return default.variant(config, arg)
