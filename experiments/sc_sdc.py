r"""SC-SDC over densities x seeds: sparse MLPs against their same-capacity dense twins,
and the learned density profile against a searched and a uniform one.

    nice -n 10 python experiments/sc_sdc.py --config=configs/fashion_mnist_mlp.py \
        --densities=0.1,0.33 --seeds=0,1,2 --arms=learned,twin,searched,uniform \
        --root=/tmp/l0jax_sweeps/profiles --out=experiments/results/profiles

Arms, each a ``train.py`` + ``eval.py`` run per (density D, seed) with ``log_egf`` on,
so every run's ``eval.json`` holds the Effective Gradient Flow at the end of epoch 1
and at the end (``gradient_flow``):

* ``learned``: model-wise constrained L0, expected density <= D; the gates choose the
  per-layer profile.
* ``twin``: the SC-SDC dense twin of that seed's ``learned`` run: the same MLP ungated,
  hidden widths solved so every layer has as many weights as the sparse layer has
  active ones (``l0jax.science.sc_sdc``; the rounding is in the record).
* ``twin_balanced``: the same with ``solve="balanced"``: the chain twin matches every
  layer but the last, which takes the whole mismatch of the fixed output width (a
  learned profile that keeps few input pixels gets a twin with a tiny first hidden
  layer, a huge second one and several times the sparse net's weights); the balanced
  twin spreads the relative error evenly over the layers.
* ``searched``: the profile ``experiments/density_search.py`` picks for budget D
  (successive halving over short proxy runs, scored on a held-out part of the train
  split; one search per D, resumable, in ``ROOT/search_density=D``), trained as
  layer-wise constraints. Its cost in trainer steps is recorded per run.
* ``uniform``: every gated layer constrained to D.

Everything is resumable (finished runs are skipped) and ``--out`` is rewritten after
each run: ``results.csv/json`` (one record per run), ``summary.md/csv`` (mean ± sample
std per density and arm) and ``sc_sdc.png`` (test error against kept parameters and
EGF over training). ``--arms=learned,twin`` is the plain SC-SDC comparison; any
``--set=FIELD=VALUE`` applies to every run (and the search's proxy runs).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Mapping, Sequence

if __package__ in (None, ""):  # python experiments/sc_sdc.py
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import runs, sweep  # pylint: disable=g-import-not-at-top
from l0jax import reporting  # pylint: disable=g-import-not-at-top
from l0jax.science import sc_sdc  # pylint: disable=g-import-not-at-top
from l0jax.science.egf import FLOW_METRICS as FLOW  # pylint: disable=g-import-not-at-top

ARMS = ("learned", "twin", "twin_balanced", "searched", "uniform")
TWIN_SOLVES = {"twin": "chain", "twin_balanced": "balanced"}


def _search_dir(root: str, density: float) -> str:
  return os.path.join(root, f"search_density={density:g}")


def _eval_json(workdir: str) -> Dict[str, Any]:
  with open(os.path.join(workdir, "eval.json")) as f:
    return json.load(f)


def num_gated_layers(config: str, sets: Mapping[str, Any]) -> int:
  from l0jax import density, train_lib  # pylint: disable=g-import-not-at-top
  cfg = runs.load_config(config, sets)
  return len(density.gated_layers(train_lib.abstract_params(cfg)))


def search(config: str, density: float, sets: Mapping[str, Any], root: str,
           search_args: Sequence[str], log=print) -> Dict[str, Any]:
  """``best.json`` of the density search for budget ``density`` (runs it unless done)."""
  workdir = _search_dir(root, density)
  if not os.path.exists(os.path.join(workdir, "best.json")):
    argv = ([sys.executable, os.path.join(runs.REPO, "experiments", "density_search.py"),
             f"--config={config}", f"--workdir={workdir}", f"--global_density={density}"]
            + [f"--config.{k}={runs.format_value(v)}" for k, v in sets.items()]
            + list(search_args))
    log(f"search for density {density}: {' '.join(argv[1:])}")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "search.log"), "a") as out:
      subprocess.run(argv, check=True, cwd=runs.REPO, stdout=out, stderr=subprocess.STDOUT)
  return _read_best(root, density)


def arm_overrides(arm: str, density: float, num_layers: int, twin=None,
                  best: Mapping[str, Any] = ()) -> Dict[str, Any]:
  """The config overrides of one arm at ``density`` (on top of ``--set``); a twin arm
  trains ``twin`` (:func:`_twin` of its learned run)."""
  if arm == "learned":
    return {"target_density": density}
  if arm == "uniform":
    return {"constraint": "layerwise", "layer_targets": (density,) * num_layers}
  if arm == "searched":
    return {"constraint": "layerwise",
            "layer_targets": tuple(float(d) for d in best["best_profile"])}
  if arm in TWIN_SOLVES:
    return {k: runs.parse_value(v) for k, v in sc_sdc.twin_config_overrides(twin).items()}
  raise runs.SweepError(f"unknown arm {arm!r}; use some of {', '.join(ARMS)}")


def _twin(learned_dir: str, arm: str) -> sc_sdc.DenseTwin:
  result = _eval_json(learned_dir)
  return sc_sdc.dense_twin_from_eval_json(result, _num_classes(learned_dir),
                                          TWIN_SOLVES[arm])[0]


def _num_classes(workdir: str) -> int:
  """The output width of a run's model: its dataset's number of classes."""
  from l0jax import train_lib  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, runs.RUN_FILE)) as f:
    recorded = json.load(f)
  cfg = runs.load_config(recorded["config"], recorded["overrides"], recorded["seed"])
  return train_lib.dataset_info(cfg).num_classes


def flow_fields(workdir: str) -> Dict[str, Any]:
  """EGF / gradient norms at epoch 1 and at the end, flat, from ``eval.json``."""
  flow = _eval_json(workdir).get("gradient_flow", {})
  return {f"{k}_{when}": flow[when].get(k) for when in ("epoch_1", "final")
          if when in flow for k in FLOW}


def _run_dir(root: str, arm: str, density: float, seed: int) -> str:
  return os.path.join(root, arm, runs.run_name({"density": density}, seed))


def run_arm(arm: str, config: str, density: float, seed: int, sets: Mapping[str, Any],
            root: str, extra: Mapping[str, Any]) -> Dict[str, Any]:
  """Trains and evaluates one run; its sweep record plus arm, density and EGF."""
  overrides = {**sets, "log_egf": True, **extra}
  run = runs.Run(config, overrides, seed, _run_dir(root, arm, density, seed), arm)
  record = runs.run_one(run)
  record = {"arm": arm, "density": density, **record}
  if record["status"] == "done":
    record.update(flow_fields(run.workdir))
  return record


def run_study(config: str, densities: Sequence[float], seeds: Sequence[int],
              arms: Sequence[str], root: str, out: str, sets: Mapping[str, Any] = (),
              search_args: Sequence[str] = (), train: bool = True,
              log=print) -> List[Dict[str, Any]]:
  """Every (density, arm, seed) run, in that order (a twin after its learned run);
  results rewritten into ``out`` after each. ``train=False`` only collects."""
  unknown = [a for a in arms if a not in ARMS]
  if unknown:
    raise runs.SweepError(f"unknown arm(s) {unknown}; use some of {', '.join(ARMS)}")
  if set(arms) & set(TWIN_SOLVES) and "learned" not in arms:
    raise runs.SweepError("a twin arm needs the learned arm (it copies its profile)")
  sets = dict(sets)
  num_layers = num_gated_layers(config, sets)
  records: List[Dict[str, Any]] = []
  for density in densities:
    best = {}
    if "searched" in arms:
      best = (search(config, density, sets, root, search_args, log) if train else
              _read_best(root, density))
    for arm in [a for a in ARMS if a in arms]:
      for seed in seeds:
        learned_dir = _run_dir(root, "learned", density, seed)
        waiting = ((arm in TWIN_SOLVES and not runs.is_finished(learned_dir))
                   or (arm == "searched" and not best))
        if waiting or (not train and
                       not runs.is_finished(_run_dir(root, arm, density, seed))):
          continue
        twin = _twin(learned_dir, arm) if arm in TWIN_SOLVES else None
        extra = arm_overrides(arm, density, num_layers, twin, best)
        log(f"{arm} density={density} seed={seed}")
        record = run_arm(arm, config, density, seed, sets, root, extra)
        if arm == "searched":
          record["search_trainer_steps"] = best["search_trainer_steps"]
        if twin is not None:
          record["twin_weight_errors"] = list(twin.relative_error)
          record["twin_max_weight_error"] = twin.max_abs_relative_error
        records.append(record)
        write_all(records, out)
  return records


def _read_best(root: str, density: float) -> Dict[str, Any]:
  """The search's ``best.json`` for ``density``; ``{}`` before it has finished."""
  path = os.path.join(_search_dir(root, density), "best.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


# ======================================================================================
# Results
# ======================================================================================
STATS = ("test_error", "expected_density", "purged_params", "purged_macs",
         "egf_l2_epoch_1", "egf_l2_final", "grad_norm_l2_epoch_1", "grad_norm_l2_final")


def summarize(records: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
  """One row per (density, arm): ``n``, (mean, sample std) of :data:`STATS`, the
  layer profile (targets for searched/uniform) and the search cost in trainer steps."""
  rows = []
  keys = sorted({(r["density"], ARMS.index(r["arm"])) for r in records
                 if r.get("status") == "done"})
  for density, arm_index in keys:
    arm = ARMS[arm_index]
    rs = [r for r in records if r["density"] == density and r["arm"] == arm
          and r.get("status") == "done"]
    row = {"density": density, "arm": arm, "n": len(rs)}
    row.update({k: sweep.mean_std([r.get(k) for r in rs]) for k in STATS})
    row["search_trainer_steps"] = rs[0].get("search_trainer_steps")
    row["architecture"] = rs[0].get("architecture")
    row["layer_targets"] = rs[0].get("layer_targets")
    rows.append(row)
  return rows


def flow_correlations(records: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
  """Spearman rank correlation of every flow metric (at epoch 1 and at the end) with
  the final test error over the finished runs: the paper's claim is that EGF tracks
  the performance of sparse networks better than the plain gradient norms do."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  rows = []
  for when in ("epoch_1", "final"):
    for metric in FLOW:
      key = f"{metric}_{when}"
      pairs = [(r[key], r["test_error"]) for r in records if r.get("status") == "done"
               and runs.is_number(r.get(key)) and runs.is_number(r.get("test_error"))]
      rho = (float(stats.spearmanr([a for a, _ in pairs], [b for _, b in pairs])[0])
             if len(pairs) >= 3 else None)
      rows.append({"metric": metric, "when": when, "spearman_rho": rho, "n": len(pairs)})
  return rows


def _fmt_big(stat) -> str:
  return "-" if stat is None else f"{stat[0] / 1e3:.1f}k"


def summary_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
  head = ["density", "arm", "n", "test error %", "expected density %", "kept params",
          "kept MACs", "EGF L2 epoch 1", "EGF L2 final", "|g| L2 epoch 1", "|g| L2 final",
          "search (trainer steps)", "profile / widths (seed 0)"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    profile = (runs.format_value(row["layer_targets"]) if row["layer_targets"]
               else row["architecture"] or "")
    stat = sweep.format_stat
    lines.append("| " + " | ".join([
        f"{100 * row['density']:g}%", row["arm"], str(row["n"]),
        stat(row["test_error"], 100), stat(row["expected_density"], 100),
        _fmt_big(row["purged_params"]), _fmt_big(row["purged_macs"]),
        stat(row["egf_l2_epoch_1"], 1e6, 1), stat(row["egf_l2_final"], 1e6, 1),
        stat(row["grad_norm_l2_epoch_1"], 1, 3), stat(row["grad_norm_l2_final"], 1, 3),
        str(row["search_trainer_steps"] or "-"), str(profile)]) + " |")
  return ("EGF L2 in units of 1e-6 (per active weight, averaged over layers).\n\n" +
          "\n".join(lines) + "\n")


def correlations_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
  lines = ["| flow metric | at | Spearman rho with test error | runs |",
           "|---|---|---|---|"]
  for row in rows:
    rho = "-" if row["spearman_rho"] is None else f"{row['spearman_rho']:+.2f}"
    lines.append(f"| {row['metric']} | {row['when'].replace('_', ' ')} | {rho} | "
                 f"{row['n']} |")
  return "\n".join(lines) + "\n"


def plot(records: Sequence[Mapping[str, Any]], path: str) -> str:
  """Test error against kept parameters (one dot per run, arm means joined) and EGF L2
  over training (seed 0 of each arm and density)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  done = [r for r in records if r.get("status") == "done"]
  fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
  styles = {"learned": "o-", "twin": "s--", "twin_balanced": "D--", "searched": "^-",
            "uniform": "v:"}
  for arm in ARMS:
    rs = [r for r in done if r["arm"] == arm]
    if not rs:
      continue
    line, = ax.plot([], [], styles[arm], label=arm)
    color = line.get_color()
    ax.plot([r["purged_params"] for r in rs], [100 * r["test_error"] for r in rs], "o",
            ms=3, alpha=0.5, color=color)
    densities = sorted({r["density"] for r in rs})
    means = [(sum(r["purged_params"] for r in rs if r["density"] == d) /
              sum(r["density"] == d for r in rs),
              sum(100 * r["test_error"] for r in rs if r["density"] == d) /
              sum(r["density"] == d for r in rs)) for d in densities]
    line.set_data([m[0] for m in means], [m[1] for m in means])
    first_seed = min(r["seed"] for r in rs)
    for r in [r for r in rs if r["seed"] == first_seed]:
      flow = [m for m in reporting.read_metrics(r["workdir"])
              if not m.get("eval") and "egf_l2" in m]
      epoch = r["epochs"] / max(r["step"], 1)
      bx.plot([m["step"] * epoch for m in flow], [m["egf_l2"] for m in flow],
              styles[arm][1:] or "-", color=color, lw=1,
              label=f"{arm} {100 * r['density']:g}%")
  ax.set_xscale("log")
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no crowded labels
  ax.set_xlabel("kept parameters (purged model)")
  ax.set_ylabel("test error %")
  ax.set_title("sparse (L0) vs same-capacity dense twin")
  ax.legend()
  bx.set_yscale("log")
  bx.set_xlabel("epoch")
  bx.set_ylabel("EGF L2")
  bx.set_title("effective gradient flow (seed 0)")
  bx.legend(fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def write_all(records: Sequence[Dict[str, Any]], out: str) -> List[str]:
  paths = sweep.write_results(records, out)
  rows = summarize(records)
  md = os.path.join(out, "summary.md")
  with open(md, "w") as f:
    f.write(summary_markdown(rows) + "\n" + correlations_markdown(
        flow_correlations(records)))
  csv_path = os.path.join(out, "summary.csv")
  sweep.write_stats_csv(csv_path, rows, STATS)
  return paths + [md, csv_path, plot(records, os.path.join(out, "sc_sdc.png"))]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/fashion_mnist_mlp.py")
  parser.add_argument("--densities", default="0.1,0.33")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--arms", default="learned,twin",
                      help=f"comma-separated, some of {','.join(ARMS)}")
  parser.add_argument("--set", action="append", default=[],
                      help="FIELD=VALUE: an override of every run")
  parser.add_argument("--search_arg", action="append", default=[],
                      help="a flag passed on to experiments/density_search.py")
  parser.add_argument("--root", required=True, help="the runs' workdirs go under here")
  parser.add_argument("--out", default="", help="results and plots (default: --root)")
  parser.add_argument("--collect", action="store_true", help="train nothing, collect")
  args = parser.parse_args(argv)
  try:
    sets = {k: runs.parse_value(v) for k, v in sweep.parse_assignments(args.set).items()}
    records = run_study(args.config, [float(d) for d in args.densities.split(",")],
                        [int(s) for s in args.seeds.split(",")], args.arms.split(","),
                        args.root, args.out or args.root, sets, args.search_arg,
                        train=not args.collect)
  except runs.SweepError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  failed = [r for r in records if r.get("status") != "done"]
  print(f"{len(records)} runs, {len(failed)} not done; results in {args.out or args.root}")
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
