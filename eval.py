"""Evaluate the latest checkpoint: python eval.py --config=... --workdir=/tmp/run

Writes WORKDIR/eval.json and PNG plots (density and multipliers vs step, kept units per
layer, test error vs step) next to it.
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from l0jax import plots, train_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory train.py wrote.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    train_lib.validate_config(_CONFIG.value)
  except train_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  workdir = _WORKDIR.value
  result = train_lib.evaluate_checkpoint(_CONFIG.value, workdir)
  path = os.path.join(workdir, "eval.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  written = plots.write_all(workdir, result, train_lib.read_metrics(workdir))
  print(train_lib.format_summary(result))
  print(f"wrote {path}" + "".join(f"\nwrote {p}" for p in written))


if __name__ == "__main__":
  app.run(main)
