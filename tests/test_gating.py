"""The path API (l0jax.gating) on Linen dicts, NNX states, Equinox modules, plain dicts."""

import equinox as eqx
import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l0jax import density, gates, gating
from l0jax.gating import GateSpec

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


def np_median_gate(a):
  s = 1 / (1 + np.exp(-np.asarray(a, np.float64) / BETA))
  return np.clip(s * (ZETA - GAMMA) + GAMMA, 0, 1)


def np_from_uniform(u, a):
  u, a = np.asarray(u, np.float64), np.asarray(a, np.float64)
  s = 1 / (1 + np.exp(-(np.log(u) - np.log(1 - u) + a) / BETA))
  return np.clip(s * (ZETA - GAMMA) + GAMMA, 0, 1)


class CNN(nn.Module):
  """The Flax examples' MNIST CNN, as its users write it (nothing l0jax in it)."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.avg_pool(x, (2, 2), (2, 2))
    x = nn.relu(nn.Conv(6, (3, 3))(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(8)(x))
    return nn.Dense(3)(x)


CNN_SPECS = (GateSpec(r"Conv_\d/kernel", axis=-1, shared={"bias": -1}),
             GateSpec(r"Dense_0/kernel", axis=0))
X = jnp.asarray(np.random.default_rng(0).normal(size=(2, 8, 8, 1)), jnp.float32)


def cnn_params():
  return CNN().init(jax.random.key(0), X)["params"]


def test_match_finds_the_gated_leaves_and_group_sizes():
  params = cnn_params()
  matched = gating.match(params, CNN_SPECS)
  assert list(matched) == ["Conv_0/kernel", "Conv_1/kernel", "Dense_0/kernel"]
  conv0, conv1, dense = matched.values()
  assert conv0.gate_shape == (4,) and conv0.shared == (("Conv_0/bias", (0,)),)
  assert conv0.group_size == 3 * 3 * 1 + 1 and conv1.group_size == 3 * 3 * 4 + 1
  assert dense.gate_shape == (4 * 4 * 6,) and dense.group_size == 8
  layers = density.gated_layers(params, CNN_SPECS,
                                gating.init_gates(jax.random.key(1), params, CNN_SPECS))
  assert {n: l.num_sparsifiable for n, l in layers.items()} == {
      "Conv_0/kernel": 4 * 10, "Conv_1/kernel": 6 * 37, "Dense_0/kernel": 96 * 8}


def test_init_gates_shapes_and_droprates():
  params = cnn_params()
  specs = CNN_SPECS[:1] + (GateSpec(r"Dense_0/kernel", 0, droprate_init=0.2),)
  la = gating.init_gates(jax.random.key(1), params, specs, droprate_init=0.5)
  assert {k: v.shape for k, v in la.items()} == {
      "Conv_0/kernel": (4,), "Conv_1/kernel": (6,), "Dense_0/kernel": (96,)}
  np.testing.assert_allclose(np.mean(la["Dense_0/kernel"]), np.log(0.8 / 0.2), atol=5e-3)
  np.testing.assert_allclose(np.mean(la["Conv_1/kernel"]), 0.0, atol=2e-2)
  np.testing.assert_array_equal(  # leaf k draws from fold_in(key, k)
      la["Conv_1/kernel"],
      gates.init_log_alpha(jax.random.fold_in(jax.random.key(1), 1), (6,), 0.5))


def test_apply_gates_test_time_scales_slices_and_shared_params():
  params = cnn_params()
  la = {"Conv_0/kernel": jnp.array([5.0, -5.0, 0.3, 40.0]),
        "Conv_1/kernel": jnp.linspace(-2.0, 2.0, 6),
        "Dense_0/kernel": jnp.linspace(-3.0, 3.0, 96)}
  gated = gating.apply_gates(params, la, CNN_SPECS, deterministic=True)
  z = {k: np_median_gate(v) for k, v in la.items()}
  np.testing.assert_allclose(gated["Conv_0"]["kernel"],
                             np.asarray(params["Conv_0"]["kernel"]) * z["Conv_0/kernel"],
                             rtol=1e-6)
  np.testing.assert_allclose(gated["Conv_0"]["bias"],
                             np.asarray(params["Conv_0"]["bias"]) * z["Conv_0/kernel"],
                             rtol=1e-6)
  np.testing.assert_allclose(
      gated["Dense_0"]["kernel"],
      np.asarray(params["Dense_0"]["kernel"]) * z["Dense_0/kernel"][:, None],
      rtol=1e-5, atol=1e-8)
  np.testing.assert_array_equal(gated["Dense_1"]["kernel"], params["Dense_1"]["kernel"])
  np.testing.assert_array_equal(gated["Dense_0"]["bias"], params["Dense_0"]["bias"])
  # A closed channel's output is exactly zero, bias included: the gated model computes
  # conv(x, k * z) + b * z = (conv(x, k) + b) * z.
  assert z["Conv_0/kernel"][1] == 0.0
  conv0 = nn.Conv(4, (3, 3)).apply({"params": gated["Conv_0"]}, X)
  np.testing.assert_array_equal(conv0[..., 1], 0.0)


def test_apply_gates_training_noise_order_and_values():
  params = cnn_params()
  la = gating.init_gates(jax.random.key(1), params, CNN_SPECS)
  key = jax.random.key(7)
  gated = jax.jit(lambda p, a: gating.apply_gates(p, a, CNN_SPECS, key=key))(params, la)
  # One flat jax.random.uniform(key, (4 + 6 + 96,)) split in natural path order.
  u = np.asarray(jax.random.uniform(key, (106,)))
  pieces = {"Conv_0/kernel": u[:4], "Conv_1/kernel": u[4:10], "Dense_0/kernel": u[10:]}
  z = {k: np_from_uniform(pieces[k], la[k]) for k in pieces}
  np.testing.assert_allclose(gated["Conv_1"]["kernel"],
                             np.asarray(params["Conv_1"]["kernel"]) * z["Conv_1/kernel"],
                             rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(
      gated["Dense_0"]["kernel"],
      np.asarray(params["Dense_0"]["kernel"]) * z["Dense_0/kernel"][:, None],
      rtol=1e-5, atol=1e-7)
  other = gating.apply_gates(params, la, CNN_SPECS, key=jax.random.key(8))
  assert not np.allclose(other["Dense_0"]["kernel"], gated["Dense_0"]["kernel"])
  with pytest.raises(ValueError, match="key="):
    gating.apply_gates(params, la, CNN_SPECS)


def test_gradients_reach_log_alphas_and_params():
  params = cnn_params()
  la = gating.init_gates(jax.random.key(1), params, CNN_SPECS)

  def loss(params, la):
    gated = gating.apply_gates(params, la, CNN_SPECS, key=jax.random.key(3))
    return jnp.sum(CNN().apply({"params": gated}, X) ** 2)

  g_params, g_la = jax.grad(loss, (0, 1))(params, la)
  assert all(np.any(np.asarray(v) != 0) for v in g_la.values())
  assert np.any(np.asarray(g_params["Conv_0"]["kernel"]) != 0)
  # d loss / d log_alpha of one dense input = sum over its row of dL/dW * W * dz/da.
  u = np.asarray(jax.random.uniform(jax.random.key(3), (106,)))[10:]
  a = np.asarray(la["Dense_0/kernel"], np.float64)
  eps = 1e-4
  dz = (np_from_uniform(u, a + eps) - np_from_uniform(u, a - eps)) / (2 * eps)
  gated = gating.apply_gates(params, la, CNN_SPECS, key=jax.random.key(3))
  g_gated = jax.grad(lambda p: jnp.sum(CNN().apply({"params": p}, X) ** 2))(gated)
  want = (np.asarray(g_gated["Dense_0"]["kernel"], np.float64)
          * np.asarray(params["Dense_0"]["kernel"])).sum(1) * dz
  np.testing.assert_allclose(g_la["Dense_0/kernel"], want, rtol=2e-3, atol=1e-6)


def test_nnx_state_paths_drop_the_variable_value():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
      self.bn = nnx.BatchNorm(4, rngs=rngs)
      self.fc = nnx.Linear(4 * 8 * 8, 3, rngs=rngs)

    def __call__(self, x):
      x = nnx.relu(self.bn(self.conv(x)))
      return self.fc(x.reshape(x.shape[0], -1))

  model = Net(nnx.Rngs(0))
  model.eval()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  specs = [GateSpec("conv/kernel", -1, shared={"bias": -1, "bn/scale": -1,
                                               "bn/bias": -1})]
  matched = gating.match(params, specs)
  assert list(matched) == ["conv/kernel"]
  assert [p for p, _ in matched["conv/kernel"].shared] == ["conv/bias", "bn/scale",
                                                             "bn/bias"]
  la = {"conv/kernel": jnp.array([9.0, -9.0, 9.0, -9.0])}
  gated = gating.apply_gates(params, la, specs, deterministic=True)
  assert isinstance(gated, nnx.State)
  out_model = nnx.merge(graphdef, gated, rest)
  y = out_model.bn(out_model.conv(X))
  np.testing.assert_array_equal(np.asarray(y)[..., 1], 0.0)  # closed: BN adds nothing
  assert np.all(np.asarray(y)[..., 0] != 0)
  masks = gating.keep_masks(params, la, specs)
  np.testing.assert_array_equal(masks["bn"]["scale"][...], [True, False, True, False])
  np.testing.assert_array_equal(masks["fc"]["kernel"][...], True)


def test_equinox_module():
  mlp = eqx.nn.MLP(6, 2, 5, 2, key=jax.random.key(0))
  # Equinox's Linear weight is (out, in): input units are axis 1.
  specs = [GateSpec(r"layers/(\d)/weight", axis=1)]
  la = gating.init_gates(jax.random.key(1), mlp, specs)
  assert {k: v.shape for k, v in la.items()} == {
      "layers/0/weight": (6,), "layers/1/weight": (5,), "layers/2/weight": (5,)}
  la = {k: jnp.where(jnp.arange(v.shape[0]) % 2 == 0, 30.0, -30.0) for k, v in la.items()}
  gated = gating.apply_gates(mlp, la, specs, deterministic=True)
  assert isinstance(gated, eqx.nn.MLP)
  x = jnp.asarray(np.random.default_rng(1).normal(size=6), jnp.float32)
  keep = np.arange(6) % 2 == 0
  first = np.asarray(mlp.layers[0].weight) * keep[None, :]
  np.testing.assert_allclose(gated.layers[0].weight, first, rtol=1e-6)
  assert gated(x).shape == (2,)
  layers = density.gated_layers(mlp, specs, la)
  np.testing.assert_allclose(density.density_report(layers).model_test_time,
                             (3 * 5 + 3 * 5 + 3 * 2) / (6 * 5 + 5 * 5 + 5 * 2))


def test_stacked_layers_get_gates_per_layer():
  params = {"block": {"kernel": jnp.ones((3, 4, 5)), "bias": jnp.ones((3, 5))}}
  specs = [GateSpec("block/kernel", axis=(0, 1))]  # input units of each stacked layer
  la = {"block/kernel": jnp.array([[9.0, -9, 9, 9], [-9, -9, 9, -9], [9, 9, 9, 9]])}
  gated = gating.apply_gates(params, la, specs, deterministic=True)
  open_ = np.asarray(la["block/kernel"]) > 0
  np.testing.assert_allclose(gated["block"]["kernel"],
                             np.broadcast_to(open_[:, :, None], (3, 4, 5)) * 1.0)
  layers = density.gated_layers(params, specs, la)
  assert layers["block/kernel"].group_size == 5
  np.testing.assert_allclose(density.density_report(layers).test_time["block/kernel"],
                             open_.mean())
  out_specs = [GateSpec("block/kernel", axis=(0, 2), shared={"bias": (0, 1)})]
  assert gating.match(params, out_specs)["block/kernel"].group_size == 4 + 1


def test_unstructured_and_output_gates_on_a_square_kernel():
  params = {"w": jnp.arange(4.0).reshape(2, 2) + 1}
  for axis, want in ((None, [[1.0, 0.0], [3.0, 4.0]]), (-1, [[1.0, 0.0], [3.0, 0.0]]),
                     (0, [[1.0, 2.0], [0.0, 0.0]])):
    la = ({"w": jnp.array([[9.0, -9.0], [9.0, 9.0]])} if axis is None
          else {"w": jnp.array([9.0, -9.0])})
    gated = gating.apply_gates(params, la, [GateSpec("w", axis)], deterministic=True)
    np.testing.assert_allclose(gated["w"], want)


def test_spec_errors_name_the_paths():
  params = cnn_params()
  with pytest.raises(gating.SpecError, match="matches no parameter.*Conv_0/kernel"):
    gating.match(params, [GateSpec("conv/kernel")])
  with pytest.raises(gating.SpecError, match="gated twice"):
    gating.match(params, [GateSpec(r"Conv_0/kernel"), GateSpec(r"Conv_\d/kernel")])
  with pytest.raises(gating.SpecError, match="does not exist"):
    gating.match(params, [GateSpec(r"Conv_0/kernel", shared={"scale": -1})])
  with pytest.raises(gating.SpecError, match="shape"):
    gating.match(params, [GateSpec(r"Dense_0/kernel", 0, shared={"bias": -1})])
  with pytest.raises(gating.SpecError, match="out of range"):
    gating.match(params, [GateSpec(r"Dense_0/kernel", 2)])
  with pytest.raises(gating.SpecError, match="not a regex"):
    GateSpec("(")
  la = gating.init_gates(jax.random.key(1), params, CNN_SPECS)
  with pytest.raises(gating.SpecError, match="one entry per gated parameter"):
    gating.apply_gates(params, {"Conv_0/kernel": la["Conv_0/kernel"]}, CNN_SPECS,
                       deterministic=True)
  bad = dict(la, **{"Conv_0/kernel": jnp.zeros(5)})
  with pytest.raises(gating.SpecError, match=r"has shape \(5,\)"):
    gating.apply_gates(params, bad, CNN_SPECS, deterministic=True)
  from l0jax.errors import UserError
  assert issubclass(gating.SpecError, UserError)


def test_backreference_templates_for_shared_params():
  params = {"stage1": {"conv2": {"kernel": jnp.ones((1, 1, 2, 3))},
                       "bn2": {"scale": jnp.ones(3), "bias": jnp.ones(3)}}}
  spec = GateSpec(r"(.*)/conv(\d)/kernel", -1,
                  shared={r"\1/bn\2/scale": -1, r"\1/bn\2/bias": -1})
  g = gating.match(params, [spec])["stage1/conv2/kernel"]
  assert [p for p, _ in g.shared] == ["stage1/bn2/scale", "stage1/bn2/bias"]
  assert g.group_size == 2 + 2
