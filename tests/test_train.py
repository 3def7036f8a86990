"""The trainer: device-count invariance, pmap == shard_map, resume, config errors, e2e."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fashion_mnist_mlp
from l0jax import data, eval_lib, reporting, train_lib, workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_config(fake_dataset, **overrides):
  idx_dir, data_dir = fake_dataset
  config = fashion_mnist_mlp.get_config("runlocal")
  config.idx_dir, config.data_dir = idx_dir, data_dir
  config.mlp_features = (32, 16)
  config.batch_size = 20
  config.num_train_steps = 6
  config.log_every_steps = 2
  config.eval_every_steps = 3
  config.checkpoint_every_steps = 3
  config.progress_bar = False
  config.tensorboard = False
  config.gate_learning_rate = 0.05
  config.dual_learning_rate = 0.5
  for k, v in overrides.items():
    config[k] = v
  return config


def run_steps(config, devices, num_steps=2):
  """``num_steps`` train steps on ``devices`` from the config's seed; returns (state, metrics)."""
  mesh = train_lib.make_mesh(devices)
  task = train_lib.make_task(config, 100)
  state = train_lib.replicate(train_lib.init_state(config, task), mesh)
  step = train_lib.make_train_step(config, task, mesh)
  batches = data.train_iterator(
      train_lib.load_source(config, "train"), global_batch_size=config.batch_size,
      seed=config.seed, prep=train_lib.preprocessing(config),
      local_device_count=len(devices))
  for _ in range(num_steps):
    state, metrics = step(state, train_lib.shard_batch(next(batches), mesh))
  return state, metrics


def _assert_trees_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.mark.parametrize("constraint", ["model", "layerwise"])
def test_one_vs_four_devices_same_result(fake_dataset, constraint):
  assert jax.device_count() >= 4, "tests/conftest.py forces 4 CPU devices"
  config = small_config(fake_dataset, constraint=constraint, target_density=0.3)
  one, _ = run_steps(config, jax.devices()[:1])
  four, _ = run_steps(config, jax.devices()[:4])
  _assert_trees_close(train_lib.unreplicate(one.params),
                      train_lib.unreplicate(four.params), 1e-5)
  _assert_trees_close(train_lib.unreplicate(one.constrained),
                      train_lib.unreplicate(four.constrained), 1e-5)
  assert np.all(np.asarray(train_lib.unreplicate(four.constrained.multipliers)) > 0)


def test_pmap_and_shard_map_agree(fake_dataset):
  devices = jax.devices()[:4]
  a, ma = run_steps(small_config(fake_dataset, parallel="pmap"), devices)
  b, mb = run_steps(small_config(fake_dataset, parallel="shard_map"), devices)
  _assert_trees_close(a, b, 1e-6)
  _assert_trees_close(ma, mb, 1e-6)


def test_replicas_identical_across_devices(fake_dataset):
  state, metrics = run_steps(small_config(fake_dataset), jax.devices()[:4], 3)
  for leaf in jax.tree.leaves((state.params, state.constrained, metrics)):
    leaf = np.asarray(leaf)
    for d in range(1, 4):
      np.testing.assert_array_equal(leaf[d], leaf[0])


@pytest.mark.parametrize("per_example", [True, False])
def test_gate_noise_differs_across_devices(fake_dataset, per_example):
  config = small_config(fake_dataset, sample_per_example=per_example)
  task = train_lib.make_task(config, 100)
  state = train_lib.init_state(config, task)
  mesh = train_lib.make_mesh(jax.devices()[:4])
  images = jnp.ones((4, 5, 28, 28, 1))  # the same examples on every device

  def body(images):
    key = jax.random.key(0)
    offset = jax.lax.axis_index(train_lib.AXIS) * images.shape[0]
    return train_lib._forward_train(task.model, state.params, state.batch_stats, images,
                                    key, config, offset)[0]

  logits = np.asarray(train_lib.parallelize(body, config, mesh, donate=False)(images))
  for d in range(1, 4):
    assert not np.allclose(logits[d], logits[0])
  if not per_example:  # one sample per device: every example of a device alike
    np.testing.assert_allclose(logits[0], np.broadcast_to(logits[0, 0], logits[0].shape),
                               rtol=1e-5)


def _final_checkpoint(config, path, devices):
  task = train_lib.make_task(config, 100)
  return workdir.Checkpoints(path).restore(train_lib.init_state(config, task))


class Killed(Exception):
  pass


def test_resume_equals_uninterrupted_run(fake_dataset, tmp_path, monkeypatch):
  config = small_config(fake_dataset, num_train_steps=8, checkpoint_every_steps=4,
                        log_every_steps=1)
  assert_resume_equals_uninterrupted_run(config, tmp_path, monkeypatch, killed_at=7)


def assert_resume_equals_uninterrupted_run(config, tmp_path, monkeypatch, killed_at):
  """Runs ``config`` straight, and "killed" while fetching the batch of step
  ``killed_at`` then resumed: the final checkpoints are bit-identical and the metrics
  the same (the resumed run redoes the steps after its last checkpoint, not repeats)."""
  devices = jax.devices()[:2]
  train_lib.train_and_evaluate(config, str(tmp_path / "straight"), devices)
  real_iterator = data.train_iterator

  def dying_iterator(*args, **kwargs):
    it = real_iterator(*args, **kwargs)
    for _ in range(killed_at - 1):
      yield next(it)
    raise Killed()

  monkeypatch.setattr(data, "train_iterator", dying_iterator)
  with pytest.raises(Killed):
    train_lib.train_and_evaluate(config, str(tmp_path / "resumed"), devices)
  monkeypatch.setattr(data, "train_iterator", real_iterator)
  assert max(r["step"] for r in reporting.read_metrics(str(tmp_path / "resumed"))) == (
      killed_at - 1)
  train_lib.train_and_evaluate(config, str(tmp_path / "resumed"), devices)
  a = _final_checkpoint(config, str(tmp_path / "straight"), devices)
  b = _final_checkpoint(config, str(tmp_path / "resumed"), devices)
  assert int(a.step) == int(b.step) == config.num_train_steps
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)  # bit-identical on CPU
  strip = lambda rs: [{k: v for k, v in r.items() if k != "examples_per_sec"} for r in rs]
  assert strip(reporting.read_metrics(str(tmp_path / "straight"))) == strip(
      reporting.read_metrics(str(tmp_path / "resumed")))
  return a


def test_checkpoint_of_other_model_fails_clearly(fake_dataset, tmp_path):
  devices = jax.devices()[:1]
  train_lib.train_and_evaluate(small_config(fake_dataset, num_train_steps=2),
                               str(tmp_path), devices)
  other = small_config(fake_dataset, num_train_steps=4, mlp_features=(8, 4))
  with pytest.raises(workdir.WorkdirError, match=r"mlp_features: \[32, 16\] -> \[8, 4\]"):
    train_lib.train_and_evaluate(other, str(tmp_path), devices)
  # Without the recorded config (a workdir of an older l0jax), the shapes still differ.
  os.remove(tmp_path / "config.json")
  task = train_lib.make_task(other, 4)
  with pytest.raises(workdir.WorkdirError, match="different model"):
    workdir.Checkpoints(str(tmp_path)).restore(train_lib.init_state(other, task))


BAD_VALUES = [
    ("target_density", 0.0), ("target_density", 1.5), ("layer_targets", (0.5, 0.5)),
    ("dataset", "cifar11"), ("model", "resnet7"), ("batch_size", 30),
    ("learning_rate", -1e-3), ("gate_learning_rate", -1.0), ("dual_learning_rate", -0.1),
    ("method", "magic"), ("constraint", "global"), ("scheme", "sgda"),
    ("test_gate", "mean"), ("parallel", "vmap"), ("optimizer", "lion"),
    ("steps_per_dispatch", 0), ("mlp_features", (0, 100)), ("mlp_features", (-5, 100)),
    ("lenet_conv_features", (20,)), ("lenet_dense_features", 0), ("learning_rate", 0.0),
    ("eval_every_steps", -7), ("momentum", 1.5), ("seed", -1), ("num_train_steps", -5),
    ("num_train_steps", 0), ("keep_checkpoints", 0), ("penalty", 0.5),
    ("penalty", float("nan")), ("train_split", ""),
    ("droprate_init", 1.0), ("droprate_init", 0.0),
]


@pytest.mark.parametrize("field,value", BAD_VALUES)
def test_bad_config_values_fail_with_field_named(fake_dataset, field, value):
  config = small_config(fake_dataset)
  config[field] = value
  with pytest.raises(train_lib.ConfigError, match=f"config.{field}=") as info:
    train_lib.validate_config(config, 4)
  assert "\n" not in str(info.value)


def test_penalized_needs_a_penalty(fake_dataset):
  config = small_config(fake_dataset, method="penalized")
  with pytest.raises(train_lib.ConfigError, match=r"config.penalty=0.0 .* must be > 0"):
    train_lib.validate_config(config, 4)
  config.penalty = 0.1
  train_lib.validate_config(config, 4)
  config.gated = False  # nothing to penalize: no penalty needed
  config.penalty = 0.0
  train_lib.validate_config(config, 4)


@pytest.mark.parametrize("model", ["mlp", "lenet5"])
def test_droprate_init_sets_every_gates_initial_open_probability(fake_dataset, model):
  config = small_config(fake_dataset, model=model, droprate_init=0.3)
  task = train_lib.make_task(config, 10)
  params = train_lib.init_state(config, task).params
  # P(z != 0) of log_alpha = logit(1 - 0.3) (+ N(0, 0.01^2) noise), in float64.
  beta, gamma, zeta = 2 / 3, -0.1, 1.1
  want = 1 / (1 + np.exp(-(np.log(0.7 / 0.3) - beta * np.log(-gamma / zeta))))
  log_alphas = [np.asarray(v["log_alpha"], np.float64) for v in params.values()]
  assert len(log_alphas) == (3 if model == "mlp" else 4)
  for la in log_alphas:
    p = 1 / (1 + np.exp(-(la - beta * np.log(-gamma / zeta))))
    np.testing.assert_allclose(p, want, atol=0.01)
  # < 0 keeps the model's own: the MLP's input gates start at drop rate 0.2.
  default = train_lib.init_state(small_config(fake_dataset, model=model),
                                 train_lib.make_task(small_config(fake_dataset,
                                                                  model=model), 10))
  first = np.asarray(default.params["fc1" if model == "mlp" else "conv1"]["log_alpha"])
  np.testing.assert_allclose(first.mean(), np.log(0.8 / 0.2) if model == "mlp" else 0.0,
                             atol=0.01)


def test_layerwise_target_list_length(fake_dataset):
  config = small_config(fake_dataset, constraint="layerwise")
  config.layer_targets = (0.3, 0.4, 0.5)
  train_lib.validate_config(config, 4)  # three gated layers: fine
  assert train_lib.make_task(config, 100).problem.targets == (0.3, 0.4, 0.5)
  config.layer_targets = (0.3, 0.4)
  with pytest.raises(train_lib.ConfigError, match="one target per gated layer"):
    train_lib.validate_config(config, 4)
  config.layer_targets = (0.3, 0.4, 1.5)
  with pytest.raises(train_lib.ConfigError, match="config.layer_targets="):
    train_lib.validate_config(config, 4)


def test_train_py_reports_bad_value_in_one_line(fake_dataset, tmp_path):
  idx_dir, data_dir = fake_dataset
  proc = subprocess.run(
      [sys.executable, "train.py", "--config=configs/fashion_mnist_mlp.py:runlocal",
       f"--workdir={tmp_path}", "--config.target_density=1.5"],
      cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert proc.stderr.strip().splitlines()[-1].startswith(
      "error: config.target_density=1.5 is invalid")
  assert not os.path.exists(tmp_path / "checkpoints")


def test_end_to_end_hits_target_and_eval_writes_everything(fake_dataset, tmp_path):
  run, exported = tmp_path / "run", tmp_path / "purged"
  config = small_config(fake_dataset, num_train_steps=400, target_density=0.5,
                        log_every_steps=20, eval_every_steps=200,
                        checkpoint_every_steps=200, tensorboard=True)
  devices = jax.devices()[:2]
  summary = train_lib.train_and_evaluate(config, str(run), devices)
  assert abs(summary["expected_density"] - 0.5) <= 0.02, summary
  assert summary["test_error"] < 0.5
  records = reporting.read_metrics(str(run))
  train_records = [r for r in records if not r.get("eval")]
  for key in ("step", "loss", "accuracy", "lagrangian", "expected_density",
              "layer_densities", "multipliers", "examples_per_sec"):
    assert key in train_records[-1]
  assert os.listdir(run / "tensorboard")

  proc = subprocess.run(  # the config train_and_evaluate recorded in the workdir
      [sys.executable, "eval.py", f"--workdir={run}",
       f"--export={exported}"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads((run / "eval.json").read_text())
  for key in ("test_error", "expected_density", "test_time_density", "kept_units",
              "n_params_dense", "n_params_kept"):
    assert key in result
  assert result["test_error"] == pytest.approx(summary["test_error"])
  assert result["n_params_kept"] < result["n_params_dense"]
  for name in ("density.png", "kept_units.png", "test_error.png"):
    assert (run / name).stat().st_size > 1000
  for key in ("purged_params", "purged_macs", "purged_density", "architecture"):
    assert key in result
  assert result["purged_density"] <= result["test_time_density"] + 1e-6
  assert result["architecture"] == "-".join(
      str(result["kept_units"][k]) for k in ("fc1", "fc2", "fc3")) or \
      result["purged_density"] < result["test_time_density"]

  # The exported purged model computes what the gated model computes at test time.
  from l0jax import purge
  purged_model, purged_params = purge.load(str(exported))
  task, state = eval_lib.restore_for_eval(config, str(run))
  x = jax.random.uniform(jax.random.key(0), (8, 28, 28, 1))
  np.testing.assert_allclose(
      purged_model.apply({"params": purged_params}, x),
      task.model.apply({"params": state.params}, x, deterministic=True), atol=1e-5)


def test_cifar_shaped_tfds_dataset_trains_through_train_and_eval_py(image_datasets, tmp_path):
  """A 32x32x3 PNG dataset written by a TFDS builder (its code not importable here:
  read from its folder), pad-crop + flip augmentation, LeNet-5 sized for 3 channels."""
  data_dir, _ = image_datasets
  args = ["--config=configs/fashion_mnist_lenet.py:runlocal",
          "--config.dataset=l0jax_test_cifar", f"--config.data_dir={data_dir}",
          "--config.lenet_conv_features=(4, 8)", "--config.lenet_dense_features=16",
          "--config.batch_size=20", "--config.num_train_steps=6",
          "--config.eval_every_steps=3", "--config.checkpoint_every_steps=3",
          "--config.log_every_steps=2", "--config.progress_bar=False"]
  for main, extra in (("train.py", []), ("eval.py", [f"--export={tmp_path / 'purged'}"])):
    proc = subprocess.run([sys.executable, main, f"--workdir={tmp_path / 'run'}"] + args
                          + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((tmp_path / "run" / "eval.json").read_text())
  assert result["step"] == 6 and result["test_examples"] == 60
  assert 0.0 <= result["test_error"] <= 1.0 and "purged_macs" in result
  from l0jax import purge
  model, params = purge.load(str(tmp_path / "purged"))
  assert model.apply({"params": params}, np.zeros((2, 32, 32, 3), np.float32)).shape == (2, 10)


@pytest.mark.parametrize("dataset,extra", [
    ("cifar100", {}), ("imagenet2012", {"image_size": 32, "eval_split": "validation[:40]"})])
def test_fake_data_trains_and_evaluates_with_the_dataset_shape(tmp_path, dataset, extra):
  config = small_config(("", str(tmp_path / "tfds")), dataset=dataset, fake_data=True,
                        num_train_steps=2, eval_every_steps=0, **extra)
  if "eval_split" not in extra:
    config.eval_split = "test[:40]"
  summary = train_lib.train_and_evaluate(config, str(tmp_path / "run"), jax.devices()[:2])
  info = train_lib.dataset_info(config)
  assert train_lib.input_shape(config) == ((32, 32, 3))
  assert summary["test_examples"] == 40 and summary["step"] == 2
  task = train_lib.make_task(config, 2)
  state = train_lib.init_state(config, task)
  assert state.params["fc3"]["kernel"].shape[-1] == info.num_classes
  assert state.params["fc1"]["kernel"].shape[0] == 32 * 32 * 3
  assert not os.path.exists(tmp_path / "tfds")  # nothing prepared or downloaded


def test_dense_baseline_trains_without_constraints(fake_dataset, tmp_path):
  summary = train_lib.train_and_evaluate(
      small_config(fake_dataset, gated=False, num_train_steps=4), str(tmp_path),
      jax.devices()[:1])
  assert summary["multipliers"] == []
  assert summary["n_params_kept"] == summary["n_params_dense"]


@pytest.mark.parametrize("constraint", ["model", "layerwise"])
def test_cascade_density_mode_constrains_the_cascade_density(fake_dataset, constraint):
  from l0jax import density
  config = small_config(fake_dataset, density_mode="cascade", constraint=constraint)
  task = train_lib.make_task(config, 100)
  params = train_lib.init_state(config, task).params
  want = (density.cascade_expected_density(params)[None] if constraint == "model"
          else jnp.stack(list(density.cascade_layer_densities(params).values())))
  np.testing.assert_allclose(task.constraints(params), want, rtol=1e-6)
  independent = train_lib.make_task(small_config(fake_dataset, constraint=constraint), 100)
  cascade, plain = (np.asarray(task.constraints(params)),
                    np.asarray(independent.constraints(params)))
  assert np.all(cascade <= plain + 1e-7) and cascade[0] < plain[0]
  config.density_mode = "deployed"
  with pytest.raises(train_lib.ConfigError, match="config.density_mode="):
    train_lib.validate_config(config, 4)


@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
def test_multi_step_dispatch_equals_single_steps(fake_dataset, parallel):
  # per-example noise: a function of the step, so a wrong step count would show
  config = small_config(fake_dataset, parallel=parallel)
  devices = jax.devices()[:2]
  mesh = train_lib.make_mesh(devices)
  task = train_lib.make_task(config, 100)
  host_state = train_lib.init_state(config, task)
  source = train_lib.load_source(config, "train")
  batches = data.train_iterator(
      source, global_batch_size=config.batch_size, seed=config.seed,
      local_device_count=len(devices))
  chunk = [next(batches) for _ in range(3)]

  single = train_lib.make_train_step(config, task, mesh)
  state = train_lib.replicate(host_state, mesh)
  for batch in chunk:
    state, metrics = single(state, train_lib.shard_batch(batch, mesh))
  multi = train_lib.make_multi_train_step(config, task, mesh)
  stacked = train_lib.stack_batches(chunk)
  assert stacked["image"].shape[:3] == (2, 3, 10)
  state3, metrics3 = multi(train_lib.replicate(host_state, mesh),
                           train_lib.shard_batch(stacked, mesh))
  assert int(train_lib.unreplicate(state3.step)) == 3
  _assert_trees_close(train_lib.unreplicate(state3), train_lib.unreplicate(state), 1e-6)
  _assert_trees_close(train_lib.unreplicate(metrics3), train_lib.unreplicate(metrics),
                      1e-6)


def _count_multi_step_calls(monkeypatch):
  calls = []
  real = train_lib.make_multi_train_step

  def counting(*args, **kwargs):
    fn = real(*args, **kwargs)

    def wrapped(state, batches):
      calls.append(batches["label"].shape[1])
      return fn(state, batches)
    return wrapped
  monkeypatch.setattr(train_lib, "make_multi_train_step", counting)
  return calls


def _records(workdir):
  return [{k: v for k, v in r.items() if k != "examples_per_sec"}
          for r in reporting.read_metrics(workdir)]


def _assert_records_close(a, b):
  assert [sorted(r) for r in a] == [sorted(r) for r in b]
  for ra, rb in zip(a, b):
    for key in ra:
      np.testing.assert_allclose(np.asarray(jax.tree.leaves(ra[key])),
                                 np.asarray(jax.tree.leaves(rb[key])), rtol=1e-5,
                                 atol=1e-7, err_msg=key)


def test_steps_per_dispatch_gives_the_same_run(fake_dataset, tmp_path, monkeypatch):
  # 12 steps, events at 4, 6, 8, 12: k=2 runs six 2-step calls; k=4 runs 0-4 and
  # 8-12 as 4-step calls and 4-8 as single steps.
  devices = jax.devices()[:2]
  calls = _count_multi_step_calls(monkeypatch)
  runs = {}
  for k in (1, 2, 4):
    config = small_config(fake_dataset, num_train_steps=12, log_every_steps=4,
                          eval_every_steps=6, checkpoint_every_steps=12,
                          steps_per_dispatch=k)
    calls.clear()
    summary = train_lib.train_and_evaluate(config, str(tmp_path / f"k{k}"), devices)
    runs[k] = (summary, _records(str(tmp_path / f"k{k}")),
               _final_checkpoint(config, str(tmp_path / f"k{k}"), devices), list(calls))
  assert runs[1][3] == [] and runs[2][3] == [2] * 6 and runs[4][3] == [4, 4]
  for k in (2, 4):
    _assert_records_close(runs[k][1], runs[1][1])
    _assert_trees_close(runs[k][2], runs[1][2], 1e-5)
    assert runs[k][0]["test_error"] == pytest.approx(runs[1][0]["test_error"])


def test_preemption_inside_a_multi_step_call_saves_at_its_end_and_resumes(
    fake_dataset, tmp_path, monkeypatch):
  from l0jax import distributed
  devices = jax.devices()[:2]
  config = small_config(fake_dataset, num_train_steps=12, log_every_steps=3,
                        eval_every_steps=0, checkpoint_every_steps=12,
                        steps_per_dispatch=2)
  train_lib.train_and_evaluate(config, str(tmp_path / "straight"), devices)

  # Events at 3, 6, 9, 12: calls 0-2 (2 steps), 3, 3-5, 6, ...; the processes agree on
  # step 4, inside the 2-step call 3-5, so the run saves at 5 and stops.
  queried = []
  monkeypatch.setattr(distributed, "reached_preemption_sync_point",
                      lambda s: queried.append(s) or s == 4)
  with pytest.raises(distributed.Preempted, match="step 5"):
    train_lib.train_and_evaluate(config, str(tmp_path / "resumed"), devices)
  assert queried == [0, 1, 2, 3, 4, 5]
  queried.clear()
  train_lib.train_and_evaluate(config, str(tmp_path / "resumed"), devices)
  assert queried == list(range(5, 13))  # resumed at 5, not a multiple of k
  a = _final_checkpoint(config, str(tmp_path / "straight"), devices)
  b = _final_checkpoint(config, str(tmp_path / "resumed"), devices)
  assert int(a.step) == int(b.step) == 12
  _assert_trees_close(a, b, 1e-6)
  _assert_records_close(_records(str(tmp_path / "resumed")),
                        _records(str(tmp_path / "straight")))


def test_steps_per_call_is_one_for_xla_convolutions_on_cpu(fake_dataset):
  mesh = train_lib.make_mesh(jax.devices("cpu")[:1])
  config = small_config(fake_dataset, steps_per_dispatch=7)
  assert train_lib.steps_per_call(config, mesh) == 7
  config.ops_method = "xla"
  assert train_lib.steps_per_call(config, mesh) == 7  # the MLP has no convolutions
  config.model = "lenet5"
  assert train_lib.steps_per_call(config, mesh) == 1


def test_equality_constraint_reopens_gates_below_the_target(fake_dataset):
  # Gates start at ~50% density, the target is 90%: "<=" is met, its multiplier stays
  # at 0 (projected); "==" is not, its multiplier turns negative and pulls density up.
  densities, multipliers = {}, {}
  for kind in ("ineq", "eq"):
    config = small_config(fake_dataset, constraint_kind=kind, target_density=0.9,
                          droprate_init=0.5, dual_learning_rate=5.0)
    assert train_lib.make_problem(config, 3).kinds == (kind,)
    state, metrics = run_steps(config, jax.devices()[:1], num_steps=4)
    densities[kind] = float(np.asarray(metrics["expected_density"]).ravel()[0])
    multipliers[kind] = float(np.asarray(state.constrained.multipliers).ravel()[0])
  assert multipliers["ineq"] == 0.0 and multipliers["eq"] < 0.0
  assert densities["eq"] > densities["ineq"]
  with pytest.raises(train_lib.ConfigError, match="constraint_kind"):
    train_lib.validate_config(small_config(fake_dataset, constraint_kind="le"), 1)
