"""What train.py and eval.py share: flag parsing, start-up, and the frame they run in.

Both mains are::

    def main(argv):
      with cli.main_process():       # one-line errors; processes end together
        cli.start_main(config)       # logging, jax.distributed, config checks
        ...                          # train_and_evaluate / evaluate_checkpoint

    app.run(main, flags_parser=cli.parse_flags)

so an expected failure anywhere (a bad flag or config value, a workdir in use or
started with another config, a missing file, a full disk, a diverged run, Ctrl-C) ends
with one line ``error: ...`` and a non-zero exit, and ``L0JAX_DEBUG=1`` shows its
traceback (:mod:`l0jax.errors`).
"""

from __future__ import annotations

import contextlib
import sys
from typing import List, Sequence

from l0jax import distributed, errors, train_lib

__all__ = ["parse_flags", "start_main", "main_process"]


def parse_flags(argv: Sequence[str]) -> List[str]:
  """absl's flag parsing for the mains, with a bad flag or config reported in one line.

  Pass it to ``app.run(main, flags_parser=cli.parse_flags)``. A config field
  typo (``--config.learnin_rate``), an unknown config argument or an unreadable config
  file end with ``error: ...`` and exit code 2 (``$L0JAX_DEBUG`` keeps the traceback).
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  try:
    args = flags.FLAGS(list(argv))
    if "config" in flags.FLAGS and flags.FLAGS["config"].present:
      flags.FLAGS["config"].value.keys()  # a config file that failed to load raises here
    return args
  except (flags.Error, KeyError, AttributeError, TypeError, ValueError, OSError) as e:
    if errors.show_tracebacks():
      raise
    text = str(e)
    if isinstance(e, (KeyError, AttributeError)):  # str() of these is a repr
      text = text.strip("'\"").replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.strip().startswith("File ")]
    # A config-file error is a traceback: its first line names the flag, its last one
    # the exception; a field typo is "'name' Did you mean ...".
    message = lines[0] if len(lines) < 2 else f"{lines[0]} {lines[-1]}"
    if isinstance(e, (KeyError, AttributeError)):
      message = f"unknown config field {message}"
    elif isinstance(e, OSError):  # the config file itself
      message = f"--config={flags.FLAGS['config'].serialize().split('=', 1)[-1]}: {lines[-1]}"
    sys.stderr.write(f"error: {' '.join(message.split())}\n")
    raise SystemExit(2) from None


def start_main(config) -> None:
  """What train.py and eval.py do first: quiet logs, join the processes, check config.

  Raises UserError (ConfigError, DistributedError) on a bad value or failed start-up;
  run it inside :func:`main_process`, which prints those in one line.
  """
  from absl import flags, logging  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  distributed.initialize(config)  # before anything touches a device
  train_lib.validate_config(config)


@contextlib.contextmanager
def main_process():
  """The frame of train.py and eval.py: one line for expected failures, processes end together.

  * an expected failure (``UserError``, ``OSError``, Ctrl-C) prints ``error: ...`` and
    exits non-zero without a traceback (``$L0JAX_DEBUG=1`` shows it);
  * in a multi-process run, a process that fails ends at once, so the others follow
    (``distributed.stop_all_on_error``);
  * a preempted run (``distributed.Preempted``) and a successful one leave the
    multi-process run together (``distributed.shutdown``).
  """
  with errors.one_line_errors():
    try:
      with distributed.stop_all_on_error():
        yield
    except distributed.Preempted as e:  # every process saved the same step
      distributed.shutdown()
      raise SystemExit(str(e)) from None
    distributed.shutdown()
