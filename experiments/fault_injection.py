"""Fault injection against train.py / eval.py, run as a user runs them (subprocesses).

    python experiments/fault_injection.py                       # the README's counts
    python experiments/fault_injection.py --trials=2 --kills_per_trial=2 --flips=3 --interrupts=1

Every fault is injected into a real run of ``configs/fashion_mnist_mlp.py:runlocal``
(real Fashion-MNIST unless ``--config.*`` overrides are passed after ``--``):

* kill -9 at a random moment of a run (a quarter in start-up and compilation, the rest
  just after a random training step: training, evaluation and checkpoint writes),
  several times, then the same command until it ends;
* Ctrl-C at a random step, then the same command again;
* one flipped bit in a random file of the newest checkpoint, a truncated or removed
  file, a removed or corrupted checksum, then the same command again;
* a full disk (a file-size limit), two train.py at once on one workdir, a diverging run
  (NaN), a flipped bit in an exported model.

A run *survives bit-identically* when its final checkpoint (the sha256 of every array,
``WORKDIR/checksums/<step>.json``) and ``metrics.jsonl`` (without the wall-clock
``examples_per_sec``) equal those of an uninterrupted run. Bad inputs (config values,
flags, paths) must each end with a non-zero exit, exactly one line ``error: ...`` on
stderr, no traceback, and nothing created. The script prints every outcome and the
counts; ``tests/test_faults.py`` runs a few of each with the same functions.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/fashion_mnist_mlp.py:runlocal"
# Small and quick, with a checkpoint every 50 steps: kills often land in a save.
TOTAL_STEPS = 200
RUN_FLAGS = (f"--config.num_train_steps={TOTAL_STEPS}", "--config.checkpoint_every_steps=50",
             "--config.eval_every_steps=100", "--config.log_every_steps=10",
             "--config.keep_checkpoints=2", "--config.progress_bar=False")


# ======================================================================================
# Running the mains
# ======================================================================================
def child_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
  env = dict(os.environ, PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
  env.update(extra or {})
  return env


# Runs a main as ``python script args`` would, with Ctrl-C delivered as KeyboardInterrupt
# (a shell's background jobs ignore SIGINT) and an optional file-size limit: writes past
# it fail with EFBIG, as on a full disk.
_LAUNCHER = """
import resource, runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
limit = int(sys.argv[1])
if limit > 0:
  signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
  resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def start(script: str, args: Sequence[str], env=None,
          file_size_limit: int = 0) -> subprocess.Popen:
  return subprocess.Popen(
      [sys.executable, "-c", _LAUNCHER, str(file_size_limit), script, *args], cwd=ROOT,
      env=env or child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(script: str, args: Sequence[str], env=None, file_size_limit: int = 0,
        timeout: float = 600) -> subprocess.CompletedProcess:
  proc = start(script, args, env, file_size_limit)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
  return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def train_args(workdir: str, extra: Sequence[str] = ()) -> List[str]:
  return [f"--config={CONFIG}", f"--workdir={workdir}", *RUN_FLAGS, *extra]


# ======================================================================================
# What a run ended with
# ======================================================================================
def final_digest(workdir: str) -> Optional[str]:
  """sha256 of every array of the newest checkpoint (its recorded checksum)."""
  directory = os.path.join(workdir, "checksums")
  steps = sorted(int(n[:-5]) for n in os.listdir(directory) if n[:-5].isdigit()) if (
      os.path.isdir(directory)) else []
  if not steps:
    return None
  with open(os.path.join(directory, f"{steps[-1]}.json")) as f:
    return f"{steps[-1]}:{json.load(f)['sha256']}"


def metrics(workdir: str) -> List[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k != "examples_per_sec"}
            for line in f if line.strip()]


def same_run(a: str, b: str) -> bool:
  """Both workdirs end with the same checkpoint (bit for bit) and the same metrics."""
  return final_digest(a) is not None and final_digest(a) == final_digest(b) and (
      metrics(a) == metrics(b))


# ======================================================================================
# Faults
# ======================================================================================
def newest_step_dir(workdir: str) -> str:
  directory = os.path.join(workdir, "checkpoints")
  step = max(int(n) for n in os.listdir(directory) if n.isdigit())
  return os.path.join(directory, str(step))


def step_files(step_dir: str) -> List[str]:
  return sorted(os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs)


def flip_bit(path: str, rng: random.Random) -> str:
  """Flips one random bit of ``path``; returns where."""
  with open(path, "r+b") as f:
    size = os.fstat(f.fileno()).st_size
    offset, bit = rng.randrange(size), rng.randrange(8)
    f.seek(offset)
    byte = f.read(1)[0]
    f.seek(offset)
    f.write(bytes([byte ^ (1 << bit)]))
  return f"{path} byte {offset} bit {bit}"


def largest_file(step_dir: str) -> str:
  return max(step_files(step_dir), key=os.path.getsize)


def _checksum_of(step_dir: str) -> str:
  workdir = os.path.dirname(os.path.dirname(step_dir))
  return os.path.join(workdir, "checksums", os.path.basename(step_dir) + ".json")


def _truncate(path: str) -> None:
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


# name -> fn(step_dir, rng) -> description; each breaks the newest checkpoint
FILE_FAULTS = {
    "flip a bit in the largest array file":
        lambda d, rng: flip_bit(largest_file(d), rng),
    "truncate the largest array file":
        lambda d, rng: _truncate(largest_file(d)) or largest_file(d),
    "remove a manifest.ocdbt":
        lambda d, rng: os.remove(next(p for p in step_files(d)
                                      if p.endswith("manifest.ocdbt"))) or "manifest",
    "remove the step's checksum":
        lambda d, rng: os.remove(_checksum_of(d)) or _checksum_of(d),
    "truncate the step's checksum":
        lambda d, rng: _truncate(_checksum_of(d)) or _checksum_of(d),
    "remove the step directory":
        lambda d, rng: shutil.rmtree(d) or d,
}


def one_clear_line(proc: subprocess.CompletedProcess) -> Tuple[bool, str]:
  """A failure reported as it should be: non-zero exit, one ``error:`` line, no trace."""
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  ok = (proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ")
        and "Traceback" not in proc.stderr)
  return ok, (lines[-1] if lines else f"(rc {proc.returncode}, no stderr)")


def logged_steps(workdir: str) -> List[int]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    steps = []
    for line in f:
      try:
        steps.append(json.loads(line)["step"])
      except (ValueError, KeyError):
        pass  # a line being written
  return steps


def latest_checkpoint(workdir: str) -> int:
  digest = final_digest(workdir)
  return int(digest.split(":")[0]) if digest else 0


def wait_for_step(workdir: str, proc: subprocess.Popen, step: int,
                  timeout: float = 900) -> bool:
  """Until ``proc`` logged ``step`` or a later one (not a record an earlier run left);
  False if it ended first."""
  before, deadline = logged_steps(workdir), time.monotonic() + timeout
  while time.monotonic() < deadline:
    steps = logged_steps(workdir)
    if steps != before and max(steps, default=0) >= step:
      return True
    if proc.poll() is not None:
      return False
    time.sleep(0.05)
  raise TimeoutError(f"no step {step} logged in {workdir} within {timeout} s")


def kill_trial(args: Sequence[str], workdir: str, kills: int, total_steps: int,
               startup_s: float, rng: random.Random
               ) -> Tuple[List[str], subprocess.CompletedProcess]:
  """Up to ``kills`` times: start ``train.py args`` and kill -9 it at a random moment:
  a quarter of the kills at a uniform time in start-up (``[0, startup_s)``), the rest
  within 0.3 s after a uniformly chosen step past its checkpoint was logged (training,
  evaluation and checkpoint writes). Then runs it to the end. Returns (where each kill
  landed, the last run)."""
  where = []
  for _ in range(kills):
    resumed = latest_checkpoint(workdir)
    if resumed >= total_steps:
      break
    proc = start("train.py", args)
    if rng.random() < 0.25:
      at = rng.uniform(0, startup_s)
      ended = proc.poll() is not None
      try:
        proc.wait(timeout=at)
        ended = True
      except subprocess.TimeoutExpired:
        pass
      label = f"start-up +{at:.1f} s"
    else:
      target = rng.randrange(resumed + 1, total_steps)
      ended = not wait_for_step(workdir, proc, target)
      time.sleep(rng.uniform(0, 0.3))
      label = f"after step {max(logged_steps(workdir), default=0)}"
    if not ended and proc.poll() is None:
      proc.send_signal(signal.SIGKILL)
      where.append(label)
    proc.communicate()
  return where, run("train.py", args)


def bad_inputs(scratch: str, trained: str, no_checkpoint: str
               ) -> List[Tuple[str, str, List[str], Optional[str]]]:
  """(name, script, args, path that must not be created) of bad inputs."""
  new = os.path.join(scratch, "never_created")
  bad_config = [
      ("target_density=1.5", "--config.target_density=1.5"),
      ("a zero width", "--config.mlp_features=(0,100)"),
      ("a negative width", "--config.mlp_features=(-5,100)"),
      ("learning_rate=0", "--config.learning_rate=0"),
      ("eval_every_steps=-7", "--config.eval_every_steps=-7"),
      ("penalized without a penalty", "--config.method=penalized"),
      ("a penalty with constrained", "--config.penalty=0.5"),
      ("momentum=1.5", "--config.momentum=1.5"),
      ("keep_checkpoints=0", "--config.keep_checkpoints=0"),
      ("num_train_steps=-5", "--config.num_train_steps=-5"),
      ("seed=-1", "--config.seed=-1"),
      ("batch_size=0", "--config.batch_size=0"),
      ("an unknown dataset", "--config.dataset=cifar11"),
      ("an unknown optimizer", "--config.optimizer=lion"),
      ("a config field typo", "--config.learnin_rate=0.1"),
      ("a non-number", "--config.learning_rate=abc"),
      ("layer_targets without layerwise", "--config.layer_targets=(0.5,0.5,0.5)"),
      ("distributed=maybe", "--config.distributed=maybe"),
  ]
  out = [(f"train.py {name}", "train.py", [f"--config={CONFIG}", f"--workdir={new}", a],
          new) for name, a in bad_config]
  out += [
      ("train.py a missing config file", "train.py",
       ["--config=configs/nonexistent.py", f"--workdir={new}"], new),
      ("train.py an unknown config argument", "train.py",
       ["--config=configs/fashion_mnist_mlp.py:tiny", f"--workdir={new}"], new),
      ("train.py no --workdir", "train.py", [f"--config={CONFIG}"], None),
      ("train.py a changed config on resume", "train.py",
       train_args(trained, ["--config.target_density=0.5"]), None),
      ("eval.py a missing workdir", "eval.py", [f"--workdir={new}"], new),
      ("eval.py a workdir without a run", "eval.py", [f"--workdir={scratch}"], None),
      ("eval.py a run without a checkpoint", "eval.py", [f"--workdir={no_checkpoint}"],
       None),
      ("eval.py another config", "eval.py",
       [f"--workdir={trained}", "--config=configs/fashion_mnist_lenet.py"], None),
      ("eval.py --export into the workdir", "eval.py",
       [f"--workdir={trained}", f"--export={trained}/export"], f"{trained}/export"),
      ("eval.py --export=workdir --overwrite", "eval.py",
       [f"--workdir={trained}", f"--export={trained}", "--overwrite"], None),
      ("eval.py --overwrite of a non-export", "eval.py",
       [f"--workdir={trained}", f"--export={scratch}", "--overwrite"], None),
      ("eval.py --export to an unwritable path", "eval.py",
       [f"--workdir={trained}", "--export=/proc/l0jax_export"], None),
  ]
  return out


# ======================================================================================
# The campaign
# ======================================================================================
def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--trials", type=int, default=5, help="kill -9 trials")
  parser.add_argument("--kills_per_trial", type=int, default=4)
  parser.add_argument("--flips", type=int, default=20, help="single-bit flips")
  parser.add_argument("--interrupts", type=int, default=5, help="Ctrl-C trials")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("extra", nargs="*", help="--config.X=V passed to every run")
  args = parser.parse_args(argv)
  rng = random.Random(args.seed)
  scratch = tempfile.mkdtemp(prefix="l0jax_faults_")
  counts = {"faults injected": 0, "survived bit-identically": 0,
            "detected and refused (one line)": 0, "bad inputs tried": 0,
            "clear one-line errors": 0}
  extra = list(args.extra)

  def report(kind, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {kind}: {detail}", flush=True)

  straight = os.path.join(scratch, "straight")
  begin = time.monotonic()
  proc = start("train.py", train_args(straight, extra))
  wait_for_step(straight, proc, 1)
  startup = time.monotonic() - begin
  out, err = proc.communicate()
  assert proc.returncode == 0, err[-3000:]
  print(f"uninterrupted run: {time.monotonic() - begin:.1f} s ({startup:.1f} s to the "
        f"first step), final {final_digest(straight)}")

  # kill -9 at random moments
  for trial in range(args.trials):
    workdir = os.path.join(scratch, f"killed_{trial}")
    where, last = kill_trial(train_args(workdir, extra), workdir, args.kills_per_trial,
                             TOTAL_STEPS, startup, rng)
    ok = last.returncode == 0 and same_run(workdir, straight)
    counts["faults injected"] += len(where)
    counts["survived bit-identically"] += len(where) if ok else 0
    report("kill -9", ok, f"trial {trial}: killed {'; '.join(where)}; then rc "
           f"{last.returncode}")

  # Ctrl-C at a random step: one line, that step saved, the rerun ends bit-identical
  for trial in range(args.interrupts):
    workdir = os.path.join(scratch, f"interrupted_{trial}")
    proc = start("train.py", train_args(workdir, extra))
    if not wait_for_step(workdir, proc, rng.randrange(1, TOTAL_STEPS)):
      proc.communicate()
      continue  # it ended first
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate()
    clear, line = one_clear_line(subprocess.CompletedProcess(proc.args, proc.returncode,
                                                             out, err))
    last = run("train.py", train_args(workdir, extra))
    ok = (clear and proc.returncode == 130 and "saved a checkpoint of step" in line
          and last.returncode == 0 and same_run(workdir, straight))
    counts["faults injected"] += 1
    counts["survived bit-identically"] += ok
    report("Ctrl-C", ok, line)

  # broken checkpoint files (flips at random, then each file fault once)
  faults = [("flip a bit in a random file", lambda d, r: flip_bit(
      r.choice(step_files(d)), r))] * args.flips + list(FILE_FAULTS.items())
  for i, (name, inject) in enumerate(faults):
    workdir = os.path.join(scratch, f"file_fault_{i}")
    shutil.copytree(straight, workdir)
    where = inject(newest_step_dir(workdir), rng)
    proc = run("train.py", train_args(workdir, extra))
    ok = proc.returncode == 0 and same_run(workdir, straight)
    warned = "warning:" in proc.stderr
    counts["faults injected"] += 1
    counts["survived bit-identically"] += ok
    report(name, ok, f"{where}; {'fell back' if warned else 'no warning'}")

  # a full disk: the save fails in one line, and the run resumes once there is room
  workdir = os.path.join(scratch, "disk_full")
  proc = run("train.py", train_args(workdir, extra), file_size_limit=300_000)
  clear, line = one_clear_line(proc)
  resumed = run("train.py", train_args(workdir, extra))
  ok = clear and resumed.returncode == 0 and same_run(workdir, straight)
  counts["faults injected"] += 1
  counts["survived bit-identically"] += ok
  report("disk full during a save", ok, line)

  # two train.py at once on one workdir
  workdir = os.path.join(scratch, "concurrent")
  procs = [start("train.py", train_args(workdir, extra)) for _ in range(2)]
  outputs = [p.communicate() for p in procs]
  results = [subprocess.CompletedProcess(p.args, p.returncode, *out)
             for p, out in zip(procs, outputs)]
  refused = [r for r in results if r.returncode != 0]
  ok = (len(refused) == 1 and one_clear_line(refused[0])[0]
        and "in use by another train.py" in refused[0].stderr
        and same_run(workdir, straight))
  counts["faults injected"] += 1
  counts["survived bit-identically"] += ok
  report("two train.py on one workdir", ok,
         one_clear_line(refused[0])[1] if refused else "neither refused")

  # a diverging run: stops at once, saves nothing non-finite
  workdir = os.path.join(scratch, "nan")
  proc = run("train.py", train_args(workdir, [*extra, "--config.optimizer=sgd",
                                              "--config.learning_rate=1e6"]))
  clear, line = one_clear_line(proc)
  ok = clear and "non-finite" in line and final_digest(workdir) is None
  counts["faults injected"] += 1
  counts["detected and refused (one line)"] += ok
  report("NaN (sgd, learning_rate=1e6)", ok, line)

  # a flipped bit in an exported model
  export = os.path.join(scratch, "export")
  proc = run("eval.py", [f"--workdir={straight}", f"--export={export}"])
  assert proc.returncode == 0, proc.stderr[-3000:]
  params = [p for p in step_files(export) if os.path.getsize(p) > 10_000]
  where = flip_bit(max(params, key=os.path.getsize), rng)
  proc = subprocess.run(
      [sys.executable, "-c", f"from l0jax import purge, errors\n"
       f"with errors.one_line_errors(): purge.load({export!r})"],
      cwd=ROOT, capture_output=True, text=True, env=child_env())
  clear, line = one_clear_line(proc)
  ok = clear and "corrupt" in line
  counts["faults injected"] += 1
  counts["detected and refused (one line)"] += ok
  report("flipped bit in an export", ok, f"{where}: {line}")

  # bad inputs
  for name, script, script_args, must_not_exist in bad_inputs(
      os.path.join(scratch, "empty"), straight, os.path.join(scratch, "nan")):
    os.makedirs(os.path.join(scratch, "empty"), exist_ok=True)
    before = sorted(os.listdir(straight))
    proc = run(script, script_args)
    clear, line = one_clear_line(proc)
    created = (must_not_exist is not None and os.path.exists(must_not_exist)) or (
        sorted(os.listdir(straight)) != before)
    ok = clear and not created
    counts["bad inputs tried"] += 1
    counts["clear one-line errors"] += ok
    report(name, ok, line + (" (created files!)" if created else ""))

  # a read-only workdir (a read-only bind mount; needs root, skipped otherwise)
  source, mounted = os.path.join(scratch, "ro_source"), os.path.join(scratch, "ro")
  os.makedirs(mounted)
  shutil.copytree(straight, os.path.join(source, "run"))
  if subprocess.run(["mount", "--bind", source, mounted], capture_output=True).returncode == 0:
    try:
      subprocess.run(["mount", "-o", "remount,bind,ro", mounted], check=True)
      for name, script, script_args in (
          ("train.py a read-only workdir", "train.py",
           train_args(os.path.join(mounted, "run"), extra)),
          ("train.py a workdir it cannot create", "train.py",
           train_args(os.path.join(mounted, "new"), extra)),
          ("eval.py a read-only workdir", "eval.py",
           [f"--workdir={os.path.join(mounted, 'run')}"])):
        clear, line = one_clear_line(run(script, script_args))
        counts["bad inputs tried"] += 1
        counts["clear one-line errors"] += clear
        report(name, clear, line)
    finally:
      subprocess.run(["umount", mounted], check=False)
  else:
    print("(read-only workdir: no bind mount here, skipped)")

  print()
  for key, value in counts.items():
    print(f"{key:34} {value}")
  shutil.rmtree(scratch, ignore_errors=True)
  return counts


if __name__ == "__main__":
  main()
