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


def bisect_penalty(run_fn: Callable[[float], float], target: float, lo: float, hi: float,
                   *, tol: float = 1e-3, max_iters: int = 30) -> BisectionResult:
  """Geometric bisection for ``lambda > 0`` with ``run_fn(lambda) ~= target``.

  ``run_fn`` (e.g. a penalized training run returning its density) must be decreasing in
  ``lambda``. Evaluates both ends (raises ``ValueError`` unless
  ``run_fn(hi) - tol <= target <= run_fn(lo) + tol``), then up to ``max_iters`` midpoints
  ``m = sqrt(lo * hi)``: ``run_fn(m) > target`` moves ``lo`` to ``m``, otherwise ``hi``.
  Stops at the first value within ``tol`` of the target; if none is, warns and returns the
  closest one seen.
  """
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
  for _ in range(int(max_iters)):
    mid = math.sqrt(lo * hi)
    value = run(mid)
    if abs(value - target) <= tol:
      return BisectionResult(mid, tuple(history))
    if value > target:
      lo = mid
    else:
      hi = mid
  best = min(history, key=lambda h: abs(h[1] - target))
  warnings.warn(
      f"bisect_penalty: no value within tol={tol} of {target} after {max_iters} "
      f"iterations; returning the closest, lambda={best[0]} -> {best[1]}")
  return BisectionResult(best[0], tuple(history))
