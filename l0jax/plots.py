"""PNG plots of a run from metrics.jsonl records and an eval.json result (matplotlib Agg)."""

from __future__ import annotations

import os
from typing import Any, Dict, List


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(plt, fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def plot_density_and_multipliers(records, targets, layer_names, path) -> str:
  """Expected density (model and per layer) and multipliers vs step, targets dashed.

  With one target per layer, each layer's target is dashed in that layer's colour and
  labelled with its name; a model-wise target is one black dashed line.
  """
  plt = _pyplot()
  train = [r for r in records if not r.get("eval") and "expected_density" in r]
  steps = [r["step"] for r in train]
  fig, (ax_d, ax_m) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
  ax_d.plot(steps, [r["expected_density"] for r in train], lw=2, color="k", label="model")
  per_layer = len(targets) == len(layer_names) and len(targets) > 1
  colors = {}
  for name in layer_names:
    line, = ax_d.plot(steps, [r["layer_densities"][name] for r in train], lw=1,
                      alpha=0.8, label=name)
    colors[name] = line.get_color()
  if per_layer:
    for name, t in zip(layer_names, targets):
      ax_d.axhline(t, ls="--", color=colors[name], lw=1, label=f"{name} target")
  else:
    for i, t in enumerate(targets):
      ax_d.axhline(t, ls="--", color="k", lw=1, label="target" if i == 0 else None)
  ax_d.set_ylabel("expected density")
  ax_d.set_ylim(0, 1.02)
  ax_d.legend(fontsize=7, ncol=2)
  n = len(train[0]["multipliers"]) if train else 0
  for i in range(n):
    name = layer_names[i] if n == len(layer_names) and n > 1 else "lambda"
    ax_m.plot(steps, [r["multipliers"][i] for r in train], label=name,
              color=colors.get(name))
  ax_m.set_ylabel("multiplier")
  ax_m.set_xlabel("step")
  if n:
    ax_m.legend(fontsize=7)
  return _save(plt, fig, path)


def plot_kept_units(result, path) -> str:
  """Fraction of units (neurons, channels or weights) kept per gated layer.

  A fraction, so a 10-unit layer is as visible as a 784-unit one; each bar is labelled
  with its counts.
  """
  plt = _pyplot()
  names = list(result["kept_units"])
  kept = [result["kept_units"][n] for n in names]
  total = [result["total_units"][n] for n in names]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.bar(names, [1.0] * len(names), color="lightgray", label="total")
  ax.bar(names, [k / max(t, 1) for k, t in zip(kept, total)], color="tab:blue",
         label="kept (test-time gate > 0)")
  for i, (k, t) in enumerate(zip(kept, total)):
    ax.text(i, k / max(t, 1), f"{k}/{t}", ha="center", va="bottom", fontsize=8)
  ax.set_ylabel("fraction of units kept")
  ax.set_ylim(0, 1.12)
  ax.legend(fontsize=8, loc="upper right")
  return _save(plt, fig, path)


def plot_test_error(records, path) -> str:
  plt = _pyplot()
  evals = [r for r in records if r.get("eval")]
  fig, ax = plt.subplots(figsize=(6, 3.5))
  ax.plot([r["step"] for r in evals], [100 * r["test_error"] for r in evals], marker="o")
  ax.set_xlabel("step")
  ax.set_ylabel("test error (%)")
  return _save(plt, fig, path)


def write_all(workdir: str, result: Dict[str, Any], records: List[Dict[str, Any]]):
  """Writes every plot that the run's data supports; returns the paths written."""
  written = []
  if "kept_units" in result:
    written.append(plot_density_and_multipliers(
        records, result.get("targets", []), result.get("layer_names", []),
        os.path.join(workdir, "density.png")))
    written.append(plot_kept_units(result, os.path.join(workdir, "kept_units.png")))
  written.append(plot_test_error(records, os.path.join(workdir, "test_error.png")))
  return written
