"""The papers' architectures, built from l0jax layers."""

from l0jax.models.lenet import LeNet5Caffe
from l0jax.models.mlp import MLP

__all__ = ["MLP", "LeNet5Caffe"]
