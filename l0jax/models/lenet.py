"""LeNet-5-Caffe ("20-50-800-500") of Louizos et al. (2018)."""

from __future__ import annotations

from typing import Sequence

import jax
import flax.linen as nn

from l0jax import ops
from l0jax.models.common import GatedModel


class LeNet5Caffe(GatedModel):
  """conv5x5(20) -> relu -> maxpool2 -> conv5x5(50) -> relu -> maxpool2 -> flatten
  -> dense(500) -> relu -> dense(num_classes), VALID padding.

  Four gated layers: ``conv1`` and ``conv2`` on their output channels, ``fc1`` (800 ->
  500 for 28x28 inputs) and ``fc2`` (500 -> 10) on their inputs.
  """
  conv_features: Sequence[int] = (20, 50)
  dense_features: int = 500
  num_classes: int = 10
  droprate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = False) -> jax.Array:
    for i, width in enumerate(self.conv_features):
      conv = self.conv(width, (5, 5), self.droprate, name=f"conv{i + 1}")
      # ReLU and pooling run before the channel gates (L0Conv's post): the same
      # function, with the per-example gates multiplying a 4x smaller array.
      x = self.apply_layer(conv, x, deterministic, post=lambda y: ops.max_pool(
          nn.relu(y), (2, 2), strides=(2, 2), method=self.ops_method))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(self.apply_layer(
        self.dense(self.dense_features, self.droprate, name="fc1"), x,
        deterministic))
    return self.apply_layer(
        self.dense(self.num_classes, self.droprate, name="fc2"), x, deterministic)
