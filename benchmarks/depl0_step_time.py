"""Milliseconds per training step with Dep-L0 generated gates vs independent gates.

    python benchmarks/depl0_step_time.py                  # LeNet-5-Caffe, batch 100
    python benchmarks/depl0_step_time.py --model=mlp --repeats=11

The trainer's real jitted single step (``train_lib.make_train_step``, one device,
constraint and dual update included) on random images, for ``gate_source`` =
independent / dep_forward / dep_backward, timed in turns (round-robin, median of
``--repeats`` rounds of ``--steps`` steps) so that a busier moment hits all alike;
compare the printed ratios, not absolute times across runs. The XLA cost analysis of
each compiled step (FLOPs, bytes accessed) does not depend on the machine's load.
"""

import argparse
import statistics
import time

import jax
import numpy as np

from configs import fashion_mnist_lenet_depl0
from l0jax import train_lib

SOURCES = ("independent", "dep_forward", "dep_backward")


def make_runner(gate_source: str, model: str, batch: int):
  config = fashion_mnist_lenet_depl0.get_config()
  config.model, config.gate_source = model, gate_source
  config.fake_data, config.batch_size = True, batch
  mesh = train_lib.make_mesh(jax.devices()[:1])
  task = train_lib.make_task(config, 1000)
  state = train_lib.replicate(train_lib.init_state(config, task), mesh)
  step = train_lib.make_train_step(config, task, mesh)
  rng = np.random.default_rng(0)
  batch_arrays = train_lib.shard_batch({
      "image": rng.random((1, batch) + train_lib.input_shape(config), np.float32),
      "label": rng.integers(0, 10, (1, batch)).astype(np.int32)}, mesh)
  holder = {"state": state}
  cost = step.lower(state, batch_arrays).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost

  def run(steps: int) -> float:
    start = time.perf_counter()
    s = holder["state"]
    for _ in range(steps):
      s, _ = step(s, batch_arrays)
    jax.block_until_ready(s)
    holder["state"] = s
    return (time.perf_counter() - start) / steps

  run(2)  # compile
  return run, cost


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", default="lenet5", choices=("lenet5", "mlp"))
  parser.add_argument("--batch", type=int, default=100)
  parser.add_argument("--steps", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=7)
  args = parser.parse_args()
  made = {s: make_runner(s, args.model, args.batch) for s in SOURCES}
  runners = {s: run for s, (run, _) in made.items()}
  costs = {s: cost for s, (_, cost) in made.items()}
  times = {s: [] for s in SOURCES}
  for _ in range(args.repeats):
    for s in SOURCES:
      times[s].append(runners[s](args.steps))
  base = statistics.median(times["independent"])
  print(f"{args.model}, batch {args.batch}, {jax.default_backend()}, median of "
        f"{args.repeats} rounds of {args.steps} steps")
  flops = lambda s: costs[s].get("flops", float("nan"))
  moved = lambda s: costs[s].get("bytes accessed", float("nan"))
  for s in SOURCES:
    t = statistics.median(times[s])
    print(f"  {s:<12} {1e3 * t:8.2f} ms/step   x{t / base:.3f}   XLA FLOPs "
          f"x{flops(s) / flops('independent'):.3f}, bytes x"
          f"{moved(s) / moved('independent'):.3f}")


if __name__ == "__main__":
  main()
