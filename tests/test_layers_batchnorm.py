"""L0Conv(batch_norm=True) and ConvBN: L0-aware BatchNorm against numpy references."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from l0jax import gates
from l0jax.layers import ConvBN, L0Conv, per_example_noise

KEYS = {"params": jax.random.key(0), "gates": jax.random.key(1)}


def _set_log_alpha(variables, values):
  params = dict(variables["params"])
  params["log_alpha"] = jnp.asarray(values, jnp.float32)
  return {**variables, "params": params}


def _layer(**kw):
  return L0Conv(4, (3, 3), batch_norm=True, bn_momentum=0.8, **kw)


def _x(n=6, seed=0):
  return jax.random.normal(jax.random.key(seed), (n, 5, 5, 3)) * 2.0 + 1.0


def test_closed_channel_is_exactly_zero_in_training_and_at_test_time():
  layer = _layer(sample_per_example=True)
  x = _x()
  v = _set_log_alpha(layer.init(KEYS, x, deterministic=True), [-30.0, 30.0, -30.0, 30.0])
  params = dict(v["params"])
  params["bias"] = jnp.array([3.0, -2.0, 5.0, 1.0])  # BN shifts of closed channels
  v = {**v, "params": params}
  for deterministic in (False, True):
    out, _ = layer.apply(v, x, deterministic=deterministic, rngs={"gates": KEYS["gates"]},
                         mutable=["batch_stats"])
    assert np.all(np.asarray(out)[..., [0, 2]] == 0.0)
    assert np.all(np.abs(np.asarray(out)[..., [1, 3]]) > 0)


def _reference(x, kernel, weights, scale, shift, eps=1e-5):
  """float64: conv (SAME), BN with each (example, channel) weighted by its gate."""
  y = np.asarray(jax.lax.conv_general_dilated(
      np.asarray(x, np.float64), np.asarray(kernel, np.float64), (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")))
  w = np.asarray(weights, np.float64)[:, None, None, :] * np.ones_like(y)
  count = w.sum((0, 1, 2))
  mean = (y * w).sum((0, 1, 2)) / np.maximum(count, 1)
  var = ((y - mean) ** 2 * w).sum((0, 1, 2)) / np.maximum(count, 1)
  normed = (y - mean) / np.sqrt(var + eps) * np.asarray(scale) + np.asarray(shift)
  return normed, mean, var, count


def test_batch_statistics_weigh_examples_by_gate_and_closed_channels_keep_running_stats():
  jax.config.update("jax_enable_x64", False)
  layer = _layer(sample_per_example=True)
  x = _x(8)
  v = layer.init(KEYS, x, deterministic=True)
  v = _set_log_alpha(v, [0.0, 30.0, -30.0, 0.5])  # two channels sampled per example
  keys = jax.random.split(jax.random.key(3), 8)
  noise = per_example_noise(keys, v["params"])
  out, updates = layer.apply({**v, "gate_noise": noise}, x, deterministic=False,
                             mutable=["batch_stats"])
  z = gates.hard_concrete_from_uniform(noise["uniform"], v["params"]["log_alpha"])
  z = np.asarray(z)
  assert 0 < (z[:, 0] > 0).sum() < 8  # some examples open, some closed
  normed, mean, var, count = _reference(x, v["params"]["kernel"], z,
                                        v["params"]["scale"], v["params"]["bias"])
  np.testing.assert_allclose(np.asarray(out), normed * z[:, None, None, :], atol=2e-4)
  stats = updates["batch_stats"]
  for c in (0, 1, 3):  # open somewhere: running stats move by 1 - momentum
    np.testing.assert_allclose(stats["mean"][c], 0.2 * mean[c], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["var"][c], 0.8 + 0.2 * var[c], rtol=1e-4)
  assert count[2] == 0  # channel 2 closed for every example: statistics unchanged
  assert stats["mean"][2] == 0.0 and stats["var"][2] == 1.0


def test_test_time_uses_running_statistics_and_folds_fractional_gates():
  layer = _layer(sample_per_example=True)
  x = _x(4)
  v = layer.init(KEYS, x, deterministic=True)
  v = _set_log_alpha(v, [-0.2, 0.3, 30.0, -30.0])
  v = {**v, "batch_stats": {"mean": jnp.array([0.1, -0.2, 0.3, 0.0]),
                            "var": jnp.array([2.0, 0.5, 1.5, 1.0])}}
  out = layer.apply(v, x, deterministic=True)
  y = np.asarray(jax.lax.conv_general_dilated(
      np.asarray(x, np.float64), np.asarray(v["params"]["kernel"], np.float64), (1, 1),
      "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
  stats = v["batch_stats"]
  normed = (y - np.asarray(stats["mean"])) / np.sqrt(np.asarray(stats["var"]) + 1e-5)
  g = np.asarray(gates.deterministic_gate(v["params"]["log_alpha"]))
  np.testing.assert_allclose(np.asarray(out), normed * g, atol=1e-4)


def test_open_gates_equal_ungated_conv_bn_in_training_and_test():
  x = _x(6)
  gated = _layer(sample_per_example=True)
  plain = ConvBN(4, (3, 3), bn_momentum=0.8)
  v = _set_log_alpha(gated.init(KEYS, x, deterministic=True), [30.0] * 4)
  pv = {"params": {k: v["params"][k] for k in ("kernel", "scale", "bias")},
        "batch_stats": v["batch_stats"]}
  assert jax.tree.map(jnp.shape, plain.init(KEYS, x)) == jax.tree.map(jnp.shape, pv)
  for deterministic in (False, True):
    a, sa = gated.apply(v, x, deterministic=deterministic, rngs={"gates": KEYS["gates"]},
                        mutable=["batch_stats"])
    b, sb = plain.apply(pv, x, deterministic=deterministic, mutable=["batch_stats"])
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_allclose(sa["batch_stats"]["var"], sb["batch_stats"]["var"], atol=1e-6)


@pytest.mark.parametrize("per_example", [True, False])
def test_statistics_summed_over_devices_equal_one_device(per_example):
  devices = jax.devices()[:4]
  assert len(devices) == 4
  layer = _layer(sample_per_example=per_example, axis_name="batch")
  single = _layer(sample_per_example=per_example)
  x = _x(8)
  v = _set_log_alpha(layer.init(KEYS, x, deterministic=True), [0.0, 30.0, -30.0, 0.5])
  keys = jax.random.split(jax.random.key(5), 8)
  noise = per_example_noise(keys, v["params"]) if per_example else None

  def run(m, xs, ns):
    variables = {**v, "gate_noise": ns} if per_example else v
    return m.apply(variables, xs, deterministic=False, mutable=["batch_stats"],
                   rngs={"gates": jax.random.key(9)})

  ref_out, ref_stats = run(single, x, noise)
  mesh = Mesh(np.asarray(devices), ("batch",))
  split = lambda t: t.reshape((4, -1) + t.shape[1:])
  fn = jax.jit(jax.shard_map(
      lambda xs, ns: jax.tree.map(lambda t: t[None], run(layer, xs[0], jax.tree.map(
          lambda t: t[0], ns))),
      mesh=mesh, in_specs=P("batch"), out_specs=P("batch"), check_vma=False))
  out, stats = fn(split(x), jax.tree.map(split, noise) if per_example else
                  {"uniform": jnp.zeros((4, 1))})
  if per_example:
    np.testing.assert_allclose(np.asarray(out).reshape(ref_out.shape), ref_out, atol=1e-5)
  for d in range(4):  # every device holds the global statistics
    np.testing.assert_allclose(stats["batch_stats"]["mean"][d],
                               ref_stats["batch_stats"]["mean"], atol=1e-6)
    np.testing.assert_allclose(stats["batch_stats"]["var"][d],
                               ref_stats["batch_stats"]["var"], rtol=1e-5)


def _gate_grad(order: str, per_example: bool):
  """d loss / d log_alpha of conv -> [gate, BN] in ``order`` (a fixed linear loss).

  Gate noise u in [0.3, 0.7] with log_alpha = 0: every gate strictly inside (0, 1)."""
  x = _x(16)
  head = jax.random.normal(jax.random.key(7), (16, 5, 5, 4))
  shape = (16, 4) if per_example else (4,)
  noise = {"uniform": jax.random.uniform(jax.random.key(8), shape, minval=0.3, maxval=0.7)}
  if order == "gate_after_bn":  # l0jax
    layer = _layer(sample_per_example=per_example)
    v = _set_log_alpha(layer.init(KEYS, x, deterministic=True), [0.0] * 4)
    def loss(params):
      out, _ = layer.apply({**v, "params": params, "gate_noise": noise}, x,
                           deterministic=False, mutable=["batch_stats"])
      return jnp.sum(out * head)
  else:
    conv, bn = L0Conv(4, (3, 3), sample_per_example=per_example), nn.BatchNorm()
    v = _set_log_alpha(conv.init(KEYS, x, deterministic=True), [0.0] * 4)
    bv = bn.init(KEYS, jnp.zeros((1, 5, 5, 4)), use_running_average=False)
    gated = lambda params: conv.apply({"params": params, "gate_noise": noise}, x,
                                      deterministic=False)
    if order == "no_bn":
      loss = lambda params: jnp.sum(gated(params) * head)
    else:  # gate before BN
      loss = lambda params: jnp.sum(bn.apply(bv, gated(params), use_running_average=False,
                                             mutable=["batch_stats"])[0] * head)
  return jax.grad(loss)(v["params"])["log_alpha"]


@pytest.mark.parametrize("per_example", [True, False])
def test_gate_gradient_is_not_normalised_away(per_example):
  after = np.abs(np.asarray(_gate_grad("gate_after_bn", per_example)))
  no_bn = np.abs(np.asarray(_gate_grad("no_bn", per_example)))
  # Same order of magnitude as without BatchNorm (per channel, within 30x).
  assert np.all(after > 0) and np.all(no_bn > 0)
  ratio = np.median(after) / np.median(no_bn)
  assert 1 / 30 < ratio < 30, (after, no_bn)
  if not per_example:  # BN after a per-batch gate divides its scale out exactly
    before = np.abs(np.asarray(_gate_grad("gate_before_bn", per_example)))
    assert np.all(before < 1e-3 * after), (before, after)
