"""Step time over a finished training run, per epoch, from its metrics.jsonl.

    python benchmarks/run_step_time.py /tmp/fmnist_lenet [--steps_per_epoch=600]

Checks that a long run keeps its speed (no slow-down from subnormal floats or
anything else): prints the median ms per step of every epoch, from the
``examples_per_sec`` that the trainer logs every ``log_every_steps`` (training steps
only; the evaluation passes between epochs are not in it), and the last epoch's
median over the first's. XLA:CPU flushes subnormal results to zero, which
tests/test_ops.py checks; the PyTorch reference slows from 3.9 to 10 ms per step by
epoch 10 from subnormals in closed rows (issue 7).
"""

import argparse
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from l0jax import reporting  # noqa: E402


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdir")
  parser.add_argument("--steps_per_epoch", type=int, default=600)
  parser.add_argument("--batch_size", type=int, default=100)
  args = parser.parse_args()
  records = [r for r in reporting.read_metrics(args.workdir) if "examples_per_sec" in r]
  if not records:
    sys.exit(f"no training records with examples_per_sec in {args.workdir}")
  epochs = {}
  for r in records:
    epoch = (r["step"] - 1) // args.steps_per_epoch + 1
    epochs.setdefault(epoch, []).append(args.batch_size / r["examples_per_sec"] * 1e3)
  print(f"{'epoch':>5} {'median ms/step':>15} {'records':>8}")
  for epoch, values in sorted(epochs.items()):
    print(f"{epoch:5d} {statistics.median(values):15.2f} {len(values):8d}")
  first, last = min(epochs), max(epochs)
  ratio = statistics.median(epochs[last]) / statistics.median(epochs[first])
  print(f"epoch {last} / epoch {first}: {ratio:.2f}x")


if __name__ == "__main__":
  main()
