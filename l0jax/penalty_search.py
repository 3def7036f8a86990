"""Penalty search for the penalized baseline: geometric bisection of a fixed penalty.

The penalized baseline trains ``loss + lambda * density`` with a fixed ``lambda``; to
compare it with a constrained run at the same density, :func:`bisect_penalty` searches
``lambda`` by repeated runs.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable, NamedTuple

__all__ = ["BisectionResult", "bisect_penalty"]


class BisectionResult(NamedTuple):
  """``penalty``: the chosen lambda; ``history``: every ``(lambda, value)`` evaluated."""
  penalty: float
  history: tuple


STEPS = ("geometric", "interpolate")


def bisect_penalty(run_fn: Callable[[float], float], target: float, lo: float, hi: float,
                   *, tol: float = 1e-3, max_iters: int = 30,
                   step: str = "geometric") -> BisectionResult:
  """Geometric bisection for ``lambda > 0`` with ``run_fn(lambda) ~= target``.

  ``run_fn`` (e.g. a penalized training run returning its density) must be decreasing in
  ``lambda``. Evaluates both ends (raises ``ValueError`` unless
  ``run_fn(hi) - tol <= target <= run_fn(lo) + tol``), then up to ``max_iters`` midpoints
  ``m = sqrt(lo * hi)``: ``run_fn(m) > target`` moves ``lo`` to ``m``, otherwise ``hi``.
  Stops at the first value within ``tol`` of the target; if none is, warns and returns the
  closest one seen.

  ``step="interpolate"`` replaces the midpoint by the bracket's linear interpolation in
  ``(log lambda, value)`` (regula falsi with the Illinois rule: an end kept twice in a
  row has its distance to the target halved in the next interpolation), kept at least
  5% of the bracket's log-width away from either end; the bracket still shrinks every
  step, and a value that falls smoothly with ``log lambda`` needs far fewer runs.
  """
  if step not in STEPS:
    raise ValueError(f"step={step!r}: use one of {STEPS}")
  lo, hi, target, tol = float(lo), float(hi), float(target), float(tol)
  if not (0 < lo < hi and math.isfinite(hi)):
    raise ValueError(f"need 0 < lo < hi < inf, got lo={lo}, hi={hi}")
  if not tol > 0:
    raise ValueError(f"tol must be > 0, got {tol}")
  if int(max_iters) < 1:
    raise ValueError(f"max_iters must be >= 1, got {max_iters}")
  history = []

  def run(lam):
    value = float(run_fn(lam))
    if not math.isfinite(value):
      raise ValueError(f"run_fn({lam}) returned {value}")
    history.append((lam, value))
    return value

  value_lo, value_hi = run(lo), run(hi)
  if not value_hi - tol <= target <= value_lo + tol:
    raise ValueError(
        f"the bracket [{lo}, {hi}] gives values [{value_lo}, {value_hi}] which do not "
        f"contain the target {target} (run_fn must decrease in lambda)")
  for lam, value in history:
    if abs(value - target) <= tol:
      return BisectionResult(lam, tuple(history))
  f_lo, f_hi = value_lo - target, value_hi - target  # > 0 and < 0 in the bracket
  kept = None  # the end kept by the last step, for the Illinois rule
  for _ in range(int(max_iters)):
    x_lo, x_hi = math.log(lo), math.log(hi)
    if step == "interpolate" and f_lo > 0 > f_hi:
      frac = min(0.95, max(0.05, f_lo / (f_lo - f_hi)))
      mid = math.exp(x_lo + frac * (x_hi - x_lo))
    else:
      mid = math.sqrt(lo * hi)
    value = run(mid)
    if abs(value - target) <= tol:
      return BisectionResult(mid, tuple(history))
    if value > target:
      lo, f_lo = mid, value - target
      if kept == "hi":
        f_hi /= 2
      kept = "hi"
    else:
      hi, f_hi = mid, value - target
      if kept == "lo":
        f_lo /= 2
      kept = "lo"
  best = min(history, key=lambda h: abs(h[1] - target))
  warnings.warn(
      f"bisect_penalty: no value within tol={tol} of {target} after {max_iters} "
      f"iterations; returning the closest, lambda={best[0]} -> {best[1]}")
  return BisectionResult(best[0], tuple(history))
