"""density.py on hand-built params trees with hand-computed answers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l0jax import density, gates
from l0jax.layers import L0Conv, L0Dense

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


def p_open(a):
  """P(z != 0) by hand: sigmoid(a - beta * log(-gamma / zeta)), in float64."""
  return 1.0 / (1.0 + math.exp(-(a - BETA * math.log(-GAMMA / ZETA))))


def median_gate(a):
  s = 1.0 / (1.0 + math.exp(-a / BETA))
  return min(max(s * (ZETA - GAMMA) + GAMMA, 0.0), 1.0)


def hand_params():
  """Three gated layers nested at different depths, one ungated dense layer."""
  return {
      "encoder": {
          "block_10": {  # dense 3 -> 2, input gates (naturally sorted after block_2)
              "kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2),
              "log_alpha": jnp.array([2.0, -1.0, -8.0])},
          "block_2": {  # conv 2x2, 1 -> 2 channels, channel gates, with bias
              "kernel": jnp.ones((2, 2, 1, 2)), "bias": jnp.zeros(2),
              "log_alpha": jnp.array([0.5, -9.0])},
      },
      "head": {  # unstructured 2 x 2
          "kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2),
          "log_alpha": jnp.array([[3.0, -3.0], [0.0, -20.0]])},
      "plain": {"kernel": jnp.ones((4, 4)), "bias": jnp.zeros(4)},
  }


def test_gated_layers_structure_and_order():
  layers = density.gated_layers(hand_params())
  assert list(layers) == ["encoder/block_2", "encoder/block_10", "head"]
  conv, dense, head = layers.values()
  assert (conv.kind, conv.group_size, conv.num_sparsifiable) == (
      density.OUTPUTS, 2 * 2 * 1 + 1, 10)
  assert (dense.kind, dense.group_size, dense.num_sparsifiable) == (
      density.INPUTS, 2, 6)
  assert (head.kind, head.group_size, head.num_sparsifiable) == (
      density.UNSTRUCTURED, 1, 4)


def test_hand_computed_densities():
  report = density.density_report(hand_params())
  conv = (p_open(0.5) * 5 + p_open(-9.0) * 5) / 10
  dense = (p_open(2.0) + p_open(-1.0) + p_open(-8.0)) * 2 / 6
  head = sum(p_open(a) for a in (3.0, -3.0, 0.0, -20.0)) / 4
  np.testing.assert_allclose(report.expected["encoder/block_2"], conv, rtol=1e-6)
  np.testing.assert_allclose(report.expected["encoder/block_10"], dense, rtol=1e-6)
  np.testing.assert_allclose(report.expected["head"], head, rtol=1e-6)
  model = (conv * 10 + dense * 6 + head * 4) / 20
  np.testing.assert_allclose(report.model_expected, model, rtol=1e-6)
  np.testing.assert_allclose(density.expected_density(hand_params()), model,
                             rtol=1e-6)

  # Test time (median gate): open = gate > 0.
  opens = {"encoder/block_2": [0.5, -9.0], "encoder/block_10": [2.0, -1.0, -8.0],
           "head": [3.0, -3.0, 0.0, -20.0]}
  kept = {k: sum(median_gate(a) > 0 for a in v) for k, v in opens.items()}
  assert {k: int(v) for k, v in report.kept_units.items()} == kept
  assert report.total_units == {"encoder/block_2": 2, "encoder/block_10": 3,
                                "head": 4}
  tt = {"encoder/block_2": kept["encoder/block_2"] * 5 / 10,
        "encoder/block_10": kept["encoder/block_10"] * 2 / 6,
        "head": kept["head"] / 4}
  for k, v in tt.items():
    np.testing.assert_allclose(report.test_time[k], v, rtol=1e-6)
  np.testing.assert_allclose(report.model_test_time,
                             (tt["encoder/block_2"] * 10 + tt["encoder/block_10"] * 6
                              + tt["head"] * 4) / 20, rtol=1e-6)


def test_eq13_and_median_can_disagree_on_kept_units():
  # sigmoid(a) * 1.2 - 0.1 > 0  <=>  a > logit(1/12) ~ -2.398; median: a/beta > -2.398.
  params = {"l": {"kernel": jnp.ones((2, 1)), "log_alpha": jnp.array([-2.0, -1.0])}}
  assert int(density.density_report(params, "eq13").kept_units["l"]) == 2
  assert int(density.density_report(params, "median").kept_units["l"]) == 1


def test_conv_without_bias_group_size():
  params = {"c": {"kernel": jnp.ones((3, 3, 4, 5)), "log_alpha": jnp.zeros(5)}}
  layer = density.gated_layers(params)["c"]
  assert layer.group_size == 36 and layer.num_sparsifiable == 180


def test_unrecognised_layout_and_no_gates_raise():
  bad = {"l": {"kernel": jnp.ones((3, 2)), "log_alpha": jnp.zeros(2)}}
  with pytest.raises(ValueError, match="matches no gate layout"):
    density.gated_layers(bad)
  with pytest.raises(ValueError, match="no gated layer"):
    density.expected_density({"l": {"kernel": jnp.ones((2, 2))}})


def test_works_under_jit_and_with_flax_variables():
  x = jnp.ones((2, 6, 6, 1))
  conv = L0Conv(3, (3, 3))
  variables = conv.init({"params": jax.random.key(0), "gates": jax.random.key(1)}, x,
                        deterministic=False)
  eager = density.expected_density(variables["params"])
  jitted = jax.jit(density.expected_density)(variables["params"])
  np.testing.assert_allclose(jitted, eager, rtol=1e-6)
  np.testing.assert_allclose(density.expected_density(variables), eager, rtol=1e-6)
  report = jax.jit(density.density_report, static_argnums=1)(variables, "median")
  assert report.num_sparsifiable == {"params": 3 * (9 + 1)}


def test_mixed_structured_and_unstructured_model_from_layers():
  """Real layers, structured and unstructured, give the formula's numbers."""
  x = jnp.ones((2, 5))
  variables = {}
  for name, layer in {"a": L0Dense(4), "b": L0Dense(3, unstructured=True)}.items():
    variables[name] = layer.init({"params": jax.random.key(1)}, x,
                                 deterministic=True)["params"]
  a, b = variables["a"]["log_alpha"], variables["b"]["log_alpha"]
  pa = np.asarray(gates.prob_nonzero(a), np.float64)
  pb = np.asarray(gates.prob_nonzero(b), np.float64)
  want = (pa.sum() * 4 + pb.sum()) / (5 * 4 + 5 * 3)
  np.testing.assert_allclose(density.expected_density(variables), want, rtol=1e-6)


def test_gradient_flows_to_log_alpha_only():
  grads = jax.grad(density.expected_density)(hand_params())
  assert np.any(grads["head"]["log_alpha"] != 0)
  assert np.all(grads["head"]["kernel"] == 0)


# ------------------------------------------------------------------ cascade density

def chain_params():
  """conv(2x2, 1->2) -> conv(1x1, 2->3) -> [2 positions x 3 channels] -> dense(6->4)
  -> dense(4->2); every layer gated, biases everywhere."""
  return {
      "c1": {"kernel": jnp.ones((2, 2, 1, 2)), "bias": jnp.zeros(2),
             "log_alpha": jnp.array([1.0, -2.0])},
      "c2": {"kernel": jnp.ones((1, 1, 2, 3)), "bias": jnp.zeros(3),
             "log_alpha": jnp.array([0.5, 3.0, -1.0])},
      "d1": {"kernel": jnp.ones((6, 4)), "bias": jnp.zeros(4),
             "log_alpha": jnp.array([2.0, -3.0, 0.0, 1.0, -0.5, 4.0])},
      "d2": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2),
             "log_alpha": jnp.array([-1.0, 1.5, 0.2, -4.0])},
  }


def cascade_by_hand(la):
  p = {k: [p_open(float(a)) for a in v] for k, v in la.items()}
  c1, c2, d1, d2 = p["c1"], p["c2"], p["d1"], p["d2"]
  # c1: one image channel in; outputs used with their own gate (c2 gates no inputs).
  c1_active = 4 * 1 * sum(c1) + sum(c1)
  # c2: inputs alive with c1's channel gates; channel c used if its gate is open and
  # at least one of its two flattened d1 rows (c and 3 + c) is open.
  used = [c2[c] * (1 - (1 - d1[c]) * (1 - d1[3 + c])) for c in range(3)]
  c2_active = 1 * sum(c1) * sum(used) + sum(used)
  # d1: row i alive if its gate and its channel i % 3 are open; column j used if
  # d2's input gate j is open.
  d1_active = sum(d1[i] * c2[i % 3] for i in range(6)) * sum(d2)
  # d2: last layer, every output used.
  d2_active = sum(d2) * 2
  active = {"c1": c1_active, "c2": c2_active, "d1": d1_active, "d2": d2_active}
  sizes = {"c1": 2 * 5, "c2": 3 * 3, "d1": 24, "d2": 8}
  layers = {k: active[k] / sizes[k] for k in active}
  model = sum(active.values()) / sum(sizes.values())
  return layers, model


def test_cascade_densities_by_hand():
  params = chain_params()
  want_layers, want_model = cascade_by_hand(
      {k: v["log_alpha"] for k, v in params.items()})
  got = density.cascade_layer_densities(params)
  assert list(got) == ["c1", "c2", "d1", "d2"]
  for k, v in want_layers.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-6)
  np.testing.assert_allclose(density.cascade_expected_density(params), want_model,
                             rtol=1e-6)
  # Cascading only removes weights.
  assert float(density.cascade_expected_density(params)) < float(
      density.expected_density(params))


def test_cascade_explicit_order():
  """Paths whose natural sort is not the forward order need `order`."""
  renamed = dict(zip(["z_conv", "y_conv", "b_dense", "a_dense"],
                     chain_params().values()))
  order = ["z_conv", "y_conv", "b_dense", "a_dense"]
  _, want_model = cascade_by_hand(dict(zip(["c1", "c2", "d1", "d2"],
                                           (v["log_alpha"] for v in renamed.values()))))
  np.testing.assert_allclose(density.cascade_expected_density(renamed, order),
                             want_model, rtol=1e-6)
  assert list(density.cascade_layer_densities(renamed, order)) == order
  with pytest.raises(ValueError, match="pass the layers' forward order"):
    density.cascade_expected_density(renamed)
  with pytest.raises(ValueError, match="every gated layer exactly once"):
    density.cascade_expected_density(renamed, order[:3])


def test_cascade_unstructured_layer_by_hand():
  params = {
      "a": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2),
            "log_alpha": jnp.array([[1.0, -1.0], [0.0, 2.0], [-3.0, 0.5]])},
      "b": {"kernel": jnp.ones((2, 2)), "bias": jnp.zeros(2),
            "log_alpha": jnp.array([0.3, -0.7])},
  }
  pa = [[p_open(v) for v in row] for row in ([1.0, -1.0], [0.0, 2.0], [-3.0, 0.5])]
  pb = [p_open(0.3), p_open(-0.7)]
  a_active = sum(pa[i][j] * pb[j] for i in range(3) for j in range(2))
  b_active = sum(pb) * 2
  got = density.cascade_layer_densities(params)
  np.testing.assert_allclose(got["a"], a_active / 6, rtol=1e-6)
  np.testing.assert_allclose(got["b"], b_active / 4, rtol=1e-6)


def test_cascade_all_open_is_one_and_jits_and_differentiates():
  params = chain_params()
  open_params = jax.tree.map(lambda x: x, params)
  for layer in open_params.values():
    layer["log_alpha"] = jnp.full_like(layer["log_alpha"], 40.0)
  np.testing.assert_allclose(density.cascade_expected_density(open_params), 1.0,
                             rtol=1e-6)
  eager = density.cascade_expected_density(params)
  np.testing.assert_allclose(jax.jit(density.cascade_expected_density)(params), eager,
                             rtol=1e-6)
  jitted = jax.jit(density.cascade_layer_densities)(params)
  for k, v in density.cascade_layer_densities(params).items():
    np.testing.assert_allclose(jitted[k], v, rtol=1e-6)
  grads = jax.grad(density.cascade_expected_density)(params)
  for name in params:
    g = np.asarray(grads[name]["log_alpha"])
    assert np.all(np.isfinite(g)) and np.all(g > 0)  # opening a gate adds weights
    assert np.all(grads[name]["kernel"] == 0)
  # Saturated gates keep finite gradients.
  grads = jax.grad(density.cascade_expected_density)(open_params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# ------------------------------------------------------------------ naming-free core

def test_gated_layer_dicts_work_without_params_and_under_jit_and_grad():
  """Log-alphas from anywhere (a generator network, a separate pytree) + group sizes."""
  la_a, la_b = jnp.array([0.5, -1.0, 2.0]), jnp.array([[1.0, -3.0], [0.0, 4.0]])
  layers = {"a": density.GatedLayer(la_a, group_size=7),
            "heads": density.GatedLayer(la_b, group_size=3)}
  pa = [p_open(float(v)) for v in la_a]
  pb = [p_open(float(v)) for v in np.ravel(la_b)]
  want = (sum(pa) * 7 + sum(pb) * 3) / (3 * 7 + 4 * 3)
  np.testing.assert_allclose(density.expected_density(layers), want, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(density.expected_density)(layers), want, rtol=1e-6)
  grad = jax.grad(lambda ls: density.expected_density(ls))(layers)
  assert isinstance(grad["a"], density.GatedLayer) and grad["a"].group_size == 7
  # d/da of sum p * 7 / 33 = 7 p (1 - p) / 33
  np.testing.assert_allclose(grad["a"].log_alpha,
                             [7 * p * (1 - p) / 33 for p in pa], rtol=1e-5)
  swapped = layers["a"].replace(log_alpha=jnp.full(3, 50.0))
  assert swapped.group_size == 7 and float(density.expected_density({"a": swapped})) == 1.0
  report = density.density_report(layers)
  assert report.total_units == {"a": 3, "heads": 4}
  assert report.num_sparsifiable == {"a": 21, "heads": 12}


def test_flax_layers_and_nnx_layers_give_the_same_report():
  from flax import nnx
  from l0jax import nnx as l0nnx
  model = l0nnx.L0Linear(5, 3, rngs=nnx.Rngs(0))
  state = nnx.state(model, nnx.Param)
  linen = {"kernel": state["kernel"][...], "bias": state["bias"][...],
           "log_alpha": state["log_alpha"][...]}
  a, b = density.density_report(linen), density.density_report(state)
  assert list(density.gated_layers(state)) == list(density.gated_layers(linen)) == [""]
  np.testing.assert_allclose(b.model_expected, a.model_expected, rtol=1e-7)
  assert b.num_sparsifiable == a.num_sparsifiable


def macs_graph():
  L = density.Linear
  return {
      "conv1": L(80, outputs=("c1",)),
      "conv2": L(120, inputs=("c1",), outputs=("c2",)),
      "fc1": L(24, inputs=("fc1", "c2")),              # own inputs AND channel (tiled)
      "fc2": L(8, inputs=("fc2",)),
      "res": L(50, inputs=(("c1", "c1b"),)),          # a residual sum: either branch
      "sparse": L(30, inputs=("c2",), weights="w"),    # unstructured (3, 2) weights
  }


def macs_layers():
  la = {"c1": [1.0, -2.0], "c2": [0.5, 3.0, -1.0], "fc1": [2.0, -3.0, 0.0, 1.0, -0.5, 4.0],
        "fc2": [-1.0, 1.5, 0.2, -4.0], "c1b": [-3.0, 0.7],
        "w": [[1.0, -1.0], [0.0, 2.0], [-3.0, 0.5]]}
  return {k: density.GatedLayer(jnp.asarray(v), 1) for k, v in la.items()}, la


@pytest.mark.parametrize("test_gate", [None, "median"])
def test_macs_by_hand(test_gate):
  layers, la = macs_layers()
  if test_gate is None:
    p = {k: np.vectorize(p_open)(np.asarray(v)) for k, v in la.items()}
  else:
    p = {k: (np.vectorize(median_gate)(np.asarray(v)) > 0) * 1.0 for k, v in la.items()}
  c1, c2, fc1, fc2, c1b, w = (p[k] for k in ("c1", "c2", "fc1", "fc2", "c1b", "w"))
  want = {
      "conv1": 80 * c1.mean(),
      "conv2": 120 * c1.mean() * c2.mean(),
      "fc1": 24 * np.mean([fc1[i] * c2[i % 3] for i in range(6)]),
      "fc2": 8 * fc2.mean(),
      "res": 50 * np.mean(1 - (1 - c1) * (1 - c1b)),
      "sparse": 30 * np.mean(w * c2[:, None]),
  }
  got = density.layer_macs(macs_graph(), layers, test_gate)
  assert set(got) == set(want)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, err_msg=k)
  np.testing.assert_allclose(density.macs_density(macs_graph(), layers, test_gate),
                             sum(want.values()) / (80 + 120 + 24 + 8 + 50 + 30),
                             rtol=1e-6)


def test_macs_density_is_differentiable_jits_and_checks_names():
  layers, _ = macs_layers()
  graph = macs_graph()
  f = lambda ls: density.macs_density(graph, ls)
  np.testing.assert_allclose(jax.jit(f)(layers), f(layers), rtol=1e-6)
  grads = jax.grad(f)(layers)
  assert all(np.all(np.asarray(g.log_alpha) > 0) for g in grads.values())
  with pytest.raises(ValueError, match="'nope'"):
    density.macs_density({"x": density.Linear(4, inputs=("nope",))}, layers)
  with pytest.raises(ValueError, match="tiled"):
    density.macs_density({"x": density.Linear(4, inputs=("c1", "c2"))}, layers)


def test_macs_of_stacked_layers_average_per_layer():
  la = jnp.array([[40.0, 40.0], [-40.0, -40.0]])  # layer 0 open, layer 1 closed
  lb = jnp.array([[40.0, -40.0], [40.0, 40.0]])
  layers = {"in": density.GatedLayer(la, 1), "out": density.GatedLayer(lb, 1)}
  got = density.layer_macs({"stack": density.Linear(100, ("in",), ("out",))}, layers)
  # layer 0: 1 * 0.5, layer 1: 0 * 1; mean over the stack of 2.
  np.testing.assert_allclose(got["stack"], 100 * (0.5 + 0.0) / 2, rtol=1e-6)


def test_layer_specs_bridge_matches_the_layers_gating():
  params = hand_params()
  specs, la = density.layer_specs(params)
  by_specs = density.gated_layers(params, specs, la)
  by_names = density.gated_layers(params)
  assert [by_names[k.rsplit("/", 1)[0]].num_sparsifiable for k in by_specs] == [
      l.num_sparsifiable for l in by_specs.values()]
  np.testing.assert_allclose(density.expected_density(by_specs),
                             density.expected_density(params), rtol=1e-6)


def test_stacked_layers_in_the_layer_convention():
  """nn.scan stacks: (L, in) gates on (L, in, out) kernels, (L, out) on conv stacks."""
  la = jnp.array([[2.0, -1.0, 0.5], [-3.0, 1.0, 4.0]])
  dense = {"kernel": jnp.ones((2, 3, 5)), "log_alpha": la}
  conv = {"kernel": jnp.ones((2, 3, 3, 4, 3)), "bias": jnp.ones((2, 3)), "log_alpha": la}
  layers = density.gated_layers({"dense": dense, "conv": conv})
  assert (layers["dense"].kind, layers["dense"].group_size) == (density.INPUTS, 5)
  assert (layers["conv"].kind, layers["conv"].group_size) == (density.OUTPUTS, 37)
  p = np.vectorize(p_open)(np.asarray(la))
  got = density.layer_expected_densities(layers)
  np.testing.assert_allclose(got["dense"], p.mean(), rtol=1e-6)
  np.testing.assert_allclose(got["conv"], p.mean(), rtol=1e-6)
  # The bridge to the path API gates the same slices.
  from l0jax import gating
  specs, log_alphas = density.layer_specs({"dense": dense, "conv": conv})
  gated = gating.apply_gates({"dense": dense, "conv": conv}, log_alphas, specs,
                             deterministic=True)
  z = np.vectorize(median_gate)(np.asarray(la))
  np.testing.assert_allclose(gated["dense"]["kernel"], np.broadcast_to(
      z[:, :, None], (2, 3, 5)), rtol=1e-6)
  np.testing.assert_allclose(gated["conv"]["bias"], z, rtol=1e-6)
  np.testing.assert_allclose(gated["conv"]["kernel"][:, 1, 2, 0], z, rtol=1e-6)
  with pytest.raises(ValueError, match="stacked"):
    density.cascade_expected_density({"dense": dense})
