"""The hard-concrete gate of this tree against the one at a git revision, in one run.

    python benchmarks/gate_ab.py                 # against 9e00762 (the custom-VJP gate)
    python benchmarks/gate_ab.py --base=HEAD~3 --repeats=11

Builds the trainer's constrained L0 steps (``step_time.step_runner``: MLP with
per-example and per-batch noise, LeNet-5-Caffe with per-example noise) and the MLP's
bare loss gradient with per-example noise (no optimizer, no scan) once with each
gate implementation (``l0jax.gates._hard_concrete_fast_grad``, the base's loaded from
``git show BASE:l0jax/gates.py``) and times the two back to back in every round, in
alternating order, with the gate's own forward + backward at the MLP's first layer
(batch 100 x 784 gates). Also checks that both give bit-identical gradients there
and counts the ops of both compiled MLP loss gradients.
Prints median ms and the median of the per-round new/base ratios; the machine's load
moves absolute times, compare the ratios.
"""

import argparse
import collections
import importlib.util
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import step_time  # noqa: E402
from l0jax import gates, layers  # noqa: E402
from l0jax.models import MLP  # noqa: E402


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
  parser.add_argument("--repeats", type=int, default=21)
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

  mlp = MLP()
  x = jnp.asarray(np.random.default_rng(3).uniform(size=(100, 28, 28, 1)), jnp.float32)
  y = jnp.asarray(np.random.default_rng(4).integers(0, 10, 100))
  params = mlp.init({"params": jax.random.key(0), "gates": jax.random.key(1)}, x)
  keys = jax.random.split(jax.random.key(2), 100)

  def mlp_loss(p):
    noise = layers.per_example_noise(keys, p["params"])
    logits = mlp.apply({"params": p["params"], layers.NOISE_COLLECTION: noise}, x)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(100), y])

  for name, fn in impls.items():
    gates._hard_concrete_fast_grad = fn  # pylint: disable=protected-access
    label = "mlp loss gradient, per-example noise"
    hlo = jax.jit(jax.grad(mlp_loss)).lower(params).compile().as_text()
    ops = collections.Counter(re.findall(r"= \S+ ([\w-]+)\(", hlo))
    print(f"{name} gate: compiled mlp loss gradient has {sum(ops.values())} ops, "
          f"{ops['fusion']} fusions, {ops['dot']} dots")
    run = step_time.function_runner(jax.grad(mlp_loss), params)
    run(1)  # trace and compile with this gate
    runners[(label, name)], steps[(label, name)] = run, 50

  for model, per_example in (("mlp", True), ("mlp", False), ("lenet5", True)):
    label = f"{model} L0 step, per-{'example' if per_example else 'batch'} noise"
    for name, fn in impls.items():
      gates._hard_concrete_fast_grad = fn  # pylint: disable=protected-access
      run = step_time.step_runner(step_time.step_config(model, True, per_example), 100)
      n = 50 if model == "mlp" else 10
      run(n)  # trace and compile with this gate
      runners[(label, name)], steps[(label, name)] = run, n
  gates._hard_concrete_fast_grad = impls["new"]  # pylint: disable=protected-access

  times = paired_rounds(runners, steps, args.repeats)
  print(f"\nbase {args.base} vs this tree, {args.repeats} rounds (base and new timed "
        "back to back, in alternating order)")
  print(f"{'':42} {'base ms':>9} {'new ms':>9} {'new/base':>9}")
  for label, (b, n) in times.items():
    ratio = statistics.median(x / y for x, y in zip(n, b))
    print(f"{label:42} {statistics.median(b):9.3f} {statistics.median(n):9.3f} "
          f"{ratio:9.3f}")


def paired_rounds(runners, steps, repeats: int):
  """``{label: (base ms per round, new ms per round)}``; in each round every label's
  two variants run back to back, base first in even rounds and new first in odd ones,
  so a drift of the machine's speed hits both alike. The ratio printed is the median
  of the per-round ratios."""
  for key, run in runners.items():
    run(steps[key])  # warm up
  labels = list(dict.fromkeys(label for label, _ in runners))
  times = {label: ([], []) for label in labels}
  for r in range(repeats):
    for label in labels:
      order = ("base", "new") if r % 2 == 0 else ("new", "base")
      for name in order:
        n = steps[(label, name)]
        start = time.perf_counter()
        runners[(label, name)](n)
        ms = (time.perf_counter() - start) / n * 1e3
        times[label][0 if name == "base" else 1].append(ms)
  return times


if __name__ == "__main__":
  main()
