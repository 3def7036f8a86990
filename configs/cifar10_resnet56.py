"""CIFAR ResNet-56 on CIFAR-10 with independent hard-concrete gates on every
convolution, model-wise expected density <= 50%; the settings of
configs/cifar10_vgg16.py. The L0-HC arm of the Dep-L0 comparison
(configs/cifar10_resnet56_depl0.py:hc) gates fewer layers and trains with the Dep-L0
code's recipe.

    python train.py --config=configs/cifar10_resnet56.py --workdir=/tmp/r56
"""

from configs import cifar10_vgg16, default


def get_config(arg=None):
  return default.variant(cifar10_vgg16.cnn_cifar("cifar_resnet", 56), arg)
