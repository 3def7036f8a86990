"""EGF and plain gradient norms against numpy float64 references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from l0jax import density, gates
from l0jax.models.mlp import MLP
from l0jax.science import egf


def _egf_reference(grads, masks, p):
  """The paper's formula, written independently: mean over layers of ||g*m||_p / N."""
  flows = []
  for g, m in zip(grads, masks):
    g = np.asarray(g, np.float64)
    m = np.broadcast_to(np.asarray(m) != 0, g.shape)
    flows.append(np.linalg.norm(g[m], ord=p) / max(m.sum(), 1) if m.any() else 0.0)
  return float(np.mean(flows))


def test_hand_computed_two_layers():
  # layer a: active grads (3, -4) -> L2 5, L1 7 over N=2; the masked-out 100 is ignored.
  # layer b: all 4 active, grads (1, 1, 1, 1) -> L2 2, L1 4 over N=4.
  grads = {"a": jnp.array([3.0, 100.0, -4.0]), "b": jnp.ones((2, 2))}
  masks = {"a": jnp.array([1.0, 0.0, 0.5]), "b": jnp.ones((2, 2), bool)}
  # EGF_2 = (5/2 + 2/4) / 2 = 1.5 ; EGF_1 = (7/2 + 4/4) / 2 = 2.25
  assert float(egf.effective_gradient_flow(grads, masks, ord=2)) == pytest.approx(1.5)
  assert float(egf.effective_gradient_flow(grads, masks, ord=1)) == pytest.approx(2.25)
  per = egf.layer_gradient_flow(grads, masks, ord=2)
  assert float(per["a"]) == pytest.approx(2.5) and float(per["b"]) == pytest.approx(0.5)
  # plain norms see every weight, masked or not: L2 sqrt(9+10000+16+4), L1 3+100+4+4
  assert float(egf.gradient_norm(grads, ord=2)) == pytest.approx(np.sqrt(10029.0))
  assert float(egf.gradient_norm(grads, ord=1)) == pytest.approx(111.0)


def test_empty_layer_counts_as_zero_flow():
  grads = {"a": jnp.array([2.0, 2.0]), "b": jnp.array([5.0])}
  masks = {"a": jnp.array([True, True]), "b": jnp.array([False])}
  # (||(2,2)||_1 / 2 + 0) / 2 = 1
  assert float(egf.effective_gradient_flow(grads, masks, ord=1)) == pytest.approx(1.0)


def test_broadcast_input_gate_mask_and_jit():
  g = jnp.arange(12.0).reshape(4, 3) - 5.0
  unit_keep = jnp.array([1.0, 0.0, 0.3, 0.0])[:, None]  # input-unit gates (in, 1)
  got = jax.jit(lambda g, m: egf.effective_gradient_flow([g], [m]))(g, unit_keep)
  assert float(got) == pytest.approx(_egf_reference([g], [unit_keep], 2), rel=1e-6)


def test_errors():
  with pytest.raises(egf.EGFError, match="ord"):
    egf.effective_gradient_flow([jnp.ones(2)], [jnp.ones(2)], ord=3)
  with pytest.raises(egf.EGFError, match="structure"):
    egf.effective_gradient_flow({"a": jnp.ones(2)}, {"b": jnp.ones(2)})
  with pytest.raises(egf.EGFError, match="no leaves"):
    egf.gradient_norm({})


_layer = hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=5),
                    elements=st.floats(-1e3, 1e3, allow_nan=False, width=64))


@st.composite
def _layers_and_masks(draw):
  grads = draw(st.lists(_layer, min_size=1, max_size=4))
  masks = [draw(hnp.arrays(np.bool_, g.shape)) for g in grads]
  return grads, masks


@settings(max_examples=40, deadline=None)
@given(_layers_and_masks(), st.sampled_from([1, 2]),
       st.floats(-10, 10, allow_nan=False).filter(lambda c: abs(c) > 1e-3))
def test_matches_reference_and_scales_linearly(gm, p, c):
  grads, masks = gm
  jg = [jnp.asarray(g, jnp.float32) for g in grads]
  want = _egf_reference(grads, masks, p)
  got = float(egf.effective_gradient_flow(jg, masks, ord=p))
  assert got == pytest.approx(want, rel=1e-5, abs=1e-4)
  # homogeneous of degree 1 in the gradients; invariant to the order of the layers;
  # blind to gradients of inactive weights.
  scaled = float(egf.effective_gradient_flow([c * g for g in jg], masks, ord=p))
  assert scaled == pytest.approx(abs(c) * got, rel=1e-4, abs=1e-3)
  flipped = float(egf.effective_gradient_flow(jg[::-1], masks[::-1], ord=p))
  assert flipped == pytest.approx(got, rel=1e-6, abs=1e-6)
  noisy = [jnp.where(m, g, 7.0) for g, m in zip(jg, masks)]
  assert float(egf.effective_gradient_flow(noisy, masks, ord=p)) == pytest.approx(
      got, rel=1e-6, abs=1e-6)
  flat = np.concatenate([g.ravel() for g in grads])
  assert float(egf.gradient_norm(jg, ord=p)) == pytest.approx(
      np.linalg.norm(flat, ord=p), rel=1e-5, abs=1e-4)


def _mlp_params(gated):
  model = MLP(features=(6, 4), num_classes=3, gated=gated)
  return model.init({"params": jax.random.key(0), "gates": jax.random.key(1)},
                    jnp.ones((2, 5)), deterministic=True)["params"]


def _ramp_grads(params):
  return jax.tree.map(lambda x: jnp.arange(x.size, dtype=jnp.float32).reshape(x.shape)
                      / x.size - 0.3, params)


def test_kernel_flow_inputs_on_a_gated_mlp():
  params = _mlp_params(gated=True)
  for name in ("fc1", "fc2", "fc3"):  # close the first two input gates of every layer
    params[name]["log_alpha"] = params[name]["log_alpha"].at[:2].set(-20.0)
  grads = _ramp_grads(params)
  kg, km = egf.kernel_flow_inputs(params, grads)
  assert list(kg) == ["fc1", "fc2", "fc3"] == list(density.gated_layers(params))
  ref_g, ref_m = [], []
  for name in ("fc1", "fc2", "fc3"):
    open_units = np.asarray(gates.deterministic_gate(params[name]["log_alpha"])) > 0
    assert not open_units[:2].any() and open_units[2:].any()
    ref_g.append(np.asarray(grads[name]["kernel"], np.float64))
    ref_m.append(np.repeat(open_units[:, None], ref_g[-1].shape[1], axis=1))
  m = egf.gradient_flow_metrics(grads, params)
  for p in (1, 2):
    assert float(m[f"egf_l{p}"]) == pytest.approx(_egf_reference(ref_g, ref_m, p),
                                                  rel=1e-6)
    flat = np.concatenate([g.ravel() for g in ref_g])  # every kernel weight
    assert float(m[f"grad_norm_l{p}"]) == pytest.approx(np.linalg.norm(flat, p),
                                                        rel=1e-6)


def test_kernel_flow_inputs_on_a_dense_mlp_use_every_weight():
  params = _mlp_params(gated=False)
  grads = _ramp_grads(params)
  m = jax.jit(egf.gradient_flow_metrics)(grads, params)
  assert "log_alpha" not in params["fc1"]
  ref_g = [np.asarray(grads[n]["kernel"], np.float64) for n in ("fc1", "fc2", "fc3")]
  ref_m = [np.ones_like(g, bool) for g in ref_g]
  assert float(m["egf_l2"]) == pytest.approx(_egf_reference(ref_g, ref_m, 2), rel=1e-6)
  # dense: EGF_1 is the mean over layers of the mean absolute gradient
  assert float(m["egf_l1"]) == pytest.approx(
      np.mean([np.abs(g).mean() for g in ref_g]), rel=1e-6)
