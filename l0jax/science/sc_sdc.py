"""SC-SDC: the dense twin of a sparse MLP with the same active weights per layer.

Tessera, Hooker & Rosman (arXiv 2102.01670) compare a sparse network with a dense one
of the *same capacity*: as many active connections per layer, the same initialisation
family. For a dense stack ``in -> h_1 -> ... -> h_{L-1} -> out`` layer ``l`` has
``h_{l-1} * h_l`` weights (biases are not counted), so a layer's count depends on its
input *and* output width and the widths are solved as a chain, in order::

    h_0 = in (fixed, e.g. 784)
    h_l = max(1, round(A_l / h_{l-1}))          for l = 1 .. L-1
    h_L = out (fixed, e.g. 10 classes)

where ``A_l`` is the sparse layer's active-weight count. The last layer has no free
width left: its count is ``h_{L-1} * out``, whatever ``A_L`` was; together with the
rounding of every width, that mismatch is reported per layer (:class:`DenseTwin`), never
hidden. Rounding ``h_l`` also shifts the next layer's target ratio; the chain uses the
rounded width, so each error is the honest one of the network that gets built.

The twin of an l0jax MLP is the same model ungated: ``--config.gated=False
--config.mlp_features=(h_1, ..., h_{L-1})`` (:func:`twin_config_overrides`); gated and
plain dense layers share the ``lecun_normal`` kernel initialiser (unless
``rescale_init`` is on), which is the paper's "same initialisation family".
"""

from __future__ import annotations

import itertools
import math
from typing import Dict, NamedTuple, Sequence, Tuple

import numpy as np

from l0jax import density
from l0jax.errors import UserError

__all__ = [
    "SCSDCError",
    "DenseTwin",
    "dense_twin",
    "active_weights_from_densities",
    "active_weights_from_kept_inputs",
    "dense_twin_of_gated_mlp",
    "dense_twin_from_eval_json",
    "twin_config_overrides",
]


class SCSDCError(UserError, ValueError):
  """Bad input to an SC-SDC function (negative counts, lengths that do not match)."""


class DenseTwin(NamedTuple):
  """A dense stack and how well it matches the sparse network's active weights.

  Attributes:
    widths: ``(in, h_1, ..., h_{L-1}, out)``.
    target_weights: ``A_l``, the sparse network's active weights per layer.
    twin_weights: ``h_{l-1} * h_l``, the dense twin's weights per layer.
    relative_error: ``(twin - target) / target`` per layer (0 where both are 0).
  """
  widths: Tuple[int, ...]
  target_weights: Tuple[int, ...]
  twin_weights: Tuple[int, ...]
  relative_error: Tuple[float, ...]

  @property
  def hidden(self) -> Tuple[int, ...]:
    return self.widths[1:-1]

  @property
  def max_abs_relative_error(self) -> float:
    return max(abs(e) for e in self.relative_error)


def _check_count(name: str, value, minimum: int = 0) -> int:
  if isinstance(value, float) and not value.is_integer():
    raise SCSDCError(f"{name}={value!r} must be a whole number")
  if int(value) < minimum:
    raise SCSDCError(f"{name}={value!r} must be >= {minimum}")
  return int(value)


SOLVES = ("chain", "balanced")


def dense_twin(active_weights: Sequence[int], in_features: int, out_features: int,
               solve: str = "chain") -> DenseTwin:
  """The dense widths with (about) ``active_weights[l]`` weights in layer ``l``.

  ``solve="chain"`` solves the widths in order (module doc): every layer but the last
  matches up to rounding and the last takes the whole mismatch of the fixed output
  width. ``solve="balanced"`` spreads it: the integer hidden widths minimising
  ``sum_l log(twin_l / A_l)^2`` (every layer's relative error weighs the same), found
  from the least-squares solution in log space, the best of its floor/ceil roundings
  and the chain's widths, then improved one unit at a time until no single width
  change lowers the sum. A sparse MLP whose first layer keeps few of its inputs has a
  chain twin with a tiny first hidden layer and a huge second one (its last layer then
  has many times the sparse one's weights); the balanced twin trades that for smaller
  errors in every layer.

  Args:
    active_weights: ``A_1 .. A_L`` (``L >= 1``), e.g. from
      :func:`active_weights_from_densities` or :func:`active_weights_from_kept_inputs`.
    in_features: the fixed input width (784 for Fashion-MNIST).
    out_features: the fixed output width (the number of classes).
    solve: ``"chain"`` or ``"balanced"``.
  """
  targets = tuple(_check_count(f"active_weights[{i}]", a)
                  for i, a in enumerate(active_weights))
  if not targets:
    raise SCSDCError("active_weights is empty: give one count per layer")
  if solve not in SOLVES:
    raise SCSDCError(f"solve={solve!r}: use one of {SOLVES}")
  widths = [_check_count("in_features", in_features, 1)]
  for a in targets[:-1]:
    widths.append(max(1, int(math.floor(a / widths[-1] + 0.5))))  # half rounds up
  widths.append(_check_count("out_features", out_features, 1))
  if solve == "balanced" and len(targets) > 1:
    if 0 in targets:
      raise SCSDCError("solve='balanced' needs every layer to have an active weight "
                       f"(got {targets}); a dead layer has no relative error to balance")
    widths = _balanced_widths(targets, widths)
  twin = tuple(widths[i] * widths[i + 1] for i in range(len(targets)))
  errors = tuple(0.0 if t == 0 and w == 0 else (w - t) / t if t else math.inf
                 for t, w in zip(targets, twin))
  return DenseTwin(tuple(widths), targets, twin, errors)


def _log_error(targets, widths) -> float:
  return sum(math.log(widths[i] * widths[i + 1] / t) ** 2 for i, t in enumerate(targets))


def _balanced_widths(targets, chain_widths):
  """:func:`dense_twin`'s balanced widths (``chain_widths`` is one candidate)."""
  n_hidden, first, last = len(targets) - 1, chain_widths[0], chain_widths[-1]
  # Layer l: y_{l-1} + y_l = log A_l, with y_0 = log in and y_L = log out fixed.
  system = np.zeros((len(targets), n_hidden))
  rhs = np.log(np.asarray(targets, np.float64))
  for l in range(len(targets)):
    if l > 0:
      system[l, l - 1] = 1.0
    if l < n_hidden:
      system[l, l] = 1.0
  rhs[0] -= math.log(first)
  rhs[-1] -= math.log(last)
  y = np.exp(np.linalg.lstsq(system, rhs, rcond=None)[0])
  choices = [sorted({max(1, int(math.floor(v))), max(1, int(math.ceil(v)))}) for v in y]
  candidates = [list(chain_widths)]
  if n_hidden <= 10:  # 2^10 roundings at most
    candidates += [[first, *c, last] for c in itertools.product(*choices)]
  best = min(candidates, key=lambda w: _log_error(targets, w))
  best_error = _log_error(targets, best)
  improved = True
  while improved:  # one unit at a time, to a local minimum over the integers
    improved = False
    for i in range(1, n_hidden + 1):
      for step in (-1, 1):
        trial = list(best)
        trial[i] += step
        if trial[i] < 1:
          continue
        error = _log_error(targets, trial)
        if error < best_error:
          best, best_error, improved = trial, error, True
  return best


def active_weights_from_densities(widths: Sequence[int],
                                  densities: Sequence[float]) -> Tuple[int, ...]:
  """``round(density_l * widths[l] * widths[l+1])``: the active weights of a stack
  ``widths = (in, h_1, ..., out)`` at per-layer densities (fractions of weights kept)."""
  if len(widths) != len(densities) + 1:
    raise SCSDCError(f"{len(widths)} widths need {len(widths) - 1} densities, got "
                     f"{len(densities)}")
  for d in densities:
    if not 0.0 <= d <= 1.0:
      raise SCSDCError(f"density {d!r} must be in [0, 1]")
  return tuple(int(math.floor(d * widths[i] * widths[i + 1] + 0.5))
               for i, d in enumerate(densities))


def active_weights_from_kept_inputs(kept_inputs: Sequence[int],
                                    out_features: int) -> Tuple[int, ...]:
  """Active weights of an input-unit-gated MLP (l0jax's MLP) from its kept inputs.

  Layer ``l`` keeps ``k_l`` inputs and its outputs are the next layer's kept inputs
  (a closed input of layer ``l+1`` makes that output of layer ``l`` dead), so it has
  ``k_l * k_{l+1}`` active weights, the last ``k_L * out_features``: the purged model
  (``l0jax.purge``) counts the same.
  """
  kept = [_check_count(f"kept_inputs[{i}]", k) for i, k in enumerate(kept_inputs)]
  if not kept:
    raise SCSDCError("kept_inputs is empty: give one count per gated layer")
  outs = kept[1:] + [_check_count("out_features", out_features, 1)]
  return tuple(k * o for k, o in zip(kept, outs))


def dense_twin_of_gated_mlp(params, in_features: int, out_features: int,
                            test_gate: str = "median", solve: str = "chain") -> DenseTwin:
  """The dense twin of a trained input-unit-gated MLP (``l0jax.models.MLP``) from its
  test-time gates: kept inputs per layer (:func:`l0jax.density.density_report`, layers
  in forward order) -> :func:`active_weights_from_kept_inputs` -> :func:`dense_twin`."""
  kinds = {name: layer.kind for name, layer in density.gated_layers(params).items()}
  if not kinds or any(k != density.INPUTS for k in kinds.values()):
    raise SCSDCError(f"dense_twin_of_gated_mlp needs an MLP gated on its input units "
                     f"(l0jax.models.MLP); got gate kinds {kinds}: compute the active "
                     f"weights per layer and call dense_twin")
  report = density.density_report(params, test_gate)
  kept = [int(report.kept_units[name]) for name in report.kept_units]
  return dense_twin(active_weights_from_kept_inputs(kept, out_features), in_features,
                    out_features, solve)


def dense_twin_from_eval_json(result, num_classes: int, solve: str = "chain"):
  """``(twin, layer names)`` of an input-unit-gated MLP from its ``eval.json`` dict:
  ``kept_units`` per layer (forward order) and the first layer's ``total_units`` as the
  input width."""
  if "kept_units" not in result or "total_units" not in result:
    raise SCSDCError("eval.json has no kept_units/total_units: evaluate a gated run "
                     "with eval.py first")
  names = list(result["kept_units"])
  kept = [result["kept_units"][n] for n in names]
  targets = active_weights_from_kept_inputs(kept, num_classes)
  return dense_twin(targets, result["total_units"][names[0]], num_classes, solve), names


def twin_config_overrides(twin: DenseTwin) -> Dict[str, str]:
  """The ``--config.FIELD=VALUE`` overrides that train ``twin`` with l0jax's MLP."""
  return {"gated": "False", "mlp_features": str(tuple(twin.hidden))}
