"""What the papers' models share: a choice of gated or plain layers with one gate setup."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from l0jax import layers, ops


class GatedModel(nn.Module):
  """Base of the models: builds L0 layers (``gated=True``) or plain Flax layers.

  Attributes:
    gated: L0 layers when True; ``nn.Dense`` / ``nn.Conv`` (the dense baseline) when
      False.
    unstructured: one gate per weight instead of per neuron / channel.
    sample_per_example: gate noise per example (True) or per batch.
    test_gate: test-time gate mode, ``"median"`` or ``"eq13"``.
    rescale_init: scale initial kernels by ``1 / (1 - droprate_init)``.
    log_alpha_clamp: optional ``(lo, hi)`` clamp of ``log_alpha``.
    ops_method: how convolutions (gated and plain) and max pooling run, one of
      :data:`l0jax.ops.METHODS` (``"auto"``: the matmul forms on CPU, XLA's
      convolution and ``reduce_window`` elsewhere).
    dtype: the compute dtype of convolutions and dense layers (None: the inputs');
      parameters, gates and BatchNorm statistics stay float32.
    axis_name: the data-parallel axis (``pmap`` / ``shard_map``) over which
      BatchNorm statistics are summed; None outside a mapped step.
    bn_momentum: BatchNorm running-statistics momentum.
    keep: set by :func:`l0jax.purge.purge` on the plain, compacted copy of a gated
      CNN: ``(layer path, kept output channels)`` of every gated convolution, which
      then has only those channels (:meth:`conv_bn`) and scatters them back where
      its output joins a residual sum (:meth:`restore_width`).
  """
  gated: bool = True
  unstructured: bool = False
  sample_per_example: bool = True
  test_gate: str = "median"
  rescale_init: bool = False
  log_alpha_clamp: Optional[Tuple[float, float]] = None
  ops_method: str = "auto"
  dtype: Any = None             # compute dtype (e.g. jnp.bfloat16); params stay float32
  axis_name: Optional[str] = None  # data-parallel axis that BatchNorm statistics span
  bn_momentum: float = 0.9
  keep: Tuple[Tuple[str, Tuple[int, ...]], ...] = ()  # purged models (l0jax.purge)

  def _gate_attributes(self, droprate: float):
    return dict(droprate_init=droprate, unstructured=self.unstructured,
                sample_per_example=self.sample_per_example,
                test_gate=self.test_gate, rescale_init=self.rescale_init,
                log_alpha_clamp=self.log_alpha_clamp)

  def dense(self, features: int, droprate: float, name: str,
            gated: Optional[bool] = None) -> nn.Module:
    """A dense layer, gated on its inputs when ``gated`` (default: the model's)."""
    if not (self.gated if gated is None else gated):
      return nn.Dense(features, name=name, dtype=self.dtype)
    return layers.L0Dense(features, name=name, dtype=self.dtype,
                          **self._gate_attributes(droprate))

  def layer_path(self, name: str) -> str:
    """The '/'-joined parameter path of this module's sub-layer ``name``."""
    return "/".join(tuple(self.scope.path) + (name,))

  def kept(self, name: str) -> Optional[Tuple[int, ...]]:
    """The kept output channels of sub-layer ``name`` in a purged model, else None."""
    return dict(self.keep).get(self.layer_path(name))

  def restore_width(self, y, name: str, width: int):
    """``y`` (the output of sub-layer ``name``) at ``width`` channels: in a purged model
    the kept channels are scattered back to their places (zeros elsewhere) before a
    residual sum; otherwise ``y`` itself."""
    kept = self.kept(name)
    if kept is None or len(kept) == width:
      return y
    full = jnp.zeros(y.shape[:-1] + (width,), y.dtype)
    return full.at[..., jnp.asarray(kept, jnp.int32)].set(y)

  def conv_bn(self, features: int, kernel_size: Sequence[int], droprate: float,
              name: str, strides=1, gated: Optional[bool] = None) -> nn.Module:
    """Convolution (SAME, no bias) + BatchNorm, then channel gates when ``gated``
    (default: the model's): ``L0Conv(batch_norm=True)`` or its ungated twin
    :class:`~l0jax.layers.ConvBN`, with the same parameter names. In a purged model
    only the kept channels are computed."""
    kept = self.kept(name)
    features = features if kept is None else len(kept)
    common = dict(strides=strides, padding="SAME", ops_method=self.ops_method,
                  bn_momentum=self.bn_momentum, axis_name=self.axis_name,
                  dtype=self.dtype, name=name)
    if not (self.gated if gated is None else gated):
      return layers.ConvBN(features, tuple(kernel_size), **common)
    return layers.L0Conv(features, tuple(kernel_size), batch_norm=True,
                         **common, **self._gate_attributes(droprate))

  def plain_conv(self, features: int, kernel_size: Sequence[int], name: str,
                 strides=1, use_bias: bool = False) -> nn.Module:
    """An ungated convolution (SAME), e.g. a stem or a shortcut."""
    return nn.Conv(features, tuple(kernel_size), strides=strides, padding="SAME",
                   use_bias=use_bias, name=name, dtype=self.dtype,
                   kernel_init=layers.lecun_normal,
                   conv_general_dilated=functools.partial(
                       ops.conv_general_dilated, method=self.ops_method))

  def batch_norm(self, name: str) -> nn.Module:
    """An ungated BatchNorm (``scale``/``bias``, ``mean``/``var`` as everywhere)."""
    return nn.BatchNorm(momentum=self.bn_momentum, epsilon=1e-5,
                        axis_name=self.axis_name, dtype=self.dtype, name=name)

  def shared(self) -> dict:
    """This model's gate and layer settings, for its sub-modules (blocks)."""
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(GatedModel)
            if f.name not in ("parent", "name")}

  @staticmethod
  def width(base: int, scale: float) -> int:
    """A layer width scaled by ``scale`` (tiny test and runlocal models), at least 1."""
    return max(1, int(round(base * scale)))

  def conv(self, features: int, kernel_size, droprate: float, name: str,
           padding="VALID") -> nn.Module:
    if not self.gated:
      return nn.Conv(features, tuple(kernel_size), padding=padding, name=name,
                     conv_general_dilated=functools.partial(
                         ops.conv_general_dilated, method=self.ops_method))
    return layers.L0Conv(features, tuple(kernel_size), padding=padding, name=name,
                         ops_method=self.ops_method,
                         **self._gate_attributes(droprate))

  @staticmethod
  def apply_layer(layer: nn.Module, x, deterministic: bool, post=None):
    """``post(layer(x))``; an :class:`~l0jax.layers.L0Conv` applies its channel gates
    after ``post`` (which must then be positively homogeneous, see its ``post``)."""
    if isinstance(layer, (layers.L0Conv, layers.ConvBN)):
      return layer(x, deterministic=deterministic, post=post)
    y = (layer(x, deterministic=deterministic) if isinstance(layer, layers.L0Dense)
         else layer(x))
    return y if post is None else post(y)
