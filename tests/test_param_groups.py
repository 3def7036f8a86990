"""param_labels on Linen dicts, NNX states and plain pytrees; the partition they drive."""

import equinox as eqx
import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from l0jax import gating, layers, param_groups
from l0jax import nnx as l0nnx


def _labels_by_path(labels):
  return {gating.path_name(p): v
          for p, v in jax.tree_util.tree_flatten_with_path(labels)[0]}


def test_linen_params():
  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(2)(layers.L0Dense(3)(x, deterministic=True))

  params = Net().init(jax.random.key(0), jnp.ones((1, 4)))["params"]
  assert _labels_by_path(param_groups.param_labels(params)) == {
      "L0Dense_0/bias": "weights", "L0Dense_0/kernel": "weights",
      "L0Dense_0/log_alpha": "gates", "Dense_0/bias": "weights",
      "Dense_0/kernel": "weights"}


def test_nnx_state_labels_and_partition():
  class Net(nnx.Module):
    def __init__(self, rngs):
      self.gated = l0nnx.L0Linear(4, 3, rngs=rngs)
      self.gate_generator = nnx.Linear(2, 2, rngs=rngs)
      self.out = nnx.Linear(3, 2, rngs=rngs)

  state = nnx.state(Net(nnx.Rngs(0)), nnx.Param)
  labels = param_groups.param_labels(state)
  assert isinstance(labels, nnx.State)
  assert _labels_by_path(labels) == {
      "gate_generator/bias": "generator", "gate_generator/kernel": "generator",
      "gated/bias": "weights", "gated/kernel": "weights", "gated/log_alpha": "gates",
      "out/bias": "weights", "out/kernel": "weights"}
  tx = param_groups.primal_optimizer(optax.sgd(0.1), optax.sgd(6.0), optax.sgd(2.0))
  grads = jax.tree.map(jnp.ones_like, state)
  updates, _ = tx.update(grads, tx.init(state), state)
  flat = _labels_by_path(updates)
  np.testing.assert_allclose(flat["gated/log_alpha"], -6.0)
  np.testing.assert_allclose(flat["gated/kernel"], -0.1)
  np.testing.assert_allclose(flat["gate_generator/kernel"], -2.0)


def test_plain_and_equinox_pytrees_and_path_api_gates():
  params = {"params": {"w": jnp.ones(3), "b": jnp.ones(())},
            "log_alphas": {"w": jnp.zeros(3)}}
  assert _labels_by_path(param_groups.param_labels(params)) == {
      "params/w": "weights", "params/b": "weights", "log_alphas/w": "gates"}
  mlp = eqx.nn.MLP(2, 2, 3, 1, key=jax.random.key(0))
  labels = param_groups.param_labels(eqx.filter(mlp, eqx.is_array))
  assert set(jax.tree.leaves(labels)) == {"weights"}
  tx = param_groups.primal_optimizer(optax.sgd(0.1), optax.sgd(6.0))
  updates, _ = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["log_alphas"]["w"], -6.0)
  np.testing.assert_allclose(updates["params"]["w"], -0.1)
