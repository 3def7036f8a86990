"""The papers' models: shapes, jit, gated layers and their group sizes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l0jax import density
from l0jax.models import MLP, LeNet5Caffe

RNGS = {"params": jax.random.key(0), "gates": jax.random.key(1)}


def _init(model, x):
  return jax.jit(lambda x: model.init(RNGS, x))(x)


def test_mlp_paper_architecture_and_groups():
  x = jnp.ones((2, 28, 28, 1))
  variables = jax.eval_shape(lambda: _init(MLP(), x))  # shapes only: no compute
  layers = density.gated_layers(variables["params"])
  assert list(layers) == ["fc1", "fc2", "fc3"]
  assert [l.log_alpha.shape for l in layers.values()] == [(784,), (300,), (100,)]
  assert [l.group_size for l in layers.values()] == [300, 100, 10]
  assert [l.kind for l in layers.values()] == [density.INPUTS] * 3


def test_mlp_droprates():
  params = _init(MLP(features=(16, 8)), jnp.ones((1, 400)))["params"]
  logit = lambda p: np.log(p / (1 - p))
  np.testing.assert_allclose(np.mean(params["fc1"]["log_alpha"]), logit(0.8), atol=2e-3)
  np.testing.assert_allclose(np.mean(params["fc2"]["log_alpha"]), logit(0.5), atol=1e-2)


def test_lenet_paper_architecture_and_groups():
  x = jnp.ones((2, 28, 28, 1))
  variables = jax.eval_shape(lambda: _init(LeNet5Caffe(), x))
  layers = density.gated_layers(variables["params"])
  assert list(layers) == ["conv1", "conv2", "fc1", "fc2"]
  # "20-50-800-500": the units each gated layer can drop.
  assert [l.log_alpha.shape[0] for l in layers.values()] == [20, 50, 800, 500]
  assert [l.kind for l in layers.values()] == [density.OUTPUTS] * 2 + [
      density.INPUTS] * 2
  assert [l.group_size for l in layers.values()] == [25 + 1, 25 * 20 + 1, 500, 10]
  assert variables["params"]["fc1"]["kernel"].shape == (800, 500)


@pytest.mark.parametrize("model", [MLP(features=(12, 6)),
                                   LeNet5Caffe(conv_features=(3, 4), dense_features=8),
                                   MLP(features=(12, 6), unstructured=True),
                                   LeNet5Caffe(conv_features=(3, 4), dense_features=8,
                                               sample_per_example=False)])
def test_forward_shapes_and_jit(model):
  x = jax.random.uniform(jax.random.key(2), (3, 28, 28, 1))
  variables = _init(model, x)
  train = jax.jit(lambda v, x, k: model.apply(v, x, rngs={"gates": k}))
  test = jax.jit(lambda v, x: model.apply(v, x, deterministic=True))
  out = train(variables, x, jax.random.key(3))
  assert out.shape == (3, 10) and np.all(np.isfinite(out))
  out_test = test(variables, x)
  assert out_test.shape == (3, 10) and np.all(np.isfinite(out_test))
  assert len(density.gated_layers(variables["params"])) == (
      3 if isinstance(model, MLP) else 4)


def test_dense_baseline_has_no_gates_and_same_kernels():
  x = jnp.ones((1, 28, 28, 1))
  gated = jax.eval_shape(lambda: _init(LeNet5Caffe(), x))["params"]
  plain = jax.eval_shape(lambda: _init(LeNet5Caffe(gated=False), x))["params"]
  assert density.gated_layers(plain) == {}
  assert jax.tree.map(lambda a: a.shape, {k: v["kernel"] for k, v in plain.items()}) == \
      jax.tree.map(lambda a: a.shape, {k: v["kernel"] for k, v in gated.items()})


@pytest.mark.parametrize("gated", [True, False])
def test_lenet_matmul_ops_compute_the_same_function_as_xla_ops(gated):
  """The CPU fast path (im2col convs, reshape pools) against lax conv/reduce_window:
  same logits and same gradients for parameters and inputs, gate noise included."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(6, 28, 28, 1)), jnp.float32)
  fast = LeNet5Caffe(gated=gated, ops_method="matmul")
  plain = LeNet5Caffe(gated=gated, ops_method="xla")
  keys = {"params": jax.random.key(0), "gates": jax.random.key(1)}
  params = jax.jit(plain.init)(keys, x)["params"]
  cotangent = jnp.asarray(rng.normal(size=(6, 10)), jnp.float32)

  def value_and_grads(model):
    f = lambda p, x: model.apply({"params": p}, x, rngs={"gates": keys["gates"]})
    return jax.jit(lambda p, x: (lambda o, vjp: (o, vjp(cotangent)))(
        *jax.vjp(f, p, x)))(params, x)
  out_fast, grads_fast = value_and_grads(fast)
  out_plain, grads_plain = value_and_grads(plain)
  np.testing.assert_allclose(out_fast, out_plain, rtol=1e-4, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads_fast), jax.tree.leaves(grads_plain)):
    scale = float(jnp.max(jnp.abs(b))) + 1e-6
    np.testing.assert_allclose(a / scale, b / scale, atol=1e-5)
