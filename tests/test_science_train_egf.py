"""config.log_egf: EGF in the train step's metrics, checked against an outside gradient."""

import jax
import numpy as np
import optax
import pytest

from l0jax import data, reporting, train_lib
from l0jax.science import egf
from tests.test_train import small_config


def _steps(config, devices, num_steps=1):
  mesh = train_lib.make_mesh(devices)
  task = train_lib.make_task(config, 100)
  state = train_lib.replicate(train_lib.init_state(config, task), mesh)
  step = train_lib.make_train_step(config, task, mesh)
  batches = data.train_iterator(train_lib.load_source(config, "train"),
                                global_batch_size=config.batch_size, seed=config.seed,
                                local_device_count=len(devices))
  first = None
  for _ in range(num_steps):
    batch = next(batches)
    first = batch if first is None else first
    state, metrics = step(state, train_lib.shard_batch(batch, mesh))
  return task, state, metrics, first


def test_dense_model_egf_matches_an_outside_gradient(fake_dataset):
  config = small_config(fake_dataset, gated=False, log_egf=True, log_every_steps=1)
  task = train_lib.make_task(config, 100)
  params = train_lib.init_state(config, task).params
  _, _, metrics, batch = _steps(config, jax.devices()[:1])
  m = train_lib.unreplicate(metrics)

  images = batch["image"].reshape((-1,) + batch["image"].shape[2:])
  labels = batch["label"].reshape(-1)

  def loss(p):  # written here, not taken from the trainer
    logits = task.model.apply({"params": p}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = jax.grad(loss)(params)
  kernels = [np.asarray(grads[n]["kernel"], np.float64) for n in ("fc1", "fc2", "fc3")]
  for p in (1, 2):  # dense: every weight active
    want = np.mean([np.linalg.norm(k.ravel(), p) / k.size for k in kernels])
    assert float(m[f"egf_l{p}"]) == pytest.approx(want, rel=1e-4)
    flat = np.concatenate([k.ravel() for k in kernels])
    assert float(m[f"grad_norm_l{p}"]) == pytest.approx(np.linalg.norm(flat, p), rel=1e-4)


def test_log_egf_leaves_training_unchanged_and_agrees_on_4_devices_shard_map(fake_dataset):
  config = small_config(fake_dataset, log_egf=True, target_density=0.3)
  _, on, m_on, _ = _steps(config, jax.devices()[:1], num_steps=2)
  _, off, m_off, _ = _steps(small_config(fake_dataset, target_density=0.3),
                            jax.devices()[:1], num_steps=2)
  for a, b in zip(jax.tree.leaves(train_lib.unreplicate(on.params)),
                  jax.tree.leaves(train_lib.unreplicate(off.params))):
    np.testing.assert_array_equal(a, b)
  assert not any(k.startswith("egf") for k in m_off)
  _, _, m_skip, _ = _steps(config, jax.devices()[:1], num_steps=1)  # step 1 does not log
  assert all(np.isnan(train_lib.unreplicate(m_skip)[k]) for k in egf.FLOW_METRICS)
  one = train_lib.unreplicate(m_on)
  four_config = small_config(fake_dataset, log_egf=True, target_density=0.3,
                             parallel="shard_map")  # and the cond under shard_map
  _, _, m_four, _ = _steps(four_config, jax.devices()[:4], num_steps=2)
  four = train_lib.unreplicate(m_four)
  for k in ("egf_l1", "egf_l2", "grad_norm_l1", "grad_norm_l2"):
    assert np.isfinite(one[k]) and one[k] > 0
    assert float(four[k]) == pytest.approx(float(one[k]), rel=1e-4)


def test_log_egf_reaches_metrics_jsonl(fake_dataset, tmp_path):
  config = small_config(fake_dataset, log_egf=True, num_train_steps=4)
  train_lib.train_and_evaluate(config, str(tmp_path), jax.devices()[:1])
  records = [r for r in reporting.read_metrics(str(tmp_path)) if not r.get("eval")]
  assert [r["step"] for r in records] == [2, 4]
  assert all(r["egf_l2"] > 0 and r["grad_norm_l1"] > 0 for r in records)
  # eval.json carries the flow at the end of epoch 1 and at the end (eval_lib).
  from l0jax import eval_lib  # pylint: disable=g-import-not-at-top
  flow = eval_lib.evaluate_checkpoint(config, str(tmp_path), jax.devices()[:1])[
      "gradient_flow"]
  assert flow["final"]["step"] == 4
  assert flow["final"]["egf_l2"] == pytest.approx(records[-1]["egf_l2"])


def test_gradient_flow_report_picks_epoch_1_and_the_last_logged_row():
  rows = [{"step": s, "egf_l1": float(s), "egf_l2": 10.0 * s, "grad_norm_l1": 1.0,
           "grad_norm_l2": 2.0} for s in (5, 10, 15, 20)]
  records = rows[:2] + [{"eval": True, "step": 10, "test_error": 0.5}] + rows[2:]
  flow = reporting.gradient_flow_report(records, steps_per_epoch=12)["gradient_flow"]
  assert flow["epoch_1"] == {"step": 15, "epoch": 15 / 12, "egf_l1": 15.0,
                             "egf_l2": 150.0, "grad_norm_l1": 1.0, "grad_norm_l2": 2.0}
  assert flow["final"]["step"] == 20 and flow["final"]["egf_l2"] == 200.0
  # Shorter than one epoch: epoch 1 is the last row; nothing logged: no report.
  assert reporting.gradient_flow_report(rows, 100)["gradient_flow"]["epoch_1"]["step"] == 20
  assert reporting.gradient_flow_report([{"step": 1, "loss": 1.0}], 10) == {}
