"""The papers' architectures, built from l0jax layers."""

from l0jax.models.lenet import LeNet5Caffe
from l0jax.models.mlp import MLP
from l0jax.models.resnet import BasicBlock, Bottleneck, CifarResNet, ResNet
from l0jax.models.vgg import VGG
from l0jax.models.wrn import WideBlock, WideResNet

__all__ = ["MLP", "LeNet5Caffe", "WideResNet", "WideBlock", "ResNet", "CifarResNet",
           "BasicBlock", "Bottleneck", "VGG"]
