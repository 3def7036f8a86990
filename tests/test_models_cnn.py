"""The residual CNNs and VGG: architectures, gated vs plain parity, gradients."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l0jax import density, models

KEYS = {"params": jax.random.key(0), "gates": jax.random.key(1)}

# (model, input shape, gated layers at full depth, names of a few of them)
CASES = {
    "wrn28": (lambda **kw: models.WideResNet(depth=28, widen_factor=2, width_scale=0.125, **kw),
              (2, 16, 16, 3), 12, ["stage1_block1/conv1", "stage3_block4/conv1"]),
    "resnet18": (lambda **kw: models.ResNet(depth=18, num_classes=7, width_scale=0.0625, **kw),
                 (4, 64, 64, 3), 16, ["stage1_block1/conv2", "stage4_block2/conv1"]),
    "resnet50": (lambda **kw: models.ResNet(depth=50, num_classes=7, width_scale=0.0625, **kw),
                 (4, 64, 64, 3), 48, ["stage2_block4/conv3", "stage4_block3/conv2"]),
    "resnet20": (lambda **kw: models.CifarResNet(depth=20, width_scale=0.25, **kw),
                 (2, 12, 12, 1), 19, ["stem", "stage3_block3/conv2"]),
    "vgg16": (lambda **kw: models.VGG(width_scale=0.0625, **kw),
              (2, 32, 32, 3), 13, ["conv1", "conv13"]),
}


def _variables(make, shape, gated=True):
  return make(gated=gated).init(KEYS, jnp.zeros(shape), deterministic=True)


@pytest.mark.parametrize("name", sorted(CASES))
def test_architecture_gated_layers_and_dense_twin(name):
  make, shape, count, some = CASES[name]
  v = _variables(make, shape)
  layers = density.gated_layers(v["params"])
  assert len(layers) == count
  for n in some:
    assert n in layers and layers[n].kernel_shape[-1] == layers[n].log_alpha.shape[-1] \
        if hasattr(layers[n], "kernel_shape") else n in layers
  assert set(v) == {"params", "batch_stats"}
  plain = _variables(make, shape, gated=False)
  flat = flax.traverse_util.flatten_dict(v["params"], sep="/")
  plain_flat = flax.traverse_util.flatten_dict(plain["params"], sep="/")
  assert {k: x.shape for k, x in flat.items() if not k.endswith("log_alpha")} == \
      {k: x.shape for k, x in plain_flat.items()}
  assert jax.tree.map(jnp.shape, v["batch_stats"]) == jax.tree.map(jnp.shape,
                                                                   plain["batch_stats"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_all_open_gates_compute_the_dense_model(name):
  make, shape, _, _ = CASES[name]
  x = jax.random.normal(jax.random.key(3), shape)
  v = _variables(make, shape)
  v = {**v, "params": jax.tree_util.tree_map_with_path(
      lambda p, a: jnp.full_like(a, 30.0) if p[-1].key == "log_alpha" else a, v["params"])}
  plain_params = flax.traverse_util.unflatten_dict(
      {k: a for k, a in flax.traverse_util.flatten_dict(v["params"]).items()
       if k[-1] != "log_alpha"})
  pv = {"params": plain_params, "batch_stats": v["batch_stats"]}
  gated, plain = make(gated=True), make(gated=False)
  for deterministic in (False, True):
    a = gated.apply(v, x, deterministic=deterministic, rngs={"gates": KEYS["gates"]},
                    mutable=["batch_stats"])
    b = plain.apply(pv, x, deterministic=deterministic, mutable=["batch_stats"])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-4, atol=1e-4)
    for sa, sb in zip(jax.tree.leaves(a[1]), jax.tree.leaves(b[1])):
      np.testing.assert_allclose(sa, sb, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["wrn28", "resnet20", "vgg16"])
def test_gradients_reach_every_parameter_and_are_finite(name):
  make, shape, _, _ = CASES[name]
  model = make(gated=True)
  v = _variables(make, shape)
  x = jax.random.normal(jax.random.key(4), shape)

  def loss(params):
    out, _ = model.apply({**v, "params": params}, x, rngs={"gates": KEYS["gates"]},
                         mutable=["batch_stats"])
    return jnp.sum(out ** 2)

  grads = flax.traverse_util.flatten_dict(jax.grad(loss)(v["params"]), sep="/")
  for path, g in grads.items():
    assert np.all(np.isfinite(g)), path
  assert all(np.any(g != 0) for p, g in grads.items() if p.endswith("log_alpha"))
  assert all(np.any(g != 0) for p, g in grads.items() if p.endswith("kernel"))


def test_bfloat16_compute_keeps_params_gates_and_statistics_float32():
  model = models.CifarResNet(depth=8, width_scale=0.25, dtype=jnp.bfloat16)
  v = model.init(KEYS, jnp.zeros((2, 12, 12, 1)), deterministic=True)
  assert {a.dtype for a in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}
  out, stats = model.apply(v, jnp.ones((2, 12, 12, 1)), rngs={"gates": KEYS["gates"]},
                           mutable=["batch_stats"])
  assert out.dtype == jnp.bfloat16
  assert {a.dtype for a in jax.tree.leaves(stats)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("make,match", [
    (lambda: models.WideResNet(depth=27), "6n \\+ 4"),
    (lambda: models.ResNet(depth=20), "18, 34, 50"),
    (lambda: models.CifarResNet(depth=21), "6n \\+ 2"),
])
def test_bad_depths_raise(make, match):
  with pytest.raises(ValueError, match=match):
    make().init(KEYS, jnp.zeros((1, 16, 16, 3)), deterministic=True)
