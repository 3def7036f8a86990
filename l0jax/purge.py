"""Compaction ("purging") of gated models into plain, smaller Flax models.

At test time a closed gate is an exact zero, so the neurons and channels it closes
can be cut out of the network, together with whatever the cut makes dead in the
neighbouring layers. :func:`purge` does that from a trained model's parameters:

* fractional test-time gates (:func:`l0jax.gates.deterministic_gate`, ``"median"``
  or ``"eq13"``) are folded into the kept weights: a dense layer's input gate scales
  its kernel row; a conv channel gate scales the kernel's output channel and its bias
  (exact, because the gate is >= 0: ``relu(g * y) = g * relu(y)`` and max pooling
  commutes with a positive scale); unstructured gates multiply the kernel elementwise
  (no compaction: they only change the counts);
* a closed dense input removes that kernel row, and the output unit of the previous
  layer that fed it (its kernel column and bias entry);
* a closed conv channel removes its output channel and the next conv's input channel;
  across the NHWC flatten (dense input index ``(h * W + w) * C + c``) it removes its
  ``H * W`` rows of the next dense kernel; a channel whose rows are all closed is
  removed from the conv;
* a layer left with no output removes its inputs too. A layer left with no input is
  kept with width zero: it outputs its bias, so the purged model reproduces the
  gated model's constant output exactly (the "constant bias path").

The result is a :class:`PurgedModel`, a Flax module that runs a sequence of
:class:`Op` s (``dense``, ``conv``, ``relu``, ``max_pool``, ``avg_pool``, ``flatten``
and ``select``, a gather of kept features on the last axis). The sequence is plain data:
:meth:`PurgedModel.spec` turns it into a JSON-able dict and
:meth:`PurgedModel.from_spec` back, which is how :func:`save` and :func:`load` work.

Example::

    model = l0jax.models.MLP()
    variables = model.init(rngs, x)            # ... then train
    small, small_params = purge(model, variables["params"])
    y = small.apply({"params": small_params}, x)   # == model.apply(variables, x,
                                                   #        deterministic=True)
    print(counts(model, variables["params"])["architecture"])   # e.g. "198-233-100"
    save("/tmp/mlp_purged", small, small_params)
    small, small_params = load("/tmp/mlp_purged")

Supported architectures are :class:`l0jax.models.MLP` and
:class:`l0jax.models.LeNet5Caffe`; :func:`register_architecture` adds one by giving
the op sequence of its forward pass (a chain of dense / conv layers with relu,
pooling and flatten between them), checked by :func:`check_ops`. For any other
gated model, :func:`masks` exports boolean keep-masks (what a closed gate zeroes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import uuid
import warnings
from typing import (Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple, Union)

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from l0jax import density, gates, gating
from l0jax.errors import UserError
from l0jax.models import LeNet5Caffe, MLP

__all__ = [
    "Op",
    "PurgedModel",
    "architecture_ops",
    "register_architecture",
    "purge",
    "counts",
    "check_ops",
    "macs_graph",
    "masks",
    "save",
    "load",
    "read_spec",
    "is_export",
    "check_export_path",
    "ExportError",
]

SPEC_FORMAT = "l0jax.purged_model"
SPEC_VERSION = 1
SPEC_FILE = "spec.json"
CHECKSUM_KEY = "sha256"
PARAMS_DIR = "params"

LINEAR_KINDS = ("dense", "conv")
POOL_KINDS = ("max_pool", "avg_pool")
OP_KINDS = LINEAR_KINDS + ("relu",) + POOL_KINDS + ("flatten", "select")


class Op(NamedTuple):
  """One step of a purged (or gated) model's forward pass.

  ``kind`` is one of:

  * ``"dense"``: ``nn.Dense(features)`` on the last axis, parameters under ``name``;
  * ``"conv"``: ``nn.Conv(features, kernel_size, strides, padding)`` (NHWC),
    parameters under ``name``;
  * ``"relu"``;
  * ``"max_pool"``: ``nn.max_pool(x, window, strides)`` (VALID);
  * ``"avg_pool"``: ``nn.avg_pool(x, window, strides)`` (VALID);
  * ``"flatten"``: ``(batch, ...) -> (batch, -1)``, row-major (channel innermost);
  * ``"select"``: keeps the features ``indices`` of the last axis, in that order.
  """
  kind: str
  name: Optional[str] = None
  features: Optional[int] = None
  kernel_size: Optional[Tuple[int, ...]] = None
  strides: Optional[Tuple[int, ...]] = None
  padding: Optional[str] = None
  window: Optional[Tuple[int, ...]] = None
  indices: Optional[Tuple[int, ...]] = None
  use_bias: bool = True

  def __repr__(self) -> str:
    fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
    return f"Op({fields})"

  def to_dict(self) -> Dict[str, Any]:
    """JSON-able dict of the fields that are set."""
    out = {}
    for key, value in self._asdict().items():
      if value is None or (key == "use_bias" and value):
        continue
      out[key] = list(value) if isinstance(value, tuple) else value
    return out

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "Op":
    unknown = set(d) - set(cls._fields)
    if unknown:
      raise ValueError(f"unknown op fields {sorted(unknown)} in {dict(d)}")
    kw = {k: tuple(int(i) for i in v) if isinstance(v, (list, tuple)) else v
          for k, v in d.items()}
    op = cls(**kw)
    _check_op(op)
    return op


def _check_op(op: Op) -> None:
  if op.kind not in OP_KINDS:
    raise ValueError(f"unknown op kind {op.kind!r}; allowed: {OP_KINDS}")
  if op.kind in LINEAR_KINDS and (op.name is None or op.features is None):
    raise ValueError(f"a {op.kind} op needs a name and features, got {op}")
  if op.kind == "conv" and op.kernel_size is None:
    raise ValueError(f"a conv op needs kernel_size, got {op}")
  if op.kind in POOL_KINDS and op.window is None:
    raise ValueError(f"a {op.kind} op needs window, got {op}")
  if op.kind == "select" and op.indices is None:
    raise ValueError(f"a select op needs indices, got {op}")


def _kernel_init(key, shape, dtype=jnp.float32):
  """lecun_normal that also accepts zero-width layers (they hold no weights)."""
  if math.prod(shape) == 0:
    return jnp.zeros(shape, dtype)
  return nn.initializers.lecun_normal()(key, shape, dtype)


class PurgedModel(nn.Module):
  """A plain Flax model of ``nn.Dense`` / ``nn.Conv`` layers run as a sequence of ops.

  ``ops`` is a tuple of :class:`Op`; build one from a JSON-able spec with
  :meth:`from_spec`. Outputs for inputs ``x`` of shape ``(batch, ...)``.
  """
  ops: Tuple[Op, ...]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for op in self.ops:
      if op.kind == "dense":
        x = nn.Dense(op.features, use_bias=op.use_bias, kernel_init=_kernel_init,
                     name=op.name)(x)
      elif op.kind == "conv":
        x = nn.Conv(op.features, tuple(op.kernel_size),
                    strides=tuple(op.strides) if op.strides else 1,
                    padding=op.padding or "VALID", use_bias=op.use_bias,
                    kernel_init=_kernel_init, name=op.name)(x)
      elif op.kind == "relu":
        x = nn.relu(x)
      elif op.kind in POOL_KINDS:
        pool = nn.max_pool if op.kind == "max_pool" else nn.avg_pool
        x = pool(x, tuple(op.window), strides=tuple(op.strides) if op.strides else None)
      elif op.kind == "flatten":
        x = x.reshape((x.shape[0], -1))
      elif op.kind == "select":
        # Indices are valid by construction: "clip" skips the out-of-bounds masking.
        x = jnp.take(x, jnp.asarray(op.indices, jnp.int32), axis=-1, mode="clip")
      else:
        raise ValueError(f"unknown op kind {op.kind!r}")
    return x

  def spec(self) -> Dict[str, Any]:
    """The JSON-able description of this model (see :meth:`from_spec`)."""
    return _spec_dict(self.ops)

  @classmethod
  def from_spec(cls, spec: Union[Mapping[str, Any], Sequence[Any]]) -> "PurgedModel":
    """Rebuilds the model from :meth:`spec`'s dict (or a sequence of ops / op dicts)."""
    return cls(ops=_ops_from_spec(spec))


MODEL_SPEC_VERSION = 2  # a channel-gated CNN: its class and attributes


def _model_spec(model: nn.Module) -> Dict[str, Any]:
  """JSON-able class + attributes of a purged CNN (no mapped axis: inference)."""
  attributes = {}
  for field in dataclasses.fields(model):
    if field.name in ("parent", "name"):
      continue
    value = getattr(model, field.name)
    if field.name == "dtype":
      value = None if value is None else jnp.dtype(value).name
    elif field.name == "axis_name":
      value = None
    attributes[field.name] = value
  return {"format": SPEC_FORMAT, "version": MODEL_SPEC_VERSION,
          "model": {"class": type(model).__name__, "attributes": attributes}}


def _model_from_spec(spec: Mapping[str, Any]) -> nn.Module:
  from l0jax import models  # pylint: disable=g-import-not-at-top
  cls = getattr(models, spec["model"]["class"], None)
  if cls is None or not has_channel_graph(cls):
    raise ValueError(f"unknown purged model class {spec['model']['class']!r}")
  tupled = lambda v: tuple(tupled(x) for x in v) if isinstance(v, list) else v
  attributes = {k: tupled(v) for k, v in spec["model"]["attributes"].items()}
  if attributes.get("dtype") is not None:
    attributes["dtype"] = jnp.dtype(attributes["dtype"])
  return cls(**attributes)


def _spec_dict(ops: Sequence[Op]) -> Dict[str, Any]:
  return {"format": SPEC_FORMAT, "version": SPEC_VERSION,
          "ops": [op.to_dict() for op in ops]}


def _ops_from_spec(spec) -> Tuple[Op, ...]:
  if isinstance(spec, PurgedModel):
    return tuple(spec.ops)
  if isinstance(spec, Mapping):
    if spec.get("format") != SPEC_FORMAT:
      raise ValueError(f"not a purged-model spec: format {spec.get('format')!r}, "
                       f"expected {SPEC_FORMAT!r}")
    if spec.get("version") != SPEC_VERSION:
      raise ValueError(f"unsupported purged-model spec version "
                       f"{spec.get('version')!r}; this l0jax reads {SPEC_VERSION}")
    spec = spec["ops"]
  ops = []
  for op in spec:
    if isinstance(op, Op):
      _check_op(op)
      ops.append(op)
    else:
      ops.append(Op.from_dict(op))
  return tuple(ops)


# ------------------------------------------------------------------------------------
# Architectures: the op sequence of a gated model's forward pass.
# ------------------------------------------------------------------------------------

_ARCHITECTURES: Dict[type, Callable[[nn.Module], Tuple[Op, ...]]] = {}


def register_architecture(model_type: type,
                          ops_fn: Callable[[nn.Module], Sequence[Op]], *,
                          input_shape: Optional[Sequence[int]] = None) -> None:
  """Teaches :func:`purge` a model class.

  ``ops_fn(model)`` returns the ops of the model's test-time forward pass with its
  full (unpurged) widths, each dense / conv op named like the model's parameter
  dict. The dense and conv layers must form a chain; gates are read from the
  parameters (a layer without ``log_alpha`` is treated as always open).

  With ``input_shape`` (one example, e.g. ``(28, 28, 1)``) the op list of the default
  model ``model_type()`` is checked now, by :func:`check_ops` against the shapes of
  that model's parameters and output (``jax.eval_shape``, nothing is computed);
  without it the check runs when :func:`purge` or :func:`counts` first see params.

  Raises:
    ValueError: for an op list that does not run the model (see :func:`check_ops`).
  """
  if input_shape is not None:
    model = model_type()
    x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
    keys = {"params": jax.random.key(0), "gates": jax.random.key(1)}
    variables = jax.eval_shape(model.init, keys, x)
    try:
      out = jax.eval_shape(lambda v, x: model.apply(v, x, deterministic=True),
                           variables, x)
    except TypeError:
      out = jax.eval_shape(model.apply, variables, x)
    check_ops(tuple(ops_fn(model)), variables, input_shape=input_shape,
              output_shape=out.shape[1:])
  _ARCHITECTURES[model_type] = lambda model: tuple(ops_fn(model))


def check_ops(ops: Sequence[Op], params=None, *,
              input_shape: Optional[Sequence[int]] = None,
              output_shape: Optional[Sequence[int]] = None) -> None:
  """Raises ValueError unless ``ops`` can run a model with these ``params``.

  Always: every op is of a known kind with its fields, dense / conv names are unique
  and there is at least one. With ``params`` (arrays or shapes): every op's layer
  exists with a kernel of the op's kind and width; every layer of ``params`` that has
  a kernel is in the ops (an op list that skips a layer would drop it); each layer's
  inputs match the previous layer's outputs (times the positions of a flatten). With
  ``input_shape``: the ops run on it (positive sizes, the first layer's inputs), and
  with ``output_shape`` they end with it.
  """
  ops = tuple(ops)
  for op in ops:
    _check_op(op)
  names = [op.name for op in ops if op.kind in LINEAR_KINDS]
  if not names:
    raise ValueError("the op list has no dense or conv op")
  if len(set(names)) != len(names):
    raise ValueError(f"dense / conv op names must be unique, got {names}")
  if params is not None:
    params = _unwrap(params)
    missing = [n for n in names if n not in params or "kernel" not in params[n]]
    if missing:
      raise ValueError(f"ops name layers {missing} that params do not have (with a "
                       f"kernel); params layers: {sorted(params)}")
    unused = sorted(k for k, v in params.items()
                    if isinstance(v, Mapping) and "kernel" in v and k not in names)
    if unused:
      raise ValueError(f"params layers {unused} are in no op: the op list must run "
                       f"the whole model (its ops name {names})")
    width, flattened = None, False
    for op in ops:
      if op.kind == "flatten":
        flattened = True
      if op.kind not in LINEAR_KINDS:
        continue
      shape = tuple(params[op.name]["kernel"].shape)
      want_ndim = 2 if op.kind == "dense" else len(op.kernel_size) + 2
      if len(shape) != want_ndim or shape[-1] != op.features or (
          op.kind == "conv" and shape[:-2] != tuple(op.kernel_size)):
        raise ValueError(f"layer {op.name!r}: kernel shape {shape} does not fit {op}")
      n_in = shape[-2]
      if width is not None and n_in != width and not (
          flattened and width and n_in % width == 0):
        raise ValueError(f"layer {op.name!r} takes {n_in} inputs, but the op before "
                         f"it gives {width}" + (" per position" if flattened else ""))
      width, flattened = shape[-1], False
  if input_shape is not None:
    in_widths = None if params is None else {
        n: params[n]["kernel"].shape[-2] for n in names}
    _, shape = _propagate(ops, input_shape, in_widths)
    if output_shape is not None and tuple(shape) != tuple(output_shape):
      raise ValueError(f"the ops end with shape {tuple(shape)}, the model's output "
                       f"is {tuple(output_shape)}")


def architecture_ops(model: nn.Module) -> Tuple[Op, ...]:
  """The op sequence of ``model``'s forward pass (see :func:`register_architecture`)."""
  for cls in type(model).__mro__:
    if cls in _ARCHITECTURES:
      return _ARCHITECTURES[cls](model)
  raise NotImplementedError(
      f"purge does not know {type(model).__name__}; known: "
      f"{sorted(c.__name__ for c in _ARCHITECTURES)} (add one with "
      f"register_architecture)")


def _mlp_ops(model: MLP) -> List[Op]:
  widths = tuple(model.features) + (model.num_classes,)
  ops = [Op("flatten")]
  for i, width in enumerate(widths):
    ops.append(Op("dense", name=f"fc{i + 1}", features=int(width)))
    if i < len(widths) - 1:
      ops.append(Op("relu"))
  return ops


def _lenet_ops(model: LeNet5Caffe) -> List[Op]:
  ops = []
  for i, width in enumerate(model.conv_features):
    ops += [Op("conv", name=f"conv{i + 1}", features=int(width), kernel_size=(5, 5),
               strides=(1, 1), padding="VALID"),
            Op("relu"),
            Op("max_pool", window=(2, 2), strides=(2, 2))]
  ops += [Op("flatten"),
          Op("dense", name="fc1", features=int(model.dense_features)), Op("relu"),
          Op("dense", name="fc2", features=int(model.num_classes))]
  return ops


register_architecture(MLP, _mlp_ops)
register_architecture(LeNet5Caffe, _lenet_ops)  # checked in tests/test_purge.py


# ------------------------------------------------------------------------------------
# Analysis: fold test-time gates, then find what survives.
# ------------------------------------------------------------------------------------

class _Layer:
  """One dense / conv layer during purging (numpy, host side)."""

  def __init__(self, op: Op, kernel, bias, kind: Optional[str],
               weight_open: np.ndarray, in_keep: np.ndarray, out_keep: np.ndarray):
    self.op = op
    self.kernel = kernel            # gates folded in, full size
    self.bias = bias                # gates folded in, full size (or None)
    self.kind = kind                # a density.* gate kind, or None when ungated
    self.weight_open = weight_open  # bool, kernel shape: the weight's gate is > 0
    self.in_keep = in_keep          # bool over input features (channels / neurons)
    self.out_keep = out_keep        # bool over outputs
    self.out_open = out_keep.copy()  # outputs whose own gate is open (before cascade)
    self.src = None                 # input feature -> previous layer's output unit

  @property
  def n_in(self) -> int:
    return int(self.kernel.shape[-2])

  @property
  def n_out(self) -> int:
    return int(self.kernel.shape[-1])

  @property
  def spatial(self) -> int:
    return math.prod(self.kernel.shape[:-2])

  def structured_bias(self) -> bool:
    """Whether the bias counts as sparsifiable (shares its conv channel's gate)."""
    return (self.bias is not None and self.op.kind == "conv"
            and self.kind != density.UNSTRUCTURED)


def _unwrap(params) -> Mapping[str, Any]:
  """The params of params or of a variables dict ({"params", "batch_stats"})."""
  if isinstance(params, Mapping) and "params" in params and set(params) <= {
      "params", "batch_stats"}:
    return params["params"]
  return params


def _with_log_alphas(params, log_alphas: Optional[Mapping[str, Any]]):
  """``params`` with each named layer's ``log_alpha`` replaced (or added)."""
  params = _unwrap(params)
  if log_alphas is None:
    return params
  unknown = sorted(set(log_alphas) - set(params))
  if unknown:
    raise ValueError(f"log_alphas name layers {unknown} that params do not have; "
                     f"params layers: {sorted(params)}")
  return {name: dict(layer, log_alpha=log_alphas[name]) if name in log_alphas
          else layer for name, layer in params.items()}


def _variables_with_log_alphas(variables, log_alphas: Optional[Mapping[str, Any]]):
  """A CNN's variables with the ``log_alpha`` of each named layer (a '/'-joined path,
  as :func:`l0jax.density.gated_layers` names it) replaced or added."""
  if log_alphas is None:
    return variables
  flat = _path_dict_keep(variables["params"])
  for name, value in log_alphas.items():
    if f"{name}/kernel" not in flat:
      raise ValueError(f"log_alphas name layer {name!r}, which the params do not have")
    flat[f"{name}/log_alpha"] = value
  return {**variables, "params": _nest(flat)}


def _gate_kwargs(model) -> Dict[str, Any]:
  return dict(clamp=getattr(model, "log_alpha_clamp", None))


def _test_gate(model, test_gate: Optional[str]) -> str:
  mode = test_gate if test_gate is not None else getattr(model, "test_gate", "median")
  if mode not in gates.TEST_GATE_MODES:
    raise ValueError(f"unknown test-time gate mode {mode!r}; allowed: "
                     f"{gates.TEST_GATE_MODES}")
  return mode


_deterministic_gate = jax.jit(gates.deterministic_gate,
                              static_argnames=("mode", "beta", "gamma", "zeta",
                                               "clamp"))


def _test_time_gates(params, names: Sequence[str], mode: str, gate_kw
                     ) -> Dict[str, np.ndarray]:
  """Test-time gates of the named layers that have ``log_alpha``, as numpy arrays.

  The gate is elementwise, so the log_alphas of a dtype go through one jitted call
  (one compile per model instead of one per primitive and layer shape).
  """
  by_dtype: Dict[Any, List[str]] = {}
  for name in names:
    if "log_alpha" in params[name]:
      dtype = np.asarray(params[name]["log_alpha"]).dtype
      by_dtype.setdefault(dtype, []).append(name)
  out = {}
  for group in by_dtype.values():
    alphas = [np.asarray(params[n]["log_alpha"]) for n in group]
    flat = np.asarray(_deterministic_gate(
        jax.device_put(np.concatenate([a.ravel() for a in alphas])), mode=mode,
        **gate_kw))
    ends = np.cumsum([a.size for a in alphas])
    for name, a, chunk in zip(group, alphas, np.split(flat, ends[:-1])):
      out[name] = chunk.reshape(a.shape)
  return out


def _fold(op: Op, layer: Mapping[str, Any], g: Optional[np.ndarray]) -> _Layer:
  if "kernel" not in layer:
    raise ValueError(f"layer {op.name!r} has no kernel")
  # Host-side numpy: an elementwise product rounds exactly as XLA's does.
  kernel = np.asarray(layer["kernel"])
  bias = np.asarray(layer["bias"]) if "bias" in layer else None
  want_ndim = 2 if op.kind == "dense" else len(op.kernel_size) + 2
  if kernel.ndim != want_ndim or kernel.shape[-1] != op.features:
    raise ValueError(f"layer {op.name!r}: kernel shape {kernel.shape} does not fit "
                     f"a {op.kind} layer with {op.features} features")
  in_keep = np.ones(kernel.shape[-2], bool)
  out_keep = np.ones(kernel.shape[-1], bool)
  weight_open = np.ones(kernel.shape, bool)
  kind = None
  if g is not None:
    kind = density.gated_layers({op.name: layer})[op.name].kind
    if kind not in (density.UNSTRUCTURED,
                    density.INPUTS if op.kind == "dense" else
                    density.OUTPUTS):
      raise ValueError(f"layer {op.name!r}: {kind} gates on a {op.kind} layer")
    g = g.astype(np.result_type(kernel.dtype, g.dtype))
    is_open = g > 0
    if kind == density.INPUTS:
      kernel = kernel * g[:, None]      # the product L0Dense forms at test time
      in_keep = is_open
      weight_open = np.broadcast_to(is_open[:, None], kernel.shape)
    elif kind == density.OUTPUTS:
      kernel = kernel * g
      bias = bias * g if bias is not None else None
      out_keep = is_open
      weight_open = np.broadcast_to(is_open, kernel.shape)
    else:
      kernel = kernel * g
      weight_open = is_open
  return _Layer(op, kernel, bias, kind, np.asarray(weight_open), in_keep.copy(),
                out_keep.copy())


def _source_index(prev: _Layer, layer: _Layer, flattened: bool) -> np.ndarray:
  """Maps each input feature of ``layer`` to the output unit of ``prev`` feeding it."""
  c = prev.n_out
  if layer.n_in == c:
    return np.arange(c)
  if flattened and c > 0 and layer.n_in % c == 0:
    return np.arange(layer.n_in) % c  # NHWC flatten: index (h * W + w) * C + c
  raise ValueError(
      f"layer {layer.op.name!r} has {layer.n_in} inputs, which does not match the "
      f"{c} outputs of {prev.op.name!r}" + (" times a spatial size" if flattened
                                              else ""))


def _analyse(model, params, test_gate: Optional[str]):
  """Folded, full-size layers with their kept inputs and outputs after the cascade."""
  params = _unwrap(params)
  mode = _test_gate(model, test_gate)
  ops = architecture_ops(model)
  check_ops(ops, params)
  names = [op.name for op in ops if op.kind in LINEAR_KINDS]
  test_gates = _test_time_gates(params, names, mode, _gate_kwargs(model))
  layers: List[_Layer] = []
  flattened = False
  for op in ops:
    if op.kind in LINEAR_KINDS:
      layer = _fold(op, params[op.name], test_gates.get(op.name))
      if layers:
        layer.src = _source_index(layers[-1], layer, flattened)
      layers.append(layer)
      flattened = False
    elif op.kind == "flatten":
      flattened = True

  # Cascade to a fixed point: each pass only removes units, so it terminates.
  changed = True
  while changed:
    changed = False
    for prev, layer in zip(layers[:-1], layers[1:]):
      in_keep = layer.in_keep & prev.out_keep[layer.src]
      used = np.zeros(prev.n_out, bool)
      used[layer.src[in_keep]] = True
      out_keep = prev.out_keep & used
      if (in_keep != layer.in_keep).any() or (out_keep != prev.out_keep).any():
        layer.in_keep, prev.out_keep, changed = in_keep, out_keep, True
    for layer in layers:
      if not layer.out_keep.any() and layer.in_keep.any():
        layer.in_keep = np.zeros_like(layer.in_keep)  # nothing reads its outputs
        changed = True
  return ops, layers


def purge(model: nn.Module, params, test_gate: Optional[str] = None, *,
          log_alphas: Optional[Mapping[str, Any]] = None
          ) -> Tuple[PurgedModel, Dict[str, Dict[str, jax.Array]]]:
  """Builds the compact plain model equal to ``model`` at test time.

  Args:
    model: a gated (or plain) model of a registered architecture, e.g.
      :class:`l0jax.models.MLP` or :class:`l0jax.models.LeNet5Caffe`.
    params: its parameters (or a ``{"params": ...}`` variables dict).
    test_gate: ``"median"`` or ``"eq13"``; defaults to ``model.test_gate``, so the
      result equals ``model.apply(variables, x, deterministic=True)``.
    log_alphas: ``{layer name: log_alpha}`` for gates kept outside the params (e.g.
      produced by a generator network); they take the place of the params' own.

  Returns:
    ``(purged_model, purged_params)`` with
    ``purged_model.apply({"params": purged_params}, x)`` equal to the gated model's
    test-time output (up to float rounding). Not jittable: shapes depend on the gates.
  """
  if has_channel_graph(model):
    return _purge_channels(model, _variables_with_log_alphas(params, log_alphas),
                           test_gate)
  ops, layers = _analyse(model, _with_log_alphas(params, log_alphas), test_gate)
  by_name = {layer.op.name: layer for layer in layers}
  new_ops: List[Op] = []
  new_params: Dict[str, Dict[str, jax.Array]] = {}
  prev: Optional[_Layer] = None
  for op in ops:
    if op.kind not in LINEAR_KINDS:
      new_ops.append(op)
      continue
    layer = by_name[op.name]
    # Where each kept input of this layer sits in the purged upstream output.
    if prev is None:
      upstream_width = layer.n_in
      position = np.arange(layer.n_in)
    else:
      rank = np.cumsum(prev.out_keep) - 1
      kept_channels = int(prev.out_keep.sum())
      upstream_width = (layer.n_in // prev.n_out) * kept_channels
      position = (np.arange(layer.n_in) // prev.n_out) * kept_channels + rank[layer.src]
    indices = position[layer.in_keep]
    if len(indices) != upstream_width:
      new_ops.append(Op("select", indices=tuple(int(i) for i in indices)))
    kernel = layer.kernel[..., layer.in_keep, :][..., layer.out_keep]
    new_ops.append(op._replace(features=int(layer.out_keep.sum()),
                               use_bias=layer.bias is not None))
    # device_put, not jnp.asarray: no XLA compile for a copy.
    new_params[op.name] = {"kernel": jax.device_put(np.ascontiguousarray(kernel))}
    if layer.bias is not None:
      new_params[op.name]["bias"] = jax.device_put(
          np.ascontiguousarray(layer.bias[layer.out_keep]))
    prev = layer
  return PurgedModel(ops=tuple(new_ops)), new_params


# ------------------------------------------------------------------------------------
# Keep-masks: for models purge cannot compact.
# ------------------------------------------------------------------------------------

def masks(params, specs: Optional[Sequence[gating.GateSpec]] = None,
          log_alphas: Optional[Mapping[str, Any]] = None, test_gate: str = "median",
          **gate_kwargs):
  """Boolean keep-masks for any gated pytree: like ``params``, False where pruned.

  Without ``specs``: l0jax's layers (:func:`l0jax.density.layer_specs`: input gates
  mask kernel rows, channel gates a kernel channel and its bias, unstructured gates
  single weights). With ``specs`` and ``log_alphas``: the path API
  (:mod:`l0jax.gating`). A weight is kept when its test-time gate
  (:func:`l0jax.gates.deterministic_gate`, ``test_gate``) is not exactly zero;
  ungated leaves are all True. ``jax.tree.map(lambda p, m: p * m, params, masks)``
  zeroes what purging would remove (without the cascade), for any architecture.
  """
  if specs is None:
    if log_alphas is not None:
      raise ValueError("log_alphas= needs specs= saying what the gates gate")
    specs, log_alphas = density.layer_specs(params)
  return gating.keep_masks(params, log_alphas, specs, test_gate, **gate_kwargs)


# ------------------------------------------------------------------------------------
# Counts: parameters and multiply-accumulates.
# ------------------------------------------------------------------------------------

def _conv_out(size: int, k: int, stride: int, padding: str) -> int:
  if padding == "VALID":
    return (size - k) // stride + 1
  if padding == "SAME":
    return -(-size // stride)
  raise ValueError(f"counts supports padding 'VALID' or 'SAME', got {padding!r}")


def _output_positions(ops: Sequence[Op], input_shape) -> Dict[str, int]:
  """Output positions (product of spatial dims) of each dense / conv op, per example."""
  if input_shape is None:
    if any(op.kind == "conv" for op in ops):
      raise ValueError("counts needs input_shape=(H, W, C) (one example, no batch "
                       "axis) for a model with convolutions")
    return {op.name: 1 for op in ops if op.kind == "dense"}
  return _propagate(ops, input_shape)[0]


def _propagate(ops: Sequence[Op], input_shape, in_widths=None):
  """``(positions per dense / conv op, output shape)`` of one example through ``ops``.

  Raises ValueError where a size becomes non-positive or a select indexes past the
  features (the widths of dense / conv inputs are checked against the kernels by
  :func:`check_ops`, and here against ``in_widths``, ``{name: kernel inputs}``).
  """
  shape = tuple(int(d) for d in input_shape)
  positions = {}
  for op in ops:
    if in_widths and op.kind in LINEAR_KINDS and shape[-1] != in_widths[op.name]:
      raise ValueError(f"layer {op.name!r} takes {in_widths[op.name]} inputs, the ops "
                       f"before it give shape {shape} for input shape "
                       f"{tuple(input_shape)}")
    if op.kind == "conv":
      if len(shape) != len(op.kernel_size) + 1:
        raise ValueError(f"{op} gets an input of shape {shape}")
      strides = op.strides or (1,) * len(op.kernel_size)
      spatial = tuple(_conv_out(d, k, s, op.padding or "VALID")
                      for d, k, s in zip(shape[:-1], op.kernel_size, strides))
      shape = spatial + (op.features,)
      positions[op.name] = math.prod(spatial)
    elif op.kind == "dense":
      shape = shape[:-1] + (op.features,)
      positions[op.name] = math.prod(shape[:-1])
    elif op.kind in POOL_KINDS:
      strides = op.strides or op.window
      shape = tuple((d - w) // s + 1 for d, w, s in
                    zip(shape[:-1], op.window, strides)) + shape[-1:]
    elif op.kind == "flatten":
      shape = (math.prod(shape),)
    elif op.kind == "select":
      if op.indices and max(op.indices) >= shape[-1]:
        raise ValueError(f"{op} indexes past the {shape[-1]} features")
      shape = shape[:-1] + (len(op.indices),)
    if any(d <= 0 for d in shape[:-1]):
      raise ValueError(f"{op} leaves an empty shape {shape} for input shape "
                       f"{tuple(input_shape)}")
  return positions, shape


def macs_graph(model: nn.Module, params, input_shape: Sequence[int], *,
               log_alphas: Optional[Mapping[str, Any]] = None
               ) -> Dict[str, density.Linear]:
  """The :class:`l0jax.density.Linear` graph of a registered chain model's MACs.

  For :func:`l0jax.density.macs_density` / :func:`l0jax.density.layer_macs` with
  ``density.gated_layers(params)``: each dense / conv layer's MACs per example
  (kernel size times output positions), its inputs kept by its own input gates and by
  the previous layer's channel gates, its outputs by its own channel gates
  (unstructured gates as weight gates). A layer without gates is always on.
  ``log_alphas`` as in :func:`purge`.

  For a channel-gated CNN (``model.channel_sources()``), every convolution and dense
  layer: a gated one's outputs kept by its gates, and the inputs of a layer that reads a
  gated layer directly kept by that layer's gates. A residual stream stays whole (the
  shortcut keeps every channel alive), so layers reading a block's output count all of
  its channels.
  """
  if has_channel_graph(model):
    return _channel_macs_graph(model, _unwrap(params), input_shape, log_alphas)
  params = _with_log_alphas(params, log_alphas)
  ops = architecture_ops(model)
  check_ops(ops, params, input_shape=input_shape)
  positions = _output_positions(ops, input_shape)
  kinds = {name: layer.kind for name, layer in density.gated_layers(params).items()}
  graph, prev = {}, None
  for op in ops:
    if op.kind not in LINEAR_KINDS:
      continue
    kind = kinds.get(op.name)
    inputs = ((op.name,) if kind == density.INPUTS else ()) + (
        (prev,) if prev is not None and kinds.get(prev) == density.OUTPUTS else ())
    graph[op.name] = density.Linear(
        int(np.prod(params[op.name]["kernel"].shape)) * positions[op.name],
        inputs=inputs, outputs=(op.name,) if kind == density.OUTPUTS else (),
        weights=op.name if kind == density.UNSTRUCTURED else None)
    prev = op.name
  return graph


def _channel_macs_graph(model: nn.Module, params, input_shape, log_alphas
                        ) -> Dict[str, density.Linear]:
  """:func:`macs_graph` of a channel-gated CNN, from :func:`layer_table`."""
  if log_alphas is not None:
    raise ValueError("macs_graph of a channel-gated CNN reads the gates from its params")
  if input_shape is None:
    raise ValueError("macs_graph needs input_shape=(H, W, C) for a CNN")
  gated = {name for name, layer in density.gated_layers(params).items()
           if layer.kind == density.OUTPUTS}
  sources = model.channel_sources()
  return {path: density.Linear(
              row["macs"],
              inputs=(sources[path],) if sources.get(path) in gated else (),
              outputs=(path,) if path in gated else ())
          for path, row in layer_table(model, input_shape).items()}


def counts(model: nn.Module, params, *, input_shape: Optional[Sequence[int]] = None,
           test_gate: Optional[str] = None,
           log_alphas: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
  """Parameters and per-example multiply-accumulates: dense, test-time and purged.

  Args:
    model, params, test_gate, log_alphas: as in :func:`purge`.
    input_shape: one example's input shape, e.g. ``(28, 28, 1)``; needed for
      convolutions (MACs of a conv are ``out_h * out_w * kh * kw * cin * cout``).

  Returns:
    A dict with

    * ``dense_params``, ``dense_macs``: the ungated architecture (kernels + biases);
    * ``dense_sparsifiable``: weights the gates can remove, as :mod:`l0jax.density`
      counts them (dense: kernel; gated conv: kernel + bias; unstructured: kernel);
    * ``test_time_params``, ``test_time_macs``, ``test_time_density``: weights whose
      own test-time gate is non-zero (``test_time_density`` equals
      ``density.density_report(params).model_test_time``);
    * ``purged_params``, ``purged_macs``, ``purged_density``: the model
      :func:`purge` builds, after the cascade (``purged_density`` = purged
      sparsifiable / dense sparsifiable). Unstructured layers are not compacted;
      they count their non-zero weights (what a sparse kernel would store);
    * ``architecture``: kept widths in the papers' style, per dense / conv layer in
      forward order: a conv's output channels, a dense layer's inputs (e.g.
      ``"198-233-100"`` for the 784-300-100 MLP, ``"20-50-800-500"`` for LeNet-5);
    * ``layers``: the same numbers per layer.
  """
  if has_channel_graph(model):
    return _channel_counts(model, _variables_with_log_alphas(params, log_alphas),
                           input_shape, test_gate)
  ops, layers = _analyse(model, _with_log_alphas(params, log_alphas), test_gate)
  positions = _output_positions(ops, input_shape)
  total = dict.fromkeys(
      ["dense_params", "dense_macs", "dense_sparsifiable", "test_time_params",
       "test_time_macs", "test_time_sparsifiable", "purged_params", "purged_macs",
       "purged_sparsifiable"], 0)
  per_layer, widths = {}, []
  for layer in layers:
    pos = positions[layer.op.name]
    bias_size = 0 if layer.bias is None else layer.n_out
    sparse_bias = layer.structured_bias()
    # Dense architecture.
    kernel_size = layer.kernel.size
    dense_sparse = kernel_size + (bias_size if sparse_bias else 0)
    # Test time: weights whose own gate is open.
    tt_kernel = int(layer.weight_open.sum())
    tt_bias = int(layer.out_open.sum()) if sparse_bias else bias_size
    tt_sparse = tt_kernel + (tt_bias if sparse_bias else 0)
    # Purged.
    kept = layer.weight_open[..., layer.in_keep, :][..., layer.out_keep]
    p_kernel = int(kept.sum())
    p_bias = int(layer.out_keep.sum()) if layer.bias is not None else 0
    p_sparse = p_kernel + (p_bias if sparse_bias else 0)
    row = {
        "dense_params": kernel_size + bias_size,
        "dense_macs": kernel_size * pos,
        "dense_sparsifiable": dense_sparse,
        "test_time_params": tt_kernel + tt_bias,
        "test_time_macs": tt_kernel * pos,
        "test_time_sparsifiable": tt_sparse,
        "purged_params": p_kernel + p_bias,
        "purged_macs": p_kernel * pos,
        "purged_sparsifiable": p_sparse,
    }
    for key, value in row.items():
      total[key] += value
    per_layer[layer.op.name] = row
    widths.append(int(layer.out_keep.sum() if layer.op.kind == "conv"
                      else layer.in_keep.sum()))
  dense_sparse = max(total["dense_sparsifiable"], 1)
  total["test_time_density"] = total["test_time_sparsifiable"] / dense_sparse
  total["purged_density"] = total["purged_sparsifiable"] / dense_sparse
  total["architecture"] = "-".join(str(w) for w in widths)
  total["layers"] = per_layer
  return total


# ------------------------------------------------------------------------------------
# Channel-gated CNNs (WideResNet, ResNet, CifarResNet, VGG): the same model, compacted.
# ------------------------------------------------------------------------------------

def has_channel_graph(model: nn.Module) -> bool:
  """Whether ``model`` is compacted as a channel-gated CNN (it declares which layers
  read a gated layer's channels directly: ``model.channel_sources()``)."""
  return callable(getattr(model, "channel_sources", None))


def _path_dict(tree) -> Dict[str, Any]:
  """'a/b/leaf' -> host numpy array, for a nested dict of arrays."""
  import flax  # pylint: disable=g-import-not-at-top
  return {"/".join(k): np.asarray(v) for k, v in
          flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def _path_dict_keep(tree) -> Dict[str, Any]:
  """'a/b/leaf' -> array (device arrays kept as they are)."""
  import flax  # pylint: disable=g-import-not-at-top
  return {"/".join(k): v for k, v in
          flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def _nest(flat: Mapping[str, Any]) -> Dict[str, Any]:
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  return traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})


def channel_keep(model: nn.Module, params, test_gate: Optional[str] = None
                 ) -> Dict[str, np.ndarray]:
  """Kept output channels (test-time gate > 0) of every gated layer, with the gate
  values: ``{layer path: (indices, gate values at those indices)}``."""
  mode = _test_gate(model, test_gate)
  kw = _gate_kwargs(model)
  out = {}
  for name, layer in density.gated_layers(_unwrap(params)).items():
    g = np.asarray(gates.deterministic_gate(layer.log_alpha, mode, **kw), np.float32)
    if g.ndim != 1:
      raise NotImplementedError(f"{name}: channel-gated CNNs are compacted with "
                                "structured (per-channel) gates only")
    idx = np.flatnonzero(g > 0)
    out[name] = (idx, g[idx])
  return out


def _purge_channels(model: nn.Module, variables, test_gate: Optional[str]):
  """:func:`purge` for channel-gated CNNs: the model's own class, ungated, with only
  the kept channels (``keep``); fractional gates folded into the BatchNorm affine."""
  if not isinstance(variables, Mapping) or "params" not in variables:
    raise ValueError(f"purging {type(model).__name__} needs its variables "
                     "({'params': ..., 'batch_stats': ...}), not only params")
  keep = channel_keep(model, variables["params"], test_gate)
  params = _path_dict(variables["params"])
  stats = _path_dict(variables.get("batch_stats", {}))
  for name, (idx, g) in keep.items():
    params.pop(f"{name}/log_alpha")
    kernel = params[f"{name}/kernel"]
    params[f"{name}/kernel"] = kernel[..., idx]
    for leaf in ("scale", "bias"):  # y * g = BN(x) * g: fold g into the affine map
      if f"{name}/{leaf}" in params:
        params[f"{name}/{leaf}"] = params[f"{name}/{leaf}"][idx] * g
    for leaf in ("mean", "var"):
      if f"{name}/{leaf}" in stats:
        stats[f"{name}/{leaf}"] = stats[f"{name}/{leaf}"][idx]
  for reader, source in model.channel_sources().items():
    kernel = params[f"{reader}/kernel"]  # (..., in, out): keep the source's channels
    params[f"{reader}/kernel"] = np.take(kernel, keep[source][0], axis=-2)
  purged_model = model.clone(  # for inference: no mapped axis
      gated=False, axis_name=None, keep=tuple((n, tuple(int(i) for i in idx))
                              for n, (idx, _) in keep.items()))
  put = lambda tree: jax.tree.map(lambda a: jax.device_put(np.ascontiguousarray(a)), tree)
  out = {"params": put(_nest(params))}
  if stats:
    out["batch_stats"] = put(_nest(stats))
  return purged_model, out


def _channel_counts(model: nn.Module, variables, input_shape, test_gate) -> Dict[str, Any]:
  """:func:`counts` for channel-gated CNNs (parameters, MACs, kept channels)."""
  if input_shape is None:
    raise ValueError("counts needs input_shape=(H, W, C) for a CNN")
  keep = channel_keep(model, variables["params"], test_gate)
  purged_model, purged = _purge_channels(model, variables, test_gate)
  dense = layer_table(model.clone(gated=False), input_shape)
  small = layer_table(purged_model, input_shape)
  layers = density.gated_layers(_unwrap(variables["params"]))
  dense_sparse = sum(l.num_sparsifiable for l in layers.values())
  purged_sparse = 0
  for name, layer in layers.items():  # kept channels x (sliced group + bias share)
    k_small, k_dense = small[name]["kernel"], dense[name]["kernel"]
    bias_share = layer.group_size - math.prod(k_dense[:-1])
    purged_sparse += k_small[-1] * (math.prod(k_small[:-1]) + bias_share)
  count = lambda table: sum(math.prod(row["kernel"]) + row["bias"]
                            for row in table.values())
  macs = lambda table: sum(row["macs"] for row in table.values())
  stages: Dict[str, List[str]] = {}
  if "stem" in keep:
    stages["stem"] = [str(len(keep["stem"][0]))]
  for name, (idx, _) in keep.items():
    if name != "stem":  # blocks "stage{s}_block{b}/conv{i}" by stage; VGG "conv{i}"
      stage = name.split("_")[0] if "/" in name else "convs"
      stages.setdefault(stage, []).append(str(len(idx)))
  test_time_macs = sum(row["macs"] * (len(keep[n][0]) / row["kernel"][-1] if n in keep
                                       else 1) for n, row in dense.items())
  return {
      "dense_params": count(dense), "dense_macs": macs(dense),
      "test_time_macs": int(round(test_time_macs)),
      "purged_params": count(small), "purged_macs": macs(small),
      "dense_sparsifiable": dense_sparse, "purged_sparsifiable": purged_sparse,
      "purged_density": purged_sparse / max(dense_sparse, 1),
      "architecture": "; ".join(f"{k}: " + "-".join(v) for k, v in stages.items()),
      "kept_channels": {n: len(idx) for n, (idx, _) in keep.items()},
  }


def layer_table(model: nn.Module, input_shape: Sequence[int]) -> Dict[str, Dict[str, Any]]:
  """Every convolution and dense layer of ``model`` on one ``input_shape`` example:
  ``{path: {"kind", "kernel" (shape), "bias" (size), "positions", "macs"}}``, MACs
  per example ``positions * prod(kernel)``. Shapes only: nothing is computed."""
  from l0jax import layers as l0layers  # pylint: disable=g-import-not-at-top
  table: Dict[str, Dict[str, Any]] = {}
  conv_types = (nn.Conv, l0layers.L0Conv, l0layers.ConvBN)

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == "__call__" and isinstance(
        module, conv_types + (nn.Dense, l0layers.L0Dense)):
      x = args[0]
      path = "/".join(module.scope.path)
      if isinstance(module, conv_types):
        k = tuple(module.kernel_size)
        strides = module.strides
        strides = (strides,) * len(k) if isinstance(strides, int) else tuple(strides or (1,) * len(k))
        spatial = x.shape[1:-1]
        if module.padding == "SAME":
          out_sp = [-(-n // st) for n, st in zip(spatial, strides)]
        else:
          out_sp = [(n - kk) // st + 1 for n, kk, st in zip(spatial, k, strides)]
        kernel = k + (x.shape[-1], module.features)
        positions = math.prod(out_sp)
      else:
        kernel, positions = (x.shape[-1], module.features), math.prod(x.shape[1:-1])
      has_bias = getattr(module, "use_bias", True) or isinstance(module, l0layers.ConvBN)
      table[path] = {"kind": "conv" if isinstance(module, conv_types) else "dense",
                     "kernel": tuple(int(d) for d in kernel),
                     "bias": int(kernel[-1]) if has_bias else 0,
                     "positions": int(positions),
                     "macs": int(positions) * math.prod(kernel)}
    return out

  x = jax.ShapeDtypeStruct((1,) + tuple(input_shape), jnp.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda x: model.init({"params": jax.random.key(0),
                                         "gates": jax.random.key(0)}, x,
                                        deterministic=True), x)
  return table


# ------------------------------------------------------------------------------------
# Export: orbax for the arrays, JSON for the architecture.
# ------------------------------------------------------------------------------------

class ExportError(UserError, ValueError):
  """A saved purged model that is corrupt or incomplete, or a path that is not one."""


def is_export(path: Union[str, os.PathLike]) -> bool:
  """True when ``path`` holds a model :func:`save` wrote (its ``spec.json`` says so)."""
  try:
    with open(os.path.join(os.fspath(path), SPEC_FILE)) as f:
      spec = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(spec, dict) and spec.get("format") == SPEC_FORMAT


def check_export_path(path: Union[str, os.PathLike], overwrite: bool = False) -> None:
  """Raises unless :func:`save` may write ``path``: an existing ``path`` must be a
  previous export (and ``overwrite`` True), and its folder writable."""
  path = os.path.abspath(os.fspath(path))
  if os.path.lexists(path):
    if not is_export(path):
      raise ExportError(
          f"{path} exists and is not a saved purged model: refusing to replace it "
          "(overwrite only replaces a previous export); choose another path")
    if not overwrite:
      raise FileExistsError(
          f"{path} already exists; refusing to overwrite it. Pass overwrite=True "
          f"(--overwrite on the command line) to replace it.")
  parent = os.path.dirname(path)
  while not os.path.isdir(parent) and os.path.dirname(parent) != parent:
    parent = os.path.dirname(parent)
  try:  # a probe that leaves nothing behind (permission bits do not bind root)
    os.rmdir(tempfile.mkdtemp(prefix=".l0jax-probe-", dir=parent))
  except OSError as e:
    raise ExportError(f"cannot write {path}: {e.strerror} in {parent}") from None


def _digest(spec: Mapping[str, Any], flat: Mapping[str, Any]) -> str:
  """sha256 of the spec (without its checksum) and every array's path, dtype, shape and
  bytes (``flat``: ``'a/b/leaf' -> array``)."""
  h = hashlib.sha256(json.dumps({k: v for k, v in spec.items() if k != CHECKSUM_KEY},
                                sort_keys=True).encode())
  for key in sorted(flat):
    a = np.asarray(flat[key])
    h.update(f"{key}:{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def save(path: Union[str, os.PathLike], purged_model, params, *,
         overwrite: bool = False, input_spec: Optional[Mapping[str, Any]] = None) -> str:
  """Writes a purged model to the directory ``path``: ``spec.json`` + orbax params.

  ``spec.json`` holds the op sequence, every array's shape and dtype, a sha256 of all
  of it (verified by :func:`load`) and, when given, the input the model expects.

  Args:
    path: directory to create.
    purged_model: a :class:`PurgedModel`, its :meth:`~PurgedModel.spec` dict or a
      sequence of :class:`Op`.
    params: its parameters (or ``{"params": ...}``).
    overwrite: replace ``path`` if it holds a previous export (never anything else).
    input_spec: the input format, recorded as ``spec["input"]``, e.g.
      ``{"shape": [28, 28, 1], "dtype": "float32", "range": [0.0, 1.0]}`` (one
      example's shape; the model takes a batch ``(n, 28, 28, 1)``).

  Returns:
    The absolute path written.

  Raises:
    FileExistsError: if ``path`` exists and ``overwrite`` is False.
    ExportError: if ``path`` exists but is not an export, or cannot be written.
  """
  import orbax.checkpoint as ocp  # heavy; only export needs it

  path = os.path.abspath(os.fspath(path))
  check_export_path(path, overwrite)
  if has_channel_graph(purged_model):  # a purged CNN: its variables, by path
    if not isinstance(params, Mapping) or "params" not in params:
      raise ValueError("a purged CNN is saved with its variables "
                       "({'params': ..., 'batch_stats': ...})")
    flat = _path_dict(params)
    spec = _model_spec(purged_model)
    spec["arrays"] = {k: {"shape": list(a.shape), "dtype": str(a.dtype)}
                      for k, a in flat.items()}
  else:
    ops = _ops_from_spec(purged_model)
    params = _unwrap(params)
    names = [op.name for op in ops if op.kind in LINEAR_KINDS]
    if set(params) != set(names):
      raise ValueError(f"params layers {sorted(params)} do not match the model's "
                       f"{sorted(names)}")
    flat = {f"{name}/{leaf}": np.asarray(value)
            for name in names for leaf, value in params[name].items()}
    spec = _spec_dict(ops)
    spec["params"] = {
        name: {leaf: {"shape": list(np.shape(a)), "dtype": str(np.asarray(a).dtype)}
               for leaf, a in params[name].items()} for name in names}
  if input_spec is not None:
    spec["input"] = json.loads(json.dumps(dict(input_spec)))
  spec[CHECKSUM_KEY] = _digest(spec, flat)
  # orbax refuses zero-size arrays (zero-width layers); spec.json records them.
  stored = _nest({k: a for k, a in flat.items() if a.size})

  parent = os.path.dirname(path)
  os.makedirs(parent, exist_ok=True)
  tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
  os.makedirs(tmp)
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      checkpointer.save(os.path.join(tmp, PARAMS_DIR), stored)
      checkpointer.wait_until_finished()
    with open(os.path.join(tmp, SPEC_FILE), "w") as f:  # last: marks a complete export
      json.dump(spec, f, indent=1)
    if os.path.lexists(path):
      if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
      else:
        os.remove(path)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)
  return path


def read_spec(path: Union[str, os.PathLike]) -> Dict[str, Any]:
  """The ``spec.json`` of a model :func:`save` wrote: its ops, array shapes and dtypes,
  checksum and (``"input"``) the input it expects."""
  spec_path = os.path.join(os.path.abspath(os.fspath(path)), SPEC_FILE)
  if not os.path.isfile(spec_path):
    raise FileNotFoundError(f"{os.path.dirname(spec_path)} is not a saved purged model "
                            f"(no {SPEC_FILE})")
  try:
    with open(spec_path) as f:
      spec = json.load(f)
  except ValueError as e:
    raise ExportError(f"{spec_path} is unreadable ({type(e).__name__}: {e}): the export "
                      "is corrupt; export the model again") from None
  if not isinstance(spec, dict):
    raise ExportError(f"{spec_path} does not hold a purged-model spec: export the model "
                      "again")
  return spec


def load(path: Union[str, os.PathLike]
         ) -> Tuple[PurgedModel, Dict[str, Dict[str, jax.Array]]]:
  """Reads what :func:`save` wrote: ``(purged_model, params)``.

  ``purged_model.apply({"params": params}, x)`` gives the outputs it gave before
  saving. Arrays are restored onto the first local device. The checksum in
  ``spec.json`` is verified: a corrupt or incomplete export raises :class:`ExportError`
  naming the path (an export without a checksum, from an older l0jax, loads with a
  warning).
  """
  import orbax.checkpoint as ocp

  path = os.path.abspath(os.fspath(path))
  spec = read_spec(path)
  spec_path = os.path.join(path, SPEC_FILE)
  try:
    if "model" in spec:  # a purged CNN: (model, variables)
      model = _model_from_spec(spec)
      shapes = {key: (tuple(info["shape"]), jnp.dtype(info["dtype"]))
                for key, info in spec["arrays"].items()}
    else:
      model = PurgedModel.from_spec(spec)
      shapes = {f"{name}/{leaf}": (tuple(info["shape"]), jnp.dtype(info["dtype"]))
                for name, layer in spec["params"].items() for leaf, info in layer.items()}
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ExportError(f"{spec_path} is unreadable ({type(e).__name__}: "
                      f"{str(e).splitlines()[0] if str(e) else ''}): the export is "
                      "corrupt; export the model again") from None
  sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = {k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
            for k, (shape, dtype) in shapes.items() if math.prod(shape)}
  empty = {k: jnp.zeros(shape, dtype) for k, (shape, dtype) in shapes.items()
           if not math.prod(shape)}
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(os.path.join(path, PARAMS_DIR), _nest(target))
  except Exception as e:  # pylint: disable=broad-except
    raise ExportError(f"{os.path.join(path, PARAMS_DIR)} is unreadable "
                      f"({type(e).__name__}): the export is corrupt or incomplete; "
                      "export the model again") from None
  flat = {**_path_dict_keep(restored), **empty}
  if CHECKSUM_KEY not in spec:
    warnings.warn(f"{path} has no checksum (saved by an older l0jax): loaded unverified")
  elif _digest(spec, flat) != spec[CHECKSUM_KEY]:
    raise ExportError(f"{path} is corrupt: its arrays or spec.json do not match the "
                      "checksum recorded when it was saved; export the model again")
  params = _nest(flat)
  if "model" not in spec:  # layers without arrays (never stored) still appear
    params = {name: dict(params.get(name, {})) for name in spec["params"]}
  return model, params
