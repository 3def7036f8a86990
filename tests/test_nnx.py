"""l0jax.nnx layers: the same functions as the Linen layers, NNX conventions."""

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l0jax import constrained, density, gates
from l0jax import layers as linen_layers
from l0jax import nnx as l0nnx

X = jnp.asarray(np.random.default_rng(0).normal(size=(4, 6)), jnp.float32)
XC = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 7, 3)), jnp.float32)


def _params(module):
  return {k: v for k, v in nnx.to_pure_dict(nnx.state(module, nnx.Param)).items()
          if v is not None}


@pytest.mark.parametrize("unstructured", [False, True])
def test_linear_equals_linen_dense_at_test_time_and_with_given_noise(unstructured):
  layer = l0nnx.L0Linear(6, 5, unstructured=unstructured, rngs=nnx.Rngs(0))
  params = _params(layer)
  assert params["log_alpha"].shape == ((6, 5) if unstructured else (6,))
  linen = linen_layers.L0Dense(5, unstructured=unstructured)
  want = linen.apply({"params": params}, X, deterministic=True)
  np.testing.assert_allclose(layer(X, deterministic=True), want, rtol=1e-6)
  u = jax.random.uniform(jax.random.key(3), (4,) + params["log_alpha"].shape)
  with pytest.warns(UserWarning, match="per-example unstructured") if unstructured \
      else _no_warning():
    got = layer(X, noise=u)
    want = linen.apply({"params": params, linen_layers.NOISE_COLLECTION: {"uniform": u}},
                       X, deterministic=False)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


class _no_warning:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


@pytest.mark.parametrize("per_example", [False, True])
def test_conv_equals_linen_conv(per_example):
  layer = l0nnx.L0Conv(3, 4, (3, 3), padding="VALID", sample_per_example=per_example,
                       rngs=nnx.Rngs(0))
  params = _params(layer)
  linen = linen_layers.L0Conv(4, (3, 3), padding="VALID",
                              sample_per_example=per_example)
  post = lambda y: nn.relu(y)
  np.testing.assert_allclose(
      layer(XC, deterministic=True, post=post),
      linen.apply({"params": params}, XC, deterministic=True, post=post), rtol=1e-5,
      atol=1e-6)
  shape = ((2,) if per_example else ()) + (4,)
  u = jax.random.uniform(jax.random.key(4), shape)
  np.testing.assert_allclose(
      layer(XC, noise=u),
      linen.apply({"params": params, linen_layers.NOISE_COLLECTION: {"uniform": u}},
                  XC, deterministic=False), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="supplied gate noise"):
    layer(XC, noise=u[..., :3])


@pytest.mark.parametrize("per_example", [False, True])
def test_conv_bn_equals_linen_batch_norm_conv(per_example):
  layer = l0nnx.L0ConvBN(3, 4, (3, 3), sample_per_example=per_example, momentum=0.8,
                         rngs=nnx.Rngs(0))
  rng = np.random.default_rng(7)
  layer.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, 4), jnp.float32)
  layer.bias[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
  layer.log_alpha[...] = jnp.asarray([-9.0, 0.5, 2.0, -0.3], jnp.float32)  # one closed
  params = _params(layer)
  assert sorted(params) == ["bias", "kernel", "log_alpha", "scale"]
  linen = linen_layers.L0Conv(4, (3, 3), batch_norm=True, bn_momentum=0.8,
                              sample_per_example=per_example)
  stats = {"mean": jnp.zeros(4), "var": jnp.ones(4)}
  u = jax.random.uniform(jax.random.key(5), ((2,) if per_example else ()) + (4,))
  want, updated = linen.apply(
      {"params": params, "batch_stats": stats,
       linen_layers.NOISE_COLLECTION: {"uniform": u}},
      XC, deterministic=False, mutable=["batch_stats"])
  got = layer(XC, noise=u)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(got)[..., 0] == 0.0)  # a closed channel is exactly zero
  for name in ("mean", "var"):  # the same running statistics, the closed one unmoved
    np.testing.assert_allclose(getattr(layer, name)[...],
                               updated["batch_stats"][name], rtol=1e-6, atol=1e-7)
  assert float(layer.mean[...][0]) == 0.0 and float(layer.var[...][0]) == 1.0
  np.testing.assert_allclose(
      layer(XC, deterministic=True),
      linen.apply({"params": params, "batch_stats": updated["batch_stats"]}, XC,
                  deterministic=True), rtol=1e-5, atol=1e-6)


def test_training_noise_comes_from_the_gates_stream_and_eval_switches_it_off():
  layer = l0nnx.L0Linear(6, 3, rngs=nnx.Rngs(params=0, gates=5))
  key = nnx.Rngs(params=0, gates=5)["gates"]()  # the stream's first key
  z = gates.hard_concrete_sample(key, layer.log_alpha[...], (4, 6))
  p = _params(layer)
  want = (X * z) @ p["kernel"] + p["bias"]
  np.testing.assert_allclose(layer(X), want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(layer(X), want)  # the stream moved on
  layer.eval()
  a, b = layer(X), layer(X)
  np.testing.assert_array_equal(a, b)
  layer.train()
  assert not np.allclose(layer(X), layer(X))
  with pytest.raises(ValueError, match="test_gate"):
    l0nnx.L0Linear(2, 2, test_gate="mean", rngs=nnx.Rngs(0))


def test_model_trains_with_nnx_optimizer_and_separate_gate_learning_rate():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.conv = l0nnx.L0Conv(3, 4, (3, 3), rngs=rngs)
      self.fc = l0nnx.L0Linear(4 * 7 * 7, 2, rngs=rngs)

    def __call__(self, x):
      x = self.conv(x, post=nnx.relu)
      return self.fc(x.reshape(x.shape[0], -1))

  model = Net(nnx.Rngs(0))
  tx = constrained.primal_optimizer(optax.sgd(0.1), optax.sgd(6.0))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  before = nnx.to_pure_dict(nnx.state(model, nnx.Param))

  @nnx.jit
  def step(model, optimizer):
    loss = lambda m: jnp.sum(m(XC) ** 2) + density.expected_density(
        nnx.state(m, nnx.Param))
    grads = nnx.grad(loss)(model)
    optimizer.update(model, grads)
    return nnx.to_pure_dict(grads)

  grads = step(model, optimizer)
  after = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  for layer in ("conv", "fc"):
    for name, lr in (("kernel", 0.1), ("log_alpha", 6.0)):
      np.testing.assert_allclose(after[layer][name],
                                 before[layer][name] - lr * grads[layer][name],
                                 rtol=1e-5, atol=1e-6)
  report = density.density_report(nnx.state(model, nnx.Param))
  assert list(report.expected) == ["conv", "fc"]
  assert report.num_sparsifiable == {"conv": 4 * (27 + 1), "fc": 196 * 2}
