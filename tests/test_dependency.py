"""Dep-L0 gate generator: shapes, bounds, order, gradients, init, substitution, trainer."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l0jax import density, dependency, eval_lib, gates, param_groups, purge, reporting, train_lib
from l0jax.models import MLP, CifarResNet

LAYERS = (("a", (3,)), ("b/inner", (2, 4)), ("c", (5,)))
LOG100 = math.log(100.0)


def numpy_chain(params, layers, order, input_size):
  """float64 reference of the generator: {path: log_alpha}."""
  chain = layers if order == "forward" else tuple(reversed(layers))
  h = np.ones(input_size)
  out = {}
  for k, (path, shape) in enumerate(chain):
    w = np.asarray(params[f"map_{k}"]["kernel"], np.float64)
    b = np.asarray(params[f"map_{k}"]["bias"], np.float64)
    h = LOG100 * np.tanh(h @ w + b)
    out[path] = h.reshape(shape)
  return out


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_shapes_order_and_values_match_a_numpy_chain(order):
  gen = dependency.GateGenerator(LAYERS, order=order, input_size=7)
  params = gen.init(jax.random.key(0))
  chain = LAYERS if order == "forward" else LAYERS[::-1]
  fan_in = 7
  for k, (_, shape) in enumerate(chain):  # map k feeds on map k-1's log_alphas
    assert params[f"map_{k}"]["kernel"].shape == (fan_in, math.prod(shape))
    assert params[f"map_{k}"]["bias"].shape == (math.prod(shape),)
    fan_in = math.prod(shape)
  out = gen.apply(params)
  assert list(out) == [p for p, _ in LAYERS]  # layer order whatever the chain order
  ref = numpy_chain(params, LAYERS, order, 7)
  for path, shape in LAYERS:
    assert out[path].shape == shape
    np.testing.assert_allclose(out[path], ref[path], rtol=1e-5, atol=1e-5)


def test_backward_chain_starts_at_the_last_layer():
  fwd = dependency.GateGenerator(LAYERS, "forward", input_size=4, kernel_scale=0.0)
  bwd = dependency.GateGenerator(LAYERS, "backward", input_size=4, kernel_scale=0.0)
  p = fwd.init(jax.random.key(0))
  # Forward: the first layer depends only on map_0. Backward: the *last* layer does.
  bump = lambda params: {**params, "map_0": {**params["map_0"],
                                             "bias": params["map_0"]["bias"] - 5.0}}
  base, bumped = fwd.apply(p), fwd.apply(bump(p))
  assert not np.allclose(base["a"], bumped["a"])
  pb = bwd.init(jax.random.key(0))
  base, bumped = bwd.apply(pb), bwd.apply(bump(pb))
  assert not np.allclose(base["c"], bumped["c"])
  # With zero kernels the other layers do not see map_0 at all.
  np.testing.assert_array_equal(base["a"], bumped["a"])


@pytest.mark.parametrize("scale", [1.0, 1e3])
def test_generated_log_alphas_are_bounded(scale):
  gen = dependency.GateGenerator(LAYERS, input_size=5, kernel_scale=scale)
  out = gen.apply(gen.init(jax.random.key(3)))
  for v in out.values():
    assert np.all(np.abs(np.asarray(v)) <= LOG100 * (1 + 1e-6))
  if scale > 1:  # saturated: some reach the bound (no clamp below it)
    assert max(float(jnp.max(jnp.abs(v))) for v in out.values()) > 0.99 * LOG100


def _expected_open(log_alpha):
  """P(z != 0) in float64, from the hard-concrete closed form."""
  return 1 / (1 + np.exp(-(np.asarray(log_alpha, np.float64)
                           - gates.BETA * np.log(-gates.GAMMA / gates.ZETA))))


@pytest.mark.parametrize("droprate", [0.2, 0.5, 0.9])
def test_init_from_droprate_matches_the_independent_gates_open_probability(droprate):
  layers = (("a", (1000,)), ("b", (1500,)))
  gen = dependency.GateGenerator(layers, input_size=6, droprate_init=droprate,
                                 kernel_scale=0.0)
  params = gen.init(jax.random.key(1))
  out = gen.apply(params)
  logit = math.log((1 - droprate) / droprate)
  assert abs(LOG100 * math.tanh(gen.bias_mean()) - logit) < 1e-12
  want = _expected_open(logit)
  for k, (name, _) in enumerate(layers):
    bias = np.asarray(params[f"map_{k}"]["bias"], np.float64)
    np.testing.assert_allclose(out[name], LOG100 * np.tanh(bias), rtol=1e-5, atol=1e-6)
    # As the independent init: logit(1 - droprate) + N(0, 0.01^2).
    np.testing.assert_allclose(np.mean(out[name]), logit, atol=2e-3)
    np.testing.assert_allclose(np.std(out[name]), 0.01, rtol=0.1)
    np.testing.assert_allclose(_expected_open(out[name]).mean(), want, atol=1e-3)


def test_paper_init_opens_gates():
  gen = dependency.GateGenerator(LAYERS, input_size=6, kernel_scale=0.0)
  out = gen.apply(gen.init(jax.random.key(1)))
  for v in out.values():  # log(100) * tanh(3 + N(0, 0.01^2))
    np.testing.assert_allclose(v, LOG100 * np.tanh(3.0), atol=2e-3)
  # Default kernels (PyTorch nn.Linear's variance): most gates still start open.
  gen = dependency.GateGenerator(LAYERS, input_size=64)
  probs = np.concatenate([_expected_open(v).ravel()
                          for v in gen.apply(gen.init(jax.random.key(2))).values()])
  assert probs.mean() > 0.8


@pytest.mark.parametrize("bad", [dict(order="sideways"), dict(input_size=0),
                                 dict(droprate_init=0.001), dict(layers=())])
def test_bad_generator_settings_raise_user_errors(bad):
  kwargs = dict(layers=LAYERS)
  kwargs.update(bad)
  with pytest.raises(dependency.GeneratorError):
    dependency.GateGenerator(**kwargs)


# --- on a model's params ------------------------------------------------------------
def _mlp():
  model = MLP(features=(6, 5), num_classes=3)
  x = jnp.ones((2, 4, 2))
  params = model.init({"params": jax.random.key(0), "gates": jax.random.key(1)}, x,
                      deterministic=True)["params"]
  return model, x, dict(params)


@pytest.mark.parametrize("order", ["forward", "backward"])
def test_gradients_reach_every_generator_map(order):
  """jax.grad of the model density through substituted params == a float64 finite
  difference of a numpy reference of the same function."""
  model, x, params = _mlp()
  gen = dependency.GateGenerator(dependency.execution_order(model, x, deterministic=True),
                                 order=order, input_size=3)
  gp = gen.init(jax.random.key(4))
  sizes = {name: layer.num_sparsifiable
           for name, layer in density.gated_layers(params).items()}
  total = sum(sizes.values())

  def f(gp):
    return density.expected_density(dependency.with_generated_log_alphas(params, gen, gp))

  def f_numpy(gp):
    out = numpy_chain(gp, gen.layers, order, 3)
    return sum(_expected_open(out[n]).mean() * sizes[n] for n in sizes) / total

  grads = jax.grad(f)(gp)
  gp64 = jax.tree.map(lambda a: np.asarray(a, np.float64), gp)
  rng = np.random.default_rng(0)
  eps = 1e-6
  for name in gp:
    g = np.asarray(grads[name]["kernel"])
    assert np.any(g != 0), f"no gradient reaches {name}"
    for _ in range(3):
      i = tuple(rng.integers(0, s) for s in g.shape)
      plus = jax.tree.map(np.copy, gp64)
      minus = jax.tree.map(np.copy, gp64)
      plus[name]["kernel"][i] += eps
      minus[name]["kernel"][i] -= eps
      fd = (f_numpy(plus) - f_numpy(minus)) / (2 * eps)
      np.testing.assert_allclose(g[i], fd, rtol=2e-2, atol=1e-6)


def test_execution_order_is_call_order_not_name_order():
  model = CifarResNet(depth=8, width_scale=0.25, num_classes=10)
  layers = dependency.execution_order(model, jnp.zeros((1, 32, 32, 3)),
                                      deterministic=True)
  names = [n for n, _ in layers]
  assert names[0] == "stem" and names[-1] != "stem"
  assert sorted(names) == sorted(density.gated_layers(
      jax.eval_shape(lambda: model.init({"params": jax.random.key(0)},
                                        jnp.zeros((1, 32, 32, 3)),
                                        deterministic=True))["params"]))


def test_substituted_params_give_the_densities_and_purge_of_generated_gates():
  model, x, params = _mlp()
  gen = dependency.GateGenerator(dependency.execution_order(model, x, deterministic=True),
                                 input_size=4, droprate_init=0.5, kernel_scale=3.0)
  generated = gen.apply(gen.init(jax.random.key(5)))
  sub = dependency.with_generated_log_alphas(params, gen, gen.init(jax.random.key(5)))
  # Reference 1: the density module's own route for outside gates.
  outside = {n: layer.replace(log_alpha=generated[n])
             for n, layer in density.gated_layers(params).items()}
  a, b = density.density_report(sub), density.density_report(outside)
  np.testing.assert_allclose(a.model_expected, b.model_expected, rtol=1e-6)
  np.testing.assert_allclose(a.model_test_time, b.model_test_time, rtol=1e-6)
  assert {k: int(v) for k, v in a.kept_units.items()} == {
      k: int(v) for k, v in b.kept_units.items()}
  assert 0 < float(a.model_test_time) < 1  # some gates closed, some open
  # Reference 2: purge's own log_alphas= route.
  assert purge.counts(model, sub) == purge.counts(model, params, log_alphas=generated)
  purged_model, purged = purge.purge(model, sub)
  np.testing.assert_allclose(
      purged_model.apply({"params": purged}, x),
      model.apply({"params": sub}, x, deterministic=True), rtol=1e-5, atol=1e-5)


def test_attach_sync_strip_and_optimizer_labels():
  model, x, params = _mlp()
  gen = dependency.GateGenerator(dependency.execution_order(model, x, deterministic=True),
                                 input_size=4)
  full = dependency.attach(params, gen, gen.init(jax.random.key(0)))
  labels = param_groups.param_labels(full)
  assert {labels[dependency.GENERATOR_KEY][m][k] for m in labels[dependency.GENERATOR_KEY]
          for k in ("kernel", "bias")} == {"generator"}
  assert labels["fc1"]["log_alpha"] == "gates" and labels["fc1"]["kernel"] == "weights"
  stripped = dependency.model_params(full)
  assert set(stripped) == set(params)
  generated = gen.apply(full[dependency.GENERATOR_KEY])
  for name, v in generated.items():
    np.testing.assert_array_equal(stripped[name]["log_alpha"], v)
  # A generator update leaves stale leaves until synced.
  moved = {**full, dependency.GENERATOR_KEY: jax.tree.map(
      lambda a: a + 0.5, full[dependency.GENERATOR_KEY])}
  fresh = dependency.generated_params(moved, gen)
  assert not np.allclose(fresh["fc1"]["log_alpha"], moved["fc1"]["log_alpha"])
  np.testing.assert_array_equal(dependency.synced(moved, gen)["fc1"]["log_alpha"],
                                fresh["fc1"]["log_alpha"])
  assert dependency.model_params(params) is params  # nothing to strip
  assert dependency.generated_params(params, None) is params


# --- the trainer ----------------------------------------------------------------------
def _small_config(fake_dataset, **overrides):
  from tests.test_train import small_config  # pylint: disable=g-import-not-at-top
  return small_config(fake_dataset, **{"gate_source": "dep_forward",
                                       "dep_input_size": 8, **overrides})


def test_trainer_rejects_dep_l0_without_gates(fake_dataset):
  with pytest.raises(train_lib.ConfigError, match="gate_source"):
    train_lib.validate_config(_small_config(fake_dataset, gated=False), 1)
  with pytest.raises(train_lib.ConfigError, match="gate_source"):
    train_lib.validate_config(_small_config(fake_dataset, gate_source="dep"), 1)


def test_trainer_moves_the_generator_and_keeps_log_alphas_synced(fake_dataset):
  from tests.test_train import run_steps  # pylint: disable=g-import-not-at-top
  config = _small_config(fake_dataset, gate_source="dep_backward")
  task = train_lib.make_task(config, 100)
  assert task.generator is not None and task.generator.order == "backward"
  start = train_lib.init_state(config, task)
  state, metrics = run_steps(config, jax.devices()[:1], num_steps=2)
  host = train_lib.unreplicate(state.params)
  gp0, gp = start.params[dependency.GENERATOR_KEY], host[dependency.GENERATOR_KEY]
  assert all(not np.allclose(gp0[m]["kernel"], gp[m]["kernel"]) for m in gp)
  for name, v in task.generator.apply(gp).items():
    np.testing.assert_allclose(host[name]["log_alpha"], v, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(
      train_lib.unreplicate(metrics)["expected_density"],
      density.expected_density(dependency.model_params(host)), rtol=1e-5)
  report = reporting.gate_report(host, config)
  dense = reporting.gate_report(dependency.model_params(host), config)
  assert report == dense  # the generator's parameters are not counted as the model's


def test_dep_l0_one_vs_four_devices_same_result(fake_dataset):
  from tests.test_train import run_steps  # pylint: disable=g-import-not-at-top
  config = _small_config(fake_dataset)
  one, _ = run_steps(config, jax.devices()[:1])
  four, _ = run_steps(config, jax.devices()[:4])
  for a, b in zip(jax.tree.leaves(train_lib.unreplicate(one.params)),
                  jax.tree.leaves(train_lib.unreplicate(four.params))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5, rtol=0)


def test_dep_l0_run_resumes_bit_identically(fake_dataset, tmp_path, monkeypatch):
  from tests import test_train  # pylint: disable=g-import-not-at-top
  config = _small_config(fake_dataset, num_train_steps=6, checkpoint_every_steps=3,
                         log_every_steps=1)
  final = test_train.assert_resume_equals_uninterrupted_run(
      config, tmp_path, monkeypatch, killed_at=5)
  assert dependency.GENERATOR_KEY in final.params
  # eval.py's path: evaluation, reports and purge of the checkpoint (generator dropped).
  result = eval_lib.evaluate_checkpoint(config, str(tmp_path / "straight"),
                                         jax.devices()[:1])
  host = dependency.model_params(final.params)
  assert result["test_time_density"] == reporting.gate_report(host, config)[
      "test_time_density"]
  assert 0 < result["purged_params"] <= result["n_params_dense"]
  exported = eval_lib.export_purged(config, str(tmp_path / "straight"),
                                     str(tmp_path / "purged"))
  purged_model, purged = purge.load(exported)
  x = jnp.ones((2, 28, 28, 1))
  model = train_lib.build_model(config)
  np.testing.assert_allclose(
      purged_model.apply({"params": purged}, x),
      model.apply({"params": host}, x, deterministic=True), rtol=1e-4, atol=1e-5)
  summary = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text()
                       .splitlines()[-1])
  assert summary["eval"] and 0 < summary["expected_density"] <= 1


# --- configs ------------------------------------------------------------------------
@pytest.mark.parametrize("name,lambdas", [
    ("cifar10_vgg16_depl0", {"forward": 1e-6, "backward": 1e-6, "hc": 5e-7}),
    ("cifar10_resnet56_depl0", {"forward": 5e-7, "backward": 1e-6, "hc": 5e-7})])
def test_cifar_depl0_configs_turn_the_papers_lambda_into_a_density_penalty(
    name, lambdas, tmp_path):
  import importlib  # pylint: disable=g-import-not-at-top
  module = importlib.import_module(f"configs.{name}")
  config = module.get_config()
  assert (config.gate_source, config.method) == ("dep_forward", "constrained")
  config.fake_data, config.data_dir = True, str(tmp_path)
  gated = density.gated_layers(train_lib.abstract_params(config))
  n = sum(layer.num_sparsifiable for layer in gated.values())
  # The reference code's recipe and gated layers (VGG: all 13 convolutions; ResNet-56:
  # the stem and each of the 27 blocks' conv1).
  assert len(gated) == (13 if "vgg" in name else 1 + 27)
  assert (config.optimizer, config.lr_schedule, tuple(config.lr_milestones),
          config.num_epochs, config.batch_size, config.test_gate) == (
              "momentum", "step", (60, 120, 180, 240), 300, 128, "eq13")
  sources = {"forward": "dep_forward", "backward": "dep_backward", "hc": "independent"}
  for arm, lam in lambdas.items():
    config = module.get_config(f"{arm},penalized")
    assert (config.gate_source, config.method, config.density_mode) == (
        sources[arm], "penalized", "dep_l0")
    np.testing.assert_allclose(config.penalty, lam * n, rtol=1e-12)
  small = module.get_config("backward,runlocal")
  assert small.fake_data and small.gate_source == "dep_backward"
  assert small.num_train_steps <= 600
  with pytest.raises(ValueError, match="unknown config argument"):
    module.get_config("sideways")


# --- the Dep-L0 cost (density_mode="dep_l0") ------------------------------------------
@pytest.mark.parametrize("name", ["cifar10_vgg16_depl0", "cifar10_resnet56_depl0"])
def test_dep_l0_cost_is_expected_open_inputs_times_outputs_along_the_call_order(
    name, tmp_path):
  """Against numpy: per gated conv ``k^2 E[in] E[out] + E[out]`` (the BN shift shares
  the channel's gate), E[in] the previous gated layer's E[out] (the image's channels
  for the first), over the dense count."""
  import importlib  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{name}").get_config("hc,runlocal")
  config.data_dir, config.density_mode = str(tmp_path), "dep_l0"
  task = train_lib.make_task(config, 10)
  params = dict(train_lib.init_state(config, task).params)
  order = train_lib.gate_order(config)
  rng = np.random.default_rng(0)
  log_alphas = {n: rng.normal(0.0, 2.0, shape).astype(np.float32) for n, shape in order}
  params = dependency._replace_log_alphas(params, log_alphas)  # pylint: disable=protected-access
  active, dense, e_in, per_layer = 0.0, 0.0, 3.0, {}
  for n, _ in order:
    node = params
    for key in n.split("/"):
      node = node[key]
    kh, kw, c_in, c_out = node["kernel"].shape
    e_out = _expected_open(log_alphas[n]).sum()
    a = kh * kw * e_in * e_out + e_out
    per_layer[n] = a / (kh * kw * c_in * c_out + c_out)
    active, dense, e_in = active + a, dense + kh * kw * c_in * c_out + c_out, e_out
  np.testing.assert_allclose(task.constraints(params), [active / dense], rtol=1e-5)
  config.constraint = "layerwise"
  values = train_lib.constraint_fn(config)(params)
  np.testing.assert_allclose(values, [per_layer[n] for n in task.layer_names], rtol=1e-5)
  if "resnet" in name:  # the stem is called first but sorts last: order matters here
    assert [n for n, _ in order] != list(task.layer_names)


def test_generator_feeds_the_path_api_and_gradients_reach_it():
  from l0jax import gating  # pylint: disable=g-import-not-at-top
  params = {"enc": {"kernel": jnp.ones((4, 6))}, "dec": {"kernel": jnp.ones((6, 3))}}
  specs = [gating.GateSpec(r"(enc|dec)/kernel", axis=-1)]
  shapes = gating.init_gates(jax.random.key(0), params, specs)
  gen = dependency.GateGenerator((("enc/kernel", shapes["enc/kernel"].shape),
                                  ("dec/kernel", shapes["dec/kernel"].shape)),
                                 order="backward", input_size=5, droprate_init=0.5)
  gp = gen.init(jax.random.key(1))

  def f(gp):
    gated = gating.apply_gates(params, gen.apply(gp), specs, key=jax.random.key(2))
    return jnp.sum(jnp.ones((1, 4)) @ gated["enc"]["kernel"] @ gated["dec"]["kernel"])

  grads = jax.grad(f)(gp)
  assert all(np.any(np.asarray(grads[m]["kernel"]) != 0) for m in grads)


def test_block_output_gates_are_a_cifar_resnet_setting(fake_dataset):
  with pytest.raises(train_lib.ConfigError, match="gate_block_outputs.*cifar_resnet"):
    train_lib.validate_config(_small_config(fake_dataset, gate_block_outputs=False), 1)


def test_trainer_rejects_dep_l0_with_unstructured_gates(fake_dataset):
  with pytest.raises(train_lib.ConfigError, match="structured gates"):
    train_lib.validate_config(_small_config(fake_dataset, unstructured=True), 1)
