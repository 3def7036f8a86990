r"""Find the penalties whose penalized runs end at given densities: what a user of
``loss + penalty * density`` would otherwise tune by hand.

For each target density (largest first), ``l0jax.penalty_search.bisect_penalty`` narrows
the penalty between the closest penalties already run on either side of it (``--lo`` /
``--hi`` at first), each evaluation a full run of the user's command with
``--config.method=penalized --config.penalty=P`` (seed ``--seed``), until the final
expected density is within ``--tol`` of the target. The next penalty is interpolated
in (log penalty, density) between the bracket's ends (``--step=interpolate``, the
default) or is their geometric midpoint (``--step=geometric``). Runs go to
``ROOT/BLOCK/penalty=P,seed=S`` -- the workdir the sweep gives the same run, so a sweep
block named BLOCK with ``--config.method=penalized`` in its overrides and the chosen
penalties as its grid reuses them. Every run is kept and the block's finished runs
start the brackets, so a restarted calibration repeats nothing.

    nice -n 10 python experiments/calibrate_penalty.py \
        --config=configs/fashion_mnist_mlp.py --targets=0.7,0.5,0.33,0.2,0.1 \
        --root=/tmp/l0jax_sweeps/control --block=mlp_penalized_10ep --step=geometric \
        --out=experiments/results/control/mlp_penalties.json

Writes ``--out``: the chosen penalty per target, the density it reached, and every run
(penalty -> density), so the cost of the calibration in runs is on record.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import Any, Dict, List, Mapping

if __package__ in (None, ""):  # python experiments/calibrate_penalty.py
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import runs, sweep  # pylint: disable=g-import-not-at-top
from l0jax import penalty_search  # pylint: disable=g-import-not-at-top


def _round(penalty: float) -> float:
  """Three significant digits: readable run names, and a value a user would type."""
  return float(f"{penalty:.3g}")


def _run(config, overrides, seed, root, block, penalty) -> runs.Run:
  point = {"penalty": penalty}  # named as a sweep block over penalties names it
  return runs.Run(config, {**overrides, "method": "penalized", **point}, seed,
                  os.path.join(root, block, runs.run_name(point, seed)), block)


def finished_runs(config: str, overrides: Mapping[str, Any], root: str, block: str,
                  seed: int) -> Dict[float, float]:
  """``{penalty: final expected density}`` of the block's finished runs of ``seed`` with
  these settings (a run recorded with other settings raises ``runs.SweepError``)."""
  out = {}
  directory = os.path.join(root, block)
  suffix = f",seed={seed}"
  for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else []:
    if not (name.startswith("penalty=") and name.endswith(suffix)):
      continue
    penalty = float(name[len("penalty="):-len(suffix)])
    run = _run(config, overrides, seed, root, block, penalty)
    if run.workdir == os.path.join(directory, name) and runs.is_finished(run.workdir):
      runs.check_workdir(run)
      with open(os.path.join(run.workdir, "eval.json")) as f:
        out[penalty] = json.load(f)["expected_density"]
  return out


def calibrate(config: str, targets, overrides: Mapping[str, Any], root: str, block: str,
              seed: int = 0, lo: float = 1e-4, hi: float = 10.0, tol: float = 0.01,
              max_iters: int = 8, step: str = "interpolate", log=print) -> Dict[str, Any]:
  """Penalties for ``targets`` (see the module doc). Returns ``{"chosen": [{target,
  penalty, density}], "runs": [{penalty, density}] (every distinct run)}``."""
  # penalty -> final expected density; the block's finished runs narrow the brackets.
  densities: Dict[float, float] = finished_runs(config, overrides, root, block, seed)
  if densities:
    log(f"{len(densities)} finished runs in {os.path.join(root, block)}")

  def run_fn(penalty: float) -> float:
    penalty = _round(penalty)
    if penalty not in densities:
      run = _run(config, overrides, seed, root, block, penalty)
      record = runs.run_one(run)
      if record["status"] != "done":
        raise RuntimeError(f"{run.workdir}: {record.get('error', record['status'])}")
      densities[penalty] = record["expected_density"]
      log(f"  penalty {penalty:g} -> expected density {densities[penalty]:.4f} "
          f"({len(densities)} runs)")
    return densities[penalty]

  chosen = []
  for target in sorted(targets, reverse=True):
    # The tightest bracket seen so far: density decreases with the penalty.
    low = max([p for p, d in densities.items() if d > target], default=lo)
    high = min([p for p, d in densities.items() if d < target and p > low], default=hi)
    bracket = (low, high)
    log(f"target {target}: bracket {bracket}")
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # a miss is recorded below, not warned about
      result = penalty_search.bisect_penalty(run_fn, target, *bracket, tol=tol,
                                             max_iters=max_iters, step=step)
    penalty = _round(result.penalty)
    chosen.append({"target": target, "penalty": penalty, "density": densities[penalty],
                   "within_tol": abs(densities[penalty] - target) <= tol})
  return {"config": config, "overrides": dict(overrides), "seed": seed, "tol": tol,
          "chosen": chosen,
          "runs": [{"penalty": p, "density": d} for p, d in sorted(densities.items())]}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--targets", required=True, help="comma-separated densities")
  parser.add_argument("--set", action="append", default=[], help="FIELD=VALUE overrides")
  parser.add_argument("--root", required=True)
  parser.add_argument("--block", required=True, help="the sweep block the runs belong to")
  parser.add_argument("--out", required=True, help="JSON file of the result")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--lo", type=float, default=1e-4)
  parser.add_argument("--hi", type=float, default=10.0)
  parser.add_argument("--tol", type=float, default=0.01)
  parser.add_argument("--max_iters", type=int, default=8)
  parser.add_argument("--step", default="interpolate", choices=penalty_search.STEPS,
                      help="the next penalty: interpolated in log-penalty (default) or "
                      "the geometric midpoint of the bracket")
  args = parser.parse_args(argv)
  try:
    overrides = {f: runs.parse_value(v) for f, v in sweep.parse_assignments(args.set).items()}
    result = calibrate(args.config, [float(t) for t in args.targets.split(",")],
                       overrides, os.path.abspath(args.root), args.block, args.seed,
                       args.lo, args.hi, args.tol, args.max_iters, args.step)
  except (runs.SweepError, ValueError) as e:
    sys.exit(f"error: {e}")
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=1)
  for c in result["chosen"]:
    print(f"target {c['target']}: penalty {c['penalty']} -> density {c['density']:.4f}")
  print(f"{len(result['runs'])} runs; wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
