"""What the papers' models share: a choice of gated or plain layers with one gate setup."""

from __future__ import annotations

import functools
from typing import Optional, Tuple

import flax.linen as nn

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
  """
  gated: bool = True
  unstructured: bool = False
  sample_per_example: bool = True
  test_gate: str = "median"
  rescale_init: bool = False
  log_alpha_clamp: Optional[Tuple[float, float]] = None
  ops_method: str = "auto"

  def _gate_attributes(self, droprate: float):
    return dict(droprate_init=droprate, unstructured=self.unstructured,
                sample_per_example=self.sample_per_example,
                test_gate=self.test_gate, rescale_init=self.rescale_init,
                log_alpha_clamp=self.log_alpha_clamp)

  def dense(self, features: int, droprate: float, name: str) -> nn.Module:
    if not self.gated:
      return nn.Dense(features, name=name)
    return layers.L0Dense(features, name=name, **self._gate_attributes(droprate))

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
    if isinstance(layer, layers.L0Conv):
      return layer(x, deterministic=deterministic, post=post)
    y = (layer(x, deterministic=deterministic) if isinstance(layer, layers.L0Dense)
         else layer(x))
    return y if post is None else post(y)
