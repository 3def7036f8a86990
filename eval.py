"""Evaluate the latest checkpoint: python eval.py --config=... --workdir=/tmp/run

Writes WORKDIR/eval.json and PNG plots (density and multipliers vs step, kept units per
layer, test error vs step) next to it.
"""

import json
import os
import sys

import jax
from absl import app, flags
from ml_collections import config_flags

from l0jax import distributed, plots, train_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory train.py wrote.")
_EXPORT = flags.DEFINE_string(
    "export", None, "Also save the purged (compacted) model here; load it with "
    "l0jax.purge.load(PATH).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Let --export replace an existing PATH.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  train_lib.start_main(_CONFIG.value)
  workdir = _WORKDIR.value
  if _EXPORT.value and os.path.exists(_EXPORT.value) and not _OVERWRITE.value:
    sys.exit(f"error: --export={_EXPORT.value} exists; pass --overwrite to replace it")
  if _EXPORT.value and jax.process_count() > 1:  # purge.save is single-process
    sys.exit("error: --export needs a single-process run: on one host, run eval.py "
             "--export=... --config.distributed=off (same checkpoint, same result)")
  with distributed.stop_all_on_error():  # multi-process: a failing process ends at once
    result = train_lib.evaluate_checkpoint(_CONFIG.value, workdir)  # every process
    is_main = distributed.is_main_process()
  distributed.shutdown()  # the processes leave together; only process 0 writes
  if not is_main:
    return
  path = os.path.join(workdir, "eval.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=2)
  written = plots.write_all(workdir, result, train_lib.read_metrics(workdir))
  if _EXPORT.value:
    exported = train_lib.export_purged(_CONFIG.value, workdir, _EXPORT.value,
                                       _OVERWRITE.value)
    written.append(exported)
  print(train_lib.format_summary(result))
  print(f"wrote {path}" + "".join(f"\nwrote {p}" for p in written))


if __name__ == "__main__":
  app.run(main)
