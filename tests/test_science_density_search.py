"""Successive halving over layer-wise densities on a toy objective with a known best."""

import itertools
import math
import zlib

import numpy as np
import pytest

from l0jax.science import density_search as ds

SIZES = (1000, 300, 10)
GRID = (0.05, 0.1, 0.2, 0.33, 0.5, 1.0)
BEST = (0.1, 0.33, 1.0)  # 100 + 99 + 10 = 209 parameters, inside the 20% budget (262)


def toy_error(profile, steps):
  """Distance to BEST in log-density plus deterministic noise that shrinks with steps
  (a short proxy run ranks roughly, a long one precisely)."""
  dist = sum(abs(math.log(d) - math.log(b)) for d, b in zip(profile, BEST))
  u = zlib.crc32(repr((profile, steps)).encode()) / 2**32
  return dist + 0.3 * u / math.sqrt(steps)


class Counting:
  def __init__(self, fn=toy_error, fail_after=None):
    self.fn, self.calls, self.fail_after = fn, [], fail_after

  def __call__(self, profile, steps):
    if self.fail_after is not None and len(self.calls) >= self.fail_after:
      raise KeyboardInterrupt("killed")
    self.calls.append((profile, steps))
    return self.fn(profile, steps)


def test_feasible_profiles_by_hand_and_brute_force():
  assert ds.feasible_profiles((10, 10), (1.0, 0.5), 15.0) == [(0.5, 0.5), (0.5, 1.0),
                                                              (1.0, 0.5)]
  assert ds.feasible_profiles((10, 10), (1.0, 0.5), 15.0, min_fraction=0.9) == [
      (0.5, 1.0), (1.0, 0.5)]
  budget = ds.budget_for_density(SIZES, 0.2)
  assert budget == pytest.approx(262.0)
  got = ds.feasible_profiles(SIZES, GRID, budget)
  want = [p for p in itertools.product(sorted(GRID), repeat=3)
          if sum(s * d for s, d in zip(SIZES, p)) <= 262.0]
  assert got == want and BEST in got


def test_errors():
  with pytest.raises(ds.SearchError, match="no profile"):
    ds.feasible_profiles((10, 10), (0.5, 1.0), 5.0)
  with pytest.raises(ds.SearchError, match="grid"):
    ds.feasible_profiles((10,), (0.0, 0.5), 5.0)
  with pytest.raises(ds.SearchError, match="global_density"):
    ds.budget_for_density(SIZES, 1.5)
  with pytest.raises(ds.SearchError, match="distinct"):
    ds.successive_halving([(0.5,), (0.5,)], toy_error, min_steps=1)


def test_sample_is_seeded_distinct_and_ordered():
  feasible = ds.feasible_profiles(SIZES, GRID, 262.0)
  a = ds.sample_profiles(feasible, 10, seed=3)
  assert a == ds.sample_profiles(feasible, 10, seed=3)
  assert a != ds.sample_profiles(feasible, 10, seed=4)
  assert len(set(a)) == 10 and set(a) <= set(feasible)
  assert a == sorted(a, key=feasible.index)
  assert ds.sample_profiles(feasible, 10**6, seed=0) == feasible


def test_finds_the_known_best_profile():
  candidates = ds.feasible_profiles(SIZES, GRID, ds.budget_for_density(SIZES, 0.2))
  evaluate = Counting()
  result = ds.successive_halving(candidates, evaluate, min_steps=1, eta=3)
  assert result.best_profile == BEST
  # rung sizes n, ceil(n/3), ... down to 1; steps 1, 3, 9, ...; compute counted
  sizes = [len(candidates)]
  while sizes[-1] > 1:
    sizes.append(math.ceil(sizes[-1] / 3))
  assert [len(r) for r in result.rungs] == sizes
  assert result.steps_total == result.steps_spent == sum(
      n * 3**k for k, n in enumerate(sizes))
  assert len(evaluate.calls) == sum(sizes)
  # each rung keeps the lowest scores of the one before
  for prev, nxt in zip(result.rungs, result.rungs[1:]):
    kept = {e.profile for e in nxt}
    cut = max(e.score for e in prev if e.profile in kept)
    assert all(e.score >= cut for e in prev if e.profile not in kept)


def test_max_steps_stops_early_and_nan_ranks_last():
  cands = [(0.1,), (0.2,), (0.5,), (1.0,)]
  scores = {(0.1,): float("nan"), (0.2,): 0.3, (0.5,): 0.1, (1.0,): 0.2}
  result = ds.successive_halving(cands, lambda p, s: scores[p], min_steps=2, eta=2,
                                 max_steps=4)
  assert [len(r) for r in result.rungs] == [4, 2]  # a third rung would need 8 steps
  assert [e.steps for e in result.rungs[1]] == [4, 4]
  assert {e.profile for e in result.rungs[1]} == {(0.5,), (1.0,)}
  assert result.best_profile == (0.5,)


def test_resumes_from_its_log(tmp_path):
  candidates = ds.sample_profiles(ds.feasible_profiles(SIZES, GRID, 262.0), 20, seed=0)
  full = Counting()
  want = ds.successive_halving(candidates, full, min_steps=1, eta=3)

  log = str(tmp_path / "search.jsonl")
  first = Counting(fail_after=11)
  with pytest.raises(KeyboardInterrupt):
    ds.successive_halving(candidates, first, min_steps=1, eta=3, log_path=log)
  assert len(ds.read_log(log)) == 11
  with open(log, "a") as f:  # a write cut short by the kill
    f.write('{"profile": [0.1, 0.')
  second = Counting()
  got = ds.successive_halving(candidates, second, min_steps=1, eta=3, log_path=log)
  assert got.best_profile == want.best_profile and got.rungs == want.rungs
  assert first.calls + second.calls == full.calls  # nothing evaluated twice
  assert got.steps_spent == want.steps_total - sum(s for _, s in first.calls)

  replay = ds.successive_halving(candidates, Counting(fail_after=0), min_steps=1,
                                 eta=3, log_path=log)
  assert replay.rungs == want.rungs and replay.steps_spent == 0
  with pytest.raises(ds.SearchError, match="another search"):
    ds.successive_halving(candidates, toy_error, min_steps=2, eta=3, log_path=log)


def test_corrupt_log_line_is_an_error(tmp_path):
  log = tmp_path / "search.jsonl"
  log.write_text("not json\n")
  with pytest.raises(ds.SearchError, match="not a search log entry"):
    ds.read_log(str(log))
  np.testing.assert_equal(ds.read_log(str(tmp_path / "missing.jsonl")), {})
