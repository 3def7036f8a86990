"""purge.py: purged == gated at test time; counts by hand; export round trip."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l0jax import density, gates, gating, layers, purge
from l0jax.models import LeNet5Caffe, MLP

OPEN, CLOSED = 30.0, -30.0  # test-time gate exactly 1 / exactly 0 in both modes

SMALL_MLP = MLP(features=(16, 8))
SMALL_LENET = LeNet5Caffe(conv_features=(4, 6), dense_features=12)
X28 = jnp.asarray(np.random.default_rng(7).uniform(size=(4, 28, 28, 1)), jnp.float32)


_SHAPES = {}


def _init(model, x, seed=0):
  """Random params of the model's shapes (numpy draws: no XLA compiles in tests)."""
  rng = np.random.default_rng(seed)
  key = (repr(model), x.shape)
  if key not in _SHAPES:
    _SHAPES[key] = jax.eval_shape(lambda: model.init(jax.random.key(0), x,
                                                     deterministic=True))["params"]
  shapes = _SHAPES[key]

  def draw(path, s):
    if path[-1].key == "kernel":
      fan_in = int(np.prod(s.shape[:-1]))
      return (rng.normal(size=s.shape) / np.sqrt(fan_in)).astype(s.dtype)
    return np.zeros(s.shape, s.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _with(params, log_alphas=None, seed=None):
  """Copies params with some log_alphas replaced and, given a seed, random biases."""
  rng = None if seed is None else np.random.default_rng(seed)
  out = {}
  for name, layer in params.items():
    layer = dict(layer)
    if log_alphas and name in log_alphas:
      layer["log_alpha"] = np.asarray(log_alphas[name], np.float32).reshape(
          layer["log_alpha"].shape)
    if rng is not None:
      layer["bias"] = rng.normal(size=layer["bias"].shape).astype(np.float32)
    out[name] = layer
  return out


def _mixed(params, seed):
  """log_alphas: a third closed, a third open, a third fractional (where the two
  test-time modes also disagree on open / closed), and random biases."""
  rng = np.random.default_rng(seed)
  alphas = {}
  for name, layer in params.items():
    shape = layer["log_alpha"].shape
    bucket = rng.integers(0, 3, size=shape)
    frac = rng.uniform(-2.3, 1.5, size=shape)
    alphas[name] = np.where(bucket == 0, CLOSED, np.where(bucket == 1, OPEN, frac))
  return _with(params, alphas, seed + 1000)


def _apply(model, params, x):
  """Jitted apply: one XLA compile per model instead of one per primitive and shape."""
  return jax.jit(lambda p, x: model.apply({"params": p}, x))(params, x)


def _assert_equal_outputs(model, params, x=X28):
  # Jitted: one XLA compile per model instead of one per primitive and shape.
  want = jax.jit(lambda p, x: model.apply({"params": p}, x, deterministic=True))(
      params, x)
  small, small_params = purge.purge(model, params)
  got = _apply(small, small_params, x)
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
  return small, small_params, got


# ---------------------------------------------------------------------------- equality

@pytest.mark.parametrize("test_gate", ["median", "eq13"])
@pytest.mark.parametrize("base", [SMALL_MLP, SMALL_LENET], ids=["mlp", "lenet"])
def test_purged_equals_gated_test_time_output(base, test_gate):
  model = base.clone(test_gate=test_gate)
  params = _mixed(_init(model, X28), 1)
  g = np.asarray(gates.deterministic_gate(
      np.concatenate([l["log_alpha"] for l in params.values()]), test_gate))
  assert ((g > 0) & (g < 1)).any()  # fractional gates exist
  small, small_params, _ = _assert_equal_outputs(model, params)
  full = sum(v.size for v in jax.tree.leaves(_init(model.clone(gated=False), X28)))
  assert sum(v.size for v in jax.tree.leaves(small_params)) < full
  assert all(op.kind in purge.OP_KINDS for op in small.ops)


def test_test_gate_defaults_to_the_models_and_can_be_overridden():
  params = _mixed(_init(SMALL_MLP, X28), 2)
  median = purge.counts(SMALL_MLP, params)["architecture"]
  eq13 = purge.counts(SMALL_MLP.clone(test_gate="eq13"), params)["architecture"]
  assert median != eq13  # the fractional range in _mixed makes them disagree
  assert purge.counts(SMALL_MLP, params, test_gate="eq13")["architecture"] == eq13
  # A {"params": ...} variables dict works too.
  assert purge.counts(SMALL_MLP, {"params": params})["architecture"] == median
  with pytest.raises(ValueError, match="unknown test-time gate mode"):
    purge.purge(SMALL_MLP, params, test_gate="mean")


def test_every_gate_open_keeps_the_full_model():
  for model in (SMALL_MLP, SMALL_LENET):
    params = _init(model, X28)
    params = _with(params, {n: np.full(l["log_alpha"].shape, OPEN)
                            for n, l in params.items()}, 3)
    small, small_params, _ = _assert_equal_outputs(model, params)
    assert not any(op.kind == "select" for op in small.ops)
    assert jax.tree.map(jnp.shape, small_params) == jax.tree.map(
        jnp.shape, {n: {"kernel": l["kernel"], "bias": l["bias"]}
                    for n, l in params.items()})


def test_one_unit_left_in_a_layer():
  params = _init(SMALL_MLP, X28)
  one = np.full(16, CLOSED)
  one[5] = 0.3  # one fractional gate left on fc2's inputs
  params = _with(params, {"fc2": one}, 4)
  small, small_params, _ = _assert_equal_outputs(SMALL_MLP, params)
  assert small_params["fc1"]["kernel"].shape == (784, 1)
  assert small_params["fc2"]["kernel"].shape == (1, 8)

  params = _init(SMALL_LENET, X28)
  conv2 = np.full(6, CLOSED)
  conv2[2] = 0.7
  params = _with(params, {"conv2": conv2}, 5)
  small, small_params, _ = _assert_equal_outputs(SMALL_LENET, params)
  assert small_params["conv2"]["kernel"].shape == (5, 5, 4, 1)
  assert small_params["fc1"]["kernel"].shape == (16, 12)  # 4x4 positions x 1 channel


@pytest.mark.parametrize("base,layer,widths", [
    (SMALL_MLP, "fc2", "0-0-8"),         # fc1 feeds nothing, so needs no inputs
    (SMALL_MLP, "fc1", "0-16-8"),
    (SMALL_LENET, "conv1", "0-6-96-12"),  # conv2 outputs its gated bias
    (SMALL_LENET, "fc1", "0-0-0-12"),
])
def test_all_units_closed_gives_the_constant_bias_path(base, layer, widths, tmp_path):
  """A layer with every gate closed: zero-width layers, constant output, no crash."""
  params = _init(base, X28)
  params = _with(params, {layer: np.full(params[layer]["log_alpha"].shape, CLOSED)},
                 6)
  small, small_params, out = _assert_equal_outputs(base, params)
  np.testing.assert_allclose(out, jnp.broadcast_to(out[:1], out.shape), atol=1e-6)
  assert np.std(np.asarray(out[0])) > 0  # the constant is the (random) bias path
  assert purge.counts(base, params, input_shape=(28, 28, 1))["architecture"] == widths
  # Zero-width layers survive export.
  loaded, loaded_params = purge.load(purge.save(tmp_path / "m", small, small_params))
  np.testing.assert_array_equal(_apply(loaded, loaded_params, X28), out)


def test_unstructured_gates_fold_without_compaction():
  model = MLP(features=(16, 8), unstructured=True)
  params = _mixed(_init(model, X28), 8)
  small, small_params, _ = _assert_equal_outputs(model, params)
  assert [small_params[n]["kernel"].shape for n in ("fc1", "fc2", "fc3")] == [
      (784, 16), (16, 8), (8, 10)]
  c = purge.counts(model, params)
  open_weights = int((gates.deterministic_gate(np.concatenate(
      [l["log_alpha"].ravel() for l in params.values()])) > 0).sum())
  assert c["purged_macs"] == c["test_time_macs"] == open_weights
  assert c["architecture"] == "784-16-8"


def test_plain_model_purges_to_itself():
  model = SMALL_LENET.clone(gated=False)
  params = _init(model, X28)
  small, small_params = purge.purge(model, params)
  np.testing.assert_allclose(_apply(small, small_params, X28),
                             _apply(model, params, X28), atol=1e-6)
  c = purge.counts(model, params, input_shape=(28, 28, 1))
  assert c["purged_params"] == c["dense_params"] and c["purged_density"] == 1.0


# ---------------------------------------------------------------------------- counts

def test_counts_mlp_by_hand():
  model = MLP(features=(4, 3), num_classes=2)
  params = _init(model, jnp.ones((1, 5)))
  o, c = OPEN, CLOSED
  params = _with(params, {"fc1": [o, o, c, o, c], "fc2": [o, c, o, o],
                          "fc3": [o, o, c]})
  got = purge.counts(model, params)
  # fc1 keeps 3 inputs; its column 1 dies (fc2 input 1 closed), fc2's column 2 dies.
  assert got["architecture"] == "3-3-2"
  want = {"dense_params": 20 + 4 + 12 + 3 + 6 + 2, "dense_macs": 20 + 12 + 6,
          "dense_sparsifiable": 38,
          "test_time_params": 3 * 4 + 3 * 3 + 2 * 2 + 4 + 3 + 2,
          "test_time_macs": 12 + 9 + 4,
          "purged_params": 3 * 3 + 3 + 3 * 2 + 2 + 2 * 2 + 2,
          "purged_macs": 9 + 6 + 4}
  assert {k: got[k] for k in want} == want
  assert got["test_time_density"] == pytest.approx(25 / 38)
  assert got["purged_density"] == pytest.approx(19 / 38)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5)), jnp.float32)
  small, small_params, _ = _assert_equal_outputs(model, params, x)
  assert small_params["fc1"]["kernel"].shape == (3, 3)


def test_counts_lenet_by_hand():
  model = LeNet5Caffe(conv_features=(2, 3), dense_features=4, num_classes=2)
  x = jnp.asarray(np.random.default_rng(9).uniform(size=(2, 20, 20, 1)),
                  jnp.float32)  # -> 16 -> 8 -> 4 -> 2x2x3
  params = _init(model, x)
  o, c = OPEN, CLOSED
  # fc1 input (h*2 + w)*3 + ch. Channel 0 rows 0,3,6,9: open, closed, open, open;
  # channel 1 rows all closed (so conv2 drops channel 1); channel 2 rows open but the
  # channel is closed (so they die).
  fc1 = [o, c, o, c, c, o, o, c, o, o, c, o]
  params = _with(params, {"conv1": [o, c], "conv2": [o, o, c], "fc1": fc1,
                          "fc2": [o, o, o, c]}, 10)
  got = purge.counts(model, params, input_shape=(20, 20, 1))
  assert got["architecture"] == "1-1-3-3"
  want = {
      "dense_params": (50 + 2) + (150 + 3) + (48 + 4) + (8 + 2),
      "dense_macs": 16 * 16 * 50 + 4 * 4 * 150 + 48 + 8,
      "dense_sparsifiable": 52 + 153 + 48 + 8,
      "test_time_params": (25 + 1) + (100 + 2) + (7 * 4 + 4) + (3 * 2 + 2),
      "test_time_macs": 256 * 25 + 16 * 100 + 28 + 6,
      "purged_params": (25 + 1) + (25 + 1) + (3 * 3 + 3) + (3 * 2 + 2),
      "purged_macs": 256 * 25 + 16 * 25 + 9 + 6,
  }
  assert {k: got[k] for k in want} == want
  assert got["test_time_density"] == pytest.approx(162 / 261)
  assert got["purged_density"] == pytest.approx(67 / 261)
  small, small_params, _ = _assert_equal_outputs(model, params, x)
  assert [op.indices for op in small.ops if op.kind == "select"] == [(0, 2, 3)]
  assert small_params["fc1"]["kernel"].shape == (3, 3)
  with pytest.raises(ValueError, match="input_shape"):
    purge.counts(model, params)


def test_test_time_density_matches_density_report():
  for model in (SMALL_MLP, SMALL_LENET):
    params = _mixed(_init(model, X28), 11)
    got = purge.counts(model, params, input_shape=(28, 28, 1))
    want = jax.jit(density.density_report, static_argnums=1)(
        params, "median").model_test_time
    assert got["test_time_density"] == pytest.approx(float(want), rel=1e-6)
    assert got["purged_density"] <= got["test_time_density"]


def test_architecture_strings_of_the_full_size_models():
  x = jnp.ones((1, 28, 28, 1))
  mlp = MLP()
  params = _init(mlp, x)
  fc1 = np.full(784, CLOSED)
  fc1[np.arange(198) * 3] = OPEN
  fc2 = np.full(300, OPEN)
  fc2[:67] = CLOSED
  assert purge.counts(mlp, _with(params, {"fc1": fc1, "fc2": fc2,
                                          "fc3": np.full(100, OPEN)})
                      )["architecture"] == "198-233-100"

  lenet = LeNet5Caffe()
  params = _init(lenet, x)
  all_open = {n: np.full(l["log_alpha"].shape, OPEN) for n, l in params.items()}
  got = purge.counts(lenet, _with(params, all_open), input_shape=(28, 28, 1))
  assert got["architecture"] == "20-50-800-500"
  assert got["dense_macs"] == (24 * 24 * 25 * 20 + 8 * 8 * 25 * 20 * 50
                               + 800 * 500 + 500 * 10)
  conv2 = np.full(50, OPEN)
  conv2[7] = CLOSED  # removes its 4x4 = 16 rows of fc1
  small, small_params = purge.purge(lenet, _with(params, dict(all_open, conv2=conv2)))
  assert small_params["fc1"]["kernel"].shape == (784, 500)
  assert purge.counts(lenet, _with(params, dict(all_open, conv2=conv2)),
                      input_shape=(28, 28, 1))["architecture"] == "20-49-784-500"


def test_cascade_density_equals_purged_density_for_binary_gates():
  for model in (SMALL_MLP, SMALL_LENET):
    params = _init(model, X28)
    rng = np.random.default_rng(12)
    alphas = {}
    for name, layer in params.items():
      bits = rng.uniform(size=layer["log_alpha"].shape) < 0.6
      bits[0] = True  # no layer closes completely
      alphas[name] = np.where(bits, OPEN, CLOSED)
    params = _with(params, alphas)
    purged = purge.counts(model, params, input_shape=(28, 28, 1))["purged_density"]
    cascade = jax.jit(density.cascade_expected_density)(params)
    assert float(cascade) == pytest.approx(purged, abs=1e-5)
    assert purged < float(jax.jit(density.expected_density)(params))


# ---------------------------------------------------------------------------- export

def test_save_load_round_trip(tmp_path):
  params = _mixed(_init(SMALL_LENET, X28), 13)
  small, small_params = purge.purge(SMALL_LENET, params)
  before = _apply(small, small_params, X28)
  path = purge.save(tmp_path / "lenet", small, small_params)
  loaded, loaded_params = purge.load(path)
  assert loaded == small
  np.testing.assert_array_equal(_apply(loaded, loaded_params, X28), before)
  # The spec is plain JSON that rebuilds the model.
  with open(tmp_path / "lenet" / purge.SPEC_FILE) as f:
    assert purge.PurgedModel.from_spec(json.load(f)) == small
  assert purge.PurgedModel.from_spec(json.loads(json.dumps(small.spec()))) == small


def test_save_refuses_an_existing_path(tmp_path):
  model = MLP(features=(4,), num_classes=3)
  params = _init(model, jnp.ones((1, 6)))
  small, small_params = purge.purge(model, params)
  path = tmp_path / "m"
  purge.save(path, small.spec(), small_params)
  with pytest.raises(FileExistsError, match="--overwrite"):
    purge.save(path, small, small_params)
  other = jax.tree.map(lambda a: a + 1.0, small_params)
  purge.save(path, small, other, overwrite=True)
  _, loaded = purge.load(path)
  np.testing.assert_array_equal(loaded["fc1"]["kernel"], other["fc1"]["kernel"])


def _small_export(tmp_path, **kwargs):
  model = MLP(features=(4,), num_classes=3)
  small, small_params = purge.purge(model, _init(model, jnp.ones((1, 6))))
  return purge.save(tmp_path / "m", small, small_params, **kwargs), small_params


def test_export_records_input_and_a_checksum_of_spec_and_arrays(tmp_path):
  spec_in = {"shape": [6], "dtype": "float32", "range": [0.0, 1.0]}
  path, params = _small_export(tmp_path, input_spec=spec_in)
  spec = purge.read_spec(path)
  assert spec["input"] == spec_in and len(spec[purge.CHECKSUM_KEY]) == 64
  assert purge.is_export(path) and not purge.is_export(tmp_path)
  # The checksum is sha256 over the spec without it, then each array's name, dtype,
  # shape and bytes in sorted order: recomputed here independently.
  import hashlib  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256(json.dumps({k: v for k, v in spec.items() if k != "sha256"},
                                sort_keys=True).encode())
  for name in sorted(params):
    for leaf in sorted(params[name]):
      a = np.asarray(params[name][leaf])
      h.update(f"{name}/{leaf}:{a.dtype.str}{a.shape}".encode() + a.tobytes())
  assert h.hexdigest() == spec[purge.CHECKSUM_KEY]
  # Any change to the spec is caught on load, as a corrupt array would be.
  spec_path = tmp_path / "m" / purge.SPEC_FILE
  spec["input"]["range"] = [0.0, 255.0]
  spec_path.write_text(json.dumps(spec))
  with pytest.raises(purge.ExportError, match="is corrupt"):
    purge.load(path)
  del spec[purge.CHECKSUM_KEY]  # an export of an older l0jax: loads, with a warning
  spec_path.write_text(json.dumps(spec))
  with pytest.warns(UserWarning, match="no checksum"):
    purge.load(path)


def test_overwrite_replaces_only_a_previous_export(tmp_path):
  (tmp_path / "m").mkdir()
  (tmp_path / "m" / "precious.txt").write_text("keep me")
  with pytest.raises(purge.ExportError, match="not a saved purged model"):
    _small_export(tmp_path, overwrite=True)
  assert (tmp_path / "m" / "precious.txt").read_text() == "keep me"
  (tmp_path / "m" / "precious.txt").unlink()
  (tmp_path / "m").rmdir()
  _small_export(tmp_path)
  _small_export(tmp_path, overwrite=True)  # an export may replace an export
  assert sorted(os.listdir(tmp_path)) == ["m"]  # no temporary folder left


def test_truncated_spec_names_the_file(tmp_path):
  path, _ = _small_export(tmp_path)
  spec_path = tmp_path / "m" / purge.SPEC_FILE
  spec_path.write_text(spec_path.read_text()[:50])
  with pytest.raises(purge.ExportError, match=f"{spec_path} is unreadable"):
    purge.load(path)


def test_bad_inputs_raise_clearly():
  with pytest.raises(NotImplementedError, match="register_architecture"):
    purge.architecture_ops(purge.PurgedModel(ops=()))
  with pytest.raises(ValueError, match="unknown op kind"):
    purge.PurgedModel.from_spec([{"kind": "softmax"}])
  with pytest.raises(ValueError, match=r"params do not have.*'fc3'|'fc3'.*params do not"):
    purge.purge(SMALL_MLP, {k: v for k, v in _init(SMALL_MLP, X28).items()
                            if k != "fc3"})


# ------------------------------------------------------------------ op lists, avg_pool


class AvgPoolNet(nn.Module):
  """A gated conv -> relu -> avg pool -> flatten -> gated dense model of one's own."""
  channels: int = 4

  @nn.compact
  def __call__(self, x, deterministic: bool = False):
    x = layers.L0Conv(self.channels, (3, 3), padding="VALID", name="conv")(
        x, deterministic=deterministic)
    x = nn.avg_pool(nn.relu(x), (2, 2), (2, 2))
    x = x.reshape((x.shape[0], -1))
    return layers.L0Dense(3, name="fc")(x, deterministic=deterministic)


def _avg_pool_ops(model):
  return [purge.Op("conv", name="conv", features=model.channels, kernel_size=(3, 3),
                   strides=(1, 1), padding="VALID"),
          purge.Op("relu"), purge.Op("avg_pool", window=(2, 2), strides=(2, 2)),
          purge.Op("flatten"), purge.Op("dense", name="fc", features=3)]


def test_avg_pool_model_registers_purges_and_counts():
  purge.register_architecture(AvgPoolNet, _avg_pool_ops, input_shape=(10, 10, 1))
  model = AvgPoolNet()
  x = X28[:, :10, :10]
  params = _init(model, x)
  params = _with(params, {"conv": [OPEN, CLOSED, 0.4, CLOSED],
                          "fc": np.where(np.arange(64) % 3 == 0, CLOSED, OPEN)}, seed=3)
  small, _, _ = _assert_equal_outputs(model, params, x)
  assert [op.kind for op in small.ops].count("avg_pool") == 1
  c = purge.counts(model, params, input_shape=(10, 10, 1))
  assert c["architecture"] == "2-" + str(2 * 16 - sum(
      1 for i in range(64) if i % 3 == 0 and i % 4 in (0, 2)))
  assert c["layers"]["conv"]["dense_macs"] == 8 * 8 * 9 * 4


def test_register_architecture_checks_the_op_list_against_the_model():
  def only_conv(model):
    return _avg_pool_ops(model)[:3]

  with pytest.raises(ValueError, match=r"\['fc'\] are in no op"):
    purge.register_architecture(AvgPoolNet, only_conv, input_shape=(10, 10, 1))

  def wrong_pool(model):  # a 3x3 pool leaves 2x2x4 = 16 inputs for fc's 64
    ops = _avg_pool_ops(model)
    ops[2] = purge.Op("avg_pool", window=(3, 3), strides=(3, 3))
    return ops

  with pytest.raises(ValueError, match="fc.*takes 64 inputs"):
    purge.register_architecture(AvgPoolNet, wrong_pool, input_shape=(10, 10, 1))

  def softmax_op(model):
    return _avg_pool_ops(model) + [purge.Op("softmax")]

  with pytest.raises(ValueError, match="unknown op kind 'softmax'"):
    purge.register_architecture(AvgPoolNet, softmax_op, input_shape=(10, 10, 1))


def test_check_ops_without_input_shape_checks_structure_and_widths():
  params = _init(SMALL_MLP, X28)
  ops = purge.architecture_ops(SMALL_MLP)
  purge.check_ops(ops, params)  # the registered MLP is fine
  with pytest.raises(ValueError, match=r"\['fc2', 'fc3'\] are in no op"):
    purge.check_ops(ops[:2], params)  # the op list with only fc1
  swapped = list(ops)
  swapped[3], swapped[5] = swapped[5], swapped[3]  # fc2 and fc3 out of order
  with pytest.raises(ValueError, match="does not fit|takes"):
    purge.check_ops(swapped, params)
  with pytest.raises(ValueError, match="unique"):
    purge.check_ops(list(ops) + [ops[1]], params)
  with pytest.raises(ValueError, match="no dense or conv"):
    purge.check_ops([purge.Op("relu")])


# ------------------------------------------------------------------ keep-masks

def test_masks_of_l0jax_layers_zero_what_purge_removes_without_cascade():
  params = _mixed(_init(SMALL_LENET, X28), seed=5)
  masks = purge.masks(params)
  for name, layer in params.items():
    g = np.asarray(gates.deterministic_gate(jnp.asarray(layer["log_alpha"]))) > 0
    kind = density.gated_layers({name: layer})[name].kind
    if kind == density.OUTPUTS:
      np.testing.assert_array_equal(masks[name]["kernel"],
                                    np.broadcast_to(g, layer["kernel"].shape))
      np.testing.assert_array_equal(masks[name]["bias"], g)
    else:
      np.testing.assert_array_equal(masks[name]["kernel"],
                                    np.broadcast_to(g[:, None], layer["kernel"].shape))
      assert masks[name]["bias"].all()
    assert masks[name]["log_alpha"].all()
  # Masked weights with every remaining gate fully open give the gated model's output.
  opened = {n: dict(l, kernel=np.asarray(l["kernel"]) * np.asarray(masks[n]["kernel"]),
                    bias=np.asarray(l["bias"]) * np.asarray(masks[n]["bias"]),
                    log_alpha=np.full_like(l["log_alpha"], OPEN))
            for n, l in params.items()}
  binary = {n: dict(l, log_alpha=np.where(
      np.asarray(gates.deterministic_gate(jnp.asarray(l["log_alpha"]))) > 0, OPEN,
      CLOSED).astype(np.float32)) for n, l in params.items()}
  apply = jax.jit(lambda p: SMALL_LENET.apply({"params": p}, X28, deterministic=True))
  np.testing.assert_allclose(apply(opened), apply(binary), atol=1e-5)


def test_masks_with_path_specs():
  params = {"enc": {"kernel": jnp.ones((3, 4)), "bias": jnp.ones(4)}}
  specs = [gating.GateSpec("enc/kernel", -1, shared={"bias": -1})]
  masks = purge.masks(params, specs, {"enc/kernel": jnp.array([OPEN, CLOSED, OPEN, -1.0])})
  np.testing.assert_array_equal(masks["enc"]["bias"], [True, False, True, True])
  np.testing.assert_array_equal(masks["enc"]["kernel"][0], [True, False, True, True])
  with pytest.raises(ValueError, match="needs specs"):
    purge.masks(params, log_alphas={"enc/kernel": jnp.zeros(4)})



def test_macs_graph_of_lenet_counts_upstream_channels_by_hand():
  params = _mixed(_init(SMALL_LENET, X28), seed=9)
  graph = purge.macs_graph(SMALL_LENET, params, (28, 28, 1))
  assert list(graph) == ["conv1", "conv2", "fc1", "fc2"]
  open_ = {n: np.asarray(gates.deterministic_gate(jnp.asarray(l["log_alpha"]))) > 0
           for n, l in params.items()}
  c1, c2, f1, f2 = (open_[n] for n in ("conv1", "conv2", "fc1", "fc2"))
  want = {
      "conv1": 24 * 24 * 25 * 1 * c1.sum(),
      "conv2": 8 * 8 * 25 * c1.sum() * c2.sum(),
      "fc1": 12 * np.sum(f1 * np.tile(c2, 16)),      # 4x4 positions x 6 channels
      "fc2": 10 * f2.sum(),
  }
  got = density.layer_macs(graph, params, "median")
  for name, value in want.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-6, err_msg=name)
  dense = sum(op.macs for op in graph.values())
  assert dense == purge.counts(SMALL_LENET, params, input_shape=(28, 28, 1))["dense_macs"]


def test_gates_kept_outside_the_params_purge_like_stored_ones():
  """Dep-L0 style: log_alphas from elsewhere give what the same gates in params give."""
  params = _mixed(_init(SMALL_MLP, X28), seed=11)
  outside = {n: l["log_alpha"] for n, l in params.items()}
  bare = {n: {k: v for k, v in l.items() if k != "log_alpha"} for n, l in params.items()}
  small, small_params = purge.purge(SMALL_MLP, params)
  small2, small_params2 = purge.purge(SMALL_MLP, bare, log_alphas=outside)
  assert small2.ops == small.ops
  jax.tree.map(np.testing.assert_array_equal, small_params2, small_params)
  assert purge.counts(SMALL_MLP, bare, log_alphas=outside) == purge.counts(
      SMALL_MLP, params)
  with pytest.raises(ValueError, match="'fc9'"):
    purge.purge(SMALL_MLP, bare, log_alphas={"fc9": outside["fc1"]})


@pytest.mark.parametrize("config_file, want", [
    ("configs/fashion_mnist_mlp.py", 784 * 300 + 300 * 100 + 100 * 10),
    # LeNet-5-Caffe: conv 5x5 1->20 on 24x24, 20->50 on 8x8, fc 800->500->10.
    ("configs/fashion_mnist_lenet.py",
     24 * 24 * 25 * 20 + 8 * 8 * 25 * 20 * 50 + 800 * 500 + 500 * 10)])
def test_dense_runs_report_their_macs_on_the_gated_scale(config_file, want):
  from experiments import runs  # pylint: disable=g-import-not-at-top
  from l0jax import train_lib  # pylint: disable=g-import-not-at-top
  dense = runs.load_config(config_file, {"gated": False, "fake_data": True})
  assert train_lib.purge_report(None, {}, dense) == {"dense_macs": want}
  gated = runs.load_config(config_file, {"fake_data": True})
  assert sum(op.macs for op in train_lib.macs_graph(gated).values()) == want
