"""experiments/density_search.py end to end: real train.py proxy runs on fake data."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _search(workdir):
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "density_search.py"),
         "--config=configs/fashion_mnist_mlp.py:runlocal", "--config.fake_data=True",
         "--config.mlp_features=(16, 8)", "--config.batch_size=16",
         "--config.log_every_steps=1", f"--workdir={workdir}", "--global_density=0.3",
         "--num_candidates=2", "--min_steps=2", "--eta=2", "--max_steps=2"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600, check=True)


def test_driver_searches_with_train_py_and_resumes(tmp_path):
  workdir = tmp_path / "search"
  _search(workdir)
  with open(workdir / "search.jsonl") as f:
    log = [json.loads(line) for line in f]
  best = json.loads((workdir / "best.json").read_text())
  assert len(log) == 2 and {r["steps"] for r in log} == {2}
  assert len(os.listdir(workdir / "runs")) == 2
  scores = {tuple(r["profile"]): r["score"] for r in log}
  assert best["best_score"] == min(scores.values())
  assert scores[tuple(best["best_profile"])] == best["best_score"]
  assert best["best_params"] <= best["budget_params"]
  assert best["layer_sizes"] == [784 * 16, 16 * 8, 8 * 10]  # input-unit gated MLP
  assert best["search_trainer_steps"] == 4
  for r in log:  # each score is the final eval error of its own train.py run
    name = "r2_" + "_".join(f"{d:g}" for d in r["profile"])
    with open(workdir / "runs" / name / "metrics.jsonl") as f:
      evals = [json.loads(line) for line in f if '"eval"' in line]
    assert evals[-1]["test_error"] == r["score"]

  before = (workdir / "search.jsonl").read_text()
  _search(workdir)  # a rerun replays the log: no new run, same answer
  assert (workdir / "search.jsonl").read_text() == before
  assert json.loads((workdir / "best.json").read_text())["best_profile"] == best[
      "best_profile"]
