"""experiments/runs.py and experiments/sweep.py: time to target, summaries, and a real
runlocal grid (train.py + eval.py subprocesses on the fake dataset), resumed."""

import csv
import json
import math
import os

import hypothesis
import hypothesis.strategies as st
import numpy as np
import pytest

from experiments import runs, sweep, sweep_plots

SETTINGS = hypothesis.settings(max_examples=40, deadline=None, derandomize=True)


# ======================================================================================
# Pure pieces against independent references
# ======================================================================================
def _time_to_target_reference(values, targets, steps, steps_per_epoch, tol):
  """Brute force: the first index i with every value from i on within tol."""
  for i in range(len(values)):
    if all(max(abs(v - t) for v, t in zip(vs, targets)) <= tol for vs in values[i:]):
      return steps[i] / steps_per_epoch
  return None


@SETTINGS
@hypothesis.given(st.lists(st.lists(st.floats(0.0, 0.3), min_size=2, max_size=2),
                           min_size=0, max_size=12),
                  st.sampled_from([10, 600]))
def test_time_to_target_matches_brute_force(values, steps_per_epoch):
  targets, tol = (0.1, 0.2), 0.05
  steps = [100 * (i + 1) for i in range(len(values))]
  records = [{"step": s, "constraint_values": v} for s, v in zip(steps, values)]
  # Eval records (no constraint values) in between must not count.
  records += [{"step": s, "eval": True, "expected_density": 0.9} for s in steps[::2]]
  records.sort(key=lambda r: r["step"])
  got = runs.time_to_target(records, targets, steps_per_epoch, tol)
  want = _time_to_target_reference(values, targets, steps, steps_per_epoch, tol)
  assert got == want


def test_time_to_target_cases():
  rec = lambda s, v: {"step": s, "constraint_values": [v]}
  # Reaches 0.105 at step 200, leaves at 300, back for good from 400: epoch 400/100.
  records = [rec(100, 0.5), rec(200, 0.105), rec(300, 0.2), rec(400, 0.1), rec(500, 0.095)]
  assert runs.time_to_target(records, [0.1], 100) == 4.0
  assert runs.time_to_target(records[:3], [0.1], 100) is None  # ends off target
  assert runs.time_to_target(records, [], 100) is None        # nothing constrained


@SETTINGS
@hypothesis.given(st.one_of(
    st.integers(-10**6, 10**6), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=4).map(tuple),
    st.sampled_from(["cosine", "extragradient", "penalized"])))
def test_format_then_parse_is_identity(value):
  assert runs.parse_value(runs.format_value(value)) == value


def test_run_name_is_one_path_component():
  name = runs.run_name({"layer_targets": (0.5, 0.3), "scheme": "a/b"}, 3)
  assert "/" not in name and " " not in name
  assert name == "layer_targets=0.5,0.3,scheme=ab,seed=3"


@SETTINGS
@hypothesis.given(st.lists(st.floats(-1e3, 1e3), min_size=1, max_size=8))
def test_mean_std_matches_numpy(xs):
  mean, std = sweep.mean_std(xs + [None, float("nan")])  # non-numbers are skipped
  np.testing.assert_allclose(mean, np.mean(xs), rtol=1e-9, atol=1e-9)
  want_std = np.std(xs, ddof=1) if len(xs) > 1 else 0.0
  np.testing.assert_allclose(std, want_std, rtol=1e-9, atol=1e-7)


@SETTINGS
@hypothesis.given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)),
                           min_size=1, max_size=15, unique=True))
def test_pareto_front_is_the_non_dominated_set(points):
  front = sweep_plots.pareto_front(points)
  dominated = lambda p: any(q != p and q[0] <= p[0] and q[1] <= p[1] for q in points)
  assert set(front) == {p for p in points if not dominated(p)}


def test_blocks_expand_to_the_product_times_seeds(tmp_path):
  block = sweep.check_block({"name": "b", "config": "configs/fashion_mnist_mlp.py",
                             "grid": {"target_density": [0.1, 0.2],
                                      "scheme": ["alternating", "extragradient"]},
                             "overrides": {"num_epochs": 3}, "seeds": [0, 1, 2]})
  expanded = sweep.expand([block], str(tmp_path))
  assert len(expanded) == 12
  assert len({r.workdir for r in expanded}) == 12
  assert all(r.overrides["num_epochs"] == 3 for r in expanded)
  assert [r.seed for r in expanded[:4]] == [0, 0, 0, 0]  # seeds outer


def test_bad_specs_fail_with_one_line(tmp_path):
  cfg = "configs/fashion_mnist_mlp.py"
  with pytest.raises(runs.SweepError, match="no field 'target_densty'"):
    sweep.expand([sweep.check_block({"name": "b", "config": cfg,
                                     "grid": {"target_densty": [0.1]}})], str(tmp_path))
  with pytest.raises(runs.SweepError, match="target_density"):
    sweep.expand([sweep.check_block({"name": "b", "config": cfg,
                                     "grid": {"target_density": ["low"]}})], str(tmp_path))
  with pytest.raises(runs.SweepError, match="needs 'name' and 'config'"):
    sweep.check_block({"name": "b", "config": cfg, "grids": {}})
  with pytest.raises(runs.SweepError, match="FIELD=VALUE"):
    sweep.block_from_flags(cfg, ["target_density"], [], "0")


def test_block_from_flags_splits_tuples():
  block = sweep.block_from_flags("configs/fashion_mnist_mlp.py",
                                 ["layer_targets=(0.5,0.3,0.8),(0.2,0.2,0.9)"],
                                 ["constraint=layerwise", "num_epochs=2"], "0,1")
  assert block["grid"] == {"layer_targets": [(0.5, 0.3, 0.8), (0.2, 0.2, 0.9)]}
  assert block["overrides"] == {"constraint": "layerwise", "num_epochs": 2}
  assert block["seeds"] == [0, 1]


def test_summary_groups_seeds():
  rec = lambda seed, err, dens: {
      "group": "g", "config": "c", "target_density": 0.1, "seed": seed, "status": "done",
      "test_error": err, "expected_density": dens, "target": 0.1,
      "time_to_target": 1.0 if abs(dens - 0.1) <= 0.01 else None}
  rows = sweep.summarize([rec(0, 0.1, 0.1), rec(1, 0.2, 0.105), rec(2, 0.3, 0.2),
                          {**rec(3, 0.0, 0.1), "status": "failed"}])
  assert len(rows) == 1
  row = rows[0]
  assert row["n"] == 3 and row["on_target"] == 2 and row["reached"] == 2
  np.testing.assert_allclose(row["test_error"], (0.2, 0.1))
  assert "(1 never)" in sweep.summary_markdown(rows)


# ======================================================================================
# End to end: a runlocal grid through train.py / eval.py, then resumed
# ======================================================================================
def test_runlocal_grid_end_to_end_and_resume(fake_dataset, tmp_path):
  idx_dir, data_dir = fake_dataset
  small = {"idx_dir": idx_dir, "data_dir": data_dir, "mlp_features": (16, 8),
           "batch_size": 20, "num_train_steps": 8, "log_every_steps": 2,
           "eval_every_steps": 4, "checkpoint_every_steps": 4, "tensorboard": False}
  cfg = "configs/fashion_mnist_mlp.py:runlocal"
  blocks = [sweep.check_block({"name": "constrained", "config": cfg, "overrides": small,
                               "grid": {"target_density": [0.3, 0.6]}, "seeds": [1]})]
  root, out = str(tmp_path / "root"), str(tmp_path / "out")
  records = sweep.run_sweep(blocks, root, out, log=lambda *_: None)

  assert [r["status"] for r in records] == ["done"] * 2
  for r in records:
    with open(os.path.join(r["workdir"], "eval.json")) as f:
      result = json.load(f)
    assert r["test_error"] == result["test_error"]
    assert r["step"] == 8 and r["epochs"] == 8 / (400 // 20)
    # The command ran with the overrides: the model has the (16, 8) hidden layers.
    assert r["n_params_dense"] == 784 * 16 + 16 + 16 * 8 + 8 + 8 * 10 + 10
    assert f"--config.seed={r['seed']}" in r["command"]
  assert [r["target"] for r in records] == [0.3, 0.6]
  assert [r["target_density"] for r in records] == [0.3, 0.6]

  with open(os.path.join(out, "results.csv")) as f:
    rows = list(csv.DictReader(f))
  assert [float(r["test_error"]) for r in rows] == [r["test_error"] for r in records]
  for name in ("results.json", "summary.csv", "summary.md",
               "fashion_mnist_mlp_density_vs_target_density.png",
               "fashion_mnist_mlp_error_vs_params.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0

  # Resume: finished runs are skipped; a run without eval.json trains on from its
  # checkpoint (here: nothing left) and is evaluated again, to the same result.
  times = lambda r: json.load(open(os.path.join(r["workdir"], runs.TIMES_FILE)))
  os.remove(os.path.join(records[1]["workdir"], "eval.json"))
  again = sweep.run_sweep(blocks, root, out, log=lambda *_: None)
  assert [times(r)["attempts"] for r in again] == [1, 2]
  for a, b in zip(records, again):
    assert a["test_error"] == b["test_error"]
    assert a["expected_density"] == b["expected_density"]

  # The capacity check retrains the purged architecture of a finished run.
  from experiments import retrain_purged
  retrained = retrain_purged.retrain(records[0]["workdir"])
  assert retrained["architecture"] == records[0]["architecture"]
  assert retrained["test_error_gated"] == records[0]["test_error"]
  assert retrained["n_params"] == records[0]["purged_params"]
  assert 0.0 <= retrained["test_error_retrained"] <= 1.0

  # A workdir that holds a run of other settings is refused, not resumed.
  changed = [{**blocks[0], "overrides": {**small, "gate_learning_rate": 0.5}}]
  with pytest.raises(runs.SweepError, match="gate_learning_rate"):
    sweep.run_sweep(changed, root, out, log=lambda *_: None)


def _fake_finished_run(workdir, result, metrics=()):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "eval.json"), "w") as f:
    json.dump(result, f)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps(m) + "\n" for m in metrics)


def test_collect_and_plots_of_dense_penalized_and_constrained_runs(tmp_path):
  cfg = "configs/fashion_mnist_mlp.py"
  dense = runs.Run(cfg, {"gated": False}, 0, str(tmp_path / "dense"), "dense")
  _fake_finished_run(dense.workdir, {"step": 6000, "test_error": 0.11,
                                     "n_params_dense": 1000, "n_params_kept": 1000,
                                     "dense_macs": 900, "targets": []})
  record = runs.collect(dense, epoch_steps=600)
  # A dense run deploys every parameter; nothing is constrained.
  assert record["purged_params"] == 1000 and record["purged_macs"] == 900
  assert record["purged_macs_density"] == 1.0
  assert record["target"] is None and record["time_to_target"] is None
  assert record["epochs"] == 10.0 and record["status"] == "done"
  records = [record]
  for group, field, values in (("constrained", "target_density", (0.1, 0.3)),
                               ("penalized", "penalty", (0.01, 0.1))):
    for i, v in enumerate(values):
      run = runs.Run(cfg, {field: v}, 0, str(tmp_path / f"{group}{i}"), group)
      density = 0.1 + 0.2 * i
      _fake_finished_run(run.workdir, {
          "step": 6000, "test_error": 0.12 + 0.01 * i, "expected_density": density,
          "purged_params": 100 + 200 * i, "n_params_dense": 1000,
          "purged_macs": 90 + 300 * i, "dense_macs": 900,
          "targets": [v] if group == "constrained" else []},
          [{"step": 300 * k, "constraint_values": [density]} for k in (1, 2, 3)])
      records.append(runs.collect(run, epoch_steps=600))
  assert records[1]["time_to_target"] == 0.5 and records[3]["time_to_target"] is None
  assert [r["purged_macs_density"] for r in records] == [1.0, 0.1, 390 / 900, 0.1, 390 / 900]
  rows = sweep.summarize(records)
  assert "purged MACs %" in sweep.summary_markdown(rows)
  assert "| 43.3 ± 0.0 |" in sweep.summary_markdown([r for r in rows if r["group"] ==
                                                      "constrained"][1:])
  blocks = [sweep.check_block({"name": g, "config": cfg, "grid": {f: list(v)}})
            for g, f, v in (("constrained", "target_density", (0.1, 0.3)),
                            ("penalized", "penalty", (0.01, 0.1)))]
  written = sweep_plots.write_all(records, blocks, str(tmp_path))
  assert sorted(os.path.basename(p) for p in written) == [
      "fashion_mnist_mlp_density_vs_penalty.png",
      "fashion_mnist_mlp_density_vs_target_density.png",
      "fashion_mnist_mlp_error_vs_params.png"]
  assert all(os.path.getsize(p) > 0 for p in written)


def test_failed_run_is_recorded_and_the_sweep_goes_on(fake_dataset, tmp_path):
  idx_dir, data_dir = fake_dataset
  bad = {"idx_dir": idx_dir, "data_dir": data_dir, "batch_size": 7}  # not divisible by 4
  run = runs.Run("configs/fashion_mnist_mlp.py:runlocal", bad, 0, str(tmp_path / "r"))
  record = runs.run_one(run)
  assert record["status"] == "failed"
  assert "train.py exited" in record["error"] and "batch_size" in record["error"]
  assert not math.isnan(json.load(open(tmp_path / "r" / runs.TIMES_FILE))["train_s"])


def test_calibrate_penalty_reuses_runs_and_hits_every_target(monkeypatch, tmp_path):
  from experiments import calibrate_penalty
  calls = []

  def fake_run_one(run):  # a decreasing penalty -> density map, as training gives
    calls.append(run)
    return {"status": "done", "expected_density": 1.0 / (1.0 + 20 * run.overrides["penalty"])}

  monkeypatch.setattr(runs, "run_one", fake_run_one)
  targets = (0.1, 0.33, 0.5, 0.7)
  result = calibrate_penalty.calibrate("configs/fashion_mnist_mlp.py", targets,
                                       {"num_epochs": 3}, str(tmp_path), "pen",
                                       lo=1e-3, hi=10.0, tol=0.01, log=lambda *_: None)
  for c in result["chosen"]:
    exact = (1 / c["target"] - 1) / 20  # the penalty giving the target exactly
    assert abs(c["density"] - c["target"]) <= 0.01 and c["within_tol"]
    assert c["density"] == 1.0 / (1.0 + 20 * c["penalty"])
    assert abs(c["penalty"] - exact) / exact < 0.2
  penalties = [r.overrides["penalty"] for r in calls]
  assert len(penalties) == len(set(penalties)) == len(result["runs"])  # each run once
  # The workdirs a sweep block over the chosen penalties gives the same runs.
  block = sweep.check_block({"name": "pen", "config": "configs/fashion_mnist_mlp.py",
                             "overrides": {"num_epochs": 3, "method": "penalized"},
                             "grid": {"penalty": penalties}})
  swept = sweep.expand([block], str(tmp_path))
  assert [r.workdir for r in swept] == [r.workdir for r in calls]
  assert all(runs.resolved_config(a) == runs.resolved_config(b)
             for a, b in zip(swept, calls))
  assert all(r.overrides["num_epochs"] == 3 and r.overrides["method"] == "penalized"
             for r in calls)

  # A restart starts from the block's finished runs (their eval.json), of this seed
  # only, and runs nothing new; geometric steps need more runs than interpolated ones.
  for run in list(calls):
    os.makedirs(run.workdir)
    with open(os.path.join(run.workdir, "eval.json"), "w") as f:
      json.dump(fake_run_one(run), f)
  os.makedirs(os.path.join(tmp_path, "pen", "penalty=0.5,seed=1"))
  calls.clear()
  again = calibrate_penalty.calibrate("configs/fashion_mnist_mlp.py", targets,
                                      {"num_epochs": 3}, str(tmp_path), "pen",
                                      lo=1e-3, hi=10.0, tol=0.01, log=lambda *_: None)
  assert calls == []
  assert again["chosen"] == result["chosen"] and again["runs"] == result["runs"]
  geometric = calibrate_penalty.calibrate(
      "configs/fashion_mnist_mlp.py", targets, {"num_epochs": 3}, str(tmp_path / "g"),
      "pen", lo=1e-3, hi=10.0, tol=0.01, step="geometric", log=lambda *_: None)
  assert len(geometric["runs"]) > len(result["runs"])


def test_check_workdir_compares_the_fields_both_configs_have(tmp_path):
  run = runs.Run("configs/fashion_mnist_mlp.py", {"target_density": 0.2}, 0,
                 str(tmp_path / "r"))
  os.makedirs(run.workdir)
  recorded = runs.resolved_config(run)

  def record(cfg):
    with open(os.path.join(run.workdir, runs.RUN_FILE), "w") as f:
      json.dump({"resolved_config": cfg}, f)

  record(recorded)
  runs.check_workdir(run)  # same settings
  old_code = {k: v for k, v in recorded.items() if k != "droprate_init"}
  record({**old_code, "a_field_since_removed": 1})
  runs.check_workdir(run)  # fields of another code version are not compared
  record({**recorded, "log_every_steps": 7, "distributed_heartbeat_timeout_s": 100})
  runs.check_workdir(run)  # fields a resume may change (l0jax.workdir) are not compared
  record({**recorded, "target_density": 0.3, "seed": 4})
  with pytest.raises(runs.SweepError,
                     match=r"seed: 4 -> 0; target_density: 0.3 -> 0.2\)"):
    runs.check_workdir(run)
