"""What a run shows and writes: metrics.jsonl, TensorBoard, the progress bar, the gate
and constraint reports and the end-of-run table.

Only process 0 writes. ``metrics.jsonl`` holds one JSON object a line: training records
(``step, loss, accuracy, lagrangian, expected_density, layer_densities, multipliers,
constraint_values, examples_per_sec``) and evaluation records (``"eval": true``,
``test_error, test_loss, test_examples, expected_density, test_time_density``).
TensorBoard gets the same numbers under ``train/...`` and ``eval/...`` tags.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List, Optional, Sequence

import jax
import numpy as np

from l0jax import density
from l0jax.workdir import atomic_write

__all__ = ["MetricsLog", "read_metrics", "progress_fields", "gate_report",
           "constraint_report", "constraint_rows", "format_summary"]

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def _parse_lines(lines) -> List[Dict[str, Any]]:
  """JSON records of the lines; a line cut short (a write the process died in) is
  skipped."""
  records = []
  for line in lines:
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except ValueError:
      continue
  return records


def read_metrics(workdir: str) -> List[Dict[str, Any]]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return _parse_lines(f)


class MetricsLog:
  """``metrics.jsonl`` plus optional TensorBoard scalars, written by process 0.

  On resume from ``resume_step``, the records after it (written by a run that died
  before its next checkpoint) are dropped from ``metrics.jsonl`` and TensorBoard is told
  to hide its points after it (``purge_step``), so both read like one uninterrupted run.
  """

  def __init__(self, workdir: str, resume_step: int, tensorboard: bool, active: bool):
    self.active = active
    self.path = os.path.join(workdir, METRICS_FILE)
    self.writer = None
    if not self.active:
      return
    kept = [r for r in read_metrics(workdir) if r.get("step", 0) <= resume_step]
    atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      except ImportError:
        return
      # A new events file per start (its name would otherwise repeat within a second).
      self.writer = SummaryWriter(os.path.join(workdir, TENSORBOARD_DIR),
                                  purge_step=resume_step + 1,
                                  filename_suffix=f".{os.getpid()}.{resume_step}")

  def write(self, record: Dict[str, Any]) -> None:
    if not self.active:
      return
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self.writer is not None:
      prefix = "eval" if record.get("eval") else "train"
      for tag, value in _scalars(record):
        self.writer.add_scalar(f"{prefix}/{tag}", value, record["step"])

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()
      self.writer = None


def _scalars(record: Dict[str, Any]):
  """(tag, number) pairs of a record: nested dicts and lists flattened, no booleans."""
  def numeric(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)
  for key, value in record.items():
    if key in ("step", "eval"):
      continue
    if numeric(value):
      yield key, value
    elif isinstance(value, dict):
      yield from ((f"{key}/{k}", v) for k, v in value.items() if numeric(v))
    elif isinstance(value, list):
      yield from ((f"{key}/{i}", v) for i, v in enumerate(value) if numeric(v))


def progress_fields(record: Dict[str, Any], layer_names: Sequence[str]) -> Dict[str, str]:
  """The progress bar's fields: loss, accuracy, density and each multiplier by name."""
  fields = {"loss": f"{record['loss']:.3f}", "acc": f"{record['accuracy']:.3f}"}
  if "expected_density" in record:
    fields["density"] = f"{record['expected_density']:.3f}"
  multipliers = record.get("multipliers") or []
  if len(multipliers) == 1:
    fields["lambda"] = f"{multipliers[0]:.3g}"
  elif multipliers:
    names = layer_names if len(layer_names) == len(multipliers) else range(
        len(multipliers))
    fields.update({f"lambda_{n}": f"{v:.3g}" for n, v in zip(names, multipliers)})
  return fields


def gate_report(params, config) -> Dict[str, Any]:
  """Densities, kept units and parameter counts of (host) params at test time."""
  from l0jax import dependency  # pylint: disable=g-import-not-at-top
  params = dependency.model_params(params)  # a Dep-L0 generator is not deployed
  leaves = jax.tree.leaves(params)
  log_alpha_count = sum(l.size for p, l in jax.tree_util.tree_flatten_with_path(params)[0]
                        if getattr(p[-1], "key", None) == "log_alpha")
  n_dense = int(sum(l.size for l in leaves) - log_alpha_count)
  if not config.gated:
    return {"n_params_dense": n_dense, "n_params_kept": n_dense}
  report = density.density_report(params, config.test_gate)
  closed = sum(n * (1.0 - float(report.test_time[k]))
               for k, n in report.num_sparsifiable.items())
  return {
      "expected_density": float(report.model_expected),
      "test_time_density": float(report.model_test_time),
      "layer_expected_densities": {k: float(v) for k, v in report.expected.items()},
      "layer_test_time_densities": {k: float(v) for k, v in report.test_time.items()},
      "kept_units": {k: int(v) for k, v in report.kept_units.items()},
      "total_units": dict(report.total_units),
      "n_params_dense": n_dense,
      "n_params_kept": int(round(n_dense - closed)),
  }


def gradient_flow_report(records: Sequence[Dict[str, Any]],
                         steps_per_epoch: int) -> Dict[str, Any]:
  """``{"gradient_flow": {"epoch_1": row, "final": row}}`` from ``metrics.jsonl`` records
  of a run trained with ``config.log_egf``; ``{}`` when none logged the flow.

  ``epoch_1`` is the first logged row at or after the end of epoch 1 (the last one if
  training was shorter), ``final`` the last; a row holds ``step``, ``epoch`` and the
  four flow metrics (:mod:`l0jax.science.egf`).
  """
  from l0jax.science import egf  # pylint: disable=g-import-not-at-top
  rows = [r for r in records if not r.get("eval") and "egf_l2" in r]
  if not rows:
    return {}

  def row(r):
    return {"step": int(r["step"]), "epoch": r["step"] / steps_per_epoch,
            **{k: float(r[k]) for k in egf.FLOW_METRICS if k in r}}

  after_one = [r for r in rows if r["step"] >= steps_per_epoch]
  return {"gradient_flow": {"epoch_1": row(after_one[0] if after_one else rows[-1]),
                            "final": row(rows[-1])}}


def constraint_report(task, params, config) -> Dict[str, Any]:
  """``{"constraints": rows}`` of a ``train_lib.Task``: each constraint's value on (host)
  ``params``, its target and whether it is met (:func:`constraint_rows`); ``{}`` for
  a run without targets (dense or penalized)."""
  if not task.problem.num_constraints or task.problem.formulation == "penalized":
    return {}
  values = np.asarray(jax.jit(task.constraints)(params))
  quantity = "cascade density" if config.density_mode == "cascade" else "density"
  names = ([f"model {quantity}"] if config.constraint == "model"
           else [f"{name} {quantity}" for name in task.layer_names])
  return {"constraints": constraint_rows(values, task.problem.targets, names,
                                         task.problem.kinds)}


def constraint_rows(values: Sequence[float], targets: Sequence[float],
                    names: Sequence[str],
                    kinds: Sequence[str] = ()) -> List[Dict[str, Any]]:
  """One row per constraint: name, value, target, kind and whether it is met.

  Met means ``value <= target`` (kind ``"ineq"``, the default) or ``value == target``
  (``"eq"``) to the 0.01 percentage points the table shows.
  """
  kinds = tuple(kinds) or ("ineq",) * len(targets)
  return [{"name": n, "value": float(v), "target": float(t), "kind": k,
           "met": bool((float(v) - float(t) if k == "ineq" else abs(float(v) - float(t)))
                       <= 5e-5)}
          for n, v, t, k in zip(names, values, targets, kinds)]


def _percent(x: float) -> str:
  return f"{100 * x:.2f}%"


def format_summary(summary: Dict[str, Any]) -> str:
  """The end-of-run table (train.py, eval.py)."""
  lines = ["", "  result              value", "  ------------------  ------------------"]
  lines.append(f"  test error          {_percent(summary['test_error'])}")
  if "expected_density" in summary:
    lines.append(f"  expected density    {_percent(summary['expected_density'])}")
    lines.append(f"  test-time density   {_percent(summary['test_time_density'])}")
    lines.append(f"  params kept         {summary['n_params_kept']} / "
                 f"{summary['n_params_dense']}")
    if "purged_density" in summary:
      lines.append(f"  purged density      {_percent(summary['purged_density'])} "
                   f"(architecture {summary['architecture']})")
    lines.append("  kept units          " + ", ".join(
        f"{k}: {summary['kept_units'][k]}/{summary['total_units'][k]}"
        for k in summary["kept_units"]))
  rows: Optional[List[Dict[str, Any]]] = summary.get("constraints")
  if rows:
    width = max(18, max(len(r["name"]) for r in rows))
    lines += ["", f"  {'constraint':{width}}  {'value':>7}  {'target':>7}  met",
              f"  {'-' * width}  -------  -------  ---------------"]
    for r in rows:
      met = "yes" if r["met"] else (
          f"no ({100 * (r['value'] - r['target']):+.2f} pts)")
      lines.append(f"  {r['name']:{width}}  {_percent(r['value']):>7}  "
                   f"{_percent(r['target']):>7}  {met}")
  return "\n".join(lines)
