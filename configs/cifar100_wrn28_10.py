"""WRN-28-10 on CIFAR-100, layer-wise expected density <= 70% (Gallego-Posada et al.,
2022: 19.37% error); the settings of configs/cifar10_wrn28_10.py.

    python train.py --config=configs/cifar100_wrn28_10.py --workdir=/tmp/wrn100
"""

from configs import cifar10_wrn28_10, default


def get_config(arg=None):
  return default.variant(cifar10_wrn28_10.wrn_cifar("cifar100"), arg)
