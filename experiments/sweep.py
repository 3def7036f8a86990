r"""Run train.py + eval.py over a grid of config overrides x seeds; write results + plots.

A sweep is a list of *blocks*; a block is one config file, fixed overrides, a grid (the
product of every field's values) and seeds. Each run is the user's own command
(``python train.py --config=... --workdir=ROOT/BLOCK/NAME --config.FIELD=VALUE ...``,
then ``eval.py`` with the same flags) in its own workdir. Running the same sweep again
skips every run that has its ``eval.json`` and resumes an unfinished one from its
checkpoint, so a sweep can be killed and restarted at any time.

From a spec file (one per study, ``experiments/*.py`` with ``get_sweep()``, or JSON)::

    nice -n 10 python experiments/sweep.py --spec=experiments/control.py \
        --root=/tmp/sweeps/control --out=experiments/results/control

or from the command line (one block)::

    python experiments/sweep.py --config=configs/fashion_mnist_mlp.py \
        --grid=target_density=0.1,0.33,0.5 --set=num_epochs=3 --seeds=0,1,2 \
        --root=/tmp/sweeps/mlp

A spec is a list of blocks (dicts) with keys ``name``, ``config``, and optionally
``grid`` ({field: [values]}), ``overrides`` ({field: value}) and ``seeds`` ([0]).

Writes into ``--out`` (default: ``--root``): ``results.csv`` / ``results.json`` (one
record per run: overrides, seed, test error, expected / test-time / purged density,
params and MACs, time to target, wall time, command), ``summary.csv`` / ``summary.md``
(mean +- std over seeds) and plots: per config file, the achieved expected density
against every numeric grid field and test error against purged parameters.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import itertools
import json
import math
import os
import shlex
import sys
from typing import Any, Dict, List, Mapping, Sequence

if __package__ in (None, ""):  # python experiments/sweep.py
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments import runs  # pylint: disable=g-import-not-at-top

Block = Dict[str, Any]


# ======================================================================================
# Specs
# ======================================================================================
def load_spec(path: str) -> List[Block]:
  """Blocks of a spec file: a Python file's ``get_sweep()`` or a JSON list."""
  if path.endswith(".json"):
    with open(path) as f:
      blocks = json.load(f)
  else:
    spec = importlib.util.spec_from_file_location("_sweep_spec", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    blocks = module.get_sweep()
  return [check_block(b) for b in blocks]


def check_block(block: Mapping[str, Any]) -> Block:
  """A block with defaults filled in; raises ValueError on a malformed one."""
  unknown = set(block) - {"name", "config", "grid", "overrides", "seeds"}
  if unknown or "name" not in block or "config" not in block:
    raise runs.SweepError(f"a sweep block needs 'name' and 'config' and may have 'grid', "
                     f"'overrides', 'seeds'; got keys {sorted(block)}")
  grid = {k: list(v) for k, v in dict(block.get("grid", {})).items()}
  if any(not v for v in grid.values()):
    raise runs.SweepError(f"block {block['name']!r}: every grid field needs values")
  return {"name": str(block["name"]), "config": str(block["config"]), "grid": grid,
          "overrides": dict(block.get("overrides", {})),
          "seeds": [int(s) for s in block.get("seeds", [0])]}


def expand(blocks: Sequence[Block], root: str) -> List[runs.Run]:
  """Every run of ``blocks``: per block, seeds outer (a first full seed comes first),
  then the grid's product in its field order. Each config + overrides is checked (a
  field the config lacks raises KeyError before anything runs)."""
  out = []
  for block in blocks:
    fields = list(block["grid"])
    for seed in block["seeds"]:
      for values in itertools.product(*block["grid"].values()):
        point = dict(zip(fields, values))
        overrides = {**block["overrides"], **point}
        runs.load_config(block["config"], overrides, seed)
        workdir = os.path.join(root, block["name"], runs.run_name(point, seed))
        out.append(runs.Run(block["config"], overrides, seed, workdir, block["name"]))
  return out


def parse_assignments(texts: Sequence[str]) -> Dict[str, str]:
  """``["FIELD=VALUE", ...]`` -> ``{FIELD: "VALUE"}`` (the text after the first ``=``)."""
  out = {}
  for text in texts:
    field, sep, value = text.partition("=")
    if not sep or not field:
      raise runs.SweepError(f"expected FIELD=VALUE, got {text!r}")
    out[field] = value
  return out


def block_from_flags(config: str, grid: Sequence[str], sets: Sequence[str],
                     seeds: str) -> Block:
  """One block from ``--grid=FIELD=V1,V2`` / ``--set=FIELD=V`` command-line text."""
  name = os.path.splitext(os.path.basename(config.partition(":")[0]))[0]
  return check_block({
      "name": name, "config": config,
      "grid": {f: [runs.parse_value(x) for x in _split_top(v)]
               for f, v in parse_assignments(grid).items()},
      "overrides": {f: runs.parse_value(v) for f, v in parse_assignments(sets).items()},
      "seeds": [int(s) for s in seeds.split(",")]})


def _split_top(text: str) -> List[str]:
  """Splits at commas outside parentheses: ``(0.5,0.3),(0.2,0.1)`` -> two tuples."""
  parts, depth, current = [], 0, ""
  for ch in text:
    depth += ch in "([" and 1 or 0
    depth -= ch in ")]" and 1 or 0
    if ch == "," and depth == 0:
      parts.append(current)
      current = ""
    else:
      current += ch
  return parts + [current]


# ======================================================================================
# Results
# ======================================================================================
CSV_FIRST = ("group", "config", "seed", "status", "test_error", "expected_density",
             "target", "test_time_density", "purged_density", "purged_params",
             "n_params_dense", "purged_macs", "dense_macs", "purged_macs_density",
             "architecture",
             "time_to_target", "epochs", "train_wall_s", "eval_wall_s")


def write_results(records: Sequence[Dict[str, Any]], out: str) -> List[str]:
  """``results.json`` (records as they are) and ``results.csv`` (one row each)."""
  os.makedirs(out, exist_ok=True)
  json_path, csv_path = os.path.join(out, "results.json"), os.path.join(out, "results.csv")
  with open(json_path, "w") as f:
    json.dump(list(records), f, indent=1)
  write_csv(csv_path, records, lambda k, v: csv_cell(v), first=CSV_FIRST)
  return [json_path, csv_path]


def csv_cell(value):
  return runs.format_value(value) if isinstance(value, (list, tuple)) else value


def write_csv(path: str, rows, cell, first=()) -> None:
  """One CSV row per dict; columns ``first``, then every other key in order seen."""
  columns = list(first)
  for row in rows:
    columns += [k for k in row if k not in columns]
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: cell(k, row.get(k)) for k in columns})


def mean_std(values: Sequence[float]):
  """(mean, sample std) of the numbers in ``values``; std 0 for one value; None if none."""
  xs = [v for v in values if runs.is_number(v)]
  if not xs:
    return None
  mean = sum(xs) / len(xs)
  if len(xs) == 1:
    return mean, 0.0
  return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


SUMMARY_STATS = ("test_error", "expected_density", "test_time_density", "purged_density",
                 "purged_params", "purged_macs_density", "time_to_target", "train_wall_s")
_NOT_SETTINGS = set(CSV_FIRST) | {"test_loss", "n_params_kept", "step", "workdir",
                                  "command", "error"}


def summarize(records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """One row per (group, setting) over seeds: ``n``, ``on_target`` (final expected
  density within 1 point of the target), ``reached`` (runs with a time to target), and
  ``(mean, std)`` of :data:`SUMMARY_STATS`."""
  groups: Dict[tuple, List[Dict[str, Any]]] = {}
  for r in records:
    if r.get("status") != "done":
      continue
    setting = tuple((k, csv_cell(v)) for k, v in r.items() if k not in _NOT_SETTINGS)
    groups.setdefault((r["group"], setting), []).append(r)
  rows = []
  for (group, setting), rs in groups.items():
    row = {"group": group, **dict(setting), "n": len(rs), "target": rs[0].get("target")}
    if runs.is_number(row["target"]):
      row["on_target"] = sum(abs(r["expected_density"] - r["target"]) <= runs.TOLERANCE
                             for r in rs)
      row["reached"] = sum(r["time_to_target"] is not None for r in rs)
    for key in SUMMARY_STATS:
      row[key] = mean_std([r.get(key) for r in rs])
    rows.append(row)
  return rows


def format_stat(stat, scale=1.0, digits=2) -> str:
  """``"mean ± std"`` of a ``(mean, std)`` pair (times ``scale``); "-" for None."""
  if stat is None:
    return "-"
  mean, std = stat
  return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def summary_markdown(rows: Sequence[Dict[str, Any]]) -> str:
  """A markdown table of :func:`summarize` rows (errors and densities in %)."""
  settings = []
  for row in rows:
    settings += [k for k in row if k not in settings and k not in SUMMARY_STATS
                 and k not in ("group", "n", "target", "on_target", "reached")]
  head = (["group"] + settings + ["n", "test error %", "expected density %",
                                  "test-time density %", "purged density %",
                                  "purged params", "purged MACs %",
                                  "time to target (epochs)",
                                  "on target", "train s"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    tt = format_stat(row["time_to_target"], digits=2)
    if "reached" in row and row["reached"] < row["n"]:
      tt += f" ({row['n'] - row['reached']} never)"
    cells = ([row["group"]] + [str(row.get(k, "")) for k in settings] + [
        str(row["n"]), format_stat(row["test_error"], 100),
        format_stat(row["expected_density"], 100),
        format_stat(row["test_time_density"], 100), format_stat(row["purged_density"], 100),
        format_stat(row["purged_params"], digits=0),
        format_stat(row["purged_macs_density"], 100, digits=1), tt,
        f"{row['on_target']}/{row['n']}" if "on_target" in row else "-",
        format_stat(row["train_wall_s"], digits=0)])
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def write_stats_csv(path: str, rows, stats: Sequence[str]) -> None:
  """Summary rows as CSV: the ``stats`` columns' ``(mean, std)`` as "mean ± std"."""
  write_csv(path, rows, lambda k, v: (
      "" if v is None else f"{v[0]:.6g} ± {v[1]:.2g}" if k in stats else csv_cell(v)))


def write_summary(records, out: str) -> List[str]:
  rows = summarize(records)
  csv_path, md_path = os.path.join(out, "summary.csv"), os.path.join(out, "summary.md")
  write_stats_csv(csv_path, rows, SUMMARY_STATS)
  with open(md_path, "w") as f:
    f.write(summary_markdown(rows))
  return [csv_path, md_path]


# ======================================================================================
# Main
# ======================================================================================
def run_sweep(blocks: Sequence[Block], root: str, out: str = "", *, train: bool = True,
              log=print) -> List[Dict[str, Any]]:
  """Runs (unless ``train=False``: only collects) every run of ``blocks`` under ``root``
  and writes results, summary and plots into ``out`` (default ``root``) after each run,
  so they are current while the sweep goes on. Returns the records."""
  out = out or root
  all_runs = expand(blocks, root)
  for run in all_runs:  # before anything runs: no workdir holds another run's settings
    runs.check_workdir(run)
  records = [runs.collect(r) for r in all_runs]
  for i, run in enumerate(all_runs):
    if not train or records[i]["status"] == "done":
      continue
    log(f"[{i + 1}/{len(all_runs)}] {run.group}/{os.path.basename(run.workdir)}")
    records[i] = runs.run_one(run)
    r = records[i]
    log(f"  {r['status']}" + (f": test error {100 * r['test_error']:.2f}%, expected "
                               f"density {_pct(r.get('expected_density'))}, "
                               f"{r['train_wall_s']:.0f} s" if r["status"] == "done"
                               else f" {r.get('error', '')}"))
    _write_all(records, blocks, out)
  written = _write_all(records, blocks, out)
  done = sum(r["status"] == "done" for r in records)
  log(f"{done}/{len(records)} runs done; wrote " + ", ".join(written))
  return records


def _pct(x):
  return "-" if x is None else f"{100 * x:.2f}%"


def _write_all(records, blocks, out) -> List[str]:
  from experiments import sweep_plots  # pylint: disable=g-import-not-at-top
  written = write_results(records, out) + write_summary(records, out)
  return written + sweep_plots.write_all(records, blocks, out)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--spec", help="a spec file (experiments/*.py or .json)")
  parser.add_argument("--config", help="without --spec: one config file")
  parser.add_argument("--grid", action="append", default=[],
                      help="FIELD=V1,V2,...: a grid axis (repeat for a product)")
  parser.add_argument("--set", action="append", default=[],
                      help="FIELD=VALUE: a fixed override of every run")
  parser.add_argument("--seeds", default="0", help="comma-separated seeds")
  parser.add_argument("--only", default="", help="comma-separated block names to run")
  parser.add_argument("--root", required=True, help="the runs' workdirs go under here")
  parser.add_argument("--out", default="", help="results and plots (default: --root)")
  parser.add_argument("--collect", action="store_true",
                      help="train nothing: only collect finished runs and write results")
  parser.add_argument("--dry_run", action="store_true", help="print the commands only")
  args = parser.parse_args(argv)
  if bool(args.spec) == bool(args.config):
    parser.error("give exactly one of --spec or --config")
  try:
    if args.spec:
      blocks = load_spec(args.spec)
    else:
      blocks = [block_from_flags(args.config, args.grid, args.set, args.seeds)]
    if args.only:
      names = args.only.split(",")
      missing = set(names) - {b["name"] for b in blocks}
      if missing:
        raise runs.SweepError(f"--only: no block named {sorted(missing)}")
      blocks = [b for b in blocks if b["name"] in names]
    root = os.path.abspath(args.root)
    if args.dry_run:
      for run in expand(blocks, root):
        for argv_ in runs.commands(run, "python").values():
          print(shlex.join(argv_))
      return 0
    records = run_sweep(blocks, root, os.path.abspath(args.out or root),
                        train=not args.collect)
  except runs.SweepError as e:
    sys.exit(f"error: {e}")
  return 1 if any(r["status"] == "failed" for r in records) else 0


if __name__ == "__main__":
  sys.exit(main())
