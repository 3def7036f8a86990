"""Faults a run survives bit-identically, and failures it refuses in one line (issue 15).

``experiments/fault_injection.py`` injects more of each into real Fashion-MNIST runs and
counts them for the README; these tests run a few of each on the fake dataset:
in-process where the fault is a file (broken checkpoints, config changes, NaN, exports),
in subprocesses where it needs a real process (kill -9, Ctrl-C, two train.py at once, a
full disk).
"""

import os
import random
import re
import shutil
import signal
import subprocess
import time

import jax
import numpy as np
import pytest

from experiments import fault_injection as fi
from l0jax import data, eval_lib, purge, reporting, train_lib, workdir
from test_multihost import _config_flags
from test_train import small_config


def _final(config, path):
  task = train_lib.make_task(config, 100)
  return workdir.Checkpoints(str(path)).restore(train_lib.init_state(config, task))


def _records(path):
  return [{k: v for k, v in r.items() if k != "examples_per_sec"}
          for r in reporting.read_metrics(str(path))]


def _assert_same_run(config, a, b):
  x, y = _final(config, a), _final(config, b)
  assert int(x.step) == int(y.step)
  for u, v in zip(jax.tree.leaves(x), jax.tree.leaves(y), strict=True):
    np.testing.assert_array_equal(u, v)  # bit-identical
  assert _records(a) == _records(b)


# ======================================================================================
# Broken checkpoint files (in-process)
# ======================================================================================
DEVICES = 2


def _config(fake_dataset, **overrides):
  settings = dict(num_train_steps=6, checkpoint_every_steps=3, eval_every_steps=3,
                  log_every_steps=1, keep_checkpoints=3)
  return small_config(fake_dataset, **{**settings, **overrides})


@pytest.fixture(scope="module")
def straight(fake_dataset, tmp_path_factory):
  path = tmp_path_factory.mktemp("faults") / "straight"
  train_lib.train_and_evaluate(_config(fake_dataset), str(path), jax.devices()[:DEVICES])
  return path


def _template(config):
  return train_lib.init_state(config, train_lib.make_task(config, 100))


@pytest.mark.parametrize("fault", sorted(fi.FILE_FAULTS))
def test_broken_newest_checkpoint_is_skipped_with_one_warning(
    fake_dataset, straight, tmp_path, capsys, fault):
  config = _config(fake_dataset)
  path = tmp_path / "run"
  shutil.copytree(straight, path)
  fi.FILE_FAULTS[fault](str(path / "checkpoints" / "6"), random.Random(0))
  capsys.readouterr()
  restored = workdir.Checkpoints(str(path)).restore(_template(config), repair=True)
  expected = workdir.Checkpoints(str(straight)).load(3, _template(config))
  for u, v in zip(jax.tree.leaves(restored), jax.tree.leaves(expected), strict=True):
    np.testing.assert_array_equal(u, v)
  err = capsys.readouterr().err
  if fault != "remove the step directory":
    assert err.startswith("warning: checkpoint step 6 in ") and "skipped" in err, err
    assert err.count("\n") == 2, err  # the reason, then where the step was moved
    assert (path / "rejected_checkpoints" / "6").is_dir()
  assert workdir.Checkpoints(str(path)).steps() == [3]


def test_resume_after_a_flipped_bit_ends_bit_identical(fake_dataset, straight, tmp_path):
  config = _config(fake_dataset)
  path = tmp_path / "run"
  shutil.copytree(straight, path)
  fi.flip_bit(fi.largest_file(str(path / "checkpoints" / "6")), random.Random(6))
  train_lib.train_and_evaluate(config, str(path), jax.devices()[:DEVICES])
  _assert_same_run(config, path, straight)


def test_ctrl_c_saves_its_step_and_the_rerun_ends_bit_identical(fake_dataset, straight,
                                                               tmp_path, monkeypatch):
  config = _config(fake_dataset)
  real_iterator = data.train_iterator
  # As in a terminal: a shell's background jobs (and so a CI started with `&`) inherit
  # SIGINT ignored, which the trainer leaves alone.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)

  def interrupted_iterator(*args, **kwargs):
    for i, batch in enumerate(real_iterator(*args, **kwargs)):
      if i == 4:  # Ctrl-C while step 5 is prepared and computed
        os.kill(os.getpid(), signal.SIGINT)
      yield batch
  monkeypatch.setattr(data, "train_iterator", interrupted_iterator)
  with pytest.raises(train_lib.Interrupted, match=r"interrupted at step 5: saved a "
                     r"checkpoint of step 5 in .*run the same command again") as info:
    train_lib.train_and_evaluate(config, str(tmp_path), jax.devices()[:DEVICES])
  assert info.value.exit_code == 130
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
  monkeypatch.undo()
  signal.signal(signal.SIGINT, previous)
  assert workdir.Checkpoints(str(tmp_path)).verified_steps() == [3, 5]
  train_lib.train_and_evaluate(config, str(tmp_path), jax.devices()[:DEVICES])
  _assert_same_run(config, tmp_path, straight)


def test_every_checkpoint_broken_starts_over_and_ends_bit_identical(
    fake_dataset, straight, tmp_path, capsys):
  config = _config(fake_dataset)
  path = tmp_path / "run"
  shutil.copytree(straight, path)
  checkpoints, template = workdir.Checkpoints(str(path)), _template(config)
  for step in (3, 6):  # a flip that lands in array bytes (some hit unused bytes)
    target = fi.largest_file(str(path / "checkpoints" / str(step)))
    original = open(target, "rb").read()
    for seed in range(50):
      fi.flip_bit(target, random.Random(seed))
      try:
        checkpoints.load(step, template)
      except workdir._Rejected:  # pylint: disable=protected-access
        break
      open(target, "wb").write(original)
    else:
      pytest.fail(f"no bit flip of 50 broke step {step}")
  train_lib.train_and_evaluate(config, str(path), jax.devices()[:DEVICES])
  assert capsys.readouterr().err.count("skipped") == 2
  _assert_same_run(config, path, straight)


def test_eval_skips_a_corrupt_checkpoint_and_moves_nothing(fake_dataset, straight,
                                                          tmp_path, capsys):
  config = _config(fake_dataset)
  path = tmp_path / "run"
  shutil.copytree(straight, path)
  fi.flip_bit(fi.largest_file(str(path / "checkpoints" / "6")), random.Random(1))
  result = eval_lib.evaluate_checkpoint(config, str(path), jax.devices()[:DEVICES])
  assert result["step"] == 3
  assert "checkpoint step 6" in capsys.readouterr().err
  assert sorted(os.listdir(path / "checkpoints")) == ["3", "6"]


# ======================================================================================
# Config changes, NaN, finished runs, exports (in-process)
# ======================================================================================
def test_resume_with_another_config_is_refused_naming_the_fields(fake_dataset, straight,
                                                                 tmp_path):
  path = tmp_path / "run"
  shutil.copytree(straight, path)
  changed = _config(fake_dataset, target_density=0.5, seed=4, method="penalized",
                    penalty=0.1)
  with pytest.raises(workdir.WorkdirError,
                     match=r"method: 'constrained' -> 'penalized'; penalty: 0.0 -> 0.1; "
                           r"seed: 0 -> 4; target_density: 0.33 -> 0.5") as info:
    train_lib.train_and_evaluate(changed, str(path), jax.devices()[:DEVICES])
  assert "\n" not in str(info.value)
  # Logging, checkpoint cadence and the run's length may change: this extends the run.
  longer = _config(fake_dataset, num_train_steps=8, log_every_steps=2,
                   checkpoint_every_steps=4, keep_checkpoints=1)
  summary = train_lib.train_and_evaluate(longer, str(path), jax.devices()[:DEVICES])
  assert summary["step"] == 8
  assert workdir.read_config(str(path)).num_train_steps == 8
  assert workdir.Checkpoints(str(path)).steps() == [8]


def test_finished_run_says_it_is_complete(fake_dataset, straight, tmp_path, capsys):
  path = tmp_path / "run"
  shutil.copytree(straight, path)
  before = (path / "metrics.jsonl").read_text()
  summary = train_lib.train_and_evaluate(_config(fake_dataset), str(path),
                                         jax.devices()[:DEVICES])
  assert "is already complete: trained 6 steps" in capsys.readouterr().err
  assert summary["step"] == 6 and (path / "metrics.jsonl").read_text() == before
  assert summary["constraints"][0]["name"] == "model density"


def test_divergence_stops_at_once_and_saves_nothing_non_finite(fake_dataset, tmp_path):
  config = _config(fake_dataset, optimizer="sgd", learning_rate=1e6, num_train_steps=30,
                   log_every_steps=10, checkpoint_every_steps=10, eval_every_steps=0)
  devices = jax.devices()[:1]
  with pytest.raises(train_lib.NonFiniteError,
                     match=r"non-finite metrics \(.*loss.*\) at step \d+: training "
                           r"stopped.*no checkpoint") as info:
    train_lib.train_and_evaluate(config, str(tmp_path), devices)
  reported = int(str(info.value).split(" at step ")[1].split(":")[0])
  assert workdir.Checkpoints(str(tmp_path)).steps() == []
  assert reporting.read_metrics(str(tmp_path)) == []
  # The step it names is the first non-finite one: in single steps and in one call.
  mesh = train_lib.make_mesh(devices)
  functions = train_lib.step_functions(config, mesh, 30)  # compiled by the run
  batches = data.train_iterator(
      train_lib.load_source(config, "train"), global_batch_size=config.batch_size,
      seed=config.seed, prep=train_lib.preprocessing(config), local_device_count=1)
  batches = [next(batches) for _ in range(10)]
  state = train_lib.replicate(_template(config), mesh)
  flags = []
  for batch in batches:
    state, metrics = functions.train(state, train_lib.shard_batch(batch, mesh))
    flags.append(int(train_lib.unreplicate(metrics[train_lib.NONFINITE_STEP])))
  assert flags == [0] * (reported - 1) + list(range(reported, 11))
  _, metrics = functions.train_multi(
      train_lib.replicate(_template(config), mesh),
      train_lib.shard_batch(train_lib.stack_batches(batches), mesh))
  assert int(train_lib.unreplicate(metrics[train_lib.NONFINITE_STEP])) == reported


def test_non_finite_parameters_are_never_saved(fake_dataset, tmp_path):
  config = _config(fake_dataset)
  task = train_lib.make_task(config, 100)
  host = train_lib.init_state(config, task)
  kernel = np.array(host.params["fc1"]["kernel"])
  kernel[0, 0] = np.inf
  host = host._replace(params={**host.params, "fc1": {**host.params["fc1"],
                                                      "kernel": kernel}})
  mesh = train_lib.make_mesh(jax.devices()[:1])
  checkpoints = workdir.Checkpoints(str(tmp_path))
  with pytest.raises(train_lib.NonFiniteError, match="non-finite parameters .* step 5"):
    train_lib._save(checkpoints, 5, train_lib.replicate(host, mesh))
  assert checkpoints.steps() == []


def test_export_faults(fake_dataset, straight, tmp_path):
  config = _config(fake_dataset)
  run = str(straight)
  for target in (run, os.path.join(run, "checkpoints"), os.path.join(run, "x", "y"),
                 os.path.dirname(run)):
    with pytest.raises(purge.ExportError, match="would write into the run's"):
      eval_lib.check_export(config, run, target, overwrite=True)
  other = tmp_path / "not_an_export"
  other.mkdir()
  with pytest.raises(purge.ExportError, match="not a saved purged model"):
    eval_lib.export_purged(config, run, str(other), overwrite=True)
  assert other.is_dir()  # untouched
  export = tmp_path / "export"
  eval_lib.export_purged(config, run, str(export))
  recorded = purge.read_spec(str(export))["input"]
  assert {k: recorded[k] for k in ("shape", "dtype", "mean", "std", "range")} == {
      "shape": [28, 28, 1], "dtype": "float32", "mean": [0.0], "std": [1.0],
      "range": [0.0, 1.0]}
  eval_lib.export_purged(config, run, str(export), overwrite=True)  # a previous export
  broken = tmp_path / "broken"
  shutil.copytree(export, broken)
  fi.flip_bit(max(fi.step_files(str(broken / "params")), key=os.path.getsize),
              random.Random(0))
  with pytest.raises(purge.ExportError, match="is corrupt"):
    purge.load(str(broken))
  shutil.rmtree(broken)
  shutil.copytree(export, broken)
  spec = broken / "spec.json"
  spec.write_text(spec.read_text()[:100])
  with pytest.raises(purge.ExportError, match=f"{spec} is unreadable"):
    purge.load(str(broken))


# ======================================================================================
# Real processes: kill -9, Ctrl-C, two at once, a full disk, bad command lines
# ======================================================================================
@pytest.fixture(scope="module")
def process_run(fake_dataset, tmp_path_factory):
  """(config, argv without --workdir, straight workdir, env): 48 steps, a checkpoint
  every 2 (a second or more of saves, so signals land in training), run in-process on
  every device as the subprocesses run it."""
  config = small_config(fake_dataset, num_train_steps=48, checkpoint_every_steps=2,
                        log_every_steps=1, eval_every_steps=24, keep_checkpoints=2)
  root = tmp_path_factory.mktemp("processes")
  train_lib.train_and_evaluate(config, str(root / "straight"))
  env = fi.child_env({"JAX_COMPILATION_CACHE_DIR": str(root / "jax_cache"),
                      "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                      "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
  return config, _config_flags(config), root / "straight", env


def _wait_for_step(path, proc, step):
  """Until the run logged ``step`` (or later) past its checkpoint."""
  assert fi.wait_for_step(str(path), proc, step), proc.communicate()


def test_a_run_through_process_faults_ends_bit_identical(process_run, tmp_path):
  """A full disk, Ctrl-C, kill -9 at random moments, then two train.py at once."""
  config, argv, straight_dir, env = process_run
  path, rng = tmp_path / "run", random.Random(15)
  args = [*argv, f"--workdir={path}"]
  # A full disk at the first save: one line, nothing half-written left behind.
  no_cache = {k: v for k, v in env.items() if not k.startswith("JAX_")} | {
      "JAX_PLATFORMS": "cpu"}  # (the compilation cache would hit the limit too)
  proc = fi.run("train.py", args, no_cache, file_size_limit=100_000)
  ok, line = fi.one_clear_line(proc)
  assert ok and "cannot save checkpoint step 2" in line and "File too large" in line, (
      proc.stderr[-3000:])
  assert os.listdir(path / "checkpoints") == []
  # Ctrl-C in training: one line naming the checkpoint a rerun resumes from.
  proc = fi.start("train.py", args, env)
  _wait_for_step(path, proc, 1)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 130, err
  assert err.strip().splitlines() == [err.strip()] and "Traceback" not in err, err
  assert re.fullmatch(r"error: interrupted at step (\d+): saved a checkpoint of step \1 "
                      r"in .*; run the same command again to resume from it", err.strip()), err
  # kill -9 at random moments of training (a save every 2 steps).
  killed = 0
  for _ in range(2):
    resumed = fi.latest_checkpoint(str(path))
    proc = fi.start("train.py", args, env)
    _wait_for_step(path, proc, rng.randrange(resumed + 1, resumed + 10))
    time.sleep(rng.uniform(0, 0.2))
    if proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      killed += 1
    proc.communicate(timeout=120)
  assert killed, "every run ended before its kill"
  # Two at once: one is refused, naming the other's pid; the other ends the run.
  procs = [fi.start("train.py", args, env) for _ in range(2)]
  results = [subprocess.CompletedProcess(p.args, p.wait(), *p.communicate())
             for p in procs]
  refused = [r for r in results if r.returncode != 0]
  assert len(refused) == 1, [r.stderr[-2000:] for r in results]
  ok, line = fi.one_clear_line(refused[0])
  assert ok and "is in use by another train.py (pid " in line, refused[0].stderr
  _assert_same_run(config, path, straight_dir)


def test_bad_command_lines_are_one_line_and_create_nothing(process_run):
  config, argv, straight_dir, env = process_run
  before = sorted(os.listdir(straight_dir))
  for script, args in (
      ("train.py", [*argv, f"--workdir={straight_dir}", "--config.seed=9"]),
      ("eval.py", [f"--workdir={straight_dir}", f"--export={straight_dir}/x"]),
  ):
    proc = fi.run(script, args, env)
    ok, line = fi.one_clear_line(proc)
    assert ok, proc.stderr[-3000:]
  assert sorted(os.listdir(straight_dir)) == before
