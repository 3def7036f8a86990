"""The trainer's library half: config checks, TrainState, the per-device step, the loop.

``train.py`` is a thin absl main over :func:`train_and_evaluate` (``eval.py``'s library
half is :mod:`l0jax.eval_lib`).

One per-device step body (:func:`train_step_body`) runs under ``jax.pmap`` (default) or
``jax.jit(jax.shard_map(...))`` (``config.parallel = "shard_map"``). Inside it:

* gate noise is a function of the *global example index*: example ``i`` of the global
  batch draws the uniforms of all its gates in one flat draw from
  ``fold_in(fold_in(rng, step), i)`` (``layers.per_example_noise``, handed to the
  batched model as the ``"gate_noise"`` collection), so every device (and every
  example) gets its own noise, and the result does not depend on how the global
  batch is split over devices or hosts. With ``sample_per_example=False`` each device
  draws one sample from ``fold_in(fold_in(rng, step), device_index)``.
* gradients, loss and metrics are averaged over devices with ``pmean``;
* the constraint (expected density) is computed from the gate parameters, identical on
  every device;
* primal descent (optax) and projected dual ascent (``l0jax.constrained``) happen in the
  same jitted step; the state buffers are donated.

The loop runs ``config.steps_per_dispatch`` steps per call (``lax.scan`` over stacked
batches, :func:`make_multi_train_step`; see :func:`steps_per_call`) wherever no log,
evaluation or checkpoint falls between them, and single steps elsewhere: the same
steps either way.

All per-device arrays carry a leading device axis, sharded over a 1-D mesh named
``"batch"`` that spans every device of every process.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import math
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from l0jax import constrained, data, density, dependency, distributed, errors, layers, ops
from l0jax import reporting, workdir as workdir_lib
from l0jax.errors import UserError
from l0jax import models
from l0jax.models import MLP, LeNet5Caffe
from l0jax.science import egf

AXIS = "batch"
MODELS = ("mlp", "lenet5", "wrn", "resnet", "cifar_resnet", "vgg")
METHODS = ("constrained", "penalized")
CONSTRAINTS = ("model", "layerwise")
OPTIMIZERS = ("adam", "sgd", "momentum", "nesterov")
LR_SCHEDULES = ("constant", "cosine", "step")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DUAL_OPTIMIZERS = ("sgd", "nupi")
PARALLEL = ("pmap", "shard_map")
FORMULATIONS = ("lagrangian", "augmented_lagrangian")
DENSITY_MODES = ("independent", "cascade", "macs", "dep_l0")
GATE_SOURCES = ("independent", "dep_forward", "dep_backward")


class ConfigError(UserError, ValueError):
  """A bad config value; the message is one line naming the field."""


class TrainState(NamedTuple):
  """Everything a run needs to continue: a pytree that orbax checkpoints as is."""
  step: jax.Array
  params: Any
  opt_state: Any
  constrained: constrained.ConstrainedState
  rng: jax.Array  # raw uint32 key data, so checkpoints need no key-type support
  batch_stats: Any = None  # BatchNorm running statistics ({} for models without BN)


# ======================================================================================
# Config
# ======================================================================================
def _fail(field: str, value, allowed: str):
  raise ConfigError(f"config.{field}={value!r} is invalid: {allowed}")


def _choice(config, field: str, allowed: Sequence[str]):
  value = config[field]
  if value not in allowed:
    _fail(field, value, f"allowed values are {', '.join(map(repr, allowed))}")


def build_model(config):
  """The Flax model of ``config`` (gated or plain), sized for its dataset's classes."""
  num_classes = dataset_info(config).num_classes
  common = dict(gated=config.gated, unstructured=config.unstructured,
                sample_per_example=config.sample_per_example,
                test_gate=config.test_gate, rescale_init=config.rescale_init,
                ops_method=config.ops_method, dtype=DTYPES[config.dtype])
  if config.droprate_init >= 0:  # else the model's defaults
    common["droprate"] = float(config.droprate_init)
  if config.model == "mlp":
    input_droprate = common.get("droprate", MLP.input_droprate)
    return MLP(features=tuple(config.mlp_features), input_droprate=input_droprate,
               num_classes=num_classes, **common)
  if config.model == "lenet5":
    return LeNet5Caffe(conv_features=tuple(config.lenet_conv_features),
                       dense_features=config.lenet_dense_features,
                       num_classes=num_classes, **common)
  common.update(axis_name=AXIS, bn_momentum=config.bn_momentum,
                width_scale=config.width_scale, num_classes=num_classes)
  if config.model == "wrn":
    return models.WideResNet(depth=config.depth, widen_factor=config.widen_factor,
                             dropout=config.dropout, **common)
  if config.model == "resnet":
    return models.ResNet(depth=config.depth, **common)
  if config.model == "cifar_resnet":
    return models.CifarResNet(depth=config.depth,
                              gate_block_outputs=config.gate_block_outputs, **common)
  return models.VGG(plan=models.vgg.PLANS[config.depth], **common)


def abstract_params(config):
  """Parameter shapes of the config's model, without computing anything."""
  model = build_model(config)
  x = jax.ShapeDtypeStruct((1,) + input_shape(config), jnp.float32)
  rngs = {"params": jax.random.key(0), "gates": jax.random.key(0)}
  return jax.eval_shape(lambda x: model.init(rngs, x, deterministic=True)["params"], x)


def targets(config, num_layers: int) -> tuple:
  """The constraint targets of ``config`` (one per constraint)."""
  if config.constraint == "model":
    return (float(config.target_density),)
  if config.layer_targets:
    return tuple(float(t) for t in config.layer_targets)
  return (float(config.target_density),) * num_layers


BOOL_FIELDS = ("gated", "unstructured", "sample_per_example", "rescale_init",
               "dual_restarts", "progress_bar", "tensorboard")


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _int_at_least(config, field: str, low: int, meaning: str = ""):
  if not _is_int(config[field]) or config[field] < low:
    _fail(field, config[field], f"must be an integer >= {low}{meaning}")


def _number(config, field: str, low: float, strict: bool, meaning: str = ""):
  value = config[field]
  if (not isinstance(value, (int, float)) or isinstance(value, bool)
      or not math.isfinite(value) or value < low or (strict and value == low)):
    _fail(field, value, f"must be a finite number {'>' if strict else '>='} {low}{meaning}")


def _widths(config, field: str, length: Optional[int] = None):
  value = config[field]
  if (not isinstance(value, (tuple, list)) or not all(_is_int(w) and w >= 1 for w in value)
      or (length is not None and len(value) != length)):
    count = f"{length} " if length is not None else ""
    _fail(field, value, f"must be a tuple of {count}layer widths, integers >= 1")


def validate_config(config, device_count: Optional[int] = None) -> None:
  """Checks every field before anything is compiled; raises ConfigError (one line)."""
  _choice(config, "augment", data.AUGMENTS)
  _choice(config, "model", MODELS)
  _choice(config, "method", METHODS)
  _choice(config, "constraint", CONSTRAINTS)
  _choice(config, "formulation", FORMULATIONS)
  _choice(config, "constraint_kind", constrained.KINDS)
  _choice(config, "scheme", constrained.SCHEMES)
  _choice(config, "test_gate", ("median", "eq13"))
  _choice(config, "optimizer", OPTIMIZERS)
  _choice(config, "gate_optimizer", OPTIMIZERS)
  _choice(config, "dual_optimizer", DUAL_OPTIMIZERS)
  _choice(config, "parallel", PARALLEL)
  _choice(config, "lr_schedule", LR_SCHEDULES)
  _choice(config, "dtype", tuple(DTYPES))
  if config.model in ("wrn", "resnet", "cifar_resnet", "vgg"):
    allowed = {"wrn": "6n + 4 (16, 22, 28, 40)", "resnet": "18, 34 or 50",
               "cifar_resnet": "6n + 2 (20, 32, 44, 56, 110)", "vgg": "11, 13, 16 or 19"}
    ok = {"wrn": lambda d: d >= 10 and (d - 4) % 6 == 0,
          "resnet": lambda d: d in models.resnet.IMAGENET_STAGES,
          "cifar_resnet": lambda d: d >= 8 and (d - 2) % 6 == 0,
          "vgg": lambda d: d in models.vgg.PLANS}[config.model]
    if not isinstance(config.depth, int) or not ok(config.depth):
      _fail("depth", config.depth, f"model={config.model!r} needs {allowed[config.model]}")
  if not isinstance(config.width_scale, (int, float)) or not config.width_scale > 0:
    _fail("width_scale", config.width_scale, "must be a number > 0")
  for field in ("weight_decay", "label_smoothing", "dropout"):
    value = config[field]
    if not isinstance(value, (int, float)) or not 0 <= value < (1 if field != "weight_decay" else math.inf):
      _fail(field, value, "must be >= 0" + ("" if field == "weight_decay" else " and < 1"))
  if not 0 <= config.bn_momentum < 1:
    _fail("bn_momentum", config.bn_momentum, "must be in [0, 1)")
  if not config.gate_block_outputs and config.model != "cifar_resnet":
    _fail("gate_block_outputs", False, f"is a model='cifar_resnet' setting; "
          f"model={config.model!r} has its own gated layers")
  if config.lr_schedule == "step":
    milestones = tuple(config.lr_milestones or ())
    if not milestones or any(not isinstance(m, (int, float)) or m <= 0 for m in milestones):
      _fail("lr_milestones", milestones, "lr_schedule='step' needs epochs > 0, "
            "e.g. '(60, 120, 160)'")
    if not 0 < config.lr_decay_factor <= 1:
      _fail("lr_decay_factor", config.lr_decay_factor, "must be in (0, 1]")
  _choice(config, "density_mode", DENSITY_MODES)
  _validate_gate_source(config)
  _choice(config, "ops_method", ops.METHODS)
  for field in BOOL_FIELDS:
    if not isinstance(config[field], bool):
      _fail(field, config[field], "must be True or False")
  for field in ("train_split", "eval_split"):
    if not isinstance(config[field], str) or not config[field]:
      _fail(field, config[field], "must name a split, e.g. 'train' or 'test'")
  _widths(config, "mlp_features")
  _widths(config, "lenet_conv_features", 2)
  _int_at_least(config, "lenet_dense_features", 1)
  for field in ("learning_rate", "gate_learning_rate", "dual_learning_rate"):
    _number(config, field, 0, strict=True)
  _number(config, "momentum", 0, strict=False)
  if not config.momentum < 1:
    _fail("momentum", config.momentum, "must be in [0, 1)")
  for field in ("nupi_kp", "penalty", "penalty_coefficient"):
    _number(config, field, 0, strict=False)
  if config.method == "penalized" and config.gated and not config.penalty > 0:
    _fail("penalty", config.penalty,
          "must be > 0 with method='penalized' (loss + penalty * density)")
  if config.method == "constrained" and config.penalty != 0:
    _fail("penalty", config.penalty, "is only used with method='penalized'; leave it "
          "0 with method='constrained' (the multipliers replace it)")
  if config.formulation == "augmented_lagrangian" and not config.penalty_coefficient > 0:
    _fail("penalty_coefficient", config.penalty_coefficient,
          "must be > 0 with formulation='augmented_lagrangian'")
  for field in ("batch_size", "log_every_steps", "keep_checkpoints",
                "checkpoint_every_steps", "steps_per_dispatch"):
    _int_at_least(config, field, 1)
  _int_at_least(config, "eval_every_steps", -1, " (-1: once per epoch, 0: only at the end)")
  _int_at_least(config, "seed", 0)
  if not _is_int(config.num_train_steps) or config.num_train_steps in (0,) or (
      config.num_train_steps < -1):
    _fail("num_train_steps", config.num_train_steps,
          "must be an integer >= 1, or -1 to train for num_epochs")
  if not _is_int(config.num_epochs) or (
      config.num_epochs < 1 and config.num_train_steps <= 0):
    _fail("num_epochs", config.num_epochs,
          "must be an integer >= 1 (or set num_train_steps > 0)")
  d = config.droprate_init
  if not isinstance(d, (int, float)) or not (d < 0 or 0 < d < 1):
    _fail("droprate_init", d, "must be in (0, 1), or < 0 for the model's defaults")
  t = config.target_density
  if not isinstance(t, (int, float)) or not 0 < t <= 1:
    _fail("target_density", t, "must be in (0, 1]")
  layer_targets = tuple(config.layer_targets or ())
  if layer_targets:
    if config.constraint != "layerwise":
      _fail("layer_targets", layer_targets, "needs constraint='layerwise'")
    for v in layer_targets:
      if not isinstance(v, (int, float)) or not 0 < v <= 1:
        _fail("layer_targets", layer_targets, "every target must be in (0, 1]")
    num_layers = len(density.gated_layers(abstract_params(config))) if config.gated else 0
    if len(layer_targets) != num_layers:
      _fail("layer_targets", layer_targets,
            f"needs one target per gated layer ({num_layers} for "
            f"model={config.model!r}), or () to use target_density for every layer")
  for field, low in (("image_size", 0), ("crop_padding", 0), ("eval_resize", 0),
                     ("data_workers", -1)):
    if not isinstance(config[field], int) or config[field] < low:
      _fail(field, config[field], f"must be an integer >= {low}")
  try:
    preprocessing(config)  # the dataset's info, and settings that must fit it
  except data.transforms.PreprocessingError as e:
    raise ConfigError(f"config.{e}") from None
  except data.DatasetNotPrepared as e:
    close = difflib.get_close_matches(config.dataset, list(data.CATALOG), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close and close[0] != config.dataset else ""
    raise ConfigError(f"config.dataset={config.dataset!r}{hint}: {e}") from None
  devices = jax.device_count() if device_count is None else device_count
  if config.batch_size % devices:
    _fail("batch_size", config.batch_size,
          f"must be divisible by the device count ({devices})")


# ======================================================================================
# Optimisers, problem, state
# ======================================================================================
def _optax(name: str, learning_rate, momentum: float):
  if name == "adam":
    return optax.adam(learning_rate)
  return optax.sgd(learning_rate, momentum=None if name == "sgd" else momentum,
                   nesterov=name == "nesterov")


def _is_kernel(params):
  """True at every ``kernel`` leaf (conv / dense weights), False elsewhere (gates,
  biases, BatchNorm scales and shifts)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def learning_rate_schedule(config, total_steps: Optional[int] = None,
                           steps_per_epoch: Optional[int] = None):
  """The weights' learning rate: constant, cosine to 0 over the run, or step decay
  (``* lr_decay_factor`` at each epoch of ``lr_milestones``)."""
  if config.lr_schedule == "constant":
    return config.learning_rate
  if config.lr_schedule == "cosine":
    if total_steps is None:
      raise ValueError("lr_schedule='cosine' needs the run's total_steps")
    return optax.cosine_decay_schedule(config.learning_rate, max(total_steps, 1))
  if steps_per_epoch is None:
    raise ValueError("lr_schedule='step' needs the run's steps_per_epoch")
  return optax.piecewise_constant_schedule(
      config.learning_rate,
      {int(m * steps_per_epoch): config.lr_decay_factor for m in config.lr_milestones})


def make_primal_optimizer(config, total_steps: Optional[int] = None,
                          steps_per_epoch: Optional[int] = None
                          ) -> optax.GradientTransformation:
  """Separate optimisers for weights and gate parameters (``log_alpha``).

  The weights' learning rate follows ``config.lr_schedule``; the gates keep theirs, so
  they can follow the multipliers to the end. ``config.weight_decay`` adds
  ``weight_decay * w`` to the gradient of every ``kernel`` (conv and dense weights
  only: never gates, biases or BatchNorm parameters).
  """
  weights = _optax(config.optimizer,
                   learning_rate_schedule(config, total_steps, steps_per_epoch),
                   config.momentum)
  if config.weight_decay:
    weights = optax.chain(optax.add_decayed_weights(config.weight_decay, _is_kernel),
                          weights)
  return constrained.primal_optimizer(
      weights, _optax(config.gate_optimizer, config.gate_learning_rate, config.momentum))


def make_problem(config, num_layers: int):
  """The ``constrained.Problem`` (no constraints for a dense, ungated model)."""
  if not config.gated:
    return constrained.Problem(targets=())
  if config.method == "penalized":
    n = 1 if config.constraint == "model" else num_layers
    return constrained.Problem(targets=(0.0,) * n, formulation="penalized")
  return constrained.Problem(
      targets=targets(config, num_layers), kinds=config.constraint_kind,
      formulation=config.formulation,
      penalty_coefficient=(config.penalty_coefficient
                           if config.formulation == "augmented_lagrangian" else None))


def make_dual_optimizer(config, problem):
  if problem.formulation == "penalized":
    return constrained.dual_optimizer(problem)
  inner = (constrained.nupi(config.dual_learning_rate, kp=config.nupi_kp)
           if config.dual_optimizer == "nupi" else optax.sgd(config.dual_learning_rate))
  return constrained.dual_optimizer(problem, inner, restarts=config.dual_restarts)


def macs_graph(config, model=None):
  """The MACs graph (``purge.macs_graph``) of the config's gated model."""
  from l0jax import purge  # pylint: disable=g-import-not-at-top
  model = build_model(config) if model is None else model
  return purge.macs_graph(model, abstract_params(config), input_shape(config))


def constraint_fn(config, model=None) -> Callable:
  """params -> vector of constraint values (model-wise or per-layer density).

  ``density_mode="independent"`` is the papers' expected L0 of each layer's own gates;
  ``"cascade"`` also counts what a closed gate makes dead in the neighbouring layers
  (``density.cascade_layer_densities``), i.e. the size purging deploys; ``"macs"`` is
  the expected multiply-accumulates over the dense ones (``density.macs_density`` on
  :func:`macs_graph`: a closed channel also removes its input channel from the layer
  that reads it), model-wise or per gated layer. ``"dep_l0"`` is the Dep-L0 paper's
  cost: the cascade along the gated layers' call order (:func:`gate_order`), each
  layer's inputs taken as the previous gated layer's outputs, so a conv counts
  ``E[open inputs] * E[open outputs] * k^2`` (plus its channels' biases).
  """
  if not config.gated:
    return lambda params: jnp.zeros((0,), jnp.float32)
  if config.density_mode == "macs":
    graph = macs_graph(config, model)
    if config.constraint == "model":
      return lambda params: density.macs_density(graph, params)[None]

    def per_layer_macs(params):  # in task.layer_names' order (density.gated_layers)
      macs = density.layer_macs(graph, params)  # once for every layer
      return jnp.stack([macs[n] / graph[n].macs for n in density.gated_layers(params)])
    return per_layer_macs
  cascade = config.density_mode in ("cascade", "dep_l0")
  order = ([name for name, _ in gate_order(config)] if config.density_mode == "dep_l0"
           else None)
  if config.constraint == "model":
    model_density = (functools.partial(density.cascade_expected_density, order=order)
                     if cascade else density.expected_density)
    return lambda params: model_density(params)[None]
  layer_densities = (functools.partial(density.cascade_layer_densities, order=order)
                     if cascade else density.layer_expected_densities)

  def per_layer(params):  # in task.layer_names' order (density.gated_layers)
    values = layer_densities(params)
    return jnp.stack([values[name] for name in density.gated_layers(params)])
  return per_layer


def _validate_gate_source(config) -> None:
  _choice(config, "gate_source", GATE_SOURCES)
  if config.gate_source == "independent":
    return
  if not config.gated:
    _fail("gate_source", config.gate_source, "needs gated=True")
  if config.unstructured:  # maps of (gates of layer k) x (gates of layer k+1) weights
    _fail("gate_source", config.gate_source, "needs structured gates "
          "(unstructured=False): with one gate per weight the generator's maps would "
          "hold (weights of layer k) x (weights of layer k+1) parameters")
  _choice(config, "dep_bias_init", ("paper", "droprate"))
  if not isinstance(config.dep_input_size, int) or config.dep_input_size < 1:
    _fail("dep_input_size", config.dep_input_size, "must be an integer >= 1")
  d = config.droprate_init
  if config.dep_bias_init == "droprate" and (
      not 0 < d < 1 or abs(math.log((1 - d) / d)) >= dependency.LOG_ALPHA_BOUND):
    _fail("droprate_init", d, "dep_bias_init='droprate' needs it in (1/101, 100/101) "
          "(generated log_alphas lie in (-log 100, log 100))")


def gate_order(config, model=None) -> tuple:
  """``((path, log_alpha shape), ...)`` of the model's gated layers in call order."""
  model = build_model(config) if model is None else model
  x = jax.ShapeDtypeStruct((1,) + input_shape(config), jnp.float32)
  return dependency.execution_order(model, x, deterministic=True)


def gate_generator(config, model=None) -> Optional[dependency.GateGenerator]:
  """The Dep-L0 gate generator of ``config.gate_source`` ("dep_forward" /
  "dep_backward"; None for "independent"), over the model's gated layers in call
  order. The trainer keeps its parameters in ``params[dependency.GENERATOR_KEY]``."""
  if config.gate_source == "independent":
    return None
  return dependency.GateGenerator(
      gate_order(config, model), order=config.gate_source[len("dep_"):],
      input_size=config.dep_input_size, droprate_init=config.droprate_init if config.dep_bias_init == "droprate" else None)


class Task(NamedTuple):
  """The static pieces a run is made of."""
  model: Any
  problem: constrained.Problem
  primal_tx: optax.GradientTransformation
  dual_tx: Any
  constraints: Callable
  layer_names: tuple
  generator: Optional[dependency.GateGenerator] = None  # Dep-L0 (config.gate_source)


def make_task(config, total_steps: Optional[int] = None) -> Task:
  """The run's model, problem and optimisers (``total_steps`` for lr schedules)."""
  model = build_model(config)
  names = tuple(density.gated_layers(abstract_params(config))) if config.gated else ()
  problem = make_problem(config, len(names))
  per_epoch = (num_train_examples(config) // config.batch_size
               if config.lr_schedule == "step" else None)
  return Task(model, problem, make_primal_optimizer(config, total_steps, per_epoch),
              make_dual_optimizer(config, problem), constraint_fn(config, model), names,
              gate_generator(config, model))


def init_state(config, task: Task) -> TrainState:
  """A fresh (unreplicated) TrainState from ``config.seed``."""
  key = jax.random.key(config.seed)
  init_key, gate_key, rng = jax.random.split(key, 3)
  x = jnp.zeros((1,) + input_shape(config), jnp.float32)
  variables = jax.jit(lambda x: task.model.init(
      {"params": init_key, "gates": gate_key}, x, deterministic=True))(x)
  params = variables["params"]
  if task.generator is not None:  # Dep-L0: params also hold the generator
    params = dependency.attach(params, task.generator,
                               task.generator.init(jax.random.fold_in(key, 1)))
  init_multipliers = None
  if task.problem.formulation == "penalized":
    init_multipliers = jnp.full((task.problem.num_constraints,), config.penalty)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=task.primal_tx.init(params),
      constrained=constrained.init(task.problem, task.dual_tx, init_multipliers),
      rng=jax.random.key_data(rng),
      batch_stats=variables.get("batch_stats", {}))


# ======================================================================================
# The per-device step
# ======================================================================================
def cross_entropy(logits, labels, mask=None, label_smoothing: float = 0.0):
  """Mean (``mask``-weighted) cross-entropy in float32; ``label_smoothing`` mixes the
  one-hot targets with the uniform distribution."""
  logits = logits.astype(jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]),
                                  label_smoothing)
    losses = optax.softmax_cross_entropy(logits, targets)
  else:
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if mask is None:
    return jnp.mean(losses)
  return jnp.sum(losses * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _forward_train(model, params, batch_stats, images, step_key, config, example_offset):
  """Training forward pass with topology-independent gate noise (see module doc).

  Returns the logits and the updated BatchNorm statistics."""
  variables = {"params": params, "batch_stats": batch_stats}
  rngs = {}
  if config.gated and config.sample_per_example:
    index = example_offset + jnp.arange(images.shape[0])
    keys = jax.vmap(lambda i: jax.random.fold_in(step_key, i))(index)
    variables[layers.NOISE_COLLECTION] = layers.per_example_noise(keys, params)
  else:
    rngs["gates"] = jax.random.fold_in(step_key, jax.lax.axis_index(AXIS))
  # Dropout (WRN's option): a stream no example index reaches, per device.
  rngs["dropout"] = jax.random.fold_in(jax.random.fold_in(step_key, 2 ** 31 - 1),
                                       jax.lax.axis_index(AXIS))
  logits, updates = model.apply(variables, images, rngs=rngs, mutable=["batch_stats"])
  return logits, updates.get("batch_stats", {})


def train_step_body(state: TrainState, batch, *, config, task: Task):
  """One training step on one device's share of the global batch (no leading axis)."""
  rng = jax.random.wrap_key_data(state.rng)
  step_key = jax.random.fold_in(rng, state.step)
  per_device = batch["label"].shape[0]
  example_offset = jax.lax.axis_index(AXIS) * per_device

  def fn(params):
    params = dependency.generated_params(params, task.generator)
    logits, batch_stats = _forward_train(task.model, params, state.batch_stats,
                                         batch["image"], step_key, config, example_offset)
    loss = cross_entropy(logits, batch["label"], label_smoothing=config.label_smoothing)
    accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
    return loss, task.constraints(params), {"accuracy": accuracy,
                                            "batch_stats": batch_stats}

  update = constrained.make_update(
      task.problem, task.primal_tx, task.dual_tx, config.scheme,
      grad_reduce=lambda tree: jax.lax.pmean(tree, AXIS))
  params, opt_state, cstate, m = update(fn, state.params, state.opt_state,
                                        state.constrained)
  params = dependency.synced(params, task.generator)  # log_alpha leaves = generated
  metrics = {
      "loss": m["objective"],
      "accuracy": jax.lax.pmean(m["aux"]["accuracy"], AXIS),
      "lagrangian": m["lagrangian"],
      "constraint_values": m["constraint_values"],
      "multipliers": cstate.multipliers,
  }
  if config.gated:
    metrics["expected_density"] = density.expected_density(params)
    metrics["layer_densities"] = jnp.stack(
        list(density.layer_expected_densities(params).values()))
  if config.log_egf:  # one more backward pass of the loss, on the steps that log
    metrics.update(egf.gradient_flow_metrics_on(
        (state.step + 1) % config.log_every_steps == 0, lambda p: fn(p)[0], state.params,
        grad_reduce=lambda g: jax.lax.pmean(g, AXIS), test_gate=config.test_gate))
  new_state = TrainState(state.step + 1, params, opt_state, cstate, state.rng,
                         m["aux"]["batch_stats"])
  return new_state, metrics


def eval_variables(state: TrainState) -> Dict[str, Any]:
  """What the eval step needs of a state: parameters and BatchNorm statistics."""
  return {"params": dependency.model_params(state.params),
          "batch_stats": state.batch_stats}


def eval_step_body(variables, batch, *, config, task: Task):
  """Sums of correct predictions, loss and examples with test-time gates (psum'd)."""
  logits = task.model.apply(variables, batch["image"], deterministic=True)
  logits = logits.astype(jnp.float32)
  mask = batch["mask"]
  correct = jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * mask)
  loss = jnp.sum(optax.softmax_cross_entropy_with_integer_labels(
      logits, batch["label"]) * mask)
  return jax.lax.psum({"correct": correct, "loss": loss, "count": jnp.sum(mask)}, AXIS)


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh named "batch" over ``devices`` (default: every device of every process)."""
  return Mesh(np.asarray(jax.devices() if devices is None else devices), (AXIS,))


def local_device_count(mesh: Mesh) -> int:
  """Devices of ``mesh`` that belong to this process."""
  return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def parallelize(body: Callable, config, mesh: Mesh, donate: bool) -> Callable:
  """Runs a per-device ``body(*args)`` over the leading device axis of every argument.

  ``pmap`` maps it directly; ``shard_map`` gives each device a block of size 1 along the
  leading axis, which is squeezed before and restored after the body.
  """
  donate_argnums = (0,) if donate else ()
  if config.parallel == "pmap":
    return jax.pmap(body, axis_name=AXIS, donate_argnums=donate_argnums,
                    devices=list(mesh.devices.flat))

  def blockwise(*args):
    squeezed = jax.tree.map(lambda x: x[0], args)
    return jax.tree.map(lambda x: x[None], body(*squeezed))

  spec = P(AXIS)
  mapped = jax.shard_map(blockwise, mesh=mesh, in_specs=spec, out_specs=spec,
                         check_vma=False)
  return jax.jit(mapped, donate_argnums=donate_argnums)


def replicate(tree, mesh: Mesh):
  """Copies of a host pytree on every device, stacked along a leading device axis."""
  sharding = NamedSharding(mesh, P(AXIS))
  n_local, n_global = local_device_count(mesh), mesh.size

  def put(x):
    x = np.asarray(x)
    local = np.broadcast_to(x, (n_local,) + x.shape)
    return jax.make_array_from_process_local_data(sharding, local,
                                                  (n_global,) + x.shape)
  return jax.tree.map(put, tree)


def shard_batch(batch: Dict[str, np.ndarray], mesh: Mesh):
  """This process's [local_devices, b, ...] batch -> a global [devices, b, ...] array."""
  sharding = NamedSharding(mesh, P(AXIS))
  return {k: jax.make_array_from_process_local_data(
      sharding, v, (mesh.size,) + v.shape[1:]) for k, v in batch.items()}


def unreplicate(tree):
  """Device 0's copy (of this process) as host numpy arrays."""
  def first(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      x = x.addressable_shards[0].data
    return np.asarray(x)[0]
  return jax.tree.map(first, tree)


NONFINITE_STEP = "nonfinite_step"  # metrics key: see with_nonfinite_step


def with_nonfinite_step(body: Callable) -> Callable:
  """Adds ``metrics[NONFINITE_STEP]`` to a step body: 0, or the step number (the
  ``step`` of its log record) when any metric (loss, Lagrangian, accuracy, constraint
  values, multipliers, densities) is not finite. The gradient-flow metrics
  (``config.log_egf``) are NaN on the steps that do not log them and are left out.

  A scalar reduced on the device from scalars and per-layer values, so the loop can
  stop a diverged run without copying the metrics of every step to the host.
  """
  def step(state, batch):
    new_state, metrics = body(state, batch)
    checked = [v for k, v in metrics.items() if k not in egf.FLOW_METRICS]
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(m)) for m in jax.tree.leaves(checked)]))
    bad = jnp.where(finite, 0, state.step + 1).astype(jnp.int32)
    return new_state, {**metrics, NONFINITE_STEP: bad}
  return step


def _step_body(config, task: Task, check_finite: bool) -> Callable:
  body = functools.partial(train_step_body, config=config, task=task)
  return with_nonfinite_step(body) if check_finite else body


def make_train_step(config, task: Task, mesh: Mesh, check_finite: bool = True) -> Callable:
  return parallelize(_step_body(config, task, check_finite), config, mesh, donate=True)


def make_multi_train_step(config, task: Task, mesh: Mesh,
                          check_finite: bool = True) -> Callable:
  """Several training steps in one dispatch: ``(state, batches) -> (state, metrics)``.

  ``batches`` holds ``k`` batches stacked on axis 1 (``[devices, k, b, ...]``); the
  steps run in a ``lax.scan`` and the metrics are the last step's (``NONFINITE_STEP``:
  the first non-finite step of the call). The same steps as
  ``k`` calls of :func:`make_train_step` (same noise, same updates) in one call. On
  CPU that made the MLP and LeNet L0 steps 1.1-1.3x faster (``python
  benchmarks/step_time.py --compare``), more than the 0.1 ms an empty pmapped step
  takes to dispatch: XLA also runs the scan body with less overlap of independent ops,
  which measured faster here; the split between the two was not measured.
  """
  body = _step_body(config, task, check_finite)

  def steps(state, batches):
    state, metrics = jax.lax.scan(body, state, batches)
    last = jax.tree.map(lambda m: m[-1], metrics)
    if check_finite:
      bad = metrics[NONFINITE_STEP]
      last[NONFINITE_STEP] = jnp.where(jnp.any(bad > 0), bad[jnp.argmax(bad > 0)], 0)
    return state, last
  return parallelize(steps, config, mesh, donate=True)


def steps_per_call(config, mesh: Mesh) -> int:
  """How many steps the loop runs per call: ``config.steps_per_dispatch``, except one
  for a convolutional model with ``ops_method="xla"`` on CPU, where XLA's convolution
  gradients run about 4x slower inside ``lax.scan`` than in a step of their own."""
  on_cpu = mesh.devices.flat[0].platform == "cpu"
  has_convolutions = config.model != "mlp"
  if on_cpu and has_convolutions and config.ops_method == "xla":
    return 1
  return config.steps_per_dispatch


def stack_batches(batches: Sequence[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
  """Host batches ``[local_devices, b, ...]`` -> ``[local_devices, k, b, ...]``."""
  return {key: np.stack([b[key] for b in batches], axis=1) for key in batches[0]}


def make_eval_step(config, task: Task, mesh: Mesh) -> Callable:
  body = functools.partial(eval_step_body, config=config, task=task)
  return parallelize(body, config, mesh, donate=False)


class StepFunctions(NamedTuple):
  task: Task
  train: Callable        # make_train_step
  train_multi: Callable  # make_multi_train_step
  eval: Callable         # make_eval_step


_STEP_FUNCTIONS: Dict[tuple, StepFunctions] = {}


def step_functions(config, mesh: Mesh, total_steps: Optional[int]) -> StepFunctions:
  """The task and its jitted steps, cached by config, schedule length and devices.

  A process that runs the same config again (a resumed run, an evaluation after
  training, a penalty bisection, the tests) reuses the compiled steps.
  """
  key = (config.to_json(), total_steps, tuple(d.id for d in mesh.devices.flat))
  if key not in _STEP_FUNCTIONS:
    if len(_STEP_FUNCTIONS) >= 8:
      _STEP_FUNCTIONS.pop(next(iter(_STEP_FUNCTIONS)))
    task = make_task(config, total_steps)
    _STEP_FUNCTIONS[key] = StepFunctions(
        task, make_train_step(config, task, mesh),
        make_multi_train_step(config, task, mesh), make_eval_step(config, task, mesh))
  return _STEP_FUNCTIONS[key]


# ======================================================================================
# Data
# ======================================================================================
def data_dir(config) -> str:
  return os.path.expanduser(config.data_dir or os.environ.get(
      "TFDS_DATA_DIR", "~/tensorflow_datasets"))


@functools.lru_cache(maxsize=16)
def _dataset_info(name: str, directory: str, fake: bool) -> data.DatasetInfo:
  return data.dataset_info(name, directory, fake=fake)


def dataset_info(config) -> data.DatasetInfo:
  """Shape, classes and split sizes of the config's dataset (prepared or fake)."""
  return _dataset_info(config.dataset, data_dir(config), bool(config.fake_data))


def preprocessing(config) -> data.Preprocessing:
  """The config's preprocessing of its dataset (``l0jax.data.transforms``)."""
  return data.preprocessing(
      dataset_info(config), image_size=config.image_size, augment=config.augment,
      crop_padding=config.crop_padding, rrc_scale=tuple(config.rrc_scale),
      eval_resize=config.eval_resize, mean=tuple(config.mean), std=tuple(config.std))


def input_shape(config) -> tuple:
  """The model's input shape (H, W, C) after preprocessing."""
  return tuple(preprocessing(config).image_shape)


def load_source(config, split: str):
  return data.load_split(config.dataset, split, data_dir=data_dir(config),
                         idx_dir=config.idx_dir or None, fake=config.fake_data)


def _batch_options(config, source) -> Dict[str, Any]:
  """How this process reads batches: topology, caching and grain workers.

  One process decodes a whole split of fixed-size images into memory once; with
  several, each reads only its own records of every batch (the global batches are the
  same either way). Per-example decoding and resizing runs in
  ``config.data_workers`` processes (-1: one per CPU core).
  """
  prep = preprocessing(config)
  workers = config.data_workers
  if workers < 0:
    workers = 0 if not prep.per_example else min(os.cpu_count() or 1, 16)
  cache = jax.process_count() == 1
  inline = workers > 0 or (cache and not prep.per_example)  # cached batches: a gather
  return dict(prep=prep, process_index=jax.process_index(),
              process_count=jax.process_count(), cache=cache, workers=workers,
              threads=0 if inline else 1)


def num_train_examples(config) -> int:
  """Examples in the config's training split."""
  return len(load_source(config, config.train_split))


def num_train_steps(config, num_examples: int) -> int:
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  return int(config.num_epochs * (num_examples // config.batch_size))


def evaluate(variables_replicated, eval_step, source, config, mesh) -> Dict[str, float]:
  """Test error and loss over every example of ``source`` exactly once."""
  totals = None
  for batch in data.eval_iterator(
      source, global_batch_size=config.batch_size,
      local_device_count=local_device_count(mesh), **_batch_options(config, source)):
    out = eval_step(variables_replicated, shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = unreplicate(totals)
  count = float(totals["count"])
  return {"test_error": 1.0 - float(totals["correct"]) / count,
          "test_loss": float(totals["loss"]) / count, "test_examples": int(count)}


# ======================================================================================
# Logging
# ======================================================================================
def _host_metrics(metrics, task: Task, step: int, config) -> Dict[str, Any]:
  m = unreplicate(metrics)
  record = {"step": step, "loss": float(m["loss"]), "accuracy": float(m["accuracy"]),
            "lagrangian": float(m["lagrangian"]),
            "multipliers": [float(v) for v in m["multipliers"]],
            "constraint_values": [float(v) for v in m["constraint_values"]]}
  if config.gated:
    record["expected_density"] = float(m["expected_density"])
    record["layer_densities"] = dict(zip(task.layer_names,
                                         map(float, m["layer_densities"])))
  record.update({k: float(m[k]) for k in egf.FLOW_METRICS if np.isfinite(m.get(k, np.nan))})
  return record


# ======================================================================================
# Reports
# ======================================================================================
def purge_report(model, variables, config) -> Dict[str, Any]:
  """Size of the compacted model (``l0jax.purge``): params, MACs, density, architecture;
  for a dense model its MACs (``dense_macs``), so both are compared on one scale."""
  if not config.gated:
    return {"dense_macs": int(sum(layer.macs for layer in
                                  macs_graph(config, model).values()))}
  from l0jax import purge  # pylint: disable=g-import-not-at-top
  c = purge.counts(model, variables, input_shape=input_shape(config))
  keys = ("dense_macs", "test_time_macs", "purged_params", "purged_macs",
          "purged_density", "architecture")
  graph = macs_graph(config, model)
  params = variables["params"] if "params" in variables else variables
  return {**{k: c[k] for k in keys},
          "purged_macs_density": c["purged_macs"] / max(c["dense_macs"], 1),
          "expected_macs_density": float(density.macs_density(graph, params)),
          "test_time_macs_density": float(density.macs_density(graph, params,
                                                                config.test_gate))}


# ======================================================================================
# The loop
# ======================================================================================
class Interrupted(UserError):
  """Ctrl-C during training; the message says where a rerun resumes."""
  exit_code = errors.INTERRUPTED_EXIT_CODE


class NonFiniteError(UserError, FloatingPointError):
  """Training produced a NaN or an infinity; nothing non-finite was saved."""


class _NonFiniteGuard:
  """The ``NONFINITE_STEP`` flags of the calls since the last check, left on the device.

  :meth:`poll` reads the flags already computed (it never waits, so the loop keeps
  dispatching ahead), :meth:`check` all of them (it waits); both return the first
  non-finite step, or 0.
  """

  def __init__(self):
    self.pending: List[jax.Array] = []

  def add(self, metrics) -> None:
    self.pending.append(metrics[NONFINITE_STEP])

  @staticmethod
  def _first(flags) -> int:
    for flag in flags:
      step = int(unreplicate(flag))
      if step:
        return step
    return 0

  def poll(self) -> int:
    ready = []
    while self.pending and self.pending[0].is_ready():
      ready.append(self.pending.pop(0))
    return self._first(ready)

  def check(self) -> int:
    flags, self.pending = self.pending, []
    return self._first(flags)


def _non_finite(what: str, step: int, checkpoints) -> NonFiniteError:
  return NonFiniteError(
      f"non-finite {what} at step {step}: training stopped, nothing non-finite was "
      f"saved, and {checkpoints.describe_latest()}. Lower the learning rates "
      "(learning_rate, gate_learning_rate, dual_learning_rate) and use a new --workdir")


def _nonfinite_metrics(metrics) -> str:
  """Which metrics of the latest call are not finite (for the message)."""
  m = unreplicate(metrics)
  bad = [k for k, v in m.items()
         if k != NONFINITE_STEP and not np.isfinite(np.asarray(v, np.float64)).all()]
  return "metrics (" + ", ".join(bad) + ")" if bad else "metrics"


def _save(checkpoints, step: int, state) -> None:
  host_state = unreplicate(state)
  if not workdir_lib.tree_is_finite(host_state):
    raise _non_finite("parameters or optimizer state", step, checkpoints)
  checkpoints.save(step, host_state)


@contextlib.contextmanager
def _ctrl_c_stops_after_the_call():
  """Ctrl-C during training: a flag the loop checks after each call, so it stops at a
  step it can save (a second Ctrl-C interrupts at once).

  A KeyboardInterrupt raised wherever the signal lands can land in one of JAX's
  garbage-collection callbacks, where Python prints and drops it and training goes on.
  Left alone where SIGINT is ignored (a background job) or off the main thread.
  """
  requested: List[bool] = []

  def handler(signum, frame):
    del signum, frame
    if requested:
      raise KeyboardInterrupt
    requested.append(True)
  if (threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
    yield requested
    return
  signal.signal(signal.SIGINT, handler)
  try:
    yield requested
  finally:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _progress(total: int, initial: int, enabled: bool):
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm(total=total, initial=initial, disable=not enabled, dynamic_ncols=True,
              file=sys.stderr, desc="train")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None) -> Dict[str, Any]:
  """Trains (resuming from ``workdir``'s newest verified checkpoint) and returns the
  final summary.

  ``devices`` (default: all) are the devices the step runs on. Raises ``UserError``
  subclasses for expected failures: a bad config, a workdir in use or started with
  another config (``workdir.WorkdirError``), a diverged run (:class:`NonFiniteError`),
  Ctrl-C (:class:`Interrupted`).
  """
  mesh = make_mesh(devices)
  validate_config(config, mesh.size)
  workdir = os.path.abspath(workdir)

  train_source = load_source(config, config.train_split)
  eval_source = load_source(config, config.eval_split)
  total_steps = num_train_steps(config, len(train_source))
  steps_per_epoch = len(train_source) // config.batch_size
  eval_every = (steps_per_epoch if config.eval_every_steps < 0
                else config.eval_every_steps)
  functions = step_functions(config, mesh, total_steps)
  task, eval_step = functions.task, functions.eval
  is_main = jax.process_index() == 0

  with workdir_lib.open_for_training(workdir, config) as checkpoints:
    host_state = init_state(config, task)
    restored = checkpoints.restore(host_state, repair=True)
    if restored is not None:
      host_state = restored
    start_step = int(host_state.step)
    state = replicate(host_state, mesh)
    step = start_step
    result = report = None  # the evaluation of the latest eval step
    if start_step >= total_steps:
      if is_main:
        print(f"{workdir} is already complete: trained {start_step} steps (this config "
              f"trains {total_steps}); its final evaluation follows. Raise "
              "--config.num_train_steps or --config.num_epochs to train longer.",
              file=sys.stderr, flush=True)
    else:
      state, step, result, report = _train_loop(
          config, mesh, functions, state, start_step, total_steps, eval_every,
          train_source, eval_source, checkpoints, workdir)

  if result is None:  # resumed at the end: nothing was trained or evaluated here
    result = evaluate(eval_variables(state), eval_step, eval_source, config, mesh)
    report = reporting.gate_report(unreplicate(state.params), config)
  # Otherwise the loop ends on an eval step (step == total_steps): reuse it.
  host_params = unreplicate(state.params)
  summary = {"step": step, **result, **report,
             **reporting.constraint_report(task, host_params, config),
             "multipliers": [float(v) for v in unreplicate(state.constrained.multipliers)]}
  if is_main:
    print(reporting.format_summary(summary), flush=True)
  return summary


def _train_loop(config, mesh, functions: StepFunctions, state, start_step: int,
                total_steps: int, eval_every: int, train_source, eval_source,
                checkpoints, workdir: str):
  """Steps from ``start_step`` to ``total_steps``: logs, evaluates, saves, stops.

  Returns ``(state, step, eval result, gate report)`` of the last step.
  """
  task = functions.task
  is_main = jax.process_index() == 0
  batches = data.train_iterator(
      train_source, global_batch_size=config.batch_size, seed=config.seed,
      start_step=start_step, local_device_count=local_device_count(mesh),
      **_batch_options(config, train_source))
  log = reporting.MetricsLog(workdir, start_step, config.tensorboard, active=is_main)
  bar = _progress(total_steps, start_step, config.progress_bar and is_main)
  last_log_time, last_log_step = time.perf_counter(), start_step
  guard = _NonFiniteGuard()

  def next_event(step: int) -> int:
    """The first step after ``step`` that logs, evaluates, saves or ends the run."""
    every = (config.log_every_steps, config.checkpoint_every_steps, eval_every)
    return min([total_steps] + [(step // e + 1) * e for e in every if e > 0])

  per_call = steps_per_call(config, mesh)
  # The preemption service agrees on the step after the last one a process reported;
  # report the resumed step, or a notice before the first step would agree on step 1.
  distributed.reached_preemption_sync_point(start_step)
  step = start_step
  result = report = None
  with _ctrl_c_stops_after_the_call() as ctrl_c:
    try:
      while step < total_steps:
        # steps_per_call steps in one call where no event falls inside them, else one.
        k = per_call
        if k > 1 and next_event(step) - step >= k:
          stacked = stack_batches([next(batches) for _ in range(k)])
          state, metrics = functions.train_multi(state, shard_batch(stacked, mesh))
        else:
          k = 1
          state, metrics = functions.train(state, shard_batch(next(batches), mesh))
        guard.add(metrics)
        first, step = step + 1, step + k
        bar.update(k)
        logs = step % config.log_every_steps == 0 or step == total_steps
        evaluates = (eval_every > 0 and step % eval_every == 0) or step == total_steps
        saves = step % config.checkpoint_every_steps == 0 or step == total_steps
        # Every step number goes to the preemption service (it agrees on one of them);
        # the run saves and stops at the end of the call that holds it.
        preempted = any([distributed.reached_preemption_sync_point(s)  # SIGTERM, multi-process
                         for s in range(first, step + 1)])
        stop = bool(ctrl_c)  # read once: the flag may be set while this step is handled
        interrupted = stop and jax.process_count() == 1  # (several: see below)
        bad = guard.poll()  # never waits: flags of calls that are done
        if not bad and (logs or evaluates or saves or preempted or interrupted):
          bad = guard.check()  # nothing is logged or saved past a non-finite step
        if bad:
          raise _non_finite(_nonfinite_metrics(metrics), bad, checkpoints)
        if logs:
          record = _host_metrics(metrics, task, step, config)
          now = time.perf_counter()
          record["examples_per_sec"] = ((step - last_log_step) * config.batch_size
                                        / max(now - last_log_time, 1e-9))
          last_log_time, last_log_step = now, step
          log.write(record)
          bar.set_postfix(reporting.progress_fields(record, task.layer_names), refresh=False)
        if evaluates:
          result = evaluate(eval_variables(state), functions.eval, eval_source, config, mesh)
          report = reporting.gate_report(unreplicate(state.params), config)
          log.write({"step": step, "eval": True, **result,
                     **{k: report[k] for k in ("expected_density", "test_time_density")
                        if k in report}})
        if saves or preempted or interrupted:
          _save(checkpoints, step, state)
        if preempted:
          raise distributed.Preempted(
              f"preempted at step {step}: saved a checkpoint of step {step} in {workdir}; "
              "run the same command again to resume")
        if interrupted:
          raise Interrupted(f"interrupted at step {step}: saved a checkpoint of step {step}"
                            f" in {checkpoints.directory}; run the same command again to "
                            "resume from it")
        if stop:  # several processes: this one alone cannot save (saves are collective)
          raise KeyboardInterrupt
    except KeyboardInterrupt:
      last = checkpoints.latest_verified()
      raise Interrupted(
          f"interrupted at step {step}: " + (
              f"the last checkpoint is step {last} in {checkpoints.directory}; run the "
              "same command again to resume from it" if last is not None else
              "no checkpoint was saved yet; run the same command again to start over")
      ) from None
    finally:
      batches.close()  # stops the workers computing batches ahead
      bar.close()
      log.close()
  return state, step, result, report
