"""Multi-host runs: real jax.distributed processes on 127.0.0.1 (gloo CPU collectives).

Every two-process run is two ``train.py`` / ``eval.py`` processes with 2 CPU devices
each, started through a small launcher (``_LAUNCHER``) that records which files each
process opened for writing and, for the kill test, slows training down. Ports are
picked free; every process is waited for with a timeout and killed in a ``finally``.
"""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import fashion_mnist_mlp
from l0jax import distributed, reporting, train_lib, workdir as workdir_lib
from test_train import run_steps, small_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT_S = 240   # one two-process run (compiles in parallel on 2 cores)
KILL_DEADLINE_S = 60  # the survivor of a kill must exit within this
HEARTBEAT_S = 10

# Runs train.py / eval.py in this process, recording the files it opens for writing
# under --workdir (audit hook), its train_and_evaluate summary, and optionally
# sleeping before each training step >= $TEST_SLOW_FROM_STEP.
_LAUNCHER = r"""
import json, os, runpy, sys, time
prefix, script = sys.argv[1], sys.argv[2]
sys.argv = [script] + sys.argv[3:]
workdir = os.path.abspath(next(a.split("=", 1)[1] for a in sys.argv
                               if a.startswith("--workdir=")))
written = set()

def audit(event, args):
  if event != "open" or not isinstance(args[0], (str, bytes)):
    return
  mode, flags = args[1], args[2] or 0
  writes = (any(c in mode for c in "wax+") if isinstance(mode, str)
            else bool(flags & (os.O_WRONLY | os.O_RDWR)))
  path = os.path.abspath(os.fsdecode(args[0]))
  if writes and path.startswith(workdir + os.sep):
    written.add(os.path.relpath(path, workdir))

sys.addaudithook(audit)
from l0jax import data, train_lib

slow_from = int(os.environ.get("TEST_SLOW_FROM_STEP", "-1"))
if slow_from >= 0:
  real_iterator = data.train_iterator

  def slow_iterator(*args, **kwargs):
    it, step = real_iterator(*args, **kwargs), kwargs.get("start_step", 0)
    while True:
      if step >= slow_from:
        time.sleep(5)
      yield next(it)
      step += 1

  data.train_iterator = slow_iterator

real_train = train_lib.train_and_evaluate

def recording_train(*args, **kwargs):
  summary = real_train(*args, **kwargs)
  with open(prefix + "summary.json", "w") as f:
    json.dump(summary, f)
  return summary

train_lib.train_and_evaluate = recording_train
try:
  runpy.run_path(script, run_name="__main__")
finally:
  with open(prefix + "written.json", "w") as f:
    json.dump(sorted(written), f)
"""


# ======================================================================================
# Helpers
# ======================================================================================
def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _flag(value) -> str:
  if isinstance(value, tuple):
    return "(" + ", ".join(map(repr, value)) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def _config_flags(config):
  """--config.X=V for every field where ``config`` differs from the runlocal config."""
  base = fashion_mnist_mlp.get_config("runlocal")
  return ["--config=configs/fashion_mnist_mlp.py:runlocal"] + [
      f"--config.{k}={_flag(v)}" for k, v in config.items() if base[k] != v]


def _child_env(cache_dir, extra=None):
  """This environment minus its 4-device XLA flag and any launcher / cluster variables."""
  drop = ("SLURM_", "OMPI_", "PMI_", "PMIX_", "TPU_", "JAX_COORDINATOR", "JAX_NUM_PROC",
          "JAX_PROCESS_ID", "JAX_LOCAL_DEVICE_IDS")
  env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 env.get("XLA_FLAGS", ""))
  env.update(
      XLA_FLAGS=(flags + " --xla_force_host_platform_device_count=2").strip(),
      JAX_PLATFORMS="cpu", JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo",
      JAX_COMPILATION_CACHE_DIR=str(cache_dir),  # later runs skip most compiles
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
      PYTHONUNBUFFERED="1")
  env.update(extra or {})
  return env


class Run:
  """Processes of one multi-process run, their logs and launcher outputs."""

  def __init__(self, out_dir, tag, procs):
    self.out_dir, self.tag, self.procs = out_dir, tag, procs

  def log(self, i) -> str:
    return (self.out_dir / f"{self.tag}_{i}.log").read_text(errors="replace")

  def logs(self) -> str:
    return "\n".join(f"--- process {i} (last 3000 chars) ---\n{self.log(i)[-3000:]}"
                     for i in range(len(self.procs)))

  def json(self, i, name):
    return json.loads((self.out_dir / f"{self.tag}_{i}_{name}.json").read_text())

  def written(self, i):
    """Files process i opened for writing; an atomic write's temporary file counts as
    the file it replaces."""
    return sorted({re.sub(r"\.tmp-\d+$", "", f) for f in self.json(i, "written")})

  def wait(self, timeout):
    """Return codes once all exited; fails (with the logs) after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    for p in self.procs:
      try:
        p.wait(timeout=max(deadline - time.monotonic(), 0.1))
      except subprocess.TimeoutExpired:
        pytest.fail(f"{self.tag}: still running after {timeout} s\n{self.logs()}")
    return [p.returncode for p in self.procs]


def _kill(proc):
  if proc.poll() is None:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGKILL)  # its own session: the whole group
  with contextlib.suppress(subprocess.TimeoutExpired):
    proc.wait(timeout=30)


@contextlib.contextmanager
def _launch(out_dir, tag, workdir, config, script="train.py", n=2, via="env",
            extra_env=None):
  """Starts ``n`` processes of ``script``; all are killed on leaving the block.

  via="env": JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID with the
  default config.distributed="auto"; via="config": --config.coordinator_address etc.
  """
  address, procs = f"127.0.0.1:{_free_port()}", []
  args = _config_flags(config) + [f"--workdir={workdir}"]
  try:
    for i in range(n):
      per_process = {}
      if via == "env":
        per_process = dict(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(n),
                           JAX_PROCESS_ID=str(i))
        flags = args
      else:
        flags = args + ["--config.distributed=on",
                        f"--config.coordinator_address={address}",
                        f"--config.num_processes={n}", f"--config.process_id={i}"]
      env = _child_env(out_dir / "jax_cache", {**per_process, **(extra_env or {})})
      with open(out_dir / f"{tag}_{i}.log", "w") as log:
        procs.append(subprocess.Popen(
            [sys.executable, "-c", _LAUNCHER, str(out_dir / f"{tag}_{i}_"), script,
             *flags], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True))
    yield Run(out_dir, tag, procs)
  finally:
    for p in procs:
      _kill(p)


def _multihost_config(fake_dataset, **overrides):
  settings = dict(num_train_steps=8, log_every_steps=1, eval_every_steps=4,
                  checkpoint_every_steps=4, tensorboard=True,
                  distributed_heartbeat_timeout_s=HEARTBEAT_S,
                  distributed_init_timeout_s=90)
  return small_config(fake_dataset, **{**settings, **overrides})


def _final_state(config, workdir):
  task = train_lib.make_task(config)
  state = workdir_lib.Checkpoints(str(workdir)).restore(train_lib.init_state(config, task))
  assert state is not None, f"no checkpoint in {workdir}"
  return state


def _assert_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


def _strip(records):
  return [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in records]


# ======================================================================================
# Runs shared by the tests (module scope: each is started once)
# ======================================================================================
@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("multihost")


@pytest.fixture(scope="module")
def straight(fake_dataset, out_dir):
  """An uninterrupted two-process run of 8 steps (config from the environment)."""
  workdir = out_dir / "straight"
  with _launch(out_dir, "straight", workdir, _multihost_config(fake_dataset)) as run:
    codes = run.wait(RUN_TIMEOUT_S)
    assert codes == [0, 0], run.logs()
  return workdir, run


@pytest.fixture(scope="module")
def killed(fake_dataset, out_dir):
  """The same run (config from --config fields), process 1 killed -9 after step 5, with
  the default heartbeat timeout (the survivor's exit time is what users get)."""
  workdir = out_dir / "killed"
  config = _multihost_config(fake_dataset, distributed_heartbeat_timeout_s=(
      fashion_mnist_mlp.get_config().distributed_heartbeat_timeout_s))
  with _launch(out_dir, "killed", workdir, config, via="config",
               extra_env={"TEST_SLOW_FROM_STEP": "5"}) as run:
    metrics, checkpoint = workdir / "metrics.jsonl", workdir / "checkpoints" / "4"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not (checkpoint.is_dir() and metrics.exists()
               and '"step": 5,' in metrics.read_text()):
      if time.monotonic() > deadline or any(p.poll() is not None for p in run.procs):
        pytest.fail(f"the run never reached step 5 in training\n{run.logs()}")
      time.sleep(0.1)
    survivor, victim = run.procs
    os.kill(victim.pid, signal.SIGKILL)
    start = time.monotonic()
    try:
      survivor.wait(timeout=KILL_DEADLINE_S)
    except subprocess.TimeoutExpired:
      pass  # reported by the test
    elapsed = time.monotonic() - start
    code = survivor.poll()
  return workdir, run, code, elapsed


# ======================================================================================
# Tests
# ======================================================================================
def test_settings_from_config_and_environment(monkeypatch):
  # As on any machine without TPU chips (GKE TPU pods set TPU_WORKER_HOSTNAMES).
  monkeypatch.setattr(distributed, "_cloud_tpu_vm",
                      lambda environ: bool(environ.get("TPU_WORKER_HOSTNAMES")))
  config = fashion_mnist_mlp.get_config()
  assert config.distributed == "auto"
  assert distributed.settings(config, {}) is None  # nothing asks for it
  assert distributed.settings(config, {"SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"}
                              ) is None
  s = distributed.settings(config, {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
                                    "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"})
  assert (s.coordinator_address, s.num_processes, s.process_id) == ("10.0.0.1:1234", 4, 3)
  assert (s.init_timeout_s, s.heartbeat_timeout_s) == (300, 30)
  for launcher in ({"SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2"},
                   {"OMPI_COMM_WORLD_SIZE": "8"}, {"TPU_WORKER_HOSTNAMES": "a,b"}):
    s = distributed.settings(config, launcher)  # left to JAX's auto-detection
    assert s is not None and s.coordinator_address is None and s.num_processes is None
  config.coordinator_address, config.num_processes, config.process_id = "host:99", 2, 1
  s = distributed.settings(config, {"JAX_COORDINATOR_ADDRESS": "other:1",
                                    "JAX_PROCESS_ID": "0"})
  assert (s.coordinator_address, s.num_processes, s.process_id) == ("host:99", 2, 1)
  config.distributed = "off"
  assert distributed.settings(config, {}) is None
  config.distributed = "true"  # --config.distributed=True on a string field
  assert distributed.settings(config, {}) is not None


@pytest.mark.parametrize("field,value,env", [
    ("distributed", "maybe", {}), ("coordinator_address", "nohostport", {}),
    ("num_processes", 0, {}), ("process_id", 5, {"JAX_NUM_PROCESSES": "2"}),
    ("distributed_heartbeat_timeout_s", 0, {}), ("process_id", -1,
                                                 {"JAX_PROCESS_ID": "x"})])
def test_bad_settings_fail_in_one_line(field, value, env):
  config = fashion_mnist_mlp.get_config()
  config[field] = value
  with pytest.raises(distributed.DistributedError) as info:
    distributed.settings(config, env)
  assert "\n" not in str(info.value)
  assert field in str(info.value) or "JAX_PROCESS_ID" in str(info.value)


def test_two_processes_equal_one_process_with_four_devices(fake_dataset, straight):
  workdir, run = straight
  assert jax.device_count() >= 4, "tests/conftest.py forces 4 CPU devices"
  config = _multihost_config(fake_dataset)
  devices = jax.devices()[:4]
  one, _ = run_steps(config, devices, num_steps=8)  # same global batches, 1 process
  two = _final_state(config, workdir)
  assert int(two.step) == int(train_lib.unreplicate(one.step)) == 8
  _assert_close(two.params, train_lib.unreplicate(one.params), 1e-5)
  _assert_close(two.constrained, train_lib.unreplicate(one.constrained), 1e-5)
  _assert_close(two.opt_state, train_lib.unreplicate(one.opt_state), 1e-5)
  assert np.all(np.asarray(two.constrained.multipliers) > 0)
  # Every process ends with the same state (its own copy) and evaluates the whole
  # test split exactly once across processes.
  summaries = [run.json(i, "summary") for i in range(2)]
  assert summaries[0] == summaries[1]
  mesh = train_lib.make_mesh(devices)
  reference = train_lib.evaluate(
      train_lib.eval_variables(one),
      train_lib.make_eval_step(config, train_lib.make_task(config), mesh),
      train_lib.load_source(config, config.eval_split), config, mesh)
  assert summaries[0]["test_examples"] == reference["test_examples"] == 100
  assert summaries[0]["test_error"] == pytest.approx(reference["test_error"], abs=1e-9)
  evals = [r for r in reporting.read_metrics(str(workdir)) if r.get("eval")]
  assert [r["test_examples"] for r in evals] == [100, 100]


def test_only_process_zero_writes_logs(straight):
  workdir, run = straight
  logs = re.compile(r"^(metrics\.jsonl|eval\.json|.*\.png|tensorboard/.*)$")
  zero, one = ([f for f in run.written(i) if logs.match(f)] for i in range(2))
  assert "metrics.jsonl" in zero and any(f.startswith("tensorboard/") for f in zero)
  assert one == [], f"process 1 wrote log files: {one}"
  assert len(os.listdir(workdir / "tensorboard")) == 1  # one events file
  steps = [r["step"] for r in reporting.read_metrics(str(workdir)) if not r.get("eval")]
  assert steps == list(range(1, 9))  # each record once


def test_eval_py_on_two_processes_writes_only_from_process_zero(fake_dataset, straight,
                                                               out_dir):
  workdir, train_run = straight
  config = _multihost_config(fake_dataset)
  with _launch(out_dir, "eval", workdir, config, script="eval.py") as run:
    assert run.wait(RUN_TIMEOUT_S) == [0, 0], run.logs()
  result = json.loads((workdir / "eval.json").read_text())
  assert result["step"] == 8 and result["test_examples"] == 100
  assert result["test_error"] == pytest.approx(
      train_run.json(0, "summary")["test_error"], abs=1e-9)
  zero, one = run.written(0), run.written(1)
  assert "eval.json" in zero and any(f.endswith(".png") for f in zero)
  assert [f for f in one if not f.startswith("checkpoints")] == []
  assert "wrote" in run.log(0) and "wrote" not in run.log(1)


def test_killing_one_process_stops_the_other(killed):
  _, run, code, elapsed = killed
  print(f"process 0 exited {elapsed:.1f} s after process 1 was killed (code {code})")
  assert code is not None, (
      f"process 0 still running {KILL_DEADLINE_S} s after process 1 was killed\n"
      f"{run.logs()}")
  assert code != 0, run.logs()
  assert elapsed < KILL_DEADLINE_S
  assert re.search(r"unhealthy|stopped sending heartbeats|another task died|"
                   r"Connection closed|connection reset", run.log(0), re.I), run.logs()


def test_resume_after_kill_ends_like_uninterrupted_run(fake_dataset, killed, straight,
                                                      out_dir):
  workdir, _, _, _ = killed
  config = _multihost_config(fake_dataset)
  before = reporting.read_metrics(str(workdir))
  assert max(r["step"] for r in before) >= 5  # logged past the step-4 checkpoint
  assert sorted(os.listdir(workdir / "checkpoints")) == ["4"]
  with _launch(out_dir, "resumed", workdir, config) as run:
    assert run.wait(RUN_TIMEOUT_S) == [0, 0], run.logs()
  straight_dir, _ = straight
  a, b = _final_state(config, straight_dir), _final_state(config, workdir)
  assert int(a.step) == int(b.step) == 8
  _assert_close(a, b, 0)  # bit-identical on CPU
  assert _strip(reporting.read_metrics(str(workdir))) == _strip(
      reporting.read_metrics(str(straight_dir)))


def test_unreachable_peers_fail_clearly_within_the_timeout(fake_dataset, out_dir):
  config = small_config(fake_dataset, distributed_init_timeout_s=3)
  with _launch(out_dir, "alone", out_dir / "alone", config, n=1,
               extra_env={"JAX_NUM_PROCESSES": "2"}) as run:  # process 1 never starts
    start = time.monotonic()
    assert run.wait(60) != [0], run.logs()
    assert time.monotonic() - start < 60
  assert "could not join the 2-process run within 3 s" in run.log(0), run.logs()
