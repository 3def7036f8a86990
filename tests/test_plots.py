"""The plots eval.py writes: per-layer targets tell apart, small layers stay visible;
and the benchmark's speed wording."""

import os
import sys

import pytest

from l0jax import plots

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["fc1", "fc2", "fc3"]


@pytest.fixture
def figures(monkeypatch):
  """The figures the plot functions save (kept open for inspection)."""
  kept = []
  monkeypatch.setattr(plots, "_save", lambda plt, fig, path: kept.append(fig) or path)
  yield kept
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  for fig in kept:
    plt.close(fig)


def _records():
  return [{"step": s, "expected_density": 0.5, "multipliers": [0.1 * s, 0.0, 0.2],
           "layer_densities": dict(zip(NAMES, (0.4, 0.6, 0.9)))} for s in (1, 2, 3)]


def test_layerwise_targets_are_dashed_in_their_layers_colour(figures):
  plots.plot_density_and_multipliers(_records(), [0.3, 0.5, 0.8], NAMES, "x.png")
  ax = figures[0].axes[0]
  curves = {l.get_label(): l.get_color() for l in ax.lines if l.get_linestyle() == "-"}
  targets = {l.get_label(): (l.get_color(), l.get_ydata()[0]) for l in ax.lines
             if l.get_linestyle() == "--"}
  assert targets == {f"{n} target": (curves[n], t) for n, t in zip(NAMES, (0.3, 0.5, 0.8))}
  assert len({c for c, _ in targets.values()}) == 3


def test_one_model_target_is_one_black_line(figures):
  plots.plot_density_and_multipliers(_records(), [0.33], NAMES, "x.png")
  dashed = [l for l in figures[0].axes[0].lines if l.get_linestyle() == "--"]
  assert len(dashed) == 1 and dashed[0].get_label() == "target"


def test_kept_units_are_fractions_so_small_layers_show(figures):
  result = {"kept_units": {"fc1": 392, "fc2": 3, "fc3": 10},
            "total_units": {"fc1": 784, "fc2": 300, "fc3": 10}}
  plots.plot_kept_units(result, "x.png")
  bars = figures[0].axes[0].patches
  heights = [round(b.get_height(), 6) for b in bars]
  assert heights == [1.0, 1.0, 1.0, 0.5, 0.01, 1.0]  # totals, then kept / total
  labels = [t.get_text() for t in figures[0].axes[0].texts]
  assert labels == ["392/784", "3/300", "10/10"]


def test_speed_ratio_never_says_faster_for_a_slower_step(monkeypatch):
  monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
  import step_time  # pylint: disable=g-import-not-at-top
  assert step_time.speed_ratio(3.6, 1.8) == "2.00x faster than"
  assert step_time.speed_ratio(3.6, 3.6) == "1.00x faster than"
  assert step_time.speed_ratio(2.0, 2.04) == "1.02x slower than"
  sys.modules.pop("step_time", None)
