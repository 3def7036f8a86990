r"""Capacity check: train a finished run's purged architecture from fresh weights.

Is a sparse model's test error the price of its architecture, or of training it under
gates? This takes the purged (plain Flax) model of a sweep run's latest checkpoint,
re-initialises its weights (seed ``--seed``) and trains it without gates, with the run's
optimizer settings (Adam at its ``learning_rate``, batch size, data order) for as many
epochs as the run had; then prints and saves both test errors.

    nice -n 10 python experiments/retrain_purged.py \
        --workdir=/tmp/l0jax_sweeps/lenet_gap/before/seed=0 \
        --out=experiments/results/lenet_gap/retrain_before.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict

if __package__ in (None, ""):  # python experiments/retrain_purged.py
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from experiments import runs  # noqa: E402
from l0jax import data, eval_lib, purge, train_lib  # noqa: E402


def retrain(workdir: str, seed: int = 0) -> Dict[str, Any]:
  """Retrains the purged model of ``workdir`` (a sweep run) from fresh weights."""
  with open(os.path.join(workdir, runs.RUN_FILE)) as f:
    recorded = json.load(f)
  config = runs.load_config(recorded["config"], recorded["overrides"], recorded["seed"])
  if config.model not in ("mlp", "lenet5"):
    raise SystemExit(f"retrain_purged.py trains MLP and LeNet-5 runs (no BatchNorm); "
                     f"this run's model is {config.model!r}")
  task, state = eval_lib.restore_for_eval(config, workdir)
  model, _ = purge.purge(task.model, state.params)
  x = jnp.zeros((1,) + train_lib.input_shape(config), jnp.float32)
  params = model.init(jax.random.key(seed), x)["params"]
  tx = optax.adam(config.learning_rate)
  opt_state = tx.init(params)

  def loss_fn(p, batch):
    logits = model.apply({"params": p}, batch["image"])
    return train_lib.cross_entropy(logits, batch["label"])

  @jax.jit
  def step(p, o, batch):
    grads = jax.grad(loss_fn)(p, batch)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o

  @jax.jit
  def correct(p, batch):
    logits = model.apply({"params": p}, batch["image"])
    return jnp.sum((jnp.argmax(logits, -1) == batch["label"]) * batch["mask"])

  first = lambda b: {k: v[0] for k, v in b.items()}  # one device: drop the device axis
  train_source = train_lib.load_source(config, config.train_split)
  prep = train_lib.preprocessing(config)
  batches = data.train_iterator(
      train_source, global_batch_size=config.batch_size, seed=config.seed, prep=prep)
  for _ in range(train_lib.num_train_steps(config, len(train_source))):
    params, opt_state = step(params, opt_state, first(next(batches)))
  test = train_lib.load_source(config, config.eval_split)
  right = sum(float(correct(params, first(b))) for b in data.eval_iterator(
      test, global_batch_size=config.batch_size, prep=prep))
  with open(os.path.join(workdir, "eval.json")) as f:
    gated = json.load(f)
  return {"workdir": workdir, "architecture": gated.get("architecture"),
          "purged_params": gated.get("purged_params"), "seed": seed,
          "n_params": sum(int(v.size) for v in jax.tree.leaves(params)),
          "test_error_gated": gated["test_error"],
          "test_error_retrained": 1.0 - right / len(test)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a finished sweep run")
  parser.add_argument("--seed", type=int, default=0, help="of the fresh weights")
  parser.add_argument("--out", default="", help="also save the result (JSON) here")
  args = parser.parse_args(argv)
  result = retrain(os.path.abspath(args.workdir), args.seed)
  print(json.dumps(result, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
