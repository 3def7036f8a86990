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
    "cascade_layer_densities",
    "cascade_expected_density",
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


# ------------------------------------------------------------------------------------
# Cascade-aware density: what purging would keep, in expectation.
# ------------------------------------------------------------------------------------

def _gated_layer_dicts(params) -> Dict[str, Mapping[str, Any]]:
  """The raw parameter dicts of the gated layers, keyed like :func:`gated_layers`."""
  found = {}

  def visit(node, path: Tuple[str, ...]):
    if isinstance(node, Mapping):
      if "kernel" in node and "log_alpha" in node:
        found["/".join(path)] = node
      for key, child in node.items():
        if isinstance(child, Mapping):
          visit(child, path + (str(key),))

  visit(params, ())
  return found


def _cascade_active(params, order, gate_kw):
  """Expected active sparsifiable weights per layer, and the layers, in ``order``."""
  layers = gated_layers(params)
  if not layers:
    raise ValueError("params contain no gated layer (no dict with both 'kernel' "
                     "and 'log_alpha')")
  names = list(layers) if order is None else [str(n) for n in order]
  if sorted(names) != sorted(layers) or len(set(names)) != len(names):
    raise ValueError(f"order must list every gated layer exactly once; got {names}, "
                     f"gated layers are {list(layers)}")
  raw = _gated_layer_dicts(params)
  info = []
  for name in names:
    layer = layers[name]
    k_shape = tuple(raw[name]["kernel"].shape)
    n_in, n_out = k_shape[-2], k_shape[-1]
    p = gates.prob_nonzero(layer.log_alpha, **gate_kw).astype(jnp.float32)
    in_gate = p if layer.kind == DENSE_INPUTS else jnp.ones((n_in,), jnp.float32)
    out_gate = p if layer.kind == CONV_CHANNELS else jnp.ones((n_out,), jnp.float32)
    info.append((name, layer, k_shape, p, in_gate, out_gate))

  def positions(prev_out: int, name: str, n_in: int) -> int:
    if n_in == prev_out:
      return 1
    if prev_out and n_in % prev_out == 0:
      return n_in // prev_out  # NHWC flatten: input (h * W + w) * C + c <- channel c
    raise ValueError(f"gated layer {name!r} has {n_in} inputs, which is neither the "
                     f"{prev_out} outputs of the previous gated layer nor a multiple "
                     f"of them; pass the layers' forward order as `order`")

  active = {}
  for k, (name, layer, k_shape, p, in_gate, out_gate) in enumerate(info):
    n_in, n_out = k_shape[-2], k_shape[-1]
    if k > 0:  # an input is alive iff its own gate and its source unit are open
      prev_out_gate = info[k - 1][5]
      reps = positions(prev_out_gate.shape[0], name, n_in)
      upstream = jnp.tile(prev_out_gate, reps)
    else:
      upstream = jnp.ones((n_in,), jnp.float32)
    if k + 1 < len(info):  # an output is used iff some input it feeds is open
      next_name, _, next_shape, _, next_in_gate, _ = info[k + 1]
      reps = positions(n_out, next_name, next_shape[-2])
      closed = jnp.prod(1.0 - next_in_gate.reshape(reps, n_out), axis=0)
      downstream = 1.0 - closed
    else:
      downstream = jnp.ones((n_out,), jnp.float32)
    if layer.kind == UNSTRUCTURED:
      weights = p * upstream[:, None] * downstream[None, :]
      active[name] = jnp.sum(weights, dtype=jnp.float32)
    else:
      in_alive = jnp.sum(in_gate * upstream)
      out_used = jnp.sum(out_gate * downstream)
      spatial = math.prod(k_shape[:-2])
      active[name] = spatial * in_alive * out_used
      if layer.kind == CONV_CHANNELS:
        bias = layer.group_size - spatial * n_in  # 1 when the channel has a bias
        active[name] = active[name] + bias * out_used
  return active, {name: layers[name] for name in names}


def cascade_layer_densities(params, order=None, *, beta: float = gates.BETA,
                            gamma: float = gates.GAMMA, zeta: float = gates.ZETA,
                            clamp=None) -> Dict[str, jax.Array]:
  """Expected density of each gated layer counting what a closed gate makes dead.

  :func:`layer_expected_densities` counts a dense layer's weight as active when its
  input gate is open, although purging also removes the weight when the unit it
  feeds is unused, or when the unit feeding it is a closed channel. Here, for a
  chain of gated layers in forward order (``order``: layer paths; default the
  natural sort of :func:`gated_layers`, which is forward order for
  :class:`l0jax.models.MLP` and :class:`l0jax.models.LeNet5Caffe`), with
  ``p = P(z != 0)`` and gates assumed independent:

  * input ``i`` of layer k is alive with ``a_i = p_in_i * q_src(i)``: its own input
    gate (dense; 1 for a conv) times the output-channel gate of layer k-1 feeding it
    (conv; 1 for a dense layer). Across an NHWC flatten, input ``(h*W + w)*C + c``
    is fed by channel ``c``;
  * output ``j`` of layer k is used with ``b_j = q_j * (1 - prod_i (1 - p_in_i))``
    over the inputs ``i`` of layer k+1 that ``j`` feeds (one for dense -> dense, the
    ``H*W`` flattened positions for conv -> dense; 1 for the last layer);
  * expected active weights: dense ``sum(a) * sum(b)``; conv
    ``kh * kw * sum(a) * sum(b) + sum(b)`` (the bias shares its channel's gate);
    unstructured ``sum_ij p_ij * a_i * b_j`` with ``a``, ``b`` the neighbours'
    factors only.

  Layer density = expected active weights / sparsifiable weights (as in
  :func:`gated_layers`). Only direct neighbours are cascaded (a layer closing
  completely does not propagate further). Pure, jit-able and differentiable in
  ``log_alpha``; returns float32 scalars keyed by layer path, in ``order``.
  """
  kw = dict(beta=beta, gamma=gamma, zeta=zeta, clamp=clamp)
  active, layers = _cascade_active(params, order, kw)
  return {name: active[name] / layer.num_sparsifiable
          for name, layer in layers.items()}


def cascade_expected_density(params, order=None, **gate_kwargs) -> jax.Array:
  """Model-wise cascade-aware expected density (see :func:`cascade_layer_densities`).

  Expected active sparsifiable weights over all sparsifiable weights, which is the
  parameter-weighted mean of the cascade layer densities.
  """
  active, layers = _cascade_active(params, order, gate_kwargs)
  total = sum(layer.num_sparsifiable for layer in layers.values())
  return sum(active.values()) / total
