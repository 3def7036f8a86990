"""The hard-concrete gate of this tree against the one at a git revision, in one run.

    python benchmarks/gate_ab.py                 # against 9e00762 (the custom-VJP gate)
    python benchmarks/gate_ab.py --base=HEAD~3 --repeats=11

Builds the trainer's constrained L0 steps (``step_time.step_runner``: MLP with
per-example and per-batch noise, LeNet-5-Caffe with per-example noise) once with each
gate implementation (``l0jax.gates._hard_concrete_fast_grad``, the base's loaded from
``git show BASE:l0jax/gates.py``) and times them in turns, with the gate's own forward
+ backward at the MLP's first layer (batch 100 x 784 gates). Also checks that both give
bit-identical gradients there. Prints ms per step and new/base ratios; the machine's
load moves absolute times, compare the ratios.
"""

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import step_time  # noqa: E402
from l0jax import gates  # noqa: E402


def base_gates(revision: str):
  """The ``l0jax.gates`` module of ``revision``, imported under another name."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  source = subprocess.run(["git", "show", f"{revision}:l0jax/gates.py"], cwd=root,
                          check=True, capture_output=True, text=True).stdout
  with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
    f.write(source)
  spec = importlib.util.spec_from_file_location("base_gates", f.name)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  os.unlink(f.name)
  return module


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--base", default="9e00762")
  parser.add_argument("--repeats", type=int, default=9)
  args = parser.parse_args()
  base = base_gates(args.base)
  impls = {"base": base._hard_concrete_fast_grad,  # pylint: disable=protected-access
           "new": gates._hard_concrete_fast_grad}  # pylint: disable=protected-access

  u = jnp.asarray(np.random.default_rng(0).uniform(size=(100, 784)), jnp.float32)
  a = jnp.asarray(np.random.default_rng(1).normal(size=784), jnp.float32)
  w = jnp.asarray(np.random.default_rng(2).normal(size=(100, 784)), jnp.float32)
  grads = {}
  runners, steps = {}, {}
  for name, fn in impls.items():
    g = jax.jit(jax.grad(lambda a, u, fn=fn: jnp.sum(fn(u, a, 2 / 3, -0.1, 1.1) * w),
                         (0, 1)))
    grads[name] = g(a, u)
    runners[("gate fwd+bwd (100, 784)", name)] = step_time.function_runner(g, a, u)
    steps[("gate fwd+bwd (100, 784)", name)] = 200
  same = all(np.array_equal(x, y) for x, y in zip(grads["base"], grads["new"]))
  print(f"gate gradients (log_alpha and u) bit-identical: {same}")

  for model, per_example in (("mlp", True), ("mlp", False), ("lenet5", True)):
    label = f"{model} L0 step, per-{'example' if per_example else 'batch'} noise"
    for name, fn in impls.items():
      gates._hard_concrete_fast_grad = fn  # pylint: disable=protected-access
      run = step_time.step_runner(step_time.step_config(model, True, per_example), 100)
      n = 50 if model == "mlp" else 10
      run(n)  # trace and compile with this gate
      runners[(label, name)], steps[(label, name)] = run, n
  gates._hard_concrete_fast_grad = impls["new"]  # pylint: disable=protected-access

  ms = step_time.time_round_robin(runners, steps, args.repeats)
  print(f"\nbase {args.base} vs this tree, median of {args.repeats} round-robin rounds")
  print(f"{'':42} {'base ms':>9} {'new ms':>9} {'new/base':>9}")
  for label in dict.fromkeys(k[0] for k in ms):
    b, n = ms[(label, "base")], ms[(label, "new")]
    print(f"{label:42} {b:9.3f} {n:9.3f} {n / b:9.3f}")


if __name__ == "__main__":
  main()
