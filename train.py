"""Train a gated model: python train.py --config=configs/fashion_mnist_mlp.py --workdir=/tmp/run

Any config field can be changed with --config.FIELD=VALUE. Running the same command
again resumes from the newest verified checkpoint in --workdir (refused if the config
changed in a field that alters the run; see l0jax/workdir.py). On several hosts, every
host runs the same command (see l0jax/distributed.py and the README's "Multi-host"
section). Expected failures end with one line "error: ..."; L0JAX_DEBUG=1 shows the
traceback.
"""

from absl import app, flags
from ml_collections import config_flags

from l0jax import cli, train_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  with cli.main_process():  # one line for expected failures; processes end together
    cli.start_main(_CONFIG.value)
    train_lib.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
