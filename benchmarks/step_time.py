"""Milliseconds per training step: l0jax's constrained L0 steps vs dense, the FLOP floor.

    python benchmarks/step_time.py              # MLP and LeNet-5-Caffe, batch 100
    python benchmarks/step_time.py --compare    # + XLA-op variants, op and noise tables
    python benchmarks/step_time.py --models=mlp --repeats=11
    python benchmarks/step_time.py --models=resnet20,wrn16_4   # CNNs, batch 128

Everything is measured in this one run on this machine, and the variants are timed in
turns (round-robin, median of ``--repeats`` rounds) so that a slower or busier moment
hits all of them alike; compare ratios, not absolute times across runs.

* Steps are the trainer's real jitted steps (``train_lib.make_multi_train_step``,
  ``config.steps_per_dispatch`` = 10 steps per call as ``train.py`` runs them, pmap on
  one device, constraint and dual update included) on random images (a step's cost
  does not depend on the pixels). ``--compare`` adds the L0 step called once per step.
* ``GFLOP/s`` is the step's matrix-multiply FLOPs (dot and convolution FLOPs of the
  dense model's forward and backward pass, counted from its jaxpr) per second. The
  floor is those FLOPs at the matmul rate measured here (a 1024^3 and a 2048^3
  float32 matmul, the faster), i.e. the time of the step if it were only its matmuls
  at full speed; ``x floor`` is how far above that each step is.
* With PyTorch installed, a plain dense PyTorch step of each model
  (``benchmarks/torch_steps.py``) is timed in the same rounds, and the PyTorch
  reference L0 code's step quoted in issue 7 is rescaled to this run by its quoted
  ratio to a dense PyTorch step.
* ``resnet20`` (CIFAR ResNet-20) and ``wrn16_4`` (WRN-16-4) run on 32x32x3 images at
  batch 128 with their configs' SGD-Nesterov and weight decay (gated: BatchNorm ->
  gate units, model-wise constraint); their PyTorch dense steps use the same
  optimiser. For them the input pipeline's rate is the CIFAR-shaped streaming path
  of ``benchmarks/input_pipeline.py`` (PNG decode + pad-crop + flip, one core).
* ``--compare`` adds the same models with ``ops_method="xla"`` (XLA's convolution and
  ``reduce_window`` pooling, what a plain Flax model runs), a table of LeNet's ops
  forward + backward in both forms, and what the per-example gate noise costs.
"""

import argparse
import functools
import math
import os
import statistics
import sys
import time
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import torch_steps  # noqa: E402
from configs import default  # noqa: E402
from l0jax import data, gates, layers, ops, train_lib  # noqa: E402

# Median ms per step on this 2-core CPU as quoted in issue 7 (torch 2.13, 2 threads):
# the PyTorch reference code's constrained L0 step, and a plain dense PyTorch step
# measured alongside it.
PYTORCH_QUOTED_MS = {"mlp": 3.6, "lenet5": 22.0}
PYTORCH_QUOTED_DENSE_MS = {"mlp": 2.0, "lenet5": 20.0}
TORCH_LABEL = "PyTorch dense step"
L0_LABEL = "L0, per-example noise"  # the constrained step the goals are about


CNNS = {"resnet20": ("configs.fashion_mnist_resnet20", {"depth": 20}),
        "wrn16_4": ("configs.cifar10_wrn28_10", {"depth": 16, "widen_factor": 4})}
BATCH_SIZES = {"mlp": 100, "lenet5": 100, "resnet20": 128, "wrn16_4": 128}


def step_config(model: str, gated: bool, per_example: bool = True,
                ops_method: str = "auto", steps_per_dispatch: Optional[int] = None):
  if model in CNNS:
    import importlib  # pylint: disable=g-import-not-at-top
    module, fields = CNNS[model]
    config = importlib.import_module(module).get_config()
    config.dataset, config.fake_data = "cifar10", True  # 32x32x3, 10 classes
    config.constraint, config.target_density = "model", 0.5
    for key, value in fields.items():
      config[key] = value
    config.gated = gated
    config.sample_per_example = per_example
    config.ops_method = ops_method
    if steps_per_dispatch is not None:
      config.steps_per_dispatch = steps_per_dispatch
    return config
  config = default.get_config()
  config.model = model
  config.gated = gated
  config.sample_per_example = per_example
  config.ops_method = ops_method
  if steps_per_dispatch is not None:
    config.steps_per_dispatch = steps_per_dispatch
  config.target_density = 0.33 if model == "mlp" else 0.10
  config.dual_learning_rate = 1e-2
  return config


def random_batch(batch_size: int, seed: int = 0, config=None):
  rng = np.random.default_rng(seed)
  shape = train_lib.input_shape(default.get_config() if config is None else config)
  return {"image": rng.uniform(size=(1, batch_size) + shape).astype(np.float32),
          "label": rng.integers(0, 10, size=(1, batch_size)).astype(np.int32)}


def _one_device_setup(config, batch_size: int):
  """``(mesh, task, replicated initial state, host batch)`` on one device."""
  mesh = train_lib.make_mesh(jax.devices()[:1])
  task = train_lib.make_task(config, 1000)
  state = train_lib.replicate(train_lib.init_state(config, task), mesh)
  return mesh, task, state, random_batch(batch_size, config=config)


def step_runner(config, batch_size: int, check_finite: bool = True):
  """``run(n)``: n training steps of ``config``, blocking at the end.

  As the trainer runs them: ``train_lib.steps_per_call`` steps per call where ``n``
  allows, single steps for the rest; ``check_finite=False`` drops the non-finite flag
  the trainer's steps reduce on the device (``train_lib.with_nonfinite_step``).
  """
  mesh, task, state, host_batch = _one_device_setup(config, batch_size)
  step = train_lib.make_train_step(config, task, mesh, check_finite)
  multi_step = train_lib.make_multi_train_step(config, task, mesh, check_finite)
  k = train_lib.steps_per_call(config, mesh)
  batch = train_lib.shard_batch(host_batch, mesh)
  stacked = train_lib.shard_batch(train_lib.stack_batches([host_batch] * k), mesh)
  holder = {"state": state}

  def run(n: int):
    state = holder["state"]
    calls, rest = divmod(n, k) if k > 1 else (0, n)
    for _ in range(calls):
      state, metrics = multi_step(state, stacked)
    for _ in range(rest):
      state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    holder["state"] = state
  return run


def function_runner(fn, *args):
  fn = jax.jit(fn)

  def run(n: int):
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)
  return run


def time_round_robin(runners, steps, repeats: int):
  """Median ms per call of each runner; runners take turns in every round."""
  for name, run in runners.items():
    run(steps[name])  # compile (every path the rounds take) and warm up
  times = {name: [] for name in runners}
  for _ in range(repeats):
    for name, run in runners.items():
      n = steps[name]
      start = time.perf_counter()
      run(n)
      times[name].append((time.perf_counter() - start) / n * 1e3)
  return {name: statistics.median(t) for name, t in times.items()}


def matmul_flops(jaxpr) -> float:
  """FLOPs of every dot_general and convolution in a (closed) jaxpr, nested included."""
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval.shape
      k = math.prod(lhs[d] for d in lhs_contracting)
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * k
    elif name == "conv_general_dilated":
      rhs = eqn.invars[1].aval.shape
      dims = eqn.params["dimension_numbers"]
      window = math.prod(rhs[d] for d in dims.rhs_spec[2:])
      in_per_group = rhs[dims.rhs_spec[1]]
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * window * in_per_group
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      total += matmul_flops(sub)
  return total


def training_flops(model_name: str, batch_size: int) -> float:
  """Matmul FLOPs of one dense training step (forward and backward, params only)."""
  return config_training_flops(step_config(model_name, gated=False, ops_method="xla"),
                               batch_size)


def config_training_flops(config, batch_size: int) -> float:
  """Matmul FLOPs of one training step of ``config``'s model made dense (forward and
  backward with respect to the parameters; BatchNorm in training mode)."""
  config = config.copy_and_resolve_references()
  config.gated = False
  model = train_lib.build_model(config)
  if hasattr(model, "axis_name"):  # no data-parallel axis outside pmap
    model = model.clone(axis_name=None)
  batch = random_batch(batch_size, config=config)
  variables = jax.eval_shape(lambda x: model.init(
      {"params": jax.random.key(0)}, x, deterministic=True), batch["image"][0])
  others = {k: v for k, v in variables.items() if k != "params"}

  def loss(params, others):
    logits, _ = model.apply({**others, "params": params}, batch["image"][0],
                            mutable=["batch_stats"])
    return train_lib.cross_entropy(logits, batch["label"][0])
  grad = jax.grad(loss)
  return matmul_flops(jax.make_jaxpr(grad)(variables["params"], others).jaxpr)


def matmul_gflops(repeats: int) -> float:
  rates = []
  for n in (1024, 2048):
    a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
    ms = time_round_robin({"mm": function_runner(lambda a: a @ a, a)}, {"mm": 3},
                          repeats)["mm"]
    rates.append(2.0 * n ** 3 / (ms * 1e-3) / 1e9)
  return max(rates)


def dispatch_ms(batch_size: int, repeats: int) -> float:
  """ms per call of a pmapped step that only increments the MLP's state."""
  mesh, _, state, host_batch = _one_device_setup(step_config("mlp", gated=True),
                                                 batch_size)
  batch = train_lib.shard_batch(host_batch, mesh)
  noop = jax.pmap(lambda s, b: (s._replace(step=s.step + 1), s.step), axis_name="batch",
                  donate_argnums=(0,), devices=jax.devices()[:1])
  holder = {"state": state}

  def run(n):
    state = holder["state"]
    for _ in range(n):
      state, out = noop(state, batch)
    jax.block_until_ready(out)
    holder["state"] = state
  return time_round_robin({"noop": run}, {"noop": 200}, repeats)["noop"]


def op_table(batch_size: int, repeats: int):
  """LeNet-5-Caffe's convolutions and pools, forward + backward, in both forms."""
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape), jnp.float32)
  conv_dims = ("NHWC", "HWIO", "NHWC")
  cases = {
      "conv 5x5 1->20, 28x28 (kernel grad)": (
          "conv", normal(batch_size, 28, 28, 1), normal(5, 5, 1, 20), (1,)),
      "conv 5x5 20->50, 12x12": (
          "conv", normal(batch_size, 12, 12, 20), normal(5, 5, 20, 50), (0, 1)),
      "relu + max pool 2x2, 24x24x20": ("pool", normal(batch_size, 24, 24, 20)),
      "relu + max pool 2x2, 8x8x50": ("pool", normal(batch_size, 8, 8, 50)),
  }
  runners, labels = {}, []
  for label, case in cases.items():
    labels.append(label)
    for method in ("xla", "matmul"):
      if case[0] == "conv":
        _, x, k, argnums = case
        fn = lambda x, k, m=method: jnp.sum(ops.conv_general_dilated(
            x, k, (1, 1), "VALID", dimension_numbers=conv_dims, method=m) ** 2)
        runners[(label, method)] = function_runner(jax.grad(fn, argnums), x, k)
      else:
        fn = lambda x, m=method: jnp.sum(ops.max_pool(nn.relu(x), (2, 2),
                                                      method=m) ** 2)
        runners[(label, method)] = function_runner(jax.grad(fn), case[1])
  ms = time_round_robin(runners, {key: 10 for key in runners}, repeats)
  print("\nLeNet-5-Caffe ops, forward + backward, batch", batch_size)
  header = f"{'op':38} {'xla ms':>8} {'matmul ms':>10} {'speed-up':>9}"
  print(header)
  print("-" * len(header))
  for label in labels:
    a, b = ms[(label, "xla")], ms[(label, "matmul")]
    print(f"{label:38} {a:8.2f} {b:10.2f} {a / b:8.1f}x")


def noise_table(batch_size: int, repeats: int):
  """What the MLP's per-example gate noise costs: drawing it, and the gate transform."""
  config = step_config("mlp", gated=True)
  params = train_lib.abstract_params(config)
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), params)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(
      jnp.arange(batch_size))
  noise = layers.per_example_noise(keys, params)
  count = sum(x.size for x in jax.tree.leaves(noise))
  u = jnp.concatenate([x.reshape(batch_size, -1) for x in jax.tree.leaves(noise)], 1)
  log_alpha = jnp.zeros(u.shape[1:], jnp.float32)
  cotangent = jnp.ones_like(u)
  transform = lambda la, u: jnp.vdot(gates.hard_concrete_from_uniform(u, la), cotangent)
  runners = {
      "draw (threefry, one key per example)": function_runner(
          lambda k: layers.per_example_noise(k, params), keys),
      "hard-concrete transform, fwd + bwd": function_runner(
          jax.grad(transform), log_alpha, u),
  }
  ms = time_round_robin(runners, {k: 50 for k in runners}, repeats)
  print(f"\nMLP per-example gate noise: {count:,} uniforms per step")
  for name, value in ms.items():
    print(f"  {name:40} {value:6.2f} ms")


def gate_modes_table(repeats: int, batch: int = 64, shape=(512, 256)):
  """An L0Dense layer's forward + backward in each gate mode: per-example unstructured
  gates need one sample per weight per example (the cost ``l0jax.layers`` warns of)."""
  import warnings  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(batch, shape[0])), jnp.float32)
  runners = {}
  for unstructured in (False, True):
    for per_example in (False, True):
      layer = layers.L0Dense(shape[1], unstructured=unstructured,
                             sample_per_example=per_example)
      params = layer.init({"params": jax.random.key(0)}, x, deterministic=True)

      def loss(p, key, layer=layer):
        return jnp.sum(layer.apply(p, x, rngs={"gates": key}, deterministic=False) ** 2)
      label = (("unstructured" if unstructured else "input units") + ", "
               + ("per example" if per_example else "per batch"))
      runners[label] = function_runner(jax.grad(loss), params, jax.random.key(1))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ms = time_round_robin(runners, {k: 5 for k in runners}, repeats)
  print(f"\nL0Dense {shape[0]}->{shape[1]}, batch {batch}, forward + backward by gate "
        "mode")
  for name, value in ms.items():
    print(f"  {name:32} {value:9.2f} ms")


def pipeline_examples_per_sec(batch_size: int, steps: int = 600) -> float:
  rng = np.random.default_rng(0)
  source = data.ArraySource(
      data.dataset_info("fashion_mnist"),
      images=rng.integers(0, 256, size=(60000, 28, 28, 1), dtype=np.uint8),
      labels=rng.integers(0, 10, size=60000).astype(np.int64))
  batches = data.train_iterator(source, global_batch_size=batch_size, seed=0)
  next(batches)
  start = time.perf_counter()
  for _ in range(steps):
    next(batches)
  return steps * batch_size / (time.perf_counter() - start)


NO_CHECK_LABEL = "L0 per-example, no non-finite check"


def speed_ratio(reference_ms: float, ms: float) -> str:
  """How a step of ``ms`` compares with ``reference_ms``: "1.25x faster than" or
  "1.02x slower than" (a ratio below 1 is never called faster)."""
  if ms <= reference_ms:
    return f"{reference_ms / ms:.2f}x faster than"
  return f"{ms / reference_ms:.2f}x slower than"


def variants(model: str, compare: bool):
  """(label, config) pairs; the first is the dense reference of the ratios."""
  out = [("dense", step_config(model, gated=False)),
         (L0_LABEL, step_config(model, gated=True)),
         ("L0, per-batch noise", step_config(model, gated=True, per_example=False))]
  if compare:
    out.append(("L0 per-example, 1 step per call",
                step_config(model, True, steps_per_dispatch=1)))
    out.append((NO_CHECK_LABEL, step_config(model, gated=True)))
  if compare and model != "mlp":
    out += [("dense, XLA conv/pool", step_config(model, False, ops_method="xla")),
            ("L0 per-example, XLA conv/pool",
             step_config(model, True, ops_method="xla"))]
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="mlp,lenet5")
  parser.add_argument("--batch_size", type=int, default=0,
                      help="0: 100 for mlp / lenet5, 128 for the CNNs")
  parser.add_argument("--repeats", type=int, default=7,
                      help="round-robin rounds; the median is reported")
  parser.add_argument("--compare", action="store_true",
                      help="add XLA-op variants and the op and noise tables")
  parser.add_argument("--no_torch", action="store_true",
                      help="skip the PyTorch dense step even if torch is installed")
  args = parser.parse_args()
  models = args.models.split(",")
  torch_version = "" if args.no_torch else torch_steps.version()

  batch_of = lambda model: args.batch_size or BATCH_SIZES[model]
  print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
        f"{os.cpu_count()} CPUs, batch {', '.join(f'{m} {batch_of(m)}' for m in models)}, "
        f"median of {args.repeats} round-robin rounds")
  rate = matmul_gflops(args.repeats)
  dispatch = dispatch_ms(batch_of("mlp"), args.repeats)
  print(f"measured float32 matmul rate: {rate:.0f} GFLOP/s; "
        f"dispatch of an empty pmapped step: {dispatch:.3f} ms")

  rows = []
  ms_of = lambda model, label: next(r[2] for r in rows
                                    if r[0] == model and r[1] == label)
  for model in models:
    batch_size = batch_of(model)
    flops = training_flops(model, batch_size)
    floor = flops / (rate * 1e9) * 1e3
    configs = variants(model, args.compare)
    runners = {label: step_runner(config, batch_size, label != NO_CHECK_LABEL)
               for label, config in configs}
    if torch_version:
      runners[TORCH_LABEL] = torch_steps.step_runner(model, batch_size)
    steps = {label: {"mlp": 50, "lenet5": 10}.get(model, 2) for label in runners}
    ms = time_round_robin(runners, steps, args.repeats)
    dense = ms[configs[0][0]]
    for label, value in ms.items():
      rows.append((model, label, value, flops / (value * 1e-3) / 1e9, value / floor,
                   value / dense))
    rows.append((model, "FLOP floor", floor, rate, 1.0, floor / dense))
  header = (f"{'model':7} {'step':33} {'ms/step':>8} {'GFLOP/s':>8} {'x floor':>8} "
            f"{'x dense':>8}")
  print()
  print(header)
  print("-" * len(header))
  for model, label, value, gflops, x_floor, x_dense in rows:
    print(f"{model:7} {label:33} {value:8.2f} {gflops:8.1f} {x_floor:8.2f} "
          f"{x_dense:8.2f}")
  quoted = [m for m in models if m in PYTORCH_QUOTED_MS]
  if quoted:
    print("\nPyTorch reference L0 code (issue 7, same CPU): "
          + ", ".join(f"{m} {PYTORCH_QUOTED_MS[m]:.1f} ms = "
                      f"{PYTORCH_QUOTED_MS[m] / PYTORCH_QUOTED_DENSE_MS[m]:.2f}x its "
                      "dense PyTorch step" for m in quoted) + " (quoted, not run here)")
  for model in models:
    if model not in PYTORCH_QUOTED_MS:
      if torch_version:
        mine, torch_ms = ms_of(model, L0_LABEL), ms_of(model, TORCH_LABEL)
        print(f"  {model}: the dense PyTorch {torch_version} step takes {torch_ms:.1f} ms, "
              f"{torch_ms / mine:.2f}x l0jax's L0 step ({mine:.1f} ms); l0jax's L0 "
              f"step is {mine / ms_of(model, 'dense'):.2f}x its dense step")
      continue
    mine = ms_of(model, L0_LABEL)
    line = (f"  {model}: l0jax's per-example L0 step is "
            f"{speed_ratio(PYTORCH_QUOTED_MS[model], mine)} the quoted "
            f"{PYTORCH_QUOTED_MS[model]:.1f} ms")
    if torch_version:
      torch_ms = ms_of(model, TORCH_LABEL)
      scaled = torch_ms * PYTORCH_QUOTED_MS[model] / PYTORCH_QUOTED_DENSE_MS[model]
      line += (f"; the dense PyTorch {torch_version} step measured in this run takes "
               f"{torch_ms:.2f} ms ({torch_ms / mine:.2f}x l0jax's L0 step), which puts "
               f"the reference at {scaled:.2f} ms in this run: "
               f"{scaled / mine:.2f}x l0jax's L0 step")
    print(line)
  if not torch_version:
    print("  (install PyTorch, e.g. `pip install torch==2.13.0`, to time a dense "
          "PyTorch step in the same run)")

  if args.compare:
    if "lenet5" in models:
      op_table(args.batch_size, args.repeats)
    noise_table(args.batch_size, args.repeats)
    gate_modes_table(args.repeats)
  print()
  for model in models:
    if model in CNNS:
      import input_pipeline  # pylint: disable=g-import-not-at-top
      pipeline = input_pipeline.run_l0jax("cifar", input_pipeline.make_images("cifar"),
                                          cached=False)
      what = "CIFAR-shaped streaming pipeline (PNG decode + pad-crop + flip, one core)"
    else:
      pipeline = pipeline_examples_per_sec(batch_of(model))
      what = "pipeline"
    consumed = batch_of(model) / (ms_of(model, L0_LABEL) / 1e3)
    print(f"{what} {pipeline:,.0f} examples/s vs {model} L0 step consuming "
          f"{consumed:,.0f} examples/s: {pipeline / consumed:.1f}x")


if __name__ == "__main__":
  main()
