"""Wide ResNet WRN-d-k (Zagoruyko & Komodakis, 2016), pre-activation, with the gates of
Louizos et al. (2018): the first convolution of every block gated on its output
channels."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from l0jax.models.common import GatedModel


class WideResNet(GatedModel):
  """``conv3x3(16) -> 3 stages of n blocks (16k, 32k, 64k channels) -> BN -> ReLU ->
  global average pool -> dense``, with ``n = (depth - 4) / 6``.

  A block is ``BN -> ReLU -> conv1 (3x3, stride) -> BN -> ReLU -> [dropout] -> conv2
  (3x3)`` plus the shortcut: the block's input, or a 1x1 convolution of its
  pre-activated input where the shape changes. ``conv1`` with the BatchNorm after it
  is the gated unit (``L0Conv(batch_norm=True)``: conv -> BN -> gate), so its closed
  channels vanish from ``conv2``'s inputs; stem, ``conv2`` and shortcuts are dense.
  WRN-28-10 has 12 gated layers, ``stage{s}_block{b}/conv1``.

  Attributes:
    depth: 6n + 4 (16, 22, 28, 40, ...).
    widen_factor: k.
    num_classes: outputs.
    dropout: dropout rate between the convolutions of a block (0: none, the default).
    width_scale: multiplies every width (tiny models for tests).
    droprate: initial drop probability of the gates.
  """
  depth: int = 28
  widen_factor: int = 10
  num_classes: int = 10
  dropout: float = 0.0
  width_scale: float = 1.0
  droprate: float = 0.3

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = False) -> jax.Array:
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {self.depth}")
    n = (self.depth - 4) // 6
    widths = [self.width(w * self.widen_factor, self.width_scale) for w in (16, 32, 64)]
    x = self.plain_conv(self.width(16, self.width_scale), (3, 3), name="stem")(x)
    for s, width in enumerate(widths):
      for b in range(n):
        x = WideBlock(features=width, stride=2 if s > 0 and b == 0 else 1, dropout=self.dropout,
                      droprate=self.droprate, name=f"stage{s + 1}_block{b + 1}",
                      **self.shared())(x, deterministic)
    x = nn.relu(self.batch_norm("final_bn")(x, use_running_average=deterministic))
    x = jnp.mean(x, axis=(1, 2))
    return self.dense(self.num_classes, self.droprate, "classifier", gated=False)(x)

  def blocks(self):
    return [f"stage{s + 1}_block{b + 1}" for s in range(3)
            for b in range((self.depth - 4) // 6)]

  def channel_sources(self):
    """Layers that read a gated layer's channels directly: ``{reader: gated layer}``."""
    return {f"{b}/conv2": f"{b}/conv1" for b in self.blocks()}


class WideBlock(GatedModel):
  """One pre-activation block of :class:`WideResNet` (its docstring)."""
  features: int = 16
  stride: int = 1
  dropout: float = 0.0
  droprate: float = 0.3

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = False) -> jax.Array:
    pre = nn.relu(self.batch_norm("bn1")(x, use_running_average=deterministic))
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.features:
      shortcut = self.plain_conv(self.features, (1, 1), "shortcut", strides=self.stride)(pre)
    h = self.apply_layer(
        self.conv_bn(self.features, (3, 3), self.droprate, "conv1", strides=self.stride),
        pre, deterministic, post=nn.relu)
    if self.dropout:
      h = nn.Dropout(self.dropout, deterministic=deterministic)(h)
    h = self.plain_conv(self.features, (3, 3), "conv2")(h)
    return h + shortcut
