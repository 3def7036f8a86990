"""Density and MACs accounting of gated models from their gates alone (no batch).

The core works on *gated layers*: a dict ``{name: GatedLayer(log_alpha, group_size,
...)}`` of gate vectors and the number of parameters each gate covers, wherever the
log_alphas come from (a layer's params, a separate gates pytree, a generator network).
Every function here takes that dict, or a params pytree from which
:func:`gated_layers` builds it:

* ``gated_layers(params)``: l0jax's layers (:mod:`l0jax.layers`, :mod:`l0jax.nnx`)
  and any module following their convention, a dict at any depth holding ``kernel``
  and ``log_alpha``. The layout follows from the shapes:

  =========================  ===========================  ===========================
  ``log_alpha`` shape         gates (``kind``)             weights per gate (group)
  =========================  ===========================  ===========================
  ``kernel.shape``            every weight (unstructured)  1; the bias is not counted
  ``(in,)``, 2-D kernel       input units (inputs)         ``out`` (a kernel row)
  ``(out,)``, N-D kernel      output channels (outputs)    ``in*kh*kw`` (+1 for bias)
  =========================  ===========================  ===========================

  Stacked layers (``nn.scan``, ``nn.vmap``) carry the stack axes in front of both:
  ``(L, in)`` gates on an ``(L, in, out)`` kernel, ``(L, out)`` on ``(L, kh, kw, in,
  out)``. A square 2-D kernel with ``(out,)`` gates reads as input gates: say
  otherwise with a ``GateSpec``.

* ``gated_layers(params, specs, log_alphas)``: any pytree gated by path
  (:class:`l0jax.gating.GateSpec`), layers keyed by the gated parameter's path;
* a dict you build: ``{"attn": GatedLayer(log_alpha, group_size=4 * d * head_dim)}``.

With ``p_g = P(z_g != 0)`` and ``|g|`` the parameters gate ``g`` covers::

    layer density  = sum_g p_g * |g| / sum_g |g|      (all groups of a layer are equal)
    model density  = sum over layers of (layer density * sparsifiable params)
                     / total sparsifiable params      (the papers' definition)
    test-time density: the same with p_g replaced by 1[test-time gate_g > 0]

**MACs** (:func:`layer_macs`, :func:`macs_density`) count multiply-accumulates over a
graph of :class:`Linear` maps, each naming the gate vectors that gate its inputs and
its outputs (so a closed output channel of one conv also removes that input channel
from every conv it feeds, and a residual sum keeps a channel while any branch is
open). **Cascade** densities (:func:`cascade_layer_densities`) count what purging
would remove in a chain of l0jax layers.

Layers are keyed by their '/'-joined path and ordered by a natural sort of the path
(``block_2`` before ``block_10``), whatever the dict order, so per-layer vectors line
up across calls. Everything is a pure function of the gates, works inside ``jit`` and
is differentiable in ``log_alpha``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from l0jax import gates, gating

__all__ = [
    "GatedLayer",
    "DensityReport",
    "Linear",
    "gated_layers",
    "layer_expected_densities",
    "expected_density",
    "density_report",
    "layer_macs",
    "macs_density",
    "cascade_layer_densities",
    "cascade_expected_density",
    "layer_specs",
]

INPUTS = "inputs"
OUTPUTS = "outputs"
UNSTRUCTURED = "unstructured"
OTHER = "other"
KINDS = (INPUTS, OUTPUTS, UNSTRUCTURED, OTHER)


@dataclasses.dataclass(frozen=True)
class GatedLayer:
  """The gates of one layer: ``log_alpha`` (the only array) and static structure.

  Attributes:
    log_alpha: the gate parameters, any shape; gates of a stack of layers (e.g.
      ``nn.scan``) carry the stack axes too.
    group_size: parameters covered by each gate (all gates of a layer cover equally
      many).
    kind: ``"inputs"`` / ``"outputs"`` (gates on the input units / output channels of
      a ``(..., in, out)`` kernel), ``"unstructured"`` (one gate per kernel weight) or
      ``"other"``; only cascade densities and :mod:`l0jax.purge` need it.
    kernel_shape: the gated kernel's shape where known (``()`` otherwise).

  A pytree whose only leaf is ``log_alpha``, so a dict of them passes through ``jit``
  and ``grad``; ``layer.replace(log_alpha=...)`` swaps in generated gates.
  """
  log_alpha: Any
  group_size: int
  kind: str = OTHER
  kernel_shape: Tuple[int, ...] = ()

  @property
  def num_sparsifiable(self) -> int:
    """Parameters the gates cover: ``group_size * number of gates``."""
    return self.group_size * math.prod(jnp.shape(self.log_alpha))

  def replace(self, **changes) -> "GatedLayer":
    return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    GatedLayer, data_fields=["log_alpha"],
    meta_fields=["group_size", "kind", "kernel_shape"])


class DensityReport(NamedTuple):
  """Per-layer and model-wise densities (dicts keyed by layer path)."""
  expected: Dict[str, jax.Array]
  model_expected: jax.Array
  test_time: Dict[str, jax.Array]
  model_test_time: jax.Array
  kept_units: Dict[str, jax.Array]  # open gates (neurons, channels or weights)
  total_units: Dict[str, int]
  num_sparsifiable: Dict[str, int]


# ------------------------------------------------------------------------------------
# Finding gated layers
# ------------------------------------------------------------------------------------

def _classify(path: str, layer: Mapping[str, Any]) -> GatedLayer:
  kernel, log_alpha = layer["kernel"], layer["log_alpha"]
  k_shape, a_shape = tuple(kernel.shape), tuple(log_alpha.shape)
  if a_shape == k_shape:
    return GatedLayer(log_alpha, 1, UNSTRUCTURED, k_shape)
  if len(k_shape) >= 2 and a_shape == k_shape[:-1]:
    # (in,) gates of a 2-D kernel; with leading axes, a stack of them (nn.scan).
    return GatedLayer(log_alpha, k_shape[-1], INPUTS, k_shape)
  stack = a_shape[:-1]
  if (len(k_shape) >= len(a_shape) + 2 and k_shape[:len(stack)] == stack
      and a_shape[-1:] == k_shape[-1:]):
    # (out,) channel gates of a conv kernel; with leading axes, a stack of them.
    bias = 1 if "bias" in layer else 0
    group = math.prod(k_shape[len(stack):-1]) + bias
    return GatedLayer(log_alpha, group, OUTPUTS, k_shape)
  raise ValueError(
      f"gated layer {path!r}: log_alpha shape {a_shape} matches no gate layout for "
      f"kernel shape {k_shape} (expected the kernel's shape, (in,) for a 2-D "
      f"kernel, (out,) for a conv kernel, or those after the stack axes of stacked "
      f"layers); gate it with a GateSpec instead")


def _layer_dicts(params) -> Dict[Tuple[str, ...], Mapping[str, Any]]:
  """Every dict holding ``kernel`` and ``log_alpha``, keyed by its path tuple, in
  natural order of the '/'-joined paths (the order of :func:`gated_layers`)."""
  found = {}

  def visit(node, path: Tuple[str, ...]):
    if isinstance(node, Mapping):
      if "kernel" in node and "log_alpha" in node:
        found[path] = node
      for key, child in node.items():
        if isinstance(child, Mapping):
          visit(child, path + (str(key),))

  visit(params, ())
  return {k: found[k] for k in sorted(found,
                                      key=lambda p: gating.natural_key("/".join(p)))}


def gated_layers(params, specs: Optional[Sequence[gating.GateSpec]] = None,
                 log_alphas: Optional[Mapping[str, Any]] = None
                 ) -> Dict[str, GatedLayer]:
  """The gated layers of ``params``, keyed by path, naturally sorted.

  Without ``specs``: l0jax's convention (dicts with ``kernel`` and ``log_alpha``; a
  plain dict, FrozenDict, ``{"params": ...}`` variables dict or NNX state). With
  ``specs`` (:class:`l0jax.gating.GateSpec`) and ``log_alphas`` (``{path:
  log_alpha}``, e.g. from :func:`l0jax.gating.init_gates`): one layer per gated
  parameter, ``group_size`` counting its slice and those of the shared parameters.
  """
  if specs is None:
    if log_alphas is not None:
      raise ValueError("log_alphas= needs specs= saying what the gates gate")
    return {"/".join(path): _classify("/".join(path), node)
            for path, node in _layer_dicts(_plain(params)).items()}
  matched = gating.match(params, specs)
  gating._check_gates(matched, log_alphas)
  return {name: GatedLayer(log_alphas[name], g.group_size, OTHER, g.shape)
          for name, g in matched.items()}


def _plain(params):
  """NNX variables replaced by their arrays, so NNX states read like Linen dicts."""
  variable = getattr(sys.modules.get("flax.nnx"), "Variable", None)
  if variable is None:  # NNX never imported: there are no NNX variables
    return params
  is_variable = lambda v: isinstance(v, variable)
  return jax.tree.map(lambda v: v[...] if is_variable(v) else v, params,
                      is_leaf=is_variable)


def layer_specs(params) -> Tuple[Tuple[gating.GateSpec, ...], Dict[str, Any]]:
  """``(specs, log_alphas)`` that gate ``params`` exactly as l0jax's layers do.

  The bridge from the layer convention to the path API (:mod:`l0jax.gating`): input
  gates scale kernel rows, channel gates scale the kernel's output channel and its
  bias, unstructured gates every kernel weight. Keys are kernel paths.
  """
  specs, log_alphas = [], {}
  for path, node in _layer_dicts(_plain(params)).items():
    name = "/".join(path)
    layer = _classify(name, node)
    kernel = f"{name}/kernel" if name else "kernel"
    stack = tuple(range(jnp.ndim(node["log_alpha"]) - 1))
    axis = {UNSTRUCTURED: None, INPUTS: stack + (len(stack),),
            OUTPUTS: stack + (-1,)}[layer.kind]
    shared = ({"bias": stack + (-1,)} if layer.kind == OUTPUTS and "bias" in node
              else {})
    specs.append(gating.GateSpec(re.escape(kernel), axis, shared))
    log_alphas[kernel] = node["log_alpha"]
  return tuple(specs), log_alphas


def _as_layers(layers_or_params) -> Dict[str, GatedLayer]:
  if isinstance(layers_or_params, Mapping) and layers_or_params and all(
      isinstance(v, GatedLayer) for v in layers_or_params.values()):
    return dict(layers_or_params)
  layers = gated_layers(layers_or_params)
  if not layers:
    raise ValueError("params contain no gated layer (no dict with both 'kernel' and "
                     "'log_alpha'); for other models pass gated_layers(params, specs, "
                     "log_alphas) or a dict of GatedLayer")
  return layers


# ------------------------------------------------------------------------------------
# Densities
# ------------------------------------------------------------------------------------

def _open(log_alpha, test_gate: Optional[str], kw) -> jax.Array:
  """``P(z != 0)`` (``test_gate=None``) or ``1[test-time gate > 0]``, at least f32."""
  dtype = jnp.promote_types(jnp.result_type(log_alpha), jnp.float32)
  if test_gate is None:
    return gates.prob_nonzero(log_alpha, **kw).astype(dtype)
  return (gates.deterministic_gate(log_alpha, test_gate, **kw) > 0).astype(dtype)


def _mean(x: jax.Array) -> jax.Array:
  return jnp.mean(x, dtype=jnp.promote_types(x.dtype, jnp.float32))


def _weighted_mean(values: Mapping[str, jax.Array], layers: Mapping[str, GatedLayer]):
  total = sum(layer.num_sparsifiable for layer in layers.values())
  return sum(values[n] * layer.num_sparsifiable for n, layer in layers.items()) / total


def _gate_kwargs(beta, gamma, zeta, clamp):
  return dict(beta=beta, gamma=gamma, zeta=zeta, clamp=clamp)


def layer_expected_densities(layers, *, beta: float = gates.BETA,
                             gamma: float = gates.GAMMA, zeta: float = gates.ZETA,
                             clamp=None) -> Dict[str, jax.Array]:
  """Expected density of each gated layer: the mean of ``P(z_g != 0)`` over its gates.

  ``layers``: a dict of :class:`GatedLayer` or params (see :func:`gated_layers`).
  Scalars of the log_alphas' dtype, at least float32, keyed by layer path.
  """
  kw = _gate_kwargs(beta, gamma, zeta, clamp)
  return {name: _mean(_open(layer.log_alpha, None, kw))
          for name, layer in _as_layers(layers).items()}


def expected_density(layers, **gate_kwargs) -> jax.Array:
  """Model-wise expected density: the parameter-weighted mean of layer densities."""
  layers = _as_layers(layers)
  return _weighted_mean(layer_expected_densities(layers, **gate_kwargs), layers)


def density_report(layers, test_gate: str = "median", *, beta: float = gates.BETA,
                   gamma: float = gates.GAMMA, zeta: float = gates.ZETA,
                   clamp=None) -> DensityReport:
  """Expected and test-time densities, per layer and model-wise, and kept units."""
  layers = _as_layers(layers)
  kw = _gate_kwargs(beta, gamma, zeta, clamp)
  expected = layer_expected_densities(layers, **kw)
  test_time, kept = {}, {}
  for name, layer in layers.items():
    is_open = _open(layer.log_alpha, test_gate, kw)
    test_time[name] = _mean(is_open)
    kept[name] = jnp.sum(is_open, dtype=jnp.int32)
  return DensityReport(
      expected=expected,
      model_expected=_weighted_mean(expected, layers),
      test_time=test_time,
      model_test_time=_weighted_mean(test_time, layers),
      kept_units=kept,
      total_units={n: math.prod(jnp.shape(l.log_alpha)) for n, l in layers.items()},
      num_sparsifiable={n: l.num_sparsifiable for n, l in layers.items()},
  )


# ------------------------------------------------------------------------------------
# MACs over a graph of linear maps
# ------------------------------------------------------------------------------------

GateRef = Union[str, Tuple[str, ...]]


class Linear(NamedTuple):
  """One linear map (dense layer, convolution, attention product) in MACs accounting.

  Attributes:
    macs: its multiply-accumulates per example with every unit open, e.g.
      ``out_h * out_w * kh * kw * c_in * c_out`` for a conv, ``in * out`` (times the
      sequence length) for a dense layer.
    inputs: what keeps each input unit alive; every entry must hold (AND): a gate
      name (a key of the gated layers), or a tuple of names of which any open gate
      keeps the unit (OR: a sum of branches, e.g. a residual stream ``(skip, conv)``).
      ``()``: inputs always alive.
    outputs: the same for the output units (the map's own output-channel gates).
    weights: the name of unstructured gates on its weights, shaped
      ``(..., n_in, n_out)`` like the unit vectors.

  Unit vectors are the gates' last axis; leading axes are stacked layers. A gate
  vector shorter than the others of an entry is tiled to their length, as an NHWC
  flatten does (a dense input ``(h * W + w) * C + c`` belongs to channel ``c``).
  """
  macs: int
  inputs: Tuple[GateRef, ...] = ()
  outputs: Tuple[GateRef, ...] = ()
  weights: Optional[str] = None


def _tile_to(v: jax.Array, n: int, what: str) -> jax.Array:
  k = v.shape[-1]
  if k == n:
    return v
  if k == 0 or n % k:
    raise ValueError(f"{what}: a gate vector of {k} units cannot be tiled to {n}")
  return jnp.tile(v, (1,) * (v.ndim - 1) + (n // k,))


def _alive(entries: Sequence[GateRef], opens: Mapping[str, jax.Array], what: str):
  """Probability (or indicator) that each unit is alive; None when always alive."""
  terms = []
  for entry in entries:
    names = (entry,) if isinstance(entry, str) else tuple(entry)
    for n in names:
      if n not in opens:
        raise ValueError(f"{what} refers to gates {n!r}, which are not among the "
                         f"gated layers {sorted(opens)}")
    vecs = [opens[n] for n in names]
    size = max(v.shape[-1] for v in vecs)
    all_closed = 1.0
    for v in vecs:
      all_closed = all_closed * (1.0 - _tile_to(v, size, what))
    terms.append(vecs[0] if len(vecs) == 1 else 1.0 - all_closed)
  if not terms:
    return None
  size = max(t.shape[-1] for t in terms)
  out = 1.0
  for t in terms:
    out = out * _tile_to(t, size, what)
  return out


def layer_macs(graph: Mapping[str, Linear], layers, test_gate: Optional[str] = None,
               *, beta: float = gates.BETA, gamma: float = gates.GAMMA,
               zeta: float = gates.ZETA, clamp=None) -> Dict[str, jax.Array]:
  """Expected MACs per example of every map in ``graph`` (``{name: Linear}``).

  With ``a_i`` the probability that input unit ``i`` is alive and ``b_j`` that output
  unit ``j`` is (from ``P(z != 0)``, or from open test-time gates when ``test_gate``
  is given), gates assumed independent::

      E[MACs] = macs * mean_i(a_i) * mean_j(b_j)          (per stacked layer, averaged)
      E[MACs] = macs * mean_ij(p_ij * a_i * b_j)           (unstructured weight gates)

  ``layers``: a dict of :class:`GatedLayer` or params, as everywhere here.
  """
  layers = _as_layers(layers)
  kw = _gate_kwargs(beta, gamma, zeta, clamp)
  opens = {name: _open(layer.log_alpha, test_gate, kw)
           for name, layer in layers.items()}
  out = {}
  for name, op in graph.items():
    what = f"Linear {name!r}"
    a = _alive(op.inputs, opens, what)
    b = _alive(op.outputs, opens, what)
    if op.weights is not None:
      w = _alive((op.weights,), opens, what)
      if a is not None:
        w = w * _tile_to(a, w.shape[-2], what)[..., :, None]
      if b is not None:
        w = w * _tile_to(b, w.shape[-1], what)[..., None, :]
      frac = _mean(w)
    else:
      frac_in = 1.0 if a is None else jnp.mean(a, axis=-1)
      frac_out = 1.0 if b is None else jnp.mean(b, axis=-1)
      frac = _mean(jnp.asarray(frac_in * frac_out))
    out[name] = op.macs * frac
  return out


def macs_density(graph: Mapping[str, Linear], layers, test_gate: Optional[str] = None,
                 **gate_kwargs) -> jax.Array:
  """Expected MACs over the dense MACs of ``graph`` (see :func:`layer_macs`)."""
  total = sum(op.macs for op in graph.values())
  if not total:
    raise ValueError("graph has no MACs")
  return sum(layer_macs(graph, layers, test_gate, **gate_kwargs).values()) / total


# ------------------------------------------------------------------------------------
# Cascade-aware density: what purging would keep, in expectation.
# ------------------------------------------------------------------------------------

def _cascade_active(layers, order, gate_kw):
  """Expected active sparsifiable weights per layer, and the layers, in ``order``."""
  layers = _as_layers(layers)
  names = list(layers) if order is None else [str(n) for n in order]
  if sorted(names) != sorted(layers) or len(set(names)) != len(names):
    raise ValueError(f"order must list every gated layer exactly once; got {names}, "
                     f"gated layers are {list(layers)}")
  info = []
  for name in names:
    layer = layers[name]
    stacked = layer.kind != UNSTRUCTURED and jnp.ndim(layer.log_alpha) > 1
    if layer.kind == OTHER or len(layer.kernel_shape) < 2 or stacked:
      raise ValueError(f"cascade densities need a chain of single l0jax layers "
                       f"(input, channel or unstructured gates of a (..., in, out) "
                       f"kernel); {name!r} has {'stacked ' if stacked else ''}"
                       f"{layer.kind!r} gates: use layer_macs with a Linear graph")
    k_shape = layer.kernel_shape
    n_in, n_out = k_shape[-2], k_shape[-1]
    p = gates.prob_nonzero(layer.log_alpha, **gate_kw).astype(jnp.float32)
    in_gate = p if layer.kind == INPUTS else jnp.ones((n_in,), jnp.float32)
    out_gate = p if layer.kind == OUTPUTS else jnp.ones((n_out,), jnp.float32)
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
      if layer.kind == OUTPUTS:
        bias = layer.group_size - spatial * n_in  # 1 when the channel has a bias
        active[name] = active[name] + bias * out_used
  return active, {name: layers[name] for name in names}


def cascade_layer_densities(layers, order=None, *, beta: float = gates.BETA,
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
  completely does not propagate further). For graphs that are not a chain use
  :func:`layer_macs`. Returns float32 scalars keyed by layer path, in ``order``.
  """
  kw = _gate_kwargs(beta, gamma, zeta, clamp)
  active, layers = _cascade_active(layers, order, kw)
  return {name: active[name] / layer.num_sparsifiable
          for name, layer in layers.items()}


def cascade_expected_density(layers, order=None, **gate_kwargs) -> jax.Array:
  """Model-wise cascade-aware expected density (see :func:`cascade_layer_densities`).

  Expected active sparsifiable weights over all sparsifiable weights, which is the
  parameter-weighted mean of the cascade layer densities.
  """
  active, layers = _cascade_active(layers, order, gate_kwargs)
  total = sum(layer.num_sparsifiable for layer in layers.values())
  return sum(active.values()) / total
