"""Median ms per training step: constrained L0 models vs the same dense models, one run.

    python benchmarks/step_time.py                 # MLP and LeNet-5-Caffe, batch 100
    python benchmarks/step_time.py --models=mlp --steps=200

Prints, measured in this one run on this machine:
* the trainer's jitted step (the real `train_lib` step under pmap on one device, dual
  update included) for the L0 model with per-example and per-batch gate noise and for the
  dense model (plain nn.Dense / nn.Conv, no constraint), and the gate overhead ratio;
* the input pipeline's examples/s next to the examples/s the L0 step consumes.
Data are random images (the step's cost does not depend on them); the pipeline is
measured on a generated in-memory source of Fashion-MNIST's size.
"""

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import default  # noqa: E402
from l0jax import input_pipeline, train_lib  # noqa: E402


def step_config(model: str, gated: bool, per_example: bool = True):
  config = default.get_config()
  config.model = model
  config.gated = gated
  config.sample_per_example = per_example
  config.target_density = 0.33 if model == "mlp" else 0.10
  config.dual_learning_rate = 1e-2
  return config


def time_step(config, steps: int, batch_size: int, repeats: int = 5) -> float:
  """Median over ``repeats`` of the mean ms per step over ``steps`` steps."""
  mesh = train_lib.make_mesh(jax.devices()[:1])
  task = train_lib.make_task(config, 1000)
  state = train_lib.replicate(train_lib.init_state(config, task), mesh)
  step = train_lib.make_train_step(config, task, mesh)
  rng = np.random.default_rng(0)
  batch = train_lib.shard_batch({
      "image": rng.uniform(size=(1, batch_size, 28, 28, 1)).astype(np.float32),
      "label": rng.integers(0, 10, size=(1, batch_size)).astype(np.int32)}, mesh)
  for _ in range(3):  # compile and warm up
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    times.append((time.perf_counter() - start) / steps * 1e3)
  return statistics.median(times)


def pipeline_examples_per_sec(batch_size: int, steps: int = 600) -> float:
  rng = np.random.default_rng(0)
  source = input_pipeline.ArraySource(
      images=rng.integers(0, 256, size=(60000, 28, 28, 1), dtype=np.uint8),
      labels=rng.integers(0, 10, size=60000).astype(np.int64))
  batches = input_pipeline.train_iterator(source, global_batch_size=batch_size, seed=0)
  next(batches)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return steps * batch_size / (time.perf_counter() - start)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="mlp,lenet5")
  parser.add_argument("--batch_size", type=int, default=100)
  parser.add_argument("--steps", type=int, default=100)
  args = parser.parse_args()

  print(f"jax {jax.__version__}, backend {jax.default_backend()}, batch {args.batch_size}, "
        f"median of 5 x {args.steps} steps")
  header = (f"{'model':8} {'dense ms':>9} {'L0/example ms':>14} {'L0/batch ms':>12} "
            f"{'overhead':>9} {'overhead/batch':>15}")
  print(header)
  print("-" * len(header))
  l0_ms = {}
  for model in args.models.split(","):
    steps = args.steps if model == "mlp" else max(args.steps // 5, 10)
    dense = time_step(step_config(model, gated=False), steps, args.batch_size)
    per_example = time_step(step_config(model, gated=True), steps, args.batch_size)
    per_batch = time_step(step_config(model, gated=True, per_example=False), steps,
                          args.batch_size)
    l0_ms[model] = per_example
    print(f"{model:8} {dense:9.2f} {per_example:14.2f} {per_batch:12.2f} "
          f"{per_example / dense:8.2f}x {per_batch / dense:14.2f}x")
  pipeline = pipeline_examples_per_sec(args.batch_size)
  print()
  for model, ms in l0_ms.items():
    consumed = args.batch_size / (ms / 1e3)
    print(f"pipeline {pipeline:,.0f} examples/s vs {model} L0 step consuming "
          f"{consumed:,.0f} examples/s: {pipeline / consumed:.1f}x")


if __name__ == "__main__":
  main()
