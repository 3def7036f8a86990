"""The 784-300-100 MLP of Louizos et al. (2018), gated on the inputs of every layer."""

from __future__ import annotations

from typing import Sequence

import jax
import flax.linen as nn

from l0jax.models.common import GatedModel


class MLP(GatedModel):
  """``in -> features[0] -> ... -> num_classes`` with ReLU; every layer gates its inputs.

  The input layer's gates start at ``input_droprate`` (0.2 in the paper), the others
  at ``droprate`` (0.5). Inputs of any shape ``(batch, ...)`` are flattened. Layers are
  named ``fc1``, ``fc2``, ... in order.
  """
  features: Sequence[int] = (300, 100)
  num_classes: int = 10
  input_droprate: float = 0.2
  droprate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = False) -> jax.Array:
    x = x.reshape((x.shape[0], -1))
    widths = tuple(self.features) + (self.num_classes,)
    for i, width in enumerate(widths):
      droprate = self.input_droprate if i == 0 else self.droprate
      layer = self.dense(width, droprate, name=f"fc{i + 1}")
      x = self.apply_layer(layer, x, deterministic)
      if i < len(widths) - 1:
        x = nn.relu(x)
    return x
