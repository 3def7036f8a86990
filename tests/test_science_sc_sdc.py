"""SC-SDC dense twins: widths solved as a chain, counts match within the reported error."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from l0jax import density
from l0jax.models.mlp import MLP
from l0jax.science import sc_sdc


def test_fashion_mnist_mlp_at_ten_percent_by_hand():
  # 784-300-100-10 at 10% per layer: 23520, 3000, 100 active weights.
  targets = sc_sdc.active_weights_from_densities((784, 300, 100, 10), (0.1, 0.1, 0.1))
  assert targets == (23520, 3000, 100)
  twin = sc_sdc.dense_twin(targets, 784, 10)
  # h1 = 23520 / 784 = 30 exactly; h2 = 3000 / 30 = 100 exactly; the last layer is
  # then 100 * 10 = 1000 weights, not 100: reported, not hidden.
  assert twin.widths == (784, 30, 100, 10)
  assert twin.twin_weights == (23520, 3000, 1000)
  assert twin.relative_error == pytest.approx((0.0, 0.0, 9.0))
  assert twin.max_abs_relative_error == pytest.approx(9.0)
  assert sc_sdc.twin_config_overrides(twin) == {"gated": "False",
                                                "mlp_features": "(30, 100)"}


def test_kept_inputs_of_a_unit_gated_mlp_by_hand():
  # kept inputs 400 of 784, 60 of 300, 30 of 100: 400*60, 60*30, 30*10 active weights.
  targets = sc_sdc.active_weights_from_kept_inputs((400, 60, 30), 10)
  assert targets == (24000, 1800, 300)
  twin = sc_sdc.dense_twin(targets, 784, 10)
  # 24000/784 = 30.6 -> 31 (31*784 = 24304); 1800/31 = 58.06 -> 58 (1798); 58*10 = 580.
  assert twin.widths == (784, 31, 58, 10)
  assert twin.twin_weights == (24304, 1798, 580)
  assert twin.relative_error == pytest.approx((304 / 24000, -2 / 1800, 280 / 300))


def test_width_never_below_one():
  twin = sc_sdc.dense_twin((10, 5), 784, 10)  # 10 / 784 rounds to 0 -> 1
  assert twin.widths == (784, 1, 10)


@pytest.mark.parametrize("call, match", [
    (lambda: sc_sdc.dense_twin((), 784, 10), "empty"),
    (lambda: sc_sdc.dense_twin((-1, 3), 784, 10), ">= 0"),
    (lambda: sc_sdc.dense_twin((1.5, 3), 784, 10), "whole number"),
    (lambda: sc_sdc.dense_twin((10, 3), 0, 10), "in_features"),
    (lambda: sc_sdc.active_weights_from_densities((784, 300), (0.1, 0.2)), "densities"),
    (lambda: sc_sdc.active_weights_from_densities((784, 300), (1.5,)), r"\[0, 1\]"),
])
def test_errors(call, match):
  with pytest.raises(sc_sdc.SCSDCError, match=match):
    call()


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2000), st.integers(1, 20),
       st.lists(st.integers(0, 10**6), min_size=1, max_size=5))
def test_hidden_layers_match_within_half_an_input_row(n_in, n_out, targets):
  twin = sc_sdc.dense_twin(targets, n_in, n_out)
  w = twin.widths
  assert w[0] == n_in and w[-1] == n_out and len(w) == len(targets) + 1
  assert all(h >= 1 for h in w)
  for l, (t, got) in enumerate(zip(twin.target_weights, twin.twin_weights)):
    assert got == w[l] * w[l + 1]  # the reported count is the built network's
    if t:
      assert twin.relative_error[l] == pytest.approx((got - t) / t)
    if l < len(targets) - 1:
      # rounding h_l to the nearest integer misses by at most half of h_{l-1}
      # (or the width was clamped to 1 because the target is below half a row)
      assert abs(got - t) <= w[l] / 2 or (w[l + 1] == 1 and t < w[l] / 2)


def test_kept_input_counts_agree_with_the_cascade_accounting_of_an_l0jax_mlp():
  params = MLP(features=(6, 4), num_classes=3).init(
      {"params": jax.random.key(0), "gates": jax.random.key(1)}, jnp.ones((1, 5)),
      deterministic=True)["params"]
  keep = {"fc1": [1, 0, 1, 1, 0], "fc2": [0, 1, 0, 0, 1, 0], "fc3": [1, 1, 0, 1]}
  for name, k in keep.items():  # saturated gates: open (+30) or closed (-30)
    params[name]["log_alpha"] = jnp.where(jnp.array(k, bool), 30.0, -30.0)
  layers = density.gated_layers(params)
  cascade = density.cascade_layer_densities(layers)
  active = [float(cascade[n]) * layers[n].num_sparsifiable for n in ("fc1", "fc2", "fc3")]
  want = sc_sdc.active_weights_from_kept_inputs([sum(k) for k in keep.values()], 3)
  assert want == (3 * 2, 2 * 3, 3 * 3)
  np.testing.assert_allclose(active, want, rtol=1e-4)
  twin = sc_sdc.dense_twin_of_gated_mlp(params, 5, 3)
  assert twin.target_weights == want
  # 6 / 5 -> 1 (5 weights); 6 / 1 -> 6 (6 weights); the last layer 6 * 3 = 18, not 9
  assert twin.widths == (5, 1, 6, 3) and twin.twin_weights == (5, 6, 18)


def test_twin_of_gated_mlp_refuses_unstructured_gates():
  params = MLP(features=(6, 4), num_classes=3, unstructured=True).init(
      {"params": jax.random.key(0), "gates": jax.random.key(1)}, jnp.ones((1, 5)),
      deterministic=True)["params"]
  with pytest.raises(sc_sdc.SCSDCError, match="input units"):
    sc_sdc.dense_twin_of_gated_mlp(params, 5, 3)


def test_twin_from_an_eval_json_dict():
  result = {"kept_units": {"fc1": 400, "fc2": 60, "fc3": 30},
            "total_units": {"fc1": 784, "fc2": 300, "fc3": 100}}
  twin, names = sc_sdc.dense_twin_from_eval_json(result, 10)
  assert names == ["fc1", "fc2", "fc3"]
  assert twin.widths == (784, 31, 58, 10)  # as worked out by hand above
  with pytest.raises(sc_sdc.SCSDCError, match="kept_units"):
    sc_sdc.dense_twin_from_eval_json({"test_error": 0.1}, 10)


def test_twin_script_writes_its_json(tmp_path):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  (tmp_path / "eval.json").write_text(json.dumps(
      {"kept_units": {"fc1": 400, "fc2": 60, "fc3": 30},
       "total_units": {"fc1": 784, "fc2": 300, "fc3": 100}}))
  out = subprocess.run([sys.executable, os.path.join(root, "experiments", "sc_sdc_twin.py"),
                        f"--workdir={tmp_path}"], capture_output=True, text=True,
                       check=True, timeout=300).stdout
  written = json.loads((tmp_path / "sc_sdc_twin.json").read_text())
  assert written["widths"] == [784, 31, 58, 10]
  assert written["twin_weights"] == [24304, 1798, 580]
  assert "'--config.mlp_features=(31, 58)'" in written["train_twin"]
  assert "'--config.gated=False'" in out


def _log_error_reference(targets, widths):
  w = np.asarray(widths, np.float64)
  return float(np.sum(np.log(w[:-1] * w[1:] / np.asarray(targets, np.float64)) ** 2))


def test_balanced_twin_of_the_ten_percent_profile_by_brute_force():
  # The chain twin puts the whole 9x mismatch on the last layer; the balanced one
  # spreads it. Brute force over every (h1, h2) in a box around the optimum.
  targets = (23520, 3000, 100)
  chain = sc_sdc.dense_twin(targets, 784, 10)
  balanced = sc_sdc.dense_twin(targets, 784, 10, solve="balanced")
  h1, h2 = np.meshgrid(np.arange(1, 121), np.arange(1, 121), indexing="ij")
  err = (np.log(784 * h1 / 23520) ** 2 + np.log(h1 * h2 / 3000) ** 2
         + np.log(h2 * 10 / 100) ** 2)
  i, j = np.unravel_index(np.argmin(err), err.shape)
  assert balanced.widths == (784, int(h1[i, j]), int(h2[i, j]), 10)
  assert _log_error_reference(targets, balanced.widths) < _log_error_reference(
      targets, chain.widths)
  assert balanced.max_abs_relative_error < chain.max_abs_relative_error


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.lists(st.integers(1, 60), min_size=1, max_size=3),
       st.integers(1, 800), st.integers(1, 20))
def test_balanced_twin_is_exact_when_it_can_be_and_never_worse_than_the_chain(
    hidden, n_in, n_out):
  widths = (n_in, *hidden, n_out)
  exact = tuple(widths[i] * widths[i + 1] for i in range(len(widths) - 1))
  assert sc_sdc.dense_twin(exact, n_in, n_out, solve="balanced").widths == widths
  # Any targets: no worse than the chain's widths, and no single width change helps.
  targets = tuple(max(1, t // 3 + 7 * i) for i, t in enumerate(exact))
  twin = sc_sdc.dense_twin(targets, n_in, n_out, solve="balanced")
  chain = sc_sdc.dense_twin(targets, n_in, n_out)
  best = _log_error_reference(targets, twin.widths)
  assert best <= _log_error_reference(targets, chain.widths) + 1e-12
  for k in range(1, len(widths) - 1):
    for step in (-1, 1):
      trial = list(twin.widths)
      trial[k] += step
      if trial[k] >= 1:
        assert _log_error_reference(targets, trial) >= best - 1e-12


def test_balanced_twin_refuses_a_dead_layer_and_unknown_solves():
  with pytest.raises(sc_sdc.SCSDCError, match="active weight"):
    sc_sdc.dense_twin((100, 0, 10), 784, 10, solve="balanced")
  with pytest.raises(sc_sdc.SCSDCError, match="solve="):
    sc_sdc.dense_twin((100, 10), 784, 10, solve="exact")
