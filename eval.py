"""Evaluate the newest verified checkpoint: python eval.py --workdir=/tmp/run

Uses the config train.py recorded in WORKDIR/config.json (a --config given must agree
with it in every field that alters the run). Writes WORKDIR/eval.json and PNG plots
(density and multipliers vs step, kept units per layer, test error vs step) next to it;
--export=PATH also saves the purged model outside the workdir.
"""

import json
import os

import jax
from absl import app, flags
from ml_collections import config_flags

from l0jax import cli, distributed, eval_lib, plots, reporting, train_lib
from l0jax import workdir as workdir_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:arg]); default: the config recorded in "
    "WORKDIR/config.json.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory train.py wrote.")
_EXPORT = flags.DEFINE_string(
    "export", None, "Also save the purged (compacted) model here, outside --workdir; "
    "load it with l0jax.purge.load(PATH).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Let --export replace a previous export at PATH.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  with cli.main_process():  # one line for expected failures; processes end together
    workdir = workdir_lib.require_run(_WORKDIR.value)
    config = workdir_lib.config_for_eval(workdir, _CONFIG.value)
    cli.start_main(config)
    if distributed.is_main_process():  # the one process that writes there
      workdir_lib.require_writable(workdir)
    if _EXPORT.value:  # checked before anything is evaluated or written
      if jax.process_count() > 1:  # purge.save is single-process
        raise train_lib.ConfigError(
            "--export needs a single-process run: on one host, run eval.py --export=... "
            "--config.distributed=off (same checkpoint, same result)")
      eval_lib.check_export(config, workdir, _EXPORT.value, _OVERWRITE.value)
    result = eval_lib.evaluate_checkpoint(config, workdir)  # every process
    if not distributed.is_main_process():
      return  # only process 0 writes
    path = os.path.join(workdir, "eval.json")
    workdir_lib.atomic_write(path, json.dumps(result, indent=2) + "\n")
    written = plots.write_all(workdir, result, reporting.read_metrics(workdir))
    if _EXPORT.value:
      written.append(eval_lib.export_purged(config, workdir, _EXPORT.value,
                                             _OVERWRITE.value))
    print(reporting.format_summary(result))
    print(f"wrote {path}" + "".join(f"\nwrote {p}" for p in written))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
