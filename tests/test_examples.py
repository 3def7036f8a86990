"""Every script in examples/ runs, small, and does what its docstring says."""

import importlib.util
import pathlib

import jax
import numpy as np

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def load(name):
  spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_every_example_has_a_test():
  tested = {"feature_selection", "flax_cnn", "nnx_mlp", "attention_heads",
            "fairness_proxy"}
  assert {p.stem for p in EXAMPLES.glob("*.py")} == tested


def test_feature_selection_finds_the_true_features():
  module = load("feature_selection")
  out = module.main(["--steps=300"])
  assert out["kept"] == module.TRUE_FEATURES
  assert out["expected_density"] <= 0.15 + 0.01
  assert out["mse"] < 0.05  # the noise variance is 0.01


def test_flax_cnn_sparsified_by_path_specs_meets_its_macs_target():
  module = load("flax_cnn")
  out = module.main(["--tiny"])
  assert out["accuracy"] >= 0.9
  assert abs(out["expected_macs"][-1] - 0.25) <= 0.03
  assert out["test_time_macs"] <= 0.25 + 0.05
  assert 0 < out["kept"]["Conv_0/kernel"] < 4  # channels were pruned, not all
  masks = out["masks"]
  assert set(masks) == {"Conv_0", "Conv_1", "Dense_0", "Dense_1"}
  assert all(m.dtype == bool for m in jax.tree.leaves(masks))
  # A closed channel masks its kernel slice and its bias alike.
  np.testing.assert_array_equal(masks["Conv_0"]["kernel"].all(axis=(0, 1, 2)),
                                masks["Conv_0"]["bias"])


def test_nnx_model_meets_its_density_target():
  out = load("nnx_mlp").main(["--tiny"])
  assert out["accuracy"] >= 0.7  # 3 classes
  assert abs(out["expected_density"] - 0.3) <= 0.05
  assert out["kept_inputs"] and set(out["kept_inputs"]) <= {0, 1, 2, 3}


def test_attention_heads_pruned_under_a_macs_constraint():
  out = load("attention_heads").main(["--tiny"])
  assert out["accuracy"] >= 0.9
  assert 1 <= out["kept"]["heads"] < 4
  assert out["expected_macs"][-1] <= 0.35 + 0.06
  assert out["test_time_macs"] <= 0.35 + 0.06


def test_fairness_gap_constraint_with_a_proxy():
  out = load("fairness_proxy").main(["--tiny"])
  free, fair = out["density only"], out["density and gap"]
  assert free["train_gap"] > 0.1  # the data make an unconstrained model unfair
  assert fair["train_gap"] <= 0.05 + 0.02 and fair["train_gap"] < 0.6 * free["train_gap"]
  assert fair["accuracy"] >= 0.8
  assert fair["density"] <= 0.5 + 0.02 and free["density"] <= 0.5 + 0.02
