"""The run's workdir: checksums, verified save/restore on any pytree, garbage collection,
the lock, the recorded config."""

import hashlib
import json
import os
import signal
import subprocess
import sys

import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from configs import default, fashion_mnist_mlp
from l0jax import workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _state(seed=0, extra=False):
  """A state-like pytree: nested dicts, a tuple, ints, a zero-size leaf."""
  rng = np.random.default_rng(seed)
  tree = {"step": np.int32(7),
          "params": {"dense": {"kernel": rng.normal(size=(3, 4)).astype(np.float32),
                               "log_alpha": rng.normal(size=(3,)).astype(np.float32)}},
          "opt": (rng.normal(size=(3, 4)).astype(np.float32), np.zeros((0,), np.float32)),
          "rng": np.array([1, 2], np.uint32)}
  if extra:  # what a later TrainState adds (batch_stats, a gate generator, ...)
    tree["batch_stats"] = {"mean": rng.normal(size=(4,)).astype(np.float32)}
  return tree


def _assert_trees_equal(a, b):
  assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(x, y)


# ======================================================================================
# Checksums
# ======================================================================================
def test_tree_digest_is_sha256_of_dtype_shape_and_bytes():
  a = np.arange(6, dtype=np.float32).reshape(2, 3)
  want = hashlib.sha256(b"<f4(2, 3)" + a.tobytes()).hexdigest()
  digest = workdir.tree_digest({"a": a, "empty": np.zeros((0,))})
  assert digest["leaves"] == {"['a']": want}  # zero-size leaves are not saved
  assert workdir.tree_digest({"a": a.copy()}) == workdir.tree_digest({"a": a})
  assert workdir.tree_digest({"a": a.reshape(3, 2)}) != workdir.tree_digest({"a": a})
  assert workdir.tree_digest({"a": a.view(np.int32)}) != workdir.tree_digest({"a": a})
  assert workdir.tree_digest({"b": a}) != workdir.tree_digest({"a": a})


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)),
       st.integers(0, 10**6), st.integers(0, 7))
def test_tree_digest_sees_every_flipped_bit(array, position, bit):
  tree = {"x": array, "y": np.ones(2, np.int32)}
  flipped = array.copy()
  raw = flipped.view(np.uint8).reshape(-1)
  raw[position % raw.size] ^= np.uint8(1 << bit)
  assert (workdir.tree_digest({"x": flipped, "y": tree["y"]})["sha256"]
          != workdir.tree_digest(tree)["sha256"])


def test_tree_is_finite():
  assert workdir.tree_is_finite(_state())
  for bad in (np.nan, np.inf, -np.inf):
    tree = _state()
    tree["params"]["dense"]["kernel"][1, 2] = bad
    assert not workdir.tree_is_finite(tree)


# ======================================================================================
# Save / restore
# ======================================================================================
@pytest.mark.parametrize("extra", [False, True])
def test_save_and_restore_any_pytree(tmp_path, extra):
  checkpoints = workdir.Checkpoints(str(tmp_path), keep=3)
  state = _state(extra=extra)
  checkpoints.save(7, state)
  assert checkpoints.verified_steps() == [7]
  record = json.loads((tmp_path / "checksums" / "7.json").read_text())
  assert record["sha256"] == workdir.tree_digest(state)["sha256"]
  _assert_trees_equal(checkpoints.restore(_state(seed=1, extra=extra)), state)


def test_save_refuses_non_finite_state(tmp_path):
  state = _state()
  state["opt"][0][0, 0] = np.nan
  with pytest.raises(workdir.WorkdirError, match="non-finite"):
    workdir.Checkpoints(str(tmp_path)).save(1, state)
  assert not (tmp_path / "checkpoints").exists()


def test_garbage_collection_keeps_the_newest_verified_steps(tmp_path):
  checkpoints = workdir.Checkpoints(str(tmp_path), keep=2)
  for step in (1, 2, 3, 4):
    checkpoints.save(step, _state(seed=step))
  assert checkpoints.steps() == [3, 4] == checkpoints.verified_steps()
  assert sorted(os.listdir(tmp_path / "checksums")) == ["3.json", "4.json"]


def test_a_save_that_reads_back_wrong_deletes_nothing(tmp_path, monkeypatch):
  checkpoints = workdir.Checkpoints(str(tmp_path), keep=1)
  checkpoints.save(1, _state(seed=1))
  real = workdir.Checkpoints._restore_arrays

  def corrupted(self, step, template):
    tree = real(self, step, template)
    tree["params"]["dense"]["kernel"][0, 0] += 1.0
    return tree
  monkeypatch.setattr(workdir.Checkpoints, "_restore_arrays", corrupted)
  with pytest.raises(workdir.WorkdirError, match="reads back different"):
    checkpoints.save(2, _state(seed=2))
  monkeypatch.undo()
  assert checkpoints.verified_steps() == [1]  # the only verified one is kept
  _assert_trees_equal(checkpoints.restore(_state()), _state(seed=1))


def test_death_between_commit_and_checksum_falls_back(tmp_path, monkeypatch, capsys):
  checkpoints = workdir.Checkpoints(str(tmp_path), keep=1)
  checkpoints.save(1, _state(seed=1))

  def die(path, text):
    raise KeyboardInterrupt  # the process ends after orbax committed step 2
  monkeypatch.setattr(workdir, "atomic_write", die)
  with pytest.raises(KeyboardInterrupt):
    checkpoints.save(2, _state(seed=2))
  monkeypatch.undo()
  assert checkpoints.steps() == [1, 2] and checkpoints.verified_steps() == [1]
  restored = checkpoints.restore(_state(), repair=True)
  _assert_trees_equal(restored, _state(seed=1))
  err = capsys.readouterr().err
  assert "checkpoint step 2" in err and "has no checksum" in err
  assert checkpoints.steps() == [1]  # step 2 moved aside, so it can be saved again
  assert (tmp_path / "rejected_checkpoints" / "2").is_dir()
  checkpoints.save(2, _state(seed=2))
  assert checkpoints.steps() == [2]


def test_restore_skips_a_non_finite_checkpoint(tmp_path, monkeypatch, capsys):
  checkpoints = workdir.Checkpoints(str(tmp_path))
  checkpoints.save(1, _state(seed=1))
  bad = _state(seed=2)
  bad["params"]["dense"]["log_alpha"][0] = np.inf
  monkeypatch.setattr(workdir, "tree_is_finite", lambda tree: True)  # an older l0jax
  checkpoints.save(2, bad)
  monkeypatch.undo()
  _assert_trees_equal(checkpoints.restore(_state()), _state(seed=1))
  assert "checkpoint step 2" in capsys.readouterr().err
  assert checkpoints.steps() == [1, 2]  # eval (repair=False) moves nothing


def test_restore_of_an_empty_workdir_is_none(tmp_path):
  assert workdir.Checkpoints(str(tmp_path / "nothing")).restore(_state()) is None


# ======================================================================================
# The lock
# ======================================================================================
def test_lock_is_exclusive_and_names_the_holder(tmp_path):
  held = workdir._Lock(str(tmp_path)).acquire()
  with pytest.raises(workdir.WorkdirError, match=f"pid {os.getpid()} on "):
    workdir._Lock(str(tmp_path)).acquire()
  held.release()
  workdir._Lock(str(tmp_path)).acquire().release()


def test_lock_of_a_killed_process_is_released(tmp_path):
  code = ("import sys, time; from l0jax import workdir; "
          f"workdir._Lock({str(tmp_path)!r}).acquire(); print('locked', flush=True); "
          "time.sleep(600)")
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                          text=True)
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(workdir.WorkdirError, match=f"pid {proc.pid} on "):
      workdir._Lock(str(tmp_path)).acquire()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    workdir._Lock(str(tmp_path)).acquire().release()  # the OS dropped the lock
  finally:
    proc.kill()
    proc.wait()


# ======================================================================================
# The recorded config
# ======================================================================================
def test_every_config_field_is_classified_once():
  fields = set(default.get_config().keys())
  resumable, fixed = set(workdir.RESUMABLE_FIELDS), set(workdir.FIXED_FIELDS)
  assert not resumable & fixed, resumable & fixed
  assert fields == resumable | fixed, (
      f"classify in l0jax/workdir.py: {sorted(fields - resumable - fixed)}; "
      f"gone from configs/default.py: {sorted((resumable | fixed) - fields)}")


def test_config_changes_name_the_fields_that_alter_the_run():
  recorded = fashion_mnist_mlp.get_config()
  config = fashion_mnist_mlp.get_config()
  assert workdir.config_changes(recorded, config) == []
  config.num_epochs, config.log_every_steps, config.parallel = 20, 7, "shard_map"
  config.distributed_heartbeat_timeout_s = 5
  assert workdir.config_changes(recorded, config) == []  # all resumable
  config.target_density, config.seed, config.mlp_features = 0.5, 3, (10, 10)
  assert workdir.config_changes(recorded, config) == [
      "mlp_features: [300, 100] -> [10, 10]", "seed: 0 -> 3", "target_density: 0.33 -> 0.5"]
  recorded.lr_schedule = config.lr_schedule = "cosine"  # its schedule depends on the length
  config.target_density, config.seed, config.mlp_features = 0.33, 0, (300, 100)
  assert workdir.config_changes(recorded, config) == ["num_epochs: 10 -> 20"]
  as_dict = json.loads(recorded.to_json())
  del as_dict["seed"]  # a field a later l0jax added is not compared
  config.num_epochs, config.seed = 10, 5
  assert workdir.config_changes(as_dict, config) == []


def test_open_for_training_records_checks_and_locks(tmp_path):
  config = fashion_mnist_mlp.get_config()
  path = str(tmp_path / "run")
  with workdir.open_for_training(path, config):
    with pytest.raises(workdir.WorkdirError, match="in use by another train.py"):
      with workdir.open_for_training(path, config):
        pass
  recorded = workdir.read_config(path)
  assert recorded.mlp_features == (300, 100) and recorded.layer_targets == ()
  assert json.loads(recorded.to_json()) == json.loads(config.to_json())
  config.keep_checkpoints = 9  # resumable: accepted and recorded
  with workdir.open_for_training(path, config):
    pass
  assert workdir.read_config(path).keep_checkpoints == 9
  config.batch_size = 50
  with pytest.raises(workdir.WorkdirError, match=r"batch_size: 100 -> 50"):
    with workdir.open_for_training(path, config):
      pass
  assert workdir.read_config(path).batch_size == 100


def test_checkpoints_without_a_recorded_config_are_refused(tmp_path):
  workdir.Checkpoints(str(tmp_path)).save(1, _state())
  with pytest.raises(workdir.WorkdirError, match="no config.json"):
    with workdir.open_for_training(str(tmp_path), fashion_mnist_mlp.get_config()):
      pass


def test_unreadable_config_is_one_line(tmp_path):
  (tmp_path / "config.json").write_text('{"model": "ml')
  with pytest.raises(workdir.WorkdirError, match="config.json is unreadable") as info:
    workdir.read_config(str(tmp_path))
  assert "\n" not in str(info.value)


def test_config_for_eval(tmp_path):
  with pytest.raises(workdir.WorkdirError, match="no config.json"):
    workdir.config_for_eval(str(tmp_path))
  config = fashion_mnist_mlp.get_config()
  config.target_density = 0.2
  with workdir.open_for_training(str(tmp_path), config):
    pass
  assert workdir.config_for_eval(str(tmp_path)).target_density == 0.2
  with pytest.raises(workdir.WorkdirError, match="target_density: 0.2 -> 0.33"):
    workdir.config_for_eval(str(tmp_path), fashion_mnist_mlp.get_config())


def test_require_run_creates_nothing(tmp_path):
  with pytest.raises(workdir.WorkdirError, match="does not exist"):
    workdir.require_run(str(tmp_path / "missing"))
  assert not (tmp_path / "missing").exists()
  assert workdir.require_run(str(tmp_path)) == str(tmp_path)
  workdir.require_writable(str(tmp_path))
  assert os.listdir(tmp_path) == []  # the probe leaves nothing


def test_read_only_workdir_is_one_line(tmp_path, monkeypatch):
  def read_only(*args, **kwargs):
    raise OSError(30, "Read-only file system")
  monkeypatch.setattr(workdir.tempfile, "mkstemp", read_only)
  with pytest.raises(workdir.WorkdirError, match="is not writable .Read-only file system"):
    workdir.require_writable(str(tmp_path))
  monkeypatch.setattr(workdir.os, "open", read_only)
  with pytest.raises(workdir.WorkdirError, match="cannot write to .* .Read-only file "
                                                  "system.: train.py needs a writable"):
    with workdir.open_for_training(str(tmp_path), fashion_mnist_mlp.get_config()):
      pass


def test_atomic_write_leaves_the_old_file_or_the_new_one(tmp_path, monkeypatch):
  path = str(tmp_path / "f.json")
  workdir.atomic_write(path, "old")

  def fail(*args):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "replace", fail)
  with pytest.raises(OSError):
    workdir.atomic_write(path, "new")
  monkeypatch.undo()
  assert open(path).read() == "old" and os.listdir(tmp_path) == ["f.json"]
  workdir.atomic_write(path, "new")
  assert open(path).read() == "new"
