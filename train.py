"""Train a gated model: python train.py --config=configs/fashion_mnist_mlp.py --workdir=/tmp/run

Any config field can be changed with --config.FIELD=VALUE. Running the same command
again resumes from the latest checkpoint in --workdir.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from l0jax import train_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  try:
    train_lib.validate_config(_CONFIG.value)
  except train_lib.ConfigError as e:
    sys.exit(f"error: {e}")
  train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
