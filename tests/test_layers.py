"""L0Dense and L0Conv against plain Flax layers and the gate formulas."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l0jax import gates
from l0jax.layers import L0Conv, L0Dense

KEYS = {"params": jax.random.key(0), "gates": jax.random.key(1)}


def _with_log_alpha(variables, value):
  """Sets every log_alpha leaf to ``value``."""
  def set_leaf(path, leaf):
    name = getattr(path[-1], "key", None)
    return jnp.full_like(leaf, value) if name == "log_alpha" else leaf
  return jax.tree_util.tree_map_with_path(set_leaf, variables)


def _init(layer, x):
  return layer.init(KEYS, x, deterministic=False)


# ---------------------------------------------------------------- shapes, params
@pytest.mark.parametrize("unstructured", [False, True])
def test_dense_shapes_and_params(unstructured):
  layer = L0Dense(7, unstructured=unstructured)
  x = jnp.ones((4, 5))
  variables = _init(layer, x)
  p = variables["params"]
  assert p["kernel"].shape == (5, 7) and p["bias"].shape == (7,)
  assert p["log_alpha"].shape == ((5, 7) if unstructured else (5,))
  assert layer.apply(variables, x, rngs={"gates": KEYS["gates"]},
                     deterministic=False).shape == (4, 7)
  assert layer.apply(variables, x, deterministic=True).shape == (4, 7)
  x3 = jnp.ones((4, 3, 5))
  assert layer.apply(variables, x3, rngs={"gates": KEYS["gates"]},
                     deterministic=False).shape == (4, 3, 7)


@pytest.mark.parametrize("unstructured", [False, True])
def test_conv_shapes_and_params(unstructured):
  layer = L0Conv(6, (3, 3), padding="VALID", unstructured=unstructured)
  x = jnp.ones((2, 8, 8, 3))
  variables = _init(layer, x)
  p = variables["params"]
  assert p["kernel"].shape == (3, 3, 3, 6)
  assert p["log_alpha"].shape == ((3, 3, 3, 6) if unstructured else (6,))
  out = layer.apply(variables, x, rngs={"gates": KEYS["gates"]}, deterministic=False)
  assert out.shape == (2, 6, 6, 6)
  with pytest.raises(ValueError, match="rank"):
    layer.apply(variables, jnp.ones((8, 8, 3)), deterministic=True)


def test_log_alpha_initialised_from_droprate():
  p = _init(L0Dense(3, droprate_init=0.2), jnp.ones((1, 4000)))["params"]
  np.testing.assert_allclose(np.mean(p["log_alpha"]), np.log(0.8 / 0.2), atol=1e-3)
  with pytest.raises(ValueError, match="droprate"):
    _init(L0Dense(3, droprate_init=1.0), jnp.ones((1, 4)))


def test_rescale_init_scales_kernel():
  x = jnp.ones((1, 50))
  plain = _init(L0Dense(40, droprate_init=0.5), x)["params"]["kernel"]
  scaled = _init(L0Dense(40, droprate_init=0.5, rescale_init=True), x)
  np.testing.assert_allclose(scaled["params"]["kernel"], 2.0 * plain, rtol=1e-6)


# ---------------------------------------------------------------- open gates == plain
@pytest.mark.parametrize("unstructured", [False, True])
@pytest.mark.parametrize("deterministic", [False, True])
def test_open_dense_equals_nn_dense(unstructured, deterministic):
  x = jax.random.normal(jax.random.key(5), (6, 5))
  layer = L0Dense(4, unstructured=unstructured)
  variables = _with_log_alpha(_init(layer, x), 1e3)
  got = layer.apply(variables, x, rngs={"gates": KEYS["gates"]},
                    deterministic=deterministic)
  p = variables["params"]
  want = nn.Dense(4).apply({"params": {"kernel": p["kernel"], "bias": p["bias"]}}, x)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("unstructured,deterministic,padding", [
    (False, False, "VALID"), (False, True, "SAME"), (True, False, "SAME"),
    (True, True, "VALID")])
def test_open_conv_equals_nn_conv(unstructured, deterministic, padding):
  x = jax.random.normal(jax.random.key(5), (2, 7, 7, 3))
  layer = L0Conv(4, (3, 3), padding=padding, unstructured=unstructured)
  variables = _with_log_alpha(_init(layer, x), 1e3)
  got = layer.apply(variables, x, rngs={"gates": KEYS["gates"]},
                    deterministic=deterministic)
  p = variables["params"]
  want = nn.Conv(4, (3, 3), padding=padding).apply(
      {"params": {"kernel": p["kernel"], "bias": p["bias"]}}, x)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_conv_strides_and_dilation_match_nn_conv():
  x = jax.random.normal(jax.random.key(5), (2, 9, 9, 2))
  layer = L0Conv(3, (3, 3), strides=2, kernel_dilation=2, padding="SAME")
  variables = _with_log_alpha(_init(layer, x), 1e3)
  p = variables["params"]
  want = nn.Conv(3, (3, 3), strides=2, kernel_dilation=2, padding="SAME").apply(
      {"params": {"kernel": p["kernel"], "bias": p["bias"]}}, x)
  np.testing.assert_allclose(layer.apply(variables, x, deterministic=True), want,
                             rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- closed gates
@pytest.mark.parametrize("deterministic", [False, True])
def test_closed_dense_gates_give_exact_zeros(deterministic):
  x = jax.random.normal(jax.random.key(5), (6, 5))
  layer = L0Dense(4, bias_init=nn.initializers.ones)
  variables = _with_log_alpha(_init(layer, x), -1e3)
  out = layer.apply(variables, x, rngs={"gates": KEYS["gates"]},
                    deterministic=deterministic)
  # All inputs closed: only the (ungated) bias remains, exactly.
  np.testing.assert_array_equal(out, np.ones((6, 4)))


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("per_example", [False, True])
def test_closed_conv_channel_and_its_bias_contribute_nothing(deterministic,
                                                            per_example):
  x = jax.random.normal(jax.random.key(5), (3, 6, 6, 2))
  layer = L0Conv(4, (3, 3), bias_init=nn.initializers.constant(5.0),
                 sample_per_example=per_example)
  variables = _init(layer, x)
  log_alpha = jnp.array([1e3, -1e3, 1e3, -1e3])
  variables = jax.tree.map(lambda v: v, variables)
  variables["params"]["log_alpha"] = log_alpha
  out = np.asarray(layer.apply(variables, x, rngs={"gates": KEYS["gates"]},
                               deterministic=deterministic))
  np.testing.assert_array_equal(out[..., 1], 0.0)
  np.testing.assert_array_equal(out[..., 3], 0.0)
  assert np.all(out[..., 0] != 0)


# ---------------------------------------------------------------- noise
def _mid_variables(layer, x):
  return _with_log_alpha(_init(layer, x), 0.0)


def test_dense_per_example_noise_differs_per_batch_noise_does_not():
  x = jnp.ones((8, 5))  # identical examples: outputs differ only through the gates
  rngs = {"gates": jax.random.key(9)}
  per_example = L0Dense(3)
  out = per_example.apply(_mid_variables(per_example, x), x, rngs=rngs,
                          deterministic=False)
  assert not np.allclose(out[0], out[1])
  per_batch = L0Dense(3, sample_per_example=False)
  out = per_batch.apply(_mid_variables(per_batch, x), x, rngs=rngs,
                        deterministic=False)
  np.testing.assert_allclose(out, np.broadcast_to(out[0], out.shape), rtol=1e-6)


@pytest.mark.parametrize("unstructured", [False, True])
def test_conv_per_example_noise_differs_per_batch_noise_does_not(unstructured):
  x = jnp.ones((4, 5, 5, 2))
  rngs = {"gates": jax.random.key(9)}
  layer = L0Conv(3, (3, 3), unstructured=unstructured)
  out = layer.apply(_mid_variables(layer, x), x, rngs=rngs, deterministic=False)
  assert not np.allclose(out[0], out[1])
  layer = L0Conv(3, (3, 3), unstructured=unstructured, sample_per_example=False)
  out = layer.apply(_mid_variables(layer, x), x, rngs=rngs, deterministic=False)
  np.testing.assert_allclose(out, np.broadcast_to(out[0], out.shape), rtol=1e-5)


def test_unstructured_dense_per_example_matches_explicit_formula():
  x = jax.random.normal(jax.random.key(2), (3, 4))
  layer = L0Dense(2, unstructured=True)
  variables = _mid_variables(layer, x)
  key = jax.random.key(11)
  out = layer.apply(variables, x, rngs={"gates": key}, deterministic=False)
  p = variables["params"]
  # The layer draws its noise from the "gates" stream; recover the same draw.
  z = layer.apply(variables, x, rngs={"gates": key}, deterministic=False,
                  method=lambda m, x, deterministic: m._gates(
                      m.variables["params"]["log_alpha"], False, x.shape[:1]))
  want = np.einsum("bi,bio->bo", x, p["kernel"] * z) + p["bias"]
  np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)


def test_training_gates_use_the_gates_rng_stream():
  x = jnp.ones((2, 5))
  layer = L0Dense(3)
  variables = _mid_variables(layer, x)
  with pytest.raises(Exception, match="gates"):
    layer.apply(variables, x, deterministic=False)
  a = layer.apply(variables, x, rngs={"gates": jax.random.key(1)}, deterministic=False)
  b = layer.apply(variables, x, rngs={"gates": jax.random.key(2)}, deterministic=False)
  assert not np.allclose(a, b)


# ---------------------------------------------------------------- test-time gate
@pytest.mark.parametrize("mode", ["median", "eq13"])
def test_deterministic_mode_needs_no_rng_and_uses_test_gate(mode):
  x = jax.random.normal(jax.random.key(3), (4, 5))
  layer = L0Dense(3, test_gate=mode, deterministic=True)
  variables = layer.init({"params": jax.random.key(0)}, x)
  p = variables["params"]
  p["log_alpha"] = jnp.linspace(-2.0, 2.0, 5)
  out = layer.apply(variables, x)
  z = gates.deterministic_gate(p["log_alpha"], mode)
  np.testing.assert_allclose(out, (x * z) @ p["kernel"] + p["bias"], rtol=1e-5,
                             atol=1e-6)


def test_bad_test_gate_mode_raises():
  with pytest.raises(ValueError, match="median"):
    L0Dense(3, test_gate="mean").init(KEYS, jnp.ones((1, 2)), deterministic=True)


def test_bfloat16_layer_keeps_dtype():
  x = jnp.ones((2, 4), jnp.bfloat16)
  layer = L0Dense(3, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  variables = _init(layer, x)
  out = layer.apply(variables, x, rngs={"gates": KEYS["gates"]}, deterministic=False)
  assert out.dtype == jnp.bfloat16
  assert variables["params"]["log_alpha"].dtype == jnp.bfloat16


def test_gradients_reach_log_alpha():
  x = jax.random.normal(jax.random.key(3), (8, 5))
  layer = L0Dense(3)
  variables = _mid_variables(layer, x)
  loss = lambda v: jnp.sum(layer.apply(v, x, rngs={"gates": KEYS["gates"]},
                                       deterministic=False) ** 2)
  g = jax.grad(loss)(variables)["params"]
  assert np.all(np.isfinite(g["log_alpha"])) and np.any(g["log_alpha"] != 0)


def test_default_kernel_init_equals_flax_lecun_normal():
  from l0jax.layers import lecun_normal
  key = jax.random.key(4)
  for shape in [(5, 7), (3, 3, 2, 4)]:
    np.testing.assert_allclose(lecun_normal(key, shape),
                               nn.initializers.lecun_normal()(key, shape),
                               rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- supplied noise
def test_supplied_noise_gives_the_formula_and_is_checked():
  from l0jax import layers
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
  layer = L0Dense(3)
  params = _init(layer, x)["params"]
  u = jax.random.uniform(jax.random.key(5), (4, 6))
  y = layer.apply({"params": params, layers.NOISE_COLLECTION: {"uniform": u}}, x,
                  deterministic=False)  # no "gates" rng needed
  z = gates.hard_concrete_from_uniform(u, params["log_alpha"])
  np.testing.assert_allclose(y, (x * z) @ params["kernel"] + params["bias"],
                             rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match=r"supplied gate noise has shape \(4, 5\)"):
    layer.apply({"params": params, layers.NOISE_COLLECTION: {"uniform": u[:, :5]}},
                x, deterministic=False)


def test_per_example_noise_is_each_keys_flat_uniform_split_by_layer():
  from l0jax import layers
  from l0jax.models import LeNet5Caffe
  x = jnp.zeros((1, 28, 28, 1))
  shapes = jax.eval_shape(LeNet5Caffe().init, KEYS, x)["params"]
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  keys = jax.random.split(jax.random.key(3), 5)
  noise = jax.jit(layers.per_example_noise)(keys, params)
  names = ["conv1", "conv2", "fc1", "fc2"]  # flattened-path order
  sizes = [params[n]["log_alpha"].size for n in names]
  flat = jax.vmap(lambda k: jax.random.uniform(k, (sum(sizes),)))(keys)
  start = 0
  for name, size in zip(names, sizes):
    want = flat[:, start:start + size].reshape((5,) + params[name]["log_alpha"].shape)
    np.testing.assert_array_equal(noise[name]["uniform"], want)
    start += size
  with pytest.raises(ValueError, match="no gated layer"):
    layers.per_example_noise(keys, {"dense": {"kernel": jnp.ones((2, 2))}})
  with pytest.raises(ValueError, match=r"shape \(batch,\)"):
    layers.per_example_noise(keys.reshape(5, 1), params)


@pytest.mark.parametrize("unstructured", [False, True])
def test_conv_matmul_form_is_the_same_function_as_xla(unstructured):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 9, 9, 2)), jnp.float32)
  fast = L0Conv(4, (3, 3), strides=2, padding="SAME", unstructured=unstructured,
                ops_method="matmul")
  plain = fast.clone(ops_method="xla")
  params = _init(plain, x)["params"]

  def loss(layer):
    return lambda p, x: jnp.sum(jnp.sin(layer.apply({"params": p}, x,
                                                    deterministic=False,
                                                    rngs={"gates": KEYS["gates"]})))
  for a, b in zip(jax.jit(jax.grad(loss(fast), (0, 1)))(params, x),
                  jax.jit(jax.grad(loss(plain), (0, 1)))(params, x)):
    for leaf_a, leaf_b in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(leaf_a, leaf_b, rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------- post, folded gates
def _relu_pool(y):
  return nn.max_pool(nn.relu(y), (2, 2), strides=(2, 2))


@pytest.mark.parametrize("per_example,unstructured,deterministic", [
    (True, False, False), (False, False, False), (False, False, True),
    (True, True, False)])
def test_conv_post_is_the_same_function_as_post_after_the_layer(per_example,
                                                                unstructured,
                                                                deterministic):
  # Structured gates move past ReLU + max pooling (positively homogeneous): same
  # outputs and gradients, including closed gates (z == 0) where nothing flows.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 8, 8, 2)), jnp.float32)
  layer = L0Conv(4, (3, 3), padding="SAME", sample_per_example=per_example,
                 unstructured=unstructured)
  params = _init(layer, x)["params"]
  if not unstructured:
    params["log_alpha"] = jnp.array([-9.0, 0.0, 0.5, 9.0])  # closed, open, between

  def loss(post_inside):
    def fn(p, x):
      kwargs = dict(deterministic=deterministic, rngs={"gates": KEYS["gates"]})
      y = (layer.apply({"params": p}, x, post=_relu_pool, **kwargs) if post_inside
           else _relu_pool(layer.apply({"params": p}, x, **kwargs)))
      return jnp.sum(jnp.sin(y)), y
    return jax.jit(jax.value_and_grad(fn, (0, 1), has_aux=True))
  (_, y_in), g_in = loss(True)(params, x)
  (_, y_out), g_out = loss(False)(params, x)
  assert float(jnp.max(jnp.abs(y_out))) > 0
  np.testing.assert_allclose(y_in, y_out, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g_in), jax.tree.leaves(g_out)):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  if not unstructured and not deterministic:
    # The closed channel is exactly zero and gets no gradient, on both paths.
    assert not np.any(np.asarray(y_in[..., 0]))
    for g in (g_in, g_out):
      assert not np.any(np.asarray(g[0]["kernel"][..., 0]))
      assert float(g[0]["log_alpha"][0]) == 0.0


def test_conv_post_must_keep_batch_and_channels():
  x = jnp.ones((2, 6, 6, 1))
  layer = L0Conv(3, (3, 3))
  params = _init(layer, x)["params"]
  for deterministic in (False, True):
    with pytest.raises(ValueError, match="post must keep"):
      layer.apply({"params": params}, x, deterministic=deterministic,
                  post=lambda y: y[..., :2], rngs={"gates": KEYS["gates"]})


@pytest.mark.parametrize("use_bias", [True, False])
def test_per_batch_conv_gates_folded_into_kernel_give_the_formula(use_bias):
  from l0jax import layers
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 7, 7, 3)), jnp.float32)
  layer = L0Conv(5, (3, 3), padding="VALID", sample_per_example=False,
                 use_bias=use_bias)
  params = _init(layer, x)["params"]
  if use_bias:
    params["bias"] = jnp.asarray(rng.normal(size=5), jnp.float32)
  params["log_alpha"] = jnp.asarray(rng.normal(size=5) * 3, jnp.float32)
  u = jnp.asarray(rng.uniform(size=5), jnp.float32)
  assert np.ptp(np.asarray(gates.hard_concrete_from_uniform(
      u, params["log_alpha"]))) > 0.1  # gates that differ, so the fold is seen

  def folded(p, x):
    return layer.apply({"params": p, layers.NOISE_COLLECTION: {"uniform": u}}, x,
                       deterministic=False)

  def formula(p, x):  # (conv(x, kernel) + bias) * z, written out
    z = gates.hard_concrete_from_uniform(u, p["log_alpha"])
    y = jax.lax.conv_general_dilated(x, p["kernel"], (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return (y + p["bias"] if use_bias else y) * z
  np.testing.assert_allclose(folded(params, x), formula(params, x), rtol=1e-5,
                             atol=1e-5)
  cotangent = jnp.asarray(rng.normal(size=(2, 5, 5, 5)), jnp.float32)
  grads = [jax.vjp(f, params, x)[1](cotangent) for f in (folded, formula)]
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_per_example_noise_order_is_pinned_for_the_mlp_and_natural_for_any_dict():
  """The trainer's noise stream: one flat draw per example split fc1, fc2, fc3 (the
  order every logged result was trained with), whatever the dict order."""
  from l0jax import layers
  from l0jax.models import MLP
  shapes = jax.eval_shape(MLP().init, KEYS, jnp.zeros((1, 28, 28, 1)))["params"]
  params = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  keys = jax.random.split(jax.random.key(4), 3)
  flat = jax.vmap(lambda k: jax.random.uniform(k, (784 + 300 + 100,)))(keys)
  reordered = {name: params[name] for name in ("fc3", "fc1", "fc2")}
  for p in (params, reordered):
    noise = layers.per_example_noise(keys, p)
    np.testing.assert_array_equal(noise["fc1"]["uniform"], flat[:, :784])
    np.testing.assert_array_equal(noise["fc2"]["uniform"], flat[:, 784:1084])
    np.testing.assert_array_equal(noise["fc3"]["uniform"], flat[:, 1084:])
  # Natural order: block_2 before block_10 (a lexicographic sort would swap them).
  two = {"block_10": {"kernel": jnp.zeros((2, 1)), "log_alpha": jnp.zeros(2)},
         "block_2": {"kernel": jnp.zeros((3, 1)), "log_alpha": jnp.zeros(3)}}
  noise = layers.per_example_noise(keys, two)
  flat = jax.vmap(lambda k: jax.random.uniform(k, (5,)))(keys)
  np.testing.assert_array_equal(noise["block_2"]["uniform"], flat[:, :3])
  np.testing.assert_array_equal(noise["block_10"]["uniform"], flat[:, 3:])


def test_per_example_unstructured_gates_warn_with_the_measured_cost():
  x = jnp.ones((2, 3))
  layer = L0Dense(2, unstructured=True)
  variables = layer.init(KEYS, x, deterministic=True)
  with pytest.warns(UserWarning, match=r"12 hard-concrete samples.*242 ms.*0\.94 ms"):
    layer.apply(variables, x, rngs={"gates": KEYS["gates"]}, deterministic=False)
  import warnings
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # per-batch unstructured and structured: silent
    L0Dense(2, unstructured=True, sample_per_example=False).apply(
        variables, x, rngs={"gates": KEYS["gates"]}, deterministic=False)
    L0Dense(2).apply(L0Dense(2).init(KEYS, x, deterministic=True), x,
                     rngs={"gates": KEYS["gates"]}, deterministic=False)
