"""One run of a sweep: the exact ``train.py`` / ``eval.py`` commands, and its results.

The pieces other studies build on (``experiments/sweep.py`` is the grid driver):

* :class:`Run` -- a config file, ``--config.FIELD=VALUE`` overrides, a seed, a workdir;
* :func:`commands` -- the two commands a user would type for it;
* :func:`run_one` -- runs them as subprocesses (resumable: a run with ``eval.json`` is
  skipped, an unfinished one resumes from its checkpoint because ``train.py`` does);
* :func:`collect` -- one flat result record from the workdir (``eval.json``,
  ``metrics.jsonl``, wall times);
* :func:`time_to_target` -- the epoch from which the constraints stay within a tolerance.

Example (from the repository root)::

    from experiments import runs
    run = runs.Run("configs/fashion_mnist_mlp.py", {"target_density": 0.1}, seed=0,
                   workdir="/tmp/sweep/mlp_t0.1_s0")
    record = runs.run_one(run)            # trains, evaluates, returns the record
    print(record["test_error"], record["time_to_target"])
"""

from __future__ import annotations

import ast
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence

from l0jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMES_FILE = "sweep_times.json"   # wall seconds of train.py / eval.py, summed over attempts
RUN_FILE = "run.json"             # the run's config, overrides, seed and commands
TOLERANCE = 0.01                  # "on target": within 1 point of density


class SweepError(UserError, ValueError):
  """A sweep that cannot run as asked (unknown config field, a workdir of another run)."""


class Run(NamedTuple):
  """One training run: ``config`` (``configs/X.py[:arg]``, relative to the repository
  root or absolute), ``overrides`` (config field -> value, e.g. ``{"target_density":
  0.1}``), ``seed`` and ``workdir``. ``group`` names the sweep block it belongs to."""
  config: str
  overrides: Mapping[str, Any]
  seed: int
  workdir: str
  group: str = ""


# ======================================================================================
# Values and commands
# ======================================================================================
def format_value(value) -> str:
  """A Python value as ``--config.FIELD=`` text that ml_collections parses back."""
  if isinstance(value, (list, tuple)):
    return repr(tuple(value))
  if isinstance(value, float):
    return repr(value)
  return str(value)


def parse_value(text: str):
  """Command-line text -> Python value (numbers, booleans, tuples; else the string)."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def run_name(overrides: Mapping[str, Any], seed: int) -> str:
  """A workdir name that says what the run is, e.g. ``target_density=0.1,seed=0``."""
  parts = [f"{k}={format_value(v)}" for k, v in overrides.items()] + [f"seed={seed}"]
  name = ",".join(parts)
  for bad in "/ ()'\"":
    name = name.replace(bad, "")
  return name


def _flags(run: Run) -> List[str]:
  flags = [f"--config={run.config}", f"--workdir={run.workdir}"]
  flags += [f"--config.{k}={format_value(v)}" for k, v in run.overrides.items()]
  # The progress bar only redraws the log file; it changes nothing else.
  return flags + [f"--config.seed={run.seed}", "--config.progress_bar=False"]


def commands(run: Run, python: str = sys.executable) -> Dict[str, List[str]]:
  """``{"train": argv, "eval": argv}``: exactly what a user would run from the repo root."""
  train = [python, "train.py"] + _flags(run)
  evaluate = [python, "eval.py"] + _flags(run)
  return {"train": train, "eval": evaluate}


def load_config(config: str, overrides: Mapping[str, Any] = (), seed: Optional[int] = None):
  """The ConfigDict ``train.py`` would see for ``config`` plus ``overrides``.

  Raises :class:`SweepError` for a field the config does not have.
  """
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, arg = config.partition(":")
  path = path if os.path.isabs(path) else os.path.join(REPO, path)
  if REPO not in sys.path:  # configs import "from configs import default"
    sys.path.insert(0, REPO)
  spec = importlib.util.spec_from_file_location("_sweep_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config(arg) if arg else module.get_config()
  for field, value in dict(overrides).items():
    if field not in cfg:
      raise SweepError(f"config {config} has no field {field!r}; see configs/default.py")
    try:
      cfg[field] = tuple(value) if isinstance(value, list) else value
    except TypeError as e:
      raise SweepError(f"config {config}: {field}={value!r}: {e}") from None
  if seed is not None:
    cfg.seed = seed
  return cfg


# ======================================================================================
# Running
# ======================================================================================
def _read_json(path: str, default=None):
  if not os.path.exists(path):
    return default
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=2)
  os.replace(tmp, path)


def is_finished(workdir: str) -> bool:
  return os.path.exists(os.path.join(workdir, "eval.json"))


def _call(argv: List[str], log_path: str, env: Optional[Mapping[str, str]]) -> tuple:
  start = time.perf_counter()
  with open(log_path, "a") as log:
    log.write(f"$ {shlex.join(argv)}\n")
    log.flush()
    rc = subprocess.call(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                         env=None if env is None else {**os.environ, **env})
  return rc, time.perf_counter() - start


def run_one(run: Run, env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
  """Trains and evaluates ``run`` unless ``eval.json`` exists; returns :func:`collect`.

  Output of both commands goes to ``WORKDIR/sweep.log``; wall times add up over
  attempts in ``WORKDIR/sweep_times.json``. A failed command gives a record with
  ``status="failed"`` and the command's last output line (the sweep goes on).
  """
  argv = commands(run)
  check_workdir(run)
  os.makedirs(run.workdir, exist_ok=True)
  _write_json(os.path.join(run.workdir, RUN_FILE), {
      "config": run.config, "overrides": dict(run.overrides), "seed": run.seed,
      "group": run.group, "resolved_config": resolved_config(run),
      "commands": {k: shlex.join(["python"] + v[1:]) for k, v in argv.items()}})
  if is_finished(run.workdir):
    return collect(run)
  times_path = os.path.join(run.workdir, TIMES_FILE)
  times = _read_json(times_path, {"train_s": 0.0, "eval_s": 0.0, "attempts": 0})
  log_path = os.path.join(run.workdir, "sweep.log")
  times["attempts"] += 1
  for stage in ("train", "eval"):
    rc, seconds = _call(argv[stage], log_path, env)
    times[f"{stage}_s"] += seconds
    _write_json(times_path, times)
    if rc != 0:
      return {**collect(run), "status": "failed",
              "error": f"{stage}.py exited {rc}: {_last_line(log_path)}"}
  return collect(run)


def resolved_config(run: Run) -> Dict[str, Any]:
  """Every field of the config ``run`` trains with (JSON types), display flags left out."""
  cfg = load_config(run.config, run.overrides, run.seed).to_dict()
  for field in ("progress_bar",):
    cfg.pop(field, None)
  return json.loads(json.dumps(cfg))


def check_workdir(run: Run) -> None:
  """Raises :class:`SweepError` when ``run.workdir`` holds a run of another config (e.g.
  after a config file's defaults changed): resuming or skipping it would be wrong.

  The comparison is train.py's (``l0jax.workdir.config_changes``): fields that may change
  on resume (logging, processes, ...) and fields only one side has are not compared."""
  from l0jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  recorded = (_read_json(os.path.join(run.workdir, RUN_FILE)) or {}).get("resolved_config")
  if recorded is None:
    return
  changed = workdir_lib.config_changes(recorded, resolved_config(run))
  if changed:
    raise SweepError(
        f"{run.workdir} holds a run with other settings ({'; '.join(changed)}); "
        "remove it or sweep into another --root")


def _last_line(path: str) -> str:
  with open(path) as f:
    lines = [l.strip() for l in f.read().replace("\r", "\n").splitlines() if l.strip()]
  return lines[-1] if lines else ""


# ======================================================================================
# Results
# ======================================================================================
def time_to_target(records: Sequence[Mapping[str, Any]], targets: Sequence[float],
                   steps_per_epoch: int, tolerance: float = TOLERANCE) -> Optional[float]:
  """The epoch from which every logged constraint value stays within ``tolerance``.

  ``records`` are ``metrics.jsonl`` lines; the training ones (not ``"eval"``) carry
  ``constraint_values`` (the constrained densities, e.g. the model's expected density),
  logged every ``log_every_steps`` steps. The record at step ``s`` counts as epoch
  ``s / steps_per_epoch``; the result is the first logged step from which all later
  logged values satisfy ``max_k |value_k - target_k| <= tolerance``, in epochs (so its
  resolution is ``log_every_steps / steps_per_epoch``). None when the last logged value is
  off target (or nothing is constrained).
  """
  if not targets:
    return None
  train = [r for r in records if not r.get("eval") and "constraint_values" in r]
  first = None
  for r in train:
    within = max(abs(v - t) for v, t in zip(r["constraint_values"], targets)) <= tolerance
    if within and first is None:
      first = r["step"]
    elif not within:
      first = None
  return None if first is None else first / steps_per_epoch


_SPLIT_SIZES: Dict[tuple, int] = {}


def steps_per_epoch(config) -> int:
  """Training steps in one epoch of ``config``'s train split (as ``train.py`` counts)."""
  from l0jax import train_lib  # pylint: disable=g-import-not-at-top
  key = (config.dataset, config.train_split, train_lib.data_dir(config), config.idx_dir,
         bool(config.fake_data))
  if key not in _SPLIT_SIZES:
    _SPLIT_SIZES[key] = train_lib.num_train_examples(config)
  return _SPLIT_SIZES[key] // config.batch_size


RESULT_KEYS = ("test_error", "test_loss", "expected_density", "test_time_density",
               "purged_density", "n_params_dense", "n_params_kept", "purged_params",
               "dense_macs", "purged_macs", "architecture", "step")


def collect(run: Run, epoch_steps: Optional[int] = None) -> Dict[str, Any]:
  """One flat record of ``run``: what it is, ``eval.json``'s numbers, time to target and
  wall times (``status`` is "done" with an ``eval.json``, else "unfinished").

  ``epoch_steps`` (default: from the config's train split) converts steps to epochs.
  """
  result = _read_json(os.path.join(run.workdir, "eval.json"))
  times = _read_json(os.path.join(run.workdir, TIMES_FILE), {})
  argv = commands(run)
  record: Dict[str, Any] = {
      "group": run.group, "config": run.config, **dict(run.overrides), "seed": run.seed,
      "status": "done" if result is not None else "unfinished",
      "workdir": run.workdir}
  if result is None:
    return record
  record.update({k: result.get(k) for k in RESULT_KEYS})
  # A dense run deploys every parameter: its "purged" size is the dense size.
  if record["purged_params"] is None:
    record["purged_params"] = result.get("n_params_kept")
    record["purged_macs"] = result.get("dense_macs")
  record["purged_macs_density"] = (
      record["purged_macs"] / record["dense_macs"]
      if is_number(record["purged_macs"]) and is_number(record["dense_macs"])
      and record["dense_macs"] > 0 else None)
  targets = result.get("targets") or []
  record["target"] = targets[0] if len(targets) == 1 else (targets or None)
  if epoch_steps is None:
    epoch_steps = steps_per_epoch(load_config(run.config, run.overrides, run.seed))
  record["epochs"] = result["step"] / epoch_steps
  from l0jax import reporting  # pylint: disable=g-import-not-at-top
  record["time_to_target"] = time_to_target(reporting.read_metrics(run.workdir), targets,
                                            epoch_steps)
  record["train_wall_s"] = times.get("train_s")
  record["eval_wall_s"] = times.get("eval_s")
  record["command"] = shlex.join(["python"] + argv["train"][1:])
  return record


def is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
