"""Gates on any params pytree, chosen by path: no layer to rewrite, no naming rule.

A :class:`GateSpec` says which parameters are gated (a regex on their path) and along
which axes the gates run; everything else about the model stays as it is. Works on any
pytree of arrays: Flax Linen params dicts, Flax NNX states (``nnx.split`` /
``nnx.state``), Equinox modules, plain dicts::

    specs = [GateSpec(r"Conv_\\d/kernel", axis=-1, shared={"bias": -1}),  # channels
             GateSpec(r"Dense_0/kernel", axis=0)]                          # inputs
    log_alphas = init_gates(key, params, specs, droprate_init=0.5)
    def loss(params, log_alphas, key, x, y):
      gated = apply_gates(params, log_alphas, specs, key=key)    # training
      return cross_entropy(model.apply({"params": gated}, x), y)
    gated = apply_gates(params, log_alphas, specs, deterministic=True)  # test time

    layers = l0jax.density.gated_layers(params, specs, log_alphas)
    l0jax.density.expected_density(layers)     # the constraint; see l0jax.density

**Paths** are the key names of a leaf joined by ``/`` (dict keys, attribute names,
sequence indices): ``"Conv_0/kernel"`` in a Linen dict, ``"layers/0/weight"`` in an
Equinox module. The trailing ``value`` attribute of a Flax NNX variable is left out,
so ``"conv1/kernel"`` names the same parameter in a Linen dict and an NNX state. A
pattern must match the whole path (``re.fullmatch``).

**Gates** (the ``log_alphas`` pytree) are a dict from each matched path to its
``log_alpha`` array, whose shape is the matched leaf's shape along ``axis``, in axis
order: a ``(3, 3, 16, 32)`` kernel with ``axis=-1`` has 32 gates (one per output
channel); an ``nn.scan`` stack of kernels ``(4, 64, 64)`` with ``axis=(0, 1)`` has
``(4, 64)`` gates (input units, per stacked layer); ``axis=None`` gates every element.
A gate scales its whole slice of the leaf (and the same slice of every ``shared``
parameter), so a closed gate is an exact zero there.

**Noise**: :func:`apply_gates` draws one gate sample per call (per batch). Per-example
gates need the gates on the activations instead of the weights (a different gate per
example cannot be folded into one weight tensor): multiply the activations by
:func:`l0jax.gates.gate` (see ``examples/attention_heads.py``), or use
:mod:`l0jax.layers` / :mod:`l0jax.nnx`.

Errors in specs (no match, a leaf matched twice, a shared parameter missing or of the
wrong size) raise :class:`SpecError`, with the paths that were there.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from l0jax import gates
from l0jax.errors import UserError

__all__ = ["GateSpec", "SpecError", "apply_gates", "init_gates", "keep_masks",
           "match", "path_name"]

Axes = Union[None, int, Sequence[int]]
PyTree = Any


class SpecError(UserError, ValueError):
  """A gate spec that does not fit the params (message names the paths)."""


@dataclasses.dataclass(frozen=True)
class GateSpec:
  """Which parameters a set of gates scales.

  Attributes:
    pattern: regex matched against the whole path of every leaf (``re.fullmatch``).
      Every matched leaf gets its own gates.
    axis: the leaf axes the gates run along (int or tuple, negative counts from the
      end), e.g. ``-1`` for the output channels of a ``(..., in, out)`` kernel, ``-2``
      (or ``0`` for a 2-D kernel) for its input units, ``(0, -2)`` for input units of a
      stack of layers; ``None`` gates every element (unstructured).
    shared: parameters that share each gate, ``{path: axis}`` (or pairs): the gate
      of a channel also scales that channel's bias or BatchNorm scale and shift.
      ``path`` without ``/`` names a sibling of the matched leaf (``"bias"``);
      otherwise it is a template expanded with the pattern's groups (``\\1``,
      ``\\g<name>``), e.g. ``GateSpec(r"(.*)/conv(\\d)/kernel", -1,
      shared={r"\\1/bn\\2/scale": -1, r"\\1/bn\\2/bias": -1})``. Its ``axis`` must
      pick dimensions of the gates' shape.
    droprate_init: initial drop probability of these gates; ``None`` uses
      :func:`init_gates`'s argument.
  """
  pattern: str
  axis: Axes = -1
  shared: Any = ()
  droprate_init: Optional[float] = None

  def __post_init__(self):
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise SpecError(f"GateSpec pattern {self.pattern!r} is not a regex: {e}") from e
    shared = self.shared.items() if isinstance(self.shared, Mapping) else self.shared
    shared = tuple((str(path), _as_axes(axis)) for path, axis in shared)
    object.__setattr__(self, "axis", _as_axes(self.axis))
    object.__setattr__(self, "shared", shared)


def _as_axes(axis: Axes):
  if axis is None:
    return None
  if isinstance(axis, int):
    return (axis,)
  return tuple(int(a) for a in axis)


# ------------------------------------------------------------------------------------
# Paths
# ------------------------------------------------------------------------------------

def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def path_name(path) -> str:
  """``"a/b/kernel"`` for a key path; a trailing NNX ``value`` attribute is dropped."""
  keys = list(path)
  if len(keys) > 1 and isinstance(keys[-1], jax.tree_util.GetAttrKey) and (
      keys[-1].name in ("value", "raw_value")):
    keys = keys[:-1]
  return "/".join(_key_name(k) for k in keys)


def natural_key(name: str):
  """Sort key of the natural order: ``block_2`` before ``block_10``."""
  return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _array_leaves(params) -> Dict[str, Any]:
  """Path name -> array leaf (non-array leaves, e.g. Equinox's activations, skipped)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      name = path_name(path)
      if name in out:
        raise SpecError(f"two leaves share the path name {name!r}")
      out[name] = leaf
  return out


# ------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Gated:
  """One gated leaf: where its gates go and how much each covers (static, hashable).

  ``axes`` are the gated leaf's (non-negative) gate axes, ``None`` for one gate per
  element; ``shared`` maps each path sharing the gates to its axes; ``group_size`` is
  the number of parameters one gate scales (its slice of the leaf and of every shared
  parameter); ``shape`` is the leaf's shape and ``gate_shape`` the gates'.
  """
  path: str
  shape: Tuple[int, ...]
  axes: Optional[Tuple[int, ...]]
  gate_shape: Tuple[int, ...]
  shared: Tuple[Tuple[str, Optional[Tuple[int, ...]]], ...]
  group_size: int
  droprate_init: Optional[float]


def _normalise_axes(axes, shape, what: str):
  if axes is None:
    return None
  ndim = len(shape)
  out = []
  for a in axes:
    if not -ndim <= a < ndim:
      raise SpecError(f"{what}: axis {a} is out of range for shape {tuple(shape)}")
    out.append(a % ndim)
  if len(set(out)) != len(out):
    raise SpecError(f"{what}: repeated axis in {axes}")
  return tuple(sorted(out))


def _gate_shape(shape, axes):
  return tuple(shape) if axes is None else tuple(shape[a] for a in axes)


def match(params, specs: Sequence[GateSpec]) -> Dict[str, Gated]:
  """Resolves ``specs`` on ``params``: ``{path: Gated}``, paths naturally sorted.

  Raises :class:`SpecError` when a spec matches no leaf, a leaf is matched (as gated
  or shared) more than once, or a shared parameter is missing or does not fit.
  """
  leaves = _array_leaves(params)
  found: Dict[str, Gated] = {}
  owner: Dict[str, str] = {}
  for spec in specs:
    if not isinstance(spec, GateSpec):
      raise SpecError(f"expected GateSpec objects, got {spec!r}")
    regex = re.compile(spec.pattern)
    hits = [(name, m) for name in leaves if (m := regex.fullmatch(name))]
    if not hits:
      raise SpecError(f"GateSpec pattern {spec.pattern!r} matches no parameter; "
                      f"the paths are {sorted(leaves, key=natural_key)}")
    for name, m in hits:
      shape = tuple(leaves[name].shape)
      axes = _normalise_axes(spec.axis, shape, f"gated parameter {name!r}")
      gate_shape = _gate_shape(shape, axes)
      group = math.prod(shape) // max(math.prod(gate_shape), 1)
      shared = []
      for template, shared_axes in spec.shared:
        path = _shared_path(name, m, template)
        if path not in leaves:
          raise SpecError(f"parameter {path!r} (shared with {name!r} by "
                          f"{template!r}) does not exist")
        s_shape = tuple(leaves[path].shape)
        s_axes = _normalise_axes(shared_axes, s_shape, f"shared parameter {path!r}")
        if _gate_shape(s_shape, s_axes) != gate_shape:
          raise SpecError(
              f"shared parameter {path!r} of shape {s_shape} has shape "
              f"{_gate_shape(s_shape, s_axes)} along axis {shared_axes}, but the "
              f"gates of {name!r} have shape {gate_shape}")
        shared.append((path, s_axes))
        group += math.prod(s_shape) // max(math.prod(gate_shape), 1)
      for path in [name] + [p for p, _ in shared]:
        if path in owner:
          raise SpecError(f"parameter {path!r} is gated twice (by the gates of "
                          f"{owner[path]!r} and of {name!r})")
        owner[path] = name
      found[name] = Gated(name, shape, axes, gate_shape, tuple(shared), group,
                          spec.droprate_init)
  return {k: found[k] for k in sorted(found, key=natural_key)}


def _shared_path(name: str, m: re.Match, template: str) -> str:
  if "\\" in template:
    return m.expand(template)
  if "/" not in template:
    return name.rsplit("/", 1)[0] + "/" + template if "/" in name else template
  return template


# ------------------------------------------------------------------------------------
# Init and apply
# ------------------------------------------------------------------------------------

def init_gates(key, params, specs: Sequence[GateSpec], droprate_init: float = 0.5,
               dtype=jnp.float32) -> Dict[str, jax.Array]:
  """``{path: log_alpha}`` for every gated leaf, from ``init_log_alpha``.

  ``log_alpha = logit(1 - droprate) + N(0, 0.01^2)`` with the spec's
  ``droprate_init`` or this one; gated leaf ``k`` (in natural path order) draws from
  ``fold_in(key, k)``.
  """
  out = {}
  for k, (name, g) in enumerate(match(params, specs).items()):
    rate = droprate_init if g.droprate_init is None else g.droprate_init
    out[name] = gates.init_log_alpha(jax.random.fold_in(key, k), g.gate_shape, rate,
                                     dtype)
  return out


def _expand(z, shape, axes):
  """Gates of ``_gate_shape(shape, axes)`` reshaped to broadcast against ``shape``."""
  if axes is None:
    return z
  return z.reshape(tuple(shape[a] if a in axes else 1 for a in range(len(shape))))


def _check_gates(matched: Mapping[str, Gated], log_alphas) -> None:
  if not isinstance(log_alphas, Mapping) or set(log_alphas) != set(matched):
    have = sorted(log_alphas) if isinstance(log_alphas, Mapping) else type(log_alphas)
    raise SpecError(f"log_alphas must be a dict with one entry per gated parameter "
                    f"{list(matched)}, got {have}")
  for name, g in matched.items():
    if tuple(jnp.shape(log_alphas[name])) != g.gate_shape:
      raise SpecError(f"log_alphas[{name!r}] has shape "
                      f"{tuple(jnp.shape(log_alphas[name]))}, the gates of a "
                      f"{g.shape} parameter along axis {g.axes} have {g.gate_shape}")


def _scale_by_path(params, factors: Mapping[str, Any]):
  """``params`` with the leaf at each path in ``factors`` multiplied by its factor."""
  def scale(path, leaf):
    name = path_name(path)
    if name not in factors:
      return leaf
    return (leaf * factors[name]).astype(leaf.dtype)
  return jax.tree_util.tree_map_with_path(scale, params)


def apply_gates(params, log_alphas: Mapping[str, jax.Array],
                specs: Sequence[GateSpec], *, key=None, deterministic: bool = False,
                test_gate: str = "median", beta: float = gates.BETA,
                gamma: float = gates.GAMMA, zeta: float = gates.ZETA, clamp=None):
  """``params`` with every gated (and shared) leaf multiplied by its gates.

  Training (``deterministic=False``, needs ``key``): one hard-concrete sample per
  gate, the noise for all gates drawn as one ``jax.random.uniform(key, (total,))``
  split in natural path order. Test time: :func:`l0jax.gates.deterministic_gate`
  with mode ``test_gate``. Differentiable in ``params`` and ``log_alphas``; works
  under ``jit``. The result has the structure of ``params`` (an NNX state stays a
  state, for ``nnx.merge``).
  """
  matched = match(params, specs)
  _check_gates(matched, log_alphas)
  if not matched:
    return params
  kw = dict(beta=beta, gamma=gamma, zeta=zeta, clamp=clamp)
  names = list(matched)
  if deterministic:
    z = {n: gates.deterministic_gate(log_alphas[n], test_gate, **kw) for n in names}
  else:
    if key is None:
      raise ValueError("apply_gates(..., deterministic=False) needs key= for the noise")
    sizes = [math.prod(matched[n].gate_shape) for n in names]
    dtype = jnp.promote_types(jnp.asarray(log_alphas[names[0]]).dtype, jnp.float32)
    u = gates.uniform(key, sum(sizes), dtype)
    ends = [sum(sizes[:i + 1]) for i in range(len(sizes))]
    z = {}
    for n, start, end in zip(names, [0] + ends[:-1], ends):
      piece = u[start:end].reshape(matched[n].gate_shape)
      z[n] = gates.hard_concrete_from_uniform(piece, log_alphas[n], **kw)
  factors = {}
  leaves = _array_leaves(params)
  for n, g in matched.items():
    factors[n] = _expand(z[n], g.shape, g.axes)
    for path, axes in g.shared:
      factors[path] = _expand(z[n], tuple(leaves[path].shape), axes)
  return _scale_by_path(params, factors)


def keep_masks(params, log_alphas: Mapping[str, jax.Array],
               specs: Sequence[GateSpec], test_gate: str = "median", *,
               beta: float = gates.BETA, gamma: float = gates.GAMMA,
               zeta: float = gates.ZETA, clamp=None):
  """Boolean keep-masks like ``params``: False where a test-time gate is exactly 0.

  Every leaf gets a mask of its own shape (all True where nothing gates it), so
  ``jax.tree.map(lambda p, m: p * m, params, masks)`` zeroes the pruned weights, and
  the masks can be saved or handed to a sparse kernel. Fractional open gates count as
  kept (fold them with :func:`apply_gates` ``deterministic=True``).
  """
  matched = match(params, specs)
  _check_gates(matched, log_alphas)
  kw = dict(beta=beta, gamma=gamma, zeta=zeta, clamp=clamp)
  leaves = _array_leaves(params)
  keep = {}
  for n, g in matched.items():
    is_open = gates.deterministic_gate(log_alphas[n], test_gate, **kw) > 0
    keep[n] = jnp.broadcast_to(_expand(is_open, g.shape, g.axes), g.shape)
    for path, axes in g.shared:
      shape = tuple(leaves[path].shape)
      keep[path] = jnp.broadcast_to(_expand(is_open, shape, axes), shape)

  def mask(path, leaf):
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")):
      return leaf
    name = path_name(path)
    return keep.get(name, jnp.ones(jnp.shape(leaf), bool))
  return jax.tree_util.tree_map_with_path(mask, params)
