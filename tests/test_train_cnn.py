"""The trainer with the residual CNNs: BatchNorm statistics across devices and resume,
bfloat16, the SGD recipes (Nesterov, step decay, masked weight decay, label smoothing)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import fashion_mnist_resnet20
from l0jax import data, eval_lib, train_lib
from test_train import run_steps


class Killed(Exception):
  pass


def cnn_config(image_datasets, **overrides):
  data_dir, _ = image_datasets
  config = fashion_mnist_resnet20.get_config("runlocal")
  config.dataset, config.data_dir = "l0jax_test_cifar", data_dir
  config.depth, config.width_scale = 8, 0.25
  config.batch_size, config.num_train_steps = 8, 4
  config.log_every_steps, config.eval_every_steps = 1, 2
  config.checkpoint_every_steps = 2
  config.progress_bar = config.tensorboard = False
  config.eval_split = "test[:16]"
  config.dual_learning_rate = 0.5
  for k, v in overrides.items():
    config[k] = v
  return config


def _steps(config, devices, num_steps=2):
  """``test_train.run_steps``, unreplicated."""
  state, metrics = run_steps(config, devices, num_steps)
  return train_lib.unreplicate(state), train_lib.unreplicate(metrics)


def test_one_vs_four_devices_same_params_statistics_and_multipliers(image_datasets):
  # Per-example gate noise (the default) is a function of the global example index;
  # per-batch noise is drawn per device by design, so only the former is invariant.
  config = cnn_config(image_datasets)
  one, m1 = _steps(config, jax.devices()[:1])
  four, m4 = _steps(config, jax.devices()[:4])
  assert jax.tree.leaves(one.batch_stats)  # the model has BatchNorm statistics
  for a, b in zip(jax.tree.leaves((one.params, one.batch_stats, one.constrained)),
                  jax.tree.leaves((four.params, four.batch_stats, four.constrained))):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
  np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-5)


def test_resume_with_batch_statistics_is_bit_identical(image_datasets, tmp_path,
                                                       monkeypatch):
  devices = jax.devices()[:2]
  config = cnn_config(image_datasets)
  train_lib.train_and_evaluate(config, str(tmp_path / "straight"), devices)
  real_iterator = data.train_iterator

  def dying_iterator(*args, **kwargs):
    it = real_iterator(*args, **kwargs)
    for _ in range(3):
      yield next(it)
    raise Killed()

  monkeypatch.setattr(data, "train_iterator", dying_iterator)
  with pytest.raises(Killed):
    train_lib.train_and_evaluate(config, str(tmp_path / "resumed"), devices)
  monkeypatch.setattr(data, "train_iterator", real_iterator)
  train_lib.train_and_evaluate(config, str(tmp_path / "resumed"), devices)
  _, a = eval_lib.restore_for_eval(config, str(tmp_path / "straight"))
  _, b = eval_lib.restore_for_eval(config, str(tmp_path / "resumed"))
  assert int(a.step) == int(b.step) == 4
  assert jax.tree.leaves(a.batch_stats)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)
  # The trained run's purged model gives the gated model's test-time logits.
  from experiments import check_purged  # pylint: disable=g-import-not-at-top
  checked = check_purged.compare(str(tmp_path / "straight"), examples=16)
  assert checked["examples"] == 16 and checked["same_prediction"] == 1.0
  assert checked["max_abs_diff"] <= 1e-5 * max(1.0, checked["max_abs_logit"])


def test_bfloat16_run_keeps_gates_statistics_and_duals_float32(image_datasets):
  state, metrics = _steps(cnn_config(image_datasets, dtype="bfloat16"), jax.devices()[:1])
  f32 = jnp.dtype(jnp.float32)
  assert {a.dtype for a in jax.tree.leaves((state.params, state.batch_stats))} == {f32}
  assert np.asarray(state.constrained.multipliers).dtype == f32
  assert np.isfinite(metrics["loss"]) and np.asarray(metrics["expected_density"]).dtype == f32


def test_weight_decay_only_on_kernels_and_step_decay_schedule(image_datasets):
  config = cnn_config(image_datasets, optimizer="sgd", learning_rate=0.5, weight_decay=0.1,
                      gate_optimizer="sgd", lr_schedule="step", lr_milestones=(2, 3),
                      lr_decay_factor=0.1)
  params = {"conv": {"kernel": jnp.ones((3, 3, 2, 4)), "scale": jnp.ones((4,)),
                     "bias": jnp.ones((4,)), "log_alpha": jnp.ones((4,))},
            "classifier": {"kernel": jnp.full((4, 10), 2.0), "bias": jnp.ones((10,))}}
  tx = train_lib.make_primal_optimizer(config, total_steps=100, steps_per_epoch=5)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["conv"]["kernel"], -0.5 * 0.1 * 1.0)
  np.testing.assert_allclose(updates["classifier"]["kernel"], -0.5 * 0.1 * 2.0)
  for leaf in ("scale", "bias", "log_alpha"):
    assert not np.any(updates["conv"][leaf])
  assert not np.any(updates["classifier"]["bias"])
  schedule = train_lib.learning_rate_schedule(config, 100, steps_per_epoch=5)
  assert [float(schedule(s)) for s in (0, 9, 10, 14, 15, 99)] == pytest.approx(
      [0.5, 0.5, 0.05, 0.05, 0.005, 0.005])


def test_nesterov_is_optax_nesterov_sgd():
  config = fashion_mnist_resnet20.get_config()
  params = {"w": {"kernel": jnp.array([1.0, -2.0])}}
  grads = {"w": {"kernel": jnp.array([0.3, 0.1])}}
  ours = train_lib._optax("nesterov", 0.1, 0.9)
  ref = optax.sgd(0.1, momentum=0.9, nesterov=True)
  s1, s2 = ours.init(params), ref.init(params)
  for _ in range(3):
    u1, s1 = ours.update(grads, s1, params)
    u2, s2 = ref.update(grads, s2, params)
    np.testing.assert_allclose(u1["w"]["kernel"], u2["w"]["kernel"])
  assert config.optimizer == "nesterov"


def test_label_smoothing_matches_the_formula():
  logits = jnp.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
  labels = jnp.array([0, 2])
  logp = np.log(np.exp(np.asarray(logits, np.float64)) /
                np.exp(np.asarray(logits, np.float64)).sum(-1, keepdims=True))
  targets = np.full((2, 3), 0.1 / 3) + 0.9 * np.eye(3)[np.asarray(labels)]
  want = -(targets * logp).sum(-1).mean()
  got = train_lib.cross_entropy(logits, labels, label_smoothing=0.1)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  np.testing.assert_allclose(train_lib.cross_entropy(logits, labels),
                             -logp[np.arange(2), np.asarray(labels)].mean(), rtol=1e-6)


@pytest.mark.parametrize("constraint", ["model", "layerwise"])
def test_macs_density_mode_constrains_the_graphs_expected_macs(image_datasets, constraint):
  from l0jax import density, purge  # pylint: disable=g-import-not-at-top
  config = cnn_config(image_datasets, density_mode="macs", constraint=constraint,
                      target_density=0.5)
  task = train_lib.make_task(config, 4)
  params = train_lib.init_state(config, task).params
  graph = purge.macs_graph(task.model, params, train_lib.input_shape(config))
  macs = density.layer_macs(graph, params)
  values = np.asarray(task.constraints(params))
  if constraint == "model":
    np.testing.assert_allclose(values, [sum(macs.values()) /
                                        sum(op.macs for op in graph.values())], rtol=1e-6)
  else:
    names = task.layer_names
    np.testing.assert_allclose(values, [macs[n] / graph[n].macs for n in names], rtol=1e-6)
  # MACs fall faster than parameters: a gate closes a channel in two layers.
  assert values.min() < float(density.expected_density(params))
  state, metrics = _steps(config, jax.devices()[:1])
  assert np.all(np.isfinite(np.asarray(metrics["constraint_values"])))
