"""Train a gated model: python train.py --config=configs/fashion_mnist_mlp.py --workdir=/tmp/run

Any config field can be changed with --config.FIELD=VALUE. Running the same command
again resumes from the latest checkpoint in --workdir. On several hosts, every host runs
the same command (see l0jax/distributed.py and the README's "Multi-host" section).
"""

import sys

from absl import app, flags
from ml_collections import config_flags

from l0jax import distributed, train_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  train_lib.start_main(_CONFIG.value)
  with distributed.stop_all_on_error():  # multi-process: a failing process ends at once
    try:
      train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except distributed.Preempted as e:  # every process saved the same step
      distributed.shutdown()
      sys.exit(str(e))
  distributed.shutdown()


if __name__ == "__main__":
  app.run(main)
