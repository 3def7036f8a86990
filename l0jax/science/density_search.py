"""Layer-wise density search: successive halving over per-layer density profiles.

The search space is every profile ``(d_1, ..., d_L)`` with each ``d_l`` from a discrete
grid whose parameter count ``sum_l size_l * d_l`` fits a global budget
(:func:`feasible_profiles`; ``size_l`` = sparsifiable weights of layer ``l``, the budget
``global_density * sum_l size_l`` by :func:`budget_for_density`). A seeded sample of
them (:func:`sample_profiles`) goes through successive halving (Jamieson & Talwalkar,
2016; the SNAS search of Tessera's thesis uses short proxy runs the same way)::

    rung k: every survivor is trained for  min_steps * eta**k  steps and scored;
            the best ceil(n / eta) survive (lower score is better: an error);
    stop when one survivor is left or the next rung would exceed max_steps.

Everything here is pure and deterministic given its inputs: the trainer is the
``evaluate(profile, steps) -> score`` callable (a real proxy run in
``experiments/density_search.py``; a toy objective in the tests), ties are broken by
candidate order, and the sample depends only on ``seed``. With ``log_path`` every
evaluation is appended to a JSON-lines log as soon as it returns, and a rerun with the
same arguments reads the log and skips every ``(profile, rung)`` already there, so an
interrupted search resumes where it stopped and a finished one replays without
training.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from l0jax.errors import UserError

__all__ = [
    "SearchError",
    "Evaluation",
    "SearchResult",
    "budget_for_density",
    "feasible_profiles",
    "sample_profiles",
    "successive_halving",
    "read_log",
]

Profile = Tuple[float, ...]


class SearchError(UserError, ValueError):
  """Bad search input (empty grid, infeasible budget, a log from another search)."""


class Evaluation(NamedTuple):
  """One proxy run: ``profile`` trained ``steps`` steps at ``rung`` scored ``score``."""
  profile: Profile
  rung: int
  steps: int
  score: float


class SearchResult(NamedTuple):
  """The winner, every rung's evaluations (in candidate order) and the compute spent.

  ``steps_spent`` counts trainer steps of the evaluations run in this call (0 on a
  full replay from the log); ``steps_total`` counts all of the search's evaluations.
  """
  best_profile: Profile
  best_score: float
  rungs: Tuple[Tuple[Evaluation, ...], ...]
  steps_spent: int
  steps_total: int


def budget_for_density(layer_sizes: Sequence[int], global_density: float) -> float:
  """The parameter budget ``global_density * sum(layer_sizes)``."""
  if not 0.0 < global_density <= 1.0:
    raise SearchError(f"global_density={global_density!r} must be in (0, 1]")
  return global_density * float(sum(layer_sizes))


def feasible_profiles(layer_sizes: Sequence[int], grid: Sequence[float], budget: float,
                      min_fraction: float = 0.0) -> List[Profile]:
  """Every grid profile with ``min_fraction * budget <= sum(size * d) <= budget``.

  ``min_fraction`` drops profiles that leave most of the budget unused (an upper
  density constraint never forces a run to use it all). Profiles come in
  lexicographic grid order. Raises :class:`SearchError` when none fits.
  """
  grid = tuple(sorted(set(float(d) for d in grid)))
  if not grid or any(not 0.0 < d <= 1.0 for d in grid):
    raise SearchError(f"grid={grid!r} must be a non-empty list of densities in (0, 1]")
  if not layer_sizes or any(int(s) <= 0 for s in layer_sizes):
    raise SearchError(f"layer_sizes={tuple(layer_sizes)!r} must be positive counts")
  sizes = np.asarray(layer_sizes, np.float64)
  out = []
  for profile in itertools.product(grid, repeat=len(sizes)):
    params = float(np.dot(sizes, profile))
    if min_fraction * budget <= params <= budget * (1 + 1e-12):
      out.append(tuple(profile))
  if not out:
    raise SearchError(f"no profile from grid {grid} fits the budget {budget:g} "
                      f"(min_fraction {min_fraction}); add smaller densities or raise "
                      f"the budget")
  return out


def sample_profiles(profiles: Sequence[Profile], num: int, seed: int) -> List[Profile]:
  """``num`` distinct profiles drawn without replacement (all of them if fewer),
  returned in their original order; depends only on ``seed``."""
  if num <= 0:
    raise SearchError(f"num={num} candidates: need at least one")
  if num >= len(profiles):
    return list(profiles)
  picked = np.random.default_rng(seed).choice(len(profiles), size=num, replace=False)
  return [tuple(profiles[i]) for i in sorted(int(i) for i in picked)]


def _key(profile: Sequence[float], rung: int) -> str:
  return json.dumps([[float(d) for d in profile], int(rung)])


def read_log(log_path: str) -> Dict[str, Evaluation]:
  """The evaluations in a search log, keyed by ``(profile, rung)``; {} if none."""
  done: Dict[str, Evaluation] = {}
  if not os.path.exists(log_path):
    return done
  with open(log_path) as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        r = json.loads(line)
        e = Evaluation(tuple(float(d) for d in r["profile"]), int(r["rung"]),
                       int(r["steps"]), float(r["score"]))
      except (ValueError, KeyError, TypeError) as err:
        if not line.endswith("\n"):  # the last write was cut short: redo it
          break
        raise SearchError(f"{log_path}:{number} is not a search log entry ({err}); "
                          f"move the file away to start a new search") from err
      done[_key(e.profile, e.rung)] = e
  return done


def _drop_partial_line(log_path: str) -> None:
  """Cuts a last line that a kill left without its newline, so appends stay whole."""
  if not os.path.exists(log_path):
    return
  with open(log_path, "rb+") as f:
    data = f.read()
    if data and not data.endswith(b"\n"):
      f.truncate(data.rfind(b"\n") + 1)


def _rank(e: Evaluation) -> float:
  """The score to sort by: a diverged run (NaN) ranks last."""
  return math.inf if math.isnan(e.score) else e.score


def successive_halving(candidates: Sequence[Profile],
                       evaluate: Callable[[Profile, int], float], *,
                       min_steps: int, eta: int = 3, max_steps: Optional[int] = None,
                       log_path: Optional[str] = None) -> SearchResult:
  """Successive halving of ``candidates`` (see the module docstring).

  Args:
    candidates: distinct profiles, e.g. from :func:`sample_profiles`.
    evaluate: ``(profile, steps) -> score``, lower is better (e.g. validation error).
    min_steps: steps of the first rung.
    eta: keep the best ``ceil(n / eta)`` of ``n`` per rung (``eta >= 2``).
    max_steps: no rung trains longer (default: rungs until one survivor is left).
    log_path: JSON-lines log to resume from and append to.
  """
  if eta < 2 or min_steps < 1:
    raise SearchError(f"eta={eta} must be >= 2 and min_steps={min_steps} >= 1")
  survivors = [tuple(float(d) for d in p) for p in candidates]
  if not survivors or len(set(survivors)) != len(survivors):
    raise SearchError("candidates must be a non-empty list of distinct profiles")
  if log_path:
    _drop_partial_line(log_path)
  done = read_log(log_path) if log_path else {}
  rungs, spent, total = [], 0, 0
  rung = 0
  while True:
    steps = min_steps * eta ** rung
    evaluations = []
    for profile in survivors:
      entry = done.get(_key(profile, rung))
      if entry is not None and entry.steps != steps:
        raise SearchError(f"{log_path} has {entry.steps} steps for rung {rung}, this "
                          f"search {steps}: it is the log of another search; move it "
                          f"away or use the same min_steps and eta")
      if entry is None:
        entry = Evaluation(profile, rung, steps, float(evaluate(profile, steps)))
        spent += steps
        if log_path:
          with open(log_path, "a") as f:
            f.write(json.dumps(entry._asdict()) + "\n")
      total += steps
      evaluations.append(entry)
    rungs.append(tuple(evaluations))
    next_steps = steps * eta
    if len(survivors) == 1 or (max_steps is not None and next_steps > max_steps):
      break
    order = sorted(range(len(evaluations)), key=lambda i: (_rank(evaluations[i]), i))
    keep = sorted(order[:math.ceil(len(survivors) / eta)])
    survivors = [survivors[i] for i in keep]
    rung += 1
  last = rungs[-1]
  best = min(range(len(last)), key=lambda i: (_rank(last[i]), i))
  return SearchResult(last[best].profile, last[best].score, tuple(rungs), spent, total)
