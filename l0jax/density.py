"""Density accounting of gated models from their parameters alone (no batch).

A *gated layer* is any dict in the params pytree, at any depth, that holds a
``kernel`` and a ``log_alpha`` (what :class:`l0jax.layers.L0Dense` and
:class:`l0jax.layers.L0Conv` create). Its gate layout follows from the shapes:

=========================  ===========================  =========================
``log_alpha`` shape         gates                        weights per gate (group)
=========================  ===========================  =========================
``kernel.shape``            every weight (unstructured)  1; the bias is not counted
``(in,)``, 2-D kernel       dense input neurons          ``out`` (a kernel row)
``(out,)``, N-D kernel      conv output channels         ``in*kh*kw`` (+1 for bias)
=========================  ===========================  =========================

Any other shape raises ``ValueError``. The *sparsifiable* parameters of a layer are
the weights its gates cover. With ``p_g = P(z_g != 0)``::

    layer density  = sum_g p_g * |g| / sum_g |g|
    model density  = sum over layers of (layer density * sparsifiable params)
                     / total sparsifiable params      (the papers' definition)
    test-time density: the same with p_g replaced by 1[test-time gate_g > 0]

Layers are keyed by their '/'-joined path and ordered by a natural sort of the
path (``block_2`` before ``block_10``), whatever the dict order, so per-layer
vectors line up across calls. Everything is a pure function of the params and
works inside ``jit``.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Mapping, NamedTuple, Tuple

import jax
import jax.numpy as jnp

from l0jax import gates

__all__ = [
    "GatedLayer",
    "DensityReport",
    "gated_layers",
    "layer_expected_densities",
    "expected_density",
    "density_report",
]

UNSTRUCTURED = "unstructured"
DENSE_INPUTS = "dense_inputs"
CONV_CHANNELS = "conv_channels"


class GatedLayer(NamedTuple):
  """The gates of one layer: parameters and static group structure."""
  log_alpha: jax.Array
  kind: str             # UNSTRUCTURED, DENSE_INPUTS or CONV_CHANNELS
  group_size: int       # sparsifiable weights covered by each gate
  num_sparsifiable: int  # group_size * number of gates


class DensityReport(NamedTuple):
  """Per-layer and model-wise densities (dicts keyed by layer path)."""
  expected: Dict[str, jax.Array]
  model_expected: jax.Array
  test_time: Dict[str, jax.Array]
  model_test_time: jax.Array
  kept_units: Dict[str, jax.Array]  # open gates (neurons, channels or weights)
  total_units: Dict[str, int]
  num_sparsifiable: Dict[str, int]


def _natural_key(path: str):
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path)]


def _classify(path: str, layer: Mapping[str, Any]) -> GatedLayer:
  kernel, log_alpha = layer["kernel"], layer["log_alpha"]
  k_shape, a_shape = tuple(kernel.shape), tuple(log_alpha.shape)
  if a_shape == k_shape:
    return GatedLayer(log_alpha, UNSTRUCTURED, 1, math.prod(k_shape))
  if len(k_shape) == 2 and a_shape == k_shape[:1]:
    return GatedLayer(log_alpha, DENSE_INPUTS, k_shape[1], math.prod(k_shape))
  if len(k_shape) > 2 and a_shape == k_shape[-1:]:
    bias = 1 if "bias" in layer else 0
    group = math.prod(k_shape[:-1]) + bias
    return GatedLayer(log_alpha, CONV_CHANNELS, group, group * k_shape[-1])
  raise ValueError(
      f"gated layer {path!r}: log_alpha shape {a_shape} matches no gate layout for "
      f"kernel shape {k_shape} (expected the kernel's shape, (in,) for a 2-D "
      f"kernel, or (out,) for a conv kernel)")


def gated_layers(params) -> Dict[str, GatedLayer]:
  """Finds every gated layer in ``params``; keys are '/'-joined paths, naturally sorted.

  Accepts plain dicts, FrozenDicts and a ``{"params": ...}`` variables dict.
  """
  found = {}

  def visit(node, path: Tuple[str, ...]):
    if isinstance(node, Mapping):
      if "kernel" in node and "log_alpha" in node:
        name = "/".join(path)
        found[name] = _classify(name, node)
      for key, child in node.items():
        if isinstance(child, Mapping):
          visit(child, path + (str(key),))

  visit(params, ())
  return {k: found[k] for k in sorted(found, key=_natural_key)}


def _weighted_mean(values: Dict[str, jax.Array], layers: Dict[str, GatedLayer]):
  if not layers:
    raise ValueError("params contain no gated layer (no dict with both 'kernel' "
                     "and 'log_alpha')")
  total = sum(layer.num_sparsifiable for layer in layers.values())
  weighted = sum(values[name] * layer.num_sparsifiable
                 for name, layer in layers.items())
  return weighted / total


def _mean_f32(x: jax.Array) -> jax.Array:
  return jnp.mean(x, dtype=jnp.float32)


def layer_expected_densities(params, *, beta: float = gates.BETA,
                             gamma: float = gates.GAMMA,
                             zeta: float = gates.ZETA,
                             clamp=None) -> Dict[str, jax.Array]:
  """Expected density of each gated layer: mean of ``P(z_g != 0)`` over its gates.

  All groups of a layer have the same size, so the group-weighted mean is the plain
  mean. Returns float32 scalars keyed by layer path.
  """
  return {
      name: _mean_f32(gates.prob_nonzero(layer.log_alpha, beta=beta,
                                         gamma=gamma, zeta=zeta, clamp=clamp))
      for name, layer in gated_layers(params).items()
  }


def expected_density(params, **gate_kwargs) -> jax.Array:
  """Model-wise expected density: the parameter-weighted mean of layer densities."""
  layers = gated_layers(params)
  return _weighted_mean(layer_expected_densities(params, **gate_kwargs), layers)


def density_report(params, test_gate: str = "median", *, beta: float = gates.BETA,
                   gamma: float = gates.GAMMA, zeta: float = gates.ZETA,
                   clamp=None) -> DensityReport:
  """Expected and test-time densities, per layer and model-wise, and kept units."""
  layers = gated_layers(params)
  kw = dict(beta=beta, gamma=gamma, zeta=zeta, clamp=clamp)
  expected = layer_expected_densities(params, **kw)
  test_time, kept = {}, {}
  for name, layer in layers.items():
    is_open = gates.deterministic_gate(layer.log_alpha, test_gate, **kw) > 0
    test_time[name] = _mean_f32(is_open)
    kept[name] = jnp.sum(is_open, dtype=jnp.int32)
  return DensityReport(
      expected=expected,
      model_expected=_weighted_mean(expected, layers),
      test_time=test_time,
      model_test_time=_weighted_mean(test_time, layers),
      kept_units=kept,
      total_units={n: int(l.log_alpha.size) for n, l in layers.items()},
      num_sparsifiable={n: l.num_sparsifiable for n, l in layers.items()},
  )
