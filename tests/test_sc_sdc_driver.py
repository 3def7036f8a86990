"""experiments/sc_sdc.py end to end: every arm through train.py / eval.py on fake data."""

import json
import os

import pytest

from experiments import runs, sc_sdc
from l0jax.science import sc_sdc as sc_sdc_lib


def test_every_arm_trains_records_egf_and_resumes(fake_dataset, tmp_path, monkeypatch):
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # one CPU device per run
  idx_dir, data_dir = fake_dataset
  sets = {"idx_dir": idx_dir, "data_dir": data_dir, "mlp_features": (16, 8),
          "batch_size": 20, "num_train_steps": 40, "log_every_steps": 10,
          "eval_every_steps": 40, "checkpoint_every_steps": 40, "tensorboard": False}
  search_args = ["--num_candidates=2", "--min_steps=2", "--eta=2", "--max_steps=2"]
  root, out = str(tmp_path / "root"), str(tmp_path / "out")
  study = lambda **kw: sc_sdc.run_study(
      "configs/fashion_mnist_mlp.py:runlocal", [0.3], [0], sc_sdc.ARMS, root, out, sets,
      search_args, log=lambda *_: None, **kw)
  records = study()
  by_arm = {r["arm"]: r for r in records}
  assert list(by_arm) == list(sc_sdc.ARMS) and all(r["status"] == "done" for r in records)

  # Each arm ran what it says (the run's own eval.json and run.json).
  resolved = {a: json.load(open(os.path.join(r["workdir"], runs.RUN_FILE)))[
      "resolved_config"] for a, r in by_arm.items()}
  assert resolved["learned"]["constraint"] == "model"
  assert resolved["learned"]["target_density"] == 0.3
  assert resolved["uniform"]["layer_targets"] == [0.3, 0.3, 0.3]
  best = json.load(open(os.path.join(root, "search_density=0.3", "best.json")))
  assert resolved["searched"]["layer_targets"] == best["best_profile"]
  assert by_arm["searched"]["search_trainer_steps"] == best["search_trainer_steps"] == 4
  # The twin is the learned run's SC-SDC twin: ungated, widths from its kept units.
  learned = json.load(open(os.path.join(by_arm["learned"]["workdir"], "eval.json")))
  twin, _ = sc_sdc_lib.dense_twin_from_eval_json(learned, 10)
  assert resolved["twin"]["gated"] is False
  assert tuple(resolved["twin"]["mlp_features"]) == tuple(twin.hidden)
  assert by_arm["twin"]["twin_max_weight_error"] == pytest.approx(
      max(abs(e) for e in twin.relative_error))
  balanced, _ = sc_sdc_lib.dense_twin_from_eval_json(learned, 10, solve="balanced")
  assert resolved["twin_balanced"]["gated"] is False
  assert tuple(resolved["twin_balanced"]["mlp_features"]) == tuple(balanced.hidden)
  assert by_arm["twin_balanced"]["twin_weight_errors"] == pytest.approx(
      list(balanced.relative_error))
  # EGF at epoch 1 (400 examples / 20 = 20 steps: the row at step 20) and at the end.
  for r in records:
    flow = json.load(open(os.path.join(r["workdir"], "eval.json")))["gradient_flow"]
    assert flow["epoch_1"]["step"] == 20 and flow["final"]["step"] == 40
    assert r["egf_l2_epoch_1"] == flow["epoch_1"]["egf_l2"] > 0
    assert r["grad_norm_l1_final"] == flow["final"]["grad_norm_l1"] > 0

  rows = sc_sdc.summarize(records)
  assert [(row["arm"], row["n"]) for row in rows] == [(a, 1) for a in sc_sdc.ARMS]
  assert rows[0]["test_error"] == (by_arm["learned"]["test_error"], 0.0)
  for name in ("results.csv", "results.json", "summary.md", "summary.csv", "sc_sdc.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0

  # Resume and collect: nothing trains again, the same records come back.
  times = lambda r: json.load(open(os.path.join(r["workdir"], runs.TIMES_FILE)))
  again = study()
  assert [times(r)["attempts"] for r in again] == [1] * len(sc_sdc.ARMS)
  assert [r["test_error"] for r in again] == [r["test_error"] for r in records]
  collected = study(train=False)
  assert [r["workdir"] for r in collected] == [r["workdir"] for r in records]


def test_bad_arms_fail_in_one_line(tmp_path):
  with pytest.raises(runs.SweepError, match="unknown arm"):
    sc_sdc.run_study("configs/fashion_mnist_mlp.py", [0.1], [0], ["lerned"], str(tmp_path),
                     str(tmp_path))
  with pytest.raises(runs.SweepError, match="needs the learned arm"):
    sc_sdc.run_study("configs/fashion_mnist_mlp.py", [0.1], [0], ["twin"], str(tmp_path),
                     str(tmp_path))


def test_flow_correlations_rank_each_metric_against_test_error():
  records = [{"status": "done", "test_error": e, "egf_l2_final": 10.0 - e,
              "grad_norm_l2_final": e * e, "egf_l1_final": 1.0 if i % 2 else 2.0}
             for i, e in enumerate((0.1, 0.3, 0.2, 0.5))]
  records.append({"status": "failed", "test_error": None, "egf_l2_final": 0.0})
  rows = {(r["metric"], r["when"]): r for r in sc_sdc.flow_correlations(records)}
  assert rows["egf_l2", "final"]["spearman_rho"] == pytest.approx(-1.0)
  assert rows["grad_norm_l2", "final"]["spearman_rho"] == pytest.approx(1.0)
  assert rows["egf_l2", "final"]["n"] == 4           # the failed run is left out
  assert rows["egf_l2", "epoch_1"]["spearman_rho"] is None  # nothing logged
  # egf_l1: errors (0.1, 0.3, 0.2, 0.5) against (2, 1, 2, 1): average ranks of ties.
  err_rank, flow_rank = [1, 3, 2, 4], [3.5, 1.5, 3.5, 1.5]
  d = [a - sum(err_rank) / 4 for a in err_rank]
  f = [b - sum(flow_rank) / 4 for b in flow_rank]
  want = sum(x * y for x, y in zip(d, f)) / (sum(x * x for x in d) * sum(
      y * y for y in f)) ** 0.5
  assert rows["egf_l1", "final"]["spearman_rho"] == pytest.approx(want)
  assert "| egf_l2 | final | -1.00 | 4 |" in sc_sdc.correlations_markdown(
      sc_sdc.flow_correlations(records))
