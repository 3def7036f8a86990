"""VGG-16 with BatchNorm for CIFAR (the network-slimming variant the Dep-L0 paper
uses), every convolution gated on its output channels."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from l0jax import ops
from l0jax.models.common import GatedModel

VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
         512, 512, 512)
PLANS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: VGG16,
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512),
}


class VGG(GatedModel):
  """``[conv3x3 + BN + ReLU] x 13 with 2x2 max pools between the stages -> global
  average pool -> dense``. Each ``conv{i}`` (with its BN: conv -> BN -> gate) is gated
  on its output channels: 13 gated layers.

  Attributes:
    plan: widths and ``"M"`` (max pool) in order; the default is VGG-16.
    num_classes: outputs.
    width_scale: multiplies every width (tiny models for tests).
    droprate: initial drop probability of the gates.
  """
  plan: tuple = VGG16
  num_classes: int = 10
  width_scale: float = 1.0
  droprate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = False) -> jax.Array:
    convs = [i for i, item in enumerate(self.plan) if item != "M"]
    for k, i in enumerate(convs):
      pool = i + 1 < len(self.plan) and self.plan[i + 1] == "M"
      post = (lambda y: ops.max_pool(nn.relu(y), (2, 2), strides=(2, 2),
                                     method=self.ops_method)) if pool else nn.relu
      layer = self.conv_bn(self.width(self.plan[i], self.width_scale), (3, 3),
                           self.droprate, f"conv{k + 1}")
      x = self.apply_layer(layer, x, deterministic, post=post)
    x = jnp.mean(x, axis=(1, 2))
    return self.dense(self.num_classes, self.droprate, "classifier", gated=False)(x)

  def channel_sources(self):
    """Layers that read a gated layer's channels directly: ``{reader: gated layer}``
    (each conv reads the previous one; the classifier the pooled last one)."""
    n = sum(item != "M" for item in self.plan)
    sources = {f"conv{k + 1}": f"conv{k}" for k in range(1, n)}
    sources["classifier"] = f"conv{n}"
    return sources
