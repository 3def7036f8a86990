"""ResNets with L0 channel gates: ImageNet ResNet-18/34/50 (He et al., 2016) and the
CIFAR ResNet-(6n+2) (ResNet-20, -56, -110)."""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from l0jax import ops
from l0jax.models.common import GatedModel

IMAGENET_STAGES = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)),
                   50: ("bottleneck", (3, 4, 6, 3))}


class BasicBlock(GatedModel):
  """``relu(BN(conv2(relu(BN(conv1(x))))) + shortcut(x))``; conv1 and conv2 (each with
  its BatchNorm: conv -> BN -> gate) gated on their output channels.

  ``shortcut``: ``"conv"`` (1x1 conv + BN where the shape changes, ImageNet ResNets)
  or ``"pad"`` (option A of He et al. for CIFAR: subsample and zero-pad the channels,
  parameter-free). ``gate_conv2=False`` leaves conv2 (whose output joins the residual
  sum) ungated: only conv1's channels are gated.
  """
  features: int = 64
  stride: int = 1
  shortcut: str = "conv"
  droprate: float = 0.5
  gate_conv2: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = False) -> jax.Array:
    h = self.apply_layer(
        self.conv_bn(self.features, (3, 3), self.droprate, "conv1", strides=self.stride),
        x, deterministic, post=nn.relu)
    h = self.apply_layer(self.conv_bn(self.features, (3, 3), self.droprate, "conv2",
                                      gated=self.gated and self.gate_conv2),
                         h, deterministic)
    h = self.restore_width(h, "conv2", self.features)
    return nn.relu(h + _shortcut(self, x, self.features, self.stride, self.shortcut,
                                 deterministic))


class Bottleneck(GatedModel):
  """``relu(BN(conv3(relu(BN(conv2(relu(BN(conv1(x))))))) + shortcut(x))`` with 1x1,
  3x3 (strided) and 1x1 convolutions, ``4 * features`` outputs; all three gated."""
  features: int = 64
  stride: int = 1
  droprate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = False) -> jax.Array:
    h = self.apply_layer(self.conv_bn(self.features, (1, 1), self.droprate, "conv1"),
                         x, deterministic, post=nn.relu)
    h = self.apply_layer(
        self.conv_bn(self.features, (3, 3), self.droprate, "conv2", strides=self.stride),
        h, deterministic, post=nn.relu)
    h = self.apply_layer(self.conv_bn(4 * self.features, (1, 1), self.droprate, "conv3"),
                         h, deterministic)
    h = self.restore_width(h, "conv3", 4 * self.features)
    return nn.relu(h + _shortcut(self, x, 4 * self.features, self.stride, "conv",
                                 deterministic))


def _shortcut(block: GatedModel, x, features: int, stride: int, kind: str,
              deterministic: bool):
  if stride == 1 and x.shape[-1] == features:
    return x
  if kind == "pad":
    x = x[:, ::stride, ::stride, :]
    extra = features - x.shape[-1]
    return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  return block.conv_bn(features, (1, 1), 0.5, "shortcut", strides=stride,
                       gated=False)(x, deterministic)


class ResNet(GatedModel):
  """ImageNet ResNet-18/34 (basic blocks) and ResNet-50 (bottlenecks).

  ``conv7x7/2 (64) + BN + ReLU -> max pool 3x3/2 -> 4 stages (64, 128, 256, 512
  channels; stride 2 from the second) -> global average pool -> dense``. Stem and
  shortcuts (1x1 conv + BN) are dense; every block convolution is gated on its output
  channels (16 gated layers in ResNet-18, 48 in ResNet-50), named
  ``stage{s}_block{b}/conv{i}``. Where a gated convolution ends a block, its closed
  channels contribute zero to the residual sum (the shortcut stays dense).
  """
  depth: int = 50
  num_classes: int = 1000
  width_scale: float = 1.0
  droprate: float = 0.5

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = False) -> jax.Array:
    if self.depth not in IMAGENET_STAGES:
      raise ValueError(f"ResNet depth must be one of {sorted(IMAGENET_STAGES)}, "
                       f"got {self.depth}")
    kind, stages = IMAGENET_STAGES[self.depth]
    x = self.apply_layer(
        self.conv_bn(self.width(64, self.width_scale), (7, 7), self.droprate, "stem",
                     strides=2, gated=False), x, deterministic, post=nn.relu)
    x = ops.max_pool(x, (3, 3), strides=(2, 2), padding="SAME", method=self.ops_method)
    for s, blocks in enumerate(stages):
      width = self.width(64 * 2 ** s, self.width_scale)
      for b in range(blocks):
        stride = 2 if s > 0 and b == 0 else 1
        name = f"stage{s + 1}_block{b + 1}"
        if kind == "basic":
          block = BasicBlock(features=width, stride=stride, shortcut="conv",
                             droprate=self.droprate, name=name, **self.shared())
        else:
          block = Bottleneck(features=width, stride=stride, droprate=self.droprate,
                             name=name, **self.shared())
        x = block(x, deterministic)
    x = jnp.mean(x, axis=(1, 2))
    return self.dense(self.num_classes, self.droprate, "classifier", gated=False)(x)

  def blocks(self):
    _, stages = IMAGENET_STAGES[self.depth]
    return [f"stage{s + 1}_block{b + 1}" for s, n in enumerate(stages) for b in range(n)]

  def channel_sources(self):
    """Layers that read a gated layer's channels directly: ``{reader: gated layer}``."""
    kind, _ = IMAGENET_STAGES[self.depth]
    pairs = (("conv1", "conv2"),) if kind == "basic" else (("conv1", "conv2"),
                                                           ("conv2", "conv3"))
    return {f"{b}/{reader}": f"{b}/{src}" for b in self.blocks() for src, reader in pairs}


class CifarResNet(GatedModel):
  """CIFAR ResNet-(6n+2) (He et al., 2016, Sec. 4.2): ``conv3x3(16) + BN + ReLU -> 3
  stages of n basic blocks (16, 32, 64 channels) -> global average pool -> dense``
  with parameter-free shortcuts (option A). Every convolution is gated on its output
  channels, the stem included (``stem``, ``stage{s}_block{b}/conv{1,2}``; 19 gated
  layers in ResNet-20, 55 in ResNet-56); with ``gate_block_outputs=False`` only the
  stem and each block's conv1 (10 in ResNet-20, 28 in ResNet-56: the layers Dep-L0's
  reference code gates), the block outputs that join the residual sums stay dense.
  """
  depth: int = 20
  num_classes: int = 10
  width_scale: float = 1.0
  droprate: float = 0.5
  gate_block_outputs: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool = False) -> jax.Array:
    if self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(f"CifarResNet depth must be 6n + 2 with n >= 1, got {self.depth}")
    n = (self.depth - 2) // 6
    stem = self.width(16, self.width_scale)
    x = self.apply_layer(self.conv_bn(stem, (3, 3), self.droprate, "stem"),
                         x, deterministic, post=nn.relu)
    x = self.restore_width(x, "stem", stem)
    for s in range(3):
      width = self.width(16 * 2 ** s, self.width_scale)
      for b in range(n):
        x = BasicBlock(features=width, stride=2 if s > 0 and b == 0 else 1,
                       shortcut="pad", droprate=self.droprate,
                       gate_conv2=self.gate_block_outputs,
                       name=f"stage{s + 1}_block{b + 1}", **self.shared())(x, deterministic)
    x = jnp.mean(x, axis=(1, 2))
    return self.dense(self.num_classes, self.droprate, "classifier", gated=False)(x)

  def blocks(self):
    return [f"stage{s + 1}_block{b + 1}" for s in range(3)
            for b in range((self.depth - 2) // 6)]

  def channel_sources(self):
    """Layers that read a gated layer's channels directly: ``{reader: gated layer}``."""
    return {f"{b}/conv2": f"{b}/conv1" for b in self.blocks()}
