"""Inference speed of dense vs purged models, measured in one run.

For the 784-300-100 MLP and LeNet-5-Caffe (20-50-800-500) it builds synthetic
"trained" parameters in which a given fraction of every gated layer's units (dense
inputs, conv channels) is open (log_alpha = +10) and the rest closed (-10), purges
them with :func:`l0jax.purge.purge`, and times the jitted forward pass of the dense
model (same architecture, plain ``nn.Dense`` / ``nn.Conv``) and of the purged model.
Each timing is the median over ``--repeats`` samples of a loop of about ``--min_time``
seconds; dense and purged samples alternate, and the speed-up is the median of the
per-sample ratios, so load from other processes affects both sides alike. The table
shows the measured speed-up next to the ratio of multiply-accumulates (dense /
purged, per example) from :func:`l0jax.purge.counts`.

    python benchmarks/purged_inference.py
    python benchmarks/purged_inference.py --open 0.5 0.1 --batch 1 1024 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from l0jax import purge
from l0jax.models import LeNet5Caffe, MLP

INPUT_SHAPE = (28, 28, 1)


def random_params(model, seed: int):
  """Params of ``model``'s shapes drawn with numpy (fast: no XLA compile)."""
  rng = np.random.default_rng(seed)
  x = jax.ShapeDtypeStruct((1,) + INPUT_SHAPE, jnp.float32)
  shapes = jax.eval_shape(
      lambda x: model.init(jax.random.key(0), x, deterministic=True), x)["params"]

  def draw(path, s):
    if path[-1].key == "kernel":
      return (rng.normal(size=s.shape) / np.sqrt(np.prod(s.shape[:-1]))).astype(
          s.dtype)
    if path[-1].key == "bias":
      return (0.1 * rng.normal(size=s.shape)).astype(s.dtype)
    return np.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def with_open_fraction(params, fraction: float, seed: int):
  """Opens ``round(fraction * units)`` random gates of every gated layer."""
  rng = np.random.default_rng(seed)
  out = {}
  for name, layer in params.items():
    n = layer["log_alpha"].size
    log_alpha = np.full(n, -10.0, np.float32)
    log_alpha[rng.permutation(n)[:max(1, round(fraction * n))]] = 10.0
    out[name] = dict(layer, log_alpha=log_alpha.reshape(layer["log_alpha"].shape))
  return out


def _loops_for(fn, params, x, min_time: float) -> int:
  jax.block_until_ready(fn(params, x))  # compile
  start, calls = time.perf_counter(), 0
  while time.perf_counter() - start < min_time / 4 or calls < 2:
    jax.block_until_ready(fn(params, x))
    calls += 1
  return max(1, int(min_time * calls / (time.perf_counter() - start)))


def _seconds_per_call(fn, params, x, loops: int) -> float:
  start = time.perf_counter()
  for _ in range(loops):
    out = fn(params, x)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / loops


def paired_timings(dense, purged, x, repeats: int, min_time: float):
  """Median seconds per call of two (fn, params) pairs and the median of their
  per-sample ratio; samples alternate, so load from other processes hits both."""
  loops = [_loops_for(fn, params, x, min_time) for fn, params in (dense, purged)]
  t_dense, t_purged = [], []
  for _ in range(repeats):
    t_dense.append(_seconds_per_call(*dense, x, loops[0]))
    t_purged.append(_seconds_per_call(*purged, x, loops[1]))
  ratio = statistics.median(d / p for d, p in zip(t_dense, t_purged))
  return statistics.median(t_dense), statistics.median(t_purged), ratio


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--open", type=float, nargs="+", default=[0.5, 0.25, 0.1],
                      help="fractions of open units per gated layer")
  parser.add_argument("--batch", type=int, nargs="+", default=[1, 256])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--min_time", type=float, default=0.05,
                      help="seconds per timing sample")
  args = parser.parse_args()

  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind} "
        f"({jax.device_count()} device(s), {os.cpu_count()} CPU cores); median of "
        f"{args.repeats} samples; MAC ratio = dense MACs / purged MACs")
  header = (f"{'model':<7} {'open':>5} {'batch':>5} {'architecture':>18} "
            f"{'dense ex/s':>11} {'purged ex/s':>12} {'speed-up':>9} {'MAC ratio':>10}")
  print(header)
  print("-" * len(header))
  rng = np.random.default_rng(0)
  inputs = {b: jnp.asarray(rng.uniform(size=(b,) + INPUT_SHAPE), jnp.float32)
            for b in args.batch}
  for name, model in (("MLP", MLP()), ("LeNet5", LeNet5Caffe())):
    gated_params = random_params(model, seed=1)
    dense_model = model.clone(gated=False)
    dense_params = jax.device_put(  # on device, like the purged params
        {n: {k: v for k, v in layer.items() if k != "log_alpha"}
         for n, layer in gated_params.items()})
    dense_fn = jax.jit(lambda p, x, m=dense_model: m.apply({"params": p}, x))
    for fraction in args.open:
      params = with_open_fraction(gated_params, fraction, seed=2)
      small, small_params = purge.purge(model, params)
      small_params = jax.device_put(small_params)
      c = purge.counts(model, params, input_shape=INPUT_SHAPE)
      small_fn = jax.jit(lambda p, x, m=small: m.apply({"params": p}, x))
      # The purged model computes what the gated model computes at test time.
      x = inputs[args.batch[0]]
      np.testing.assert_allclose(
          small_fn(small_params, x),
          model.apply({"params": params}, x, deterministic=True), atol=1e-4)
      for b in args.batch:
        t_dense, t_purged, speed_up = paired_timings(
            (dense_fn, dense_params), (small_fn, small_params), inputs[b],
            args.repeats, args.min_time)
        print(f"{name:<7} {fraction:>5.0%} {b:>5} {c['architecture']:>18} "
              f"{b / t_dense:>11.0f} {b / t_purged:>12.0f} {speed_up:>8.2f}x "
              f"{c['dense_macs'] / max(c['purged_macs'], 1):>9.1f}x")


if __name__ == "__main__":
  main()
