"""The sweep's plots, one set per config file (model): achieved density against each
numeric grid field, and test error against purged parameters (Pareto fronts)."""

from __future__ import annotations

import os
from typing import Any, Dict, List, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

from experiments import runs  # noqa: E402


def _stem(config: str) -> str:
  return os.path.splitext(os.path.basename(config.partition(":")[0]))[0]


def _save(fig, path: str) -> str:
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)
  return path


def pareto_front(points):
  """The points no other point beats in both coordinates (smaller is better), by x."""
  front, best = [], float("inf")
  for x, y in sorted(points):
    if y < best:
      front.append((x, y))
      best = y
  return front


def plot_density(records, groups: Sequence[str], field: str, path: str) -> str:
  """Final expected density (one dot per run, the means over seeds joined) vs ``field``;
  against ``target_density`` as points off the target, with the ±1 point band."""
  fig, ax = plt.subplots(figsize=(5.5, 4.2))
  off_target = field == "target_density"
  y = ((lambda r: 100 * (r["expected_density"] - r["target_density"])) if off_target
       else (lambda r: r["expected_density"]))
  for group in groups:
    rs = [r for r in records if r["group"] == group and runs.is_number(r.get(field))]
    xs = sorted({r[field] for r in rs})
    means = [sum(y(r) for r in rs if r[field] == x) / sum(r[field] == x for r in rs)
             for x in xs]
    line, = ax.plot(xs, means, "-", lw=1, label=group)
    ax.plot([r[field] for r in rs], [y(r) for r in rs], "o", ms=4, alpha=0.6,
            color=line.get_color())
  if off_target:
    ax.axhline(0, color="k", ls="--", lw=1, label="target")
    ax.axhspan(-100 * runs.TOLERANCE, 100 * runs.TOLERANCE, color="k", alpha=0.1,
               label="target ± 1 point")
    ax.set_ylabel("final expected density - target (points)")
  else:
    ax.set_ylabel("final expected density")
  if field == "penalty":
    ax.set_xscale("log")
  ax.set_xlabel(field)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  return _save(fig, path)


def plot_error_vs_params(records, path: str) -> str:
  """Test error vs purged parameters, per group, with each group's Pareto front;
  ungated (dense) runs as a dashed reference line."""
  fig, ax = plt.subplots(figsize=(5.5, 4.2))
  gated = [r for r in records if r.get("gated", True) is not False]
  dense = [r for r in records if r.get("gated", True) is False]
  for group in dict.fromkeys(r["group"] for r in gated):
    pts = [(r["purged_params"], 100 * r["test_error"]) for r in gated
           if r["group"] == group]
    dots, = ax.plot(*zip(*pts), "o", ms=4, alpha=0.6, label=group)
    front = pareto_front(pts)
    ax.plot(*zip(*front), "-", lw=1, color=dots.get_color())
  if dense:
    err = 100 * sum(r["test_error"] for r in dense) / len(dense)
    ax.axhline(err, ls="--", color="k", lw=1,
               label=f"dense ({dense[0]['purged_params']} params)")
  ax.set_xscale("log")
  ax.set_xlabel("purged parameters")
  ax.set_ylabel("test error (%)")
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3, which="both")
  return _save(fig, path)


def write_all(records: Sequence[Dict[str, Any]], blocks, out: str) -> List[str]:
  """Per config file with finished runs: ``<config>_density_vs_<field>.png`` for each
  numeric grid field, and ``<config>_error_vs_params.png``."""
  written = []
  done = [r for r in records if r.get("status") == "done"]
  for stem in dict.fromkeys(_stem(r["config"]) for r in done):
    rs = [r for r in done if _stem(r["config"]) == stem]
    fields: Dict[str, List[str]] = {}
    for b in blocks:
      if _stem(b["config"]) != stem:
        continue
      for field, values in b["grid"].items():
        if len(values) > 1 and all(runs.is_number(v) for v in values):
          fields.setdefault(field, []).append(b["name"])
    for field, groups in fields.items():
      gated = [r for r in rs if r.get("expected_density") is not None]
      written.append(plot_density(gated, groups, field,
                                  os.path.join(out, f"{stem}_density_vs_{field}.png")))
    written.append(plot_error_vs_params(rs, os.path.join(out,
                                                         f"{stem}_error_vs_params.png")))
  return written
