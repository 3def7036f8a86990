"""Images/s and MFU of the papers' big CNN steps on an accelerator, dense vs L0, bf16.

    python benchmarks/accelerator_throughput.py                 # WRN-28-10, ResNet-50
    python benchmarks/accelerator_throughput.py --models=wrn28_10 --batch_sizes=128,256
    python benchmarks/accelerator_throughput.py --smoke          # tiny widths, any CPU

* Steps are the trainer's jitted steps (``train_lib`` via ``step_time.step_runner``:
  constrained, model-wise 50%, primal and dual update, ``steps_per_dispatch`` steps per
  call) on one device, ``config.dtype="bfloat16"`` (parameters, gates, BatchNorm
  statistics and multipliers stay float32), random images of the dataset's shape:
  WRN-28-10 on CIFAR (32x32x3, batch 128), ResNet-50 on ImageNet (224x224x3, batch
  256). Dense and L0 steps are timed in turns (median of ``--repeats`` rounds).
* MFU = the dense model's training matmul FLOPs per step (forward + backward, counted
  from its jaxpr; the same for the L0 step, whose gates add no matmuls) / step time /
  the bf16 matmul peak measured here (the fastest of 4096^3 and 8192^3 bf16 matmuls),
  so it says how close a step comes to the chip's own matmul speed.
* A batch that does not fit is reported as such and the next model runs.

Prints one table; nothing is written. On CPU use ``--smoke`` (the code path only: the
numbers mean nothing there).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import step_time  # noqa: E402
from configs import cifar10_wrn28_10, imagenet2012_resnet50  # noqa: E402
from l0jax import train_lib  # noqa: E402

MODELS = {
    "wrn28_10": (cifar10_wrn28_10.get_config, 128),
    "resnet50": (imagenet2012_resnet50.get_config, 256),
}


def bench_config(model: str, gated: bool, smoke: bool):
  config = MODELS[model][0]()
  config.fake_data = True  # shapes and classes from the built-in table
  config.constraint, config.target_density = "model", 0.5
  config.dtype = "bfloat16"
  config.gated = gated
  if smoke:
    config.width_scale = 0.0625
    config.steps_per_dispatch = 2
    if model == "resnet50":
      config.image_size = 64
  return config


def bf16_matmul_peak(sizes, repeats: int) -> float:
  """FLOP/s of the fastest square bf16 matmul among ``sizes``."""
  rates = []
  for n in sizes:
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.bfloat16)
    ms = step_time.time_round_robin(
        {"mm": step_time.function_runner(lambda a: a @ a, a)}, {"mm": 3}, repeats)["mm"]
    rates.append(2.0 * n ** 3 / (ms * 1e-3))
  return max(rates)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="wrn28_10,resnet50")
  parser.add_argument("--batch_sizes", default="",
                      help="comma-separated; default: each model's paper batch")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--smoke", action="store_true",
                      help="tiny widths and batches: checks the code path on a CPU")
  args = parser.parse_args(argv)
  device = jax.devices()[0]
  sizes = (256, 512) if args.smoke else (4096, 8192)
  peak = bf16_matmul_peak(sizes, args.repeats)
  print(f"device: {device.device_kind} ({device.platform}); bf16 matmul peak measured "
        f"here: {peak / 1e12:.1f} TFLOP/s")
  print("| model | batch | step | ms/step | images/s | MFU | L0 / dense |")
  print("|---|---|---|---|---|---|---|")
  for model in args.models.split(","):
    batches = ([int(b) for b in args.batch_sizes.split(",")] if args.batch_sizes
               else [8 if args.smoke else MODELS[model][1]])
    for batch_size in batches:
      configs = {"dense": bench_config(model, False, args.smoke),
                 "L0": bench_config(model, True, args.smoke)}
      try:
        flops = step_time.config_training_flops(configs["dense"], batch_size)
        runners = {k: step_time.step_runner(c, batch_size) for k, c in configs.items()}
        steps = {k: train_lib.steps_per_call(c, train_lib.make_mesh(jax.devices()[:1]))
                 for k, c in configs.items()}
        ms = step_time.time_round_robin(runners, steps, args.repeats)
      except Exception as e:  # pylint: disable=broad-except  (out of memory, typically)
        print(f"| {model} | {batch_size} | - | {type(e).__name__}: "
              f"{str(e).splitlines()[0][:80]} | | | |")
        continue
      for k in ("dense", "L0"):
        mfu = flops / (ms[k] * 1e-3) / peak
        print(f"| {model} | {batch_size} | {k} | {ms[k]:.2f} | "
              f"{batch_size / (ms[k] * 1e-3):,.0f} | {mfu:.1%} | "
              f"{ms[k] / ms['dense']:.2f}x |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
