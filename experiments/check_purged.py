r"""Checks a trained run's purged model against the gated one on real test images.

    python experiments/check_purged.py --workdir=W [--examples=500]

Restores the newest verified checkpoint of W (with the config train.py recorded
there), compacts it (``l0jax.purge.purge``) and prints the largest difference between
the gated model's test-time logits and the purged model's, and the fraction of equal
predictions, on the first ``--examples`` images of the eval split.
"""

from __future__ import annotations

import argparse
import os
import sys

if __package__ in (None, ""):  # python experiments/check_purged.py
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from l0jax import data, eval_lib, purge, train_lib  # noqa: E402
from l0jax import workdir as workdir_lib  # noqa: E402


def compare(workdir: str, examples: int = 500) -> dict:
  """``{"max_abs_diff", "max_abs_logit", "same_prediction"}`` of gated vs purged."""
  config = workdir_lib.config_for_eval(workdir_lib.require_run(workdir), None)
  task, state = eval_lib.restore_for_eval(config, workdir)
  variables = train_lib.eval_variables(state)
  small, small_variables = purge.purge(task.model, variables)
  source = train_lib.load_source(config, config.eval_split)
  batch = next(iter(data.eval_iterator(source, global_batch_size=examples,
                                       prep=train_lib.preprocessing(config))))
  x = batch["image"][0][batch["mask"][0] > 0]
  gated = np.asarray(jax.jit(lambda v, x: task.model.apply(v, x, deterministic=True))(
      variables, x))
  purged = np.asarray(jax.jit(lambda v, x: small.apply(v, x, deterministic=True))(
      small_variables, x))
  return {"examples": int(x.shape[0]),
          "max_abs_diff": float(np.max(np.abs(gated - purged))),
          "max_abs_logit": float(np.max(np.abs(gated))),
          "same_prediction": float(np.mean(gated.argmax(-1) == purged.argmax(-1)))}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--examples", type=int, default=500)
  args = parser.parse_args(argv)
  print(compare(args.workdir, args.examples))
  return 0


if __name__ == "__main__":
  sys.exit(main())
