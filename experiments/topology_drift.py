"""How far runs on different topologies drift apart: 1 process x 1 device, 1 process x 4
devices and 2 processes x 2 devices (jax.distributed on localhost), same config.

    python experiments/topology_drift.py                     # MLP :runlocal, 600 steps
    python experiments/topology_drift.py --steps=2000 --every=100

Each topology trains ``configs/fashion_mnist_mlp.py:runlocal`` (real Fashion-MNIST)
with a checkpoint every ``--every`` steps, all kept; the script then compares the
checkpoints step by step against the 1 x 4 run: the largest absolute difference of
the weights, of the gates' log_alpha and of the multipliers, and (at the end) the test
error and densities that eval.py reports. The global batches and the gate noise are
the same on every topology; what differs is the order in which the gradient all-reduce
adds the devices' contributions, i.e. float rounding, which training then amplifies.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
TOPOLOGIES = ("1x1", "1x4", "2x2")  # processes x devices per process


def _env(devices: int, extra=None):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROC", "JAX_PROCESS_ID"))}
  flags = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                 env.get("XLA_FLAGS", ""))
  env.update(XLA_FLAGS=f"{flags} --xla_force_host_platform_device_count={devices}".strip(),
             JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **(extra or {}))
  return env


def train(topology: str, workdir: str, args) -> None:
  processes, devices = map(int, topology.split("x"))
  flags = ["--config=configs/fashion_mnist_mlp.py:runlocal", f"--workdir={workdir}",
           f"--config.num_train_steps={args.steps}",
           f"--config.checkpoint_every_steps={args.every}",
           f"--config.keep_checkpoints={args.steps // args.every + 1}",
           "--config.progress_bar=False", "--config.tensorboard=False"]
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    address = f"127.0.0.1:{s.getsockname()[1]}"
  procs = []
  for i in range(processes):
    extra = {} if processes == 1 else dict(
        JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(processes),
        JAX_PROCESS_ID=str(i), JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo")
    procs.append(subprocess.Popen([sys.executable, "train.py", *flags], cwd=ROOT,
                                  env=_env(devices, extra), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True))
  for p in procs:
    out, _ = p.communicate()
    if p.returncode:
      raise SystemExit(f"{topology} failed:\n{out[-3000:]}")
  subprocess.run([sys.executable, "eval.py", f"--workdir={workdir}"], cwd=ROOT,
                 env=_env(1), check=True, capture_output=True)


def _split(state):
  """(weights, log_alphas, multipliers) of a TrainState as flat float64 arrays."""
  import jax  # pylint: disable=g-import-not-at-top
  weights, gates = [], []
  for path, leaf in jax.tree_util.tree_flatten_with_path(state.params)[0]:
    (gates if getattr(path[-1], "key", None) == "log_alpha" else weights).append(
        np.ravel(np.asarray(leaf, np.float64)))
  return (np.concatenate(weights), np.concatenate(gates),
          np.asarray(state.constrained.multipliers, np.float64))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=600)
  parser.add_argument("--every", type=int, default=50)
  parser.add_argument("--dir", default="", help="keep the runs here (default: temporary)")
  args = parser.parse_args(argv)
  root = args.dir or tempfile.mkdtemp(prefix="l0jax_topology_")
  for topology in TOPOLOGIES:
    path = os.path.join(root, topology)
    if not os.path.exists(os.path.join(path, "eval.json")):
      print(f"training {topology} in {path}", flush=True)
      train(topology, path, args)

  from l0jax import train_lib, workdir  # pylint: disable=g-import-not-at-top
  config = workdir.read_config(os.path.join(root, "1x4"))
  template = train_lib.init_state(config, train_lib.make_task(config, args.steps))
  reference = workdir.Checkpoints(os.path.join(root, "1x4"))
  print("\nlargest |difference| from the 1 process x 4 devices run")
  print(f"{'step':>6} {'topology':>8} {'weights':>10} {'log_alpha':>10} {'multipliers':>12}")
  for step in reference.steps():
    ref = _split(reference.load(step, template))
    for topology in ("1x1", "2x2"):
      other = _split(workdir.Checkpoints(os.path.join(root, topology)).load(step, template))
      diffs = [np.max(np.abs(a - b)) if a.size else 0.0 for a, b in zip(ref, other)]
      print(f"{step:6d} {topology:>8} {diffs[0]:10.3g} {diffs[1]:10.3g} {diffs[2]:12.3g}")
  print(f"\nat step {args.steps} (eval.py)")
  print(f"{'topology':>8} {'test error':>10} {'expected density':>17} {'test-time density':>18}"
        f" {'architecture':>14}")
  for topology in TOPOLOGIES:
    with open(os.path.join(root, topology, "eval.json")) as f:
      r = json.load(f)
    print(f"{topology:>8} {100 * r['test_error']:9.2f}% {100 * r['expected_density']:16.2f}%"
          f" {100 * r['test_time_density']:17.2f}% {r['architecture']:>14}")


if __name__ == "__main__":
  main()
