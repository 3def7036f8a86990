"""Compaction of the channel-gated CNNs: purged == gated at test time, counts, export."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l0jax import density, models, purge

KEYS = {"params": jax.random.key(0), "gates": jax.random.key(1)}
CASES = {
    "wrn": (models.WideResNet(depth=16, widen_factor=2, width_scale=0.25), (3, 16, 16, 3)),
    "resnet18": (models.ResNet(depth=18, num_classes=7, width_scale=0.0625), (3, 32, 32, 3)),
    "resnet50": (models.ResNet(depth=50, num_classes=7, width_scale=0.0625), (3, 32, 32, 3)),
    "cifar_resnet": (models.CifarResNet(depth=8, width_scale=0.5), (3, 12, 12, 1)),
    # Dep-L0's ResNet: only the stem and each block's conv1 gated.
    "cifar_resnet_conv1": (models.CifarResNet(depth=8, width_scale=0.5,
                                              gate_block_outputs=False), (3, 12, 12, 1)),
    "vgg": (models.VGG(plan=models.vgg.PLANS[11], width_scale=0.0625), (3, 32, 32, 3)),
}


def _random_variables(model, shape, seed=0, all_closed=None):
  """Gates closed, fractional and open at random (or one layer entirely closed), and
  non-trivial BatchNorm statistics."""
  v = model.init(KEYS, jnp.zeros(shape), deterministic=True)
  rng = np.random.default_rng(seed)

  def log_alpha(path, a):
    if path[-1].key != "log_alpha":
      return a
    name = "/".join(p.key for p in path[:-1])
    if name == all_closed:
      return jnp.full_like(a, -30.0)
    return jnp.asarray(rng.normal(0.0, 3.0, a.shape), jnp.float32)

  params = jax.tree_util.tree_map_with_path(log_alpha, v["params"])
  stats = jax.tree.map(lambda a: a + jnp.asarray(rng.uniform(0, 0.5, a.shape), a.dtype),
                       v["batch_stats"])
  return {"params": params, "batch_stats": stats}


@pytest.mark.parametrize("name", sorted(CASES))
def test_purged_model_computes_the_gated_model_at_test_time(name):
  model, shape = CASES[name]
  v = _random_variables(model, shape)
  x = jax.random.normal(jax.random.key(3), shape)
  small, sv = purge.purge(model, v)
  assert not small.gated and small.keep
  assert not any(p.endswith("log_alpha") for p in purge._path_dict(sv["params"]))
  np.testing.assert_allclose(small.apply(sv, x, deterministic=True),
                             model.apply(v, x, deterministic=True), atol=2e-5, rtol=1e-5)
  # Fewer channels, fewer MACs: kept channels are exactly the open test-time gates.
  c = purge.counts(model, v, input_shape=shape[1:])
  assert c["purged_macs"] < c["dense_macs"] and c["purged_params"] < c["dense_params"]
  for layer, kept in dict(small.keep).items():
    la = density.gated_layers(v["params"])[layer].log_alpha
    assert len(kept) == int(np.sum(np.asarray(jax.jit(purge.gates.deterministic_gate)(la)) > 0))


def test_a_layer_closed_entirely_still_gives_the_gated_output():
  model, shape = CASES["wrn"]
  v = _random_variables(model, shape, all_closed="stage2_block1/conv1")
  x = jax.random.normal(jax.random.key(4), shape)
  small, sv = purge.purge(model, v)
  assert dict(small.keep)["stage2_block1/conv1"] == ()
  np.testing.assert_allclose(small.apply(sv, x, deterministic=True),
                             model.apply(v, x, deterministic=True), atol=2e-5)


def _independent_macs(model, variables, shape):
  """Per-example MACs summed from the purged parameter shapes (an independent count:
  spatial sizes worked out by hand for the CIFAR ResNet-8 on 12x12)."""
  flat = purge._path_dict(variables["params"])
  total = 0
  for path, kernel in flat.items():
    if not path.endswith("kernel"):
      continue
    if kernel.ndim == 2:
      total += kernel.size
      continue
    stage = 1 if path.startswith(("stem", "stage1")) else int(path[5])
    side = {1: 12, 2: 6, 3: 3}[stage]
    total += side * side * kernel.size
  return total


def test_counts_macs_match_an_independent_count():
  model, shape = CASES["cifar_resnet"]
  v = _random_variables(model, shape, seed=2)
  small, sv = purge.purge(model, v)
  c = purge.counts(model, v, input_shape=shape[1:])
  assert c["purged_macs"] == _independent_macs(small, sv, shape)
  dense = model.init(KEYS, jnp.zeros(shape), deterministic=True)
  assert c["dense_macs"] == _independent_macs(model, dense, shape)
  assert c["architecture"].startswith("stem: ")


@pytest.mark.parametrize("name", ["resnet18", "vgg"])
def test_export_round_trip(tmp_path, name):
  model, shape = CASES[name]
  v = _random_variables(model, shape, seed=1)
  small, sv = purge.purge(model, v)
  path = purge.save(tmp_path / "export", small, sv)
  loaded, lv = purge.load(path)
  x = jax.random.normal(jax.random.key(5), shape)
  np.testing.assert_array_equal(loaded.apply(lv, x, deterministic=True),
                                small.apply(sv, x, deterministic=True))
  assert type(loaded) is type(model) and loaded.keep == small.keep


@pytest.mark.parametrize("name", sorted(CASES))
def test_test_time_macs_of_the_graph_are_the_purged_models_macs(name):
  # The MACs graph counts a closed channel out of the layer reading it and keeps
  # residual streams whole: exactly what compaction builds.
  model, shape = CASES[name]
  v = _random_variables(model, shape, seed=5)
  graph = purge.macs_graph(model, v["params"], shape[1:])
  c = purge.counts(model, v, input_shape=shape[1:])
  assert sum(op.macs for op in graph.values()) == c["dense_macs"]
  got = float(density.macs_density(graph, v["params"], "median")) * c["dense_macs"]
  np.testing.assert_allclose(got, c["purged_macs"], rtol=1e-5)


def test_expected_macs_of_a_block_are_open_in_times_open_out_by_hand():
  model, shape = CASES["cifar_resnet"]
  v = _random_variables(model, shape, seed=6)
  graph = purge.macs_graph(model, v["params"], shape[1:])
  p = {n: 1.0 / (1.0 + np.exp(-(np.asarray(l.log_alpha, np.float64)
                                - purge.gates.BETA * np.log(-purge.gates.GAMMA
                                                            / purge.gates.ZETA))))
       for n, l in density.gated_layers(v["params"]).items()}
  got = density.layer_macs(graph, v["params"])
  # stage1_block1: 12x12 positions, 3x3 kernels; conv1 reads the whole stream (stem
  # output scattered back: 8 channels), conv2 reads conv1's channels.
  c1, c2 = p["stage1_block1/conv1"], p["stage1_block1/conv2"]
  np.testing.assert_allclose(got["stage1_block1/conv1"], 144 * 9 * 8 * c1.sum(), rtol=1e-5)
  np.testing.assert_allclose(got["stage1_block1/conv2"], 144 * 9 * c1.sum() * c2.sum(),
                             rtol=1e-5)
  np.testing.assert_allclose(got["stem"], 144 * 9 * 1 * p["stem"].sum(), rtol=1e-5)


def test_cifar_resnet_without_block_output_gates_gates_the_stem_and_each_conv1():
  model, shape = CASES["cifar_resnet_conv1"]
  v = model.init(KEYS, jnp.zeros(shape), deterministic=True)
  assert sorted(density.gated_layers(v["params"])) == [
      "stage1_block1/conv1", "stage2_block1/conv1", "stage3_block1/conv1", "stem"]
  # conv2 is the same conv + BN without gates: the all-gates model with the same
  # weights and every conv2 gate fully open computes the same function.
  full, _ = CASES["cifar_resnet"]
  fv = full.init(KEYS, jnp.zeros(shape), deterministic=True)
  flat, sub = purge._path_dict(fv["params"]), purge._path_dict(v["params"])
  for path in flat:
    if path.endswith("conv2/log_alpha"):
      flat[path] = jnp.full_like(flat[path], 30.0)
    else:
      flat[path] = sub[path]
  x = jax.random.normal(jax.random.key(7), shape)
  np.testing.assert_allclose(
      full.apply({"params": purge._nest(flat), "batch_stats": v["batch_stats"]}, x,
                 deterministic=True),
      model.apply(v, x, deterministic=True), atol=1e-5, rtol=1e-5)
