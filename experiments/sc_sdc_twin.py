"""The SC-SDC dense twin of one trained gated MLP run, from its eval.json.

    python eval.py --config=configs/fashion_mnist_mlp.py --workdir=/tmp/fmnist_mlp
    python experiments/sc_sdc_twin.py --workdir=/tmp/fmnist_mlp

Reads the kept input units per layer that ``eval.py`` wrote (``kept_units``, layers in
forward order; the first layer's ``total_units`` is the input width), solves the dense
widths with the same active weights per layer (``l0jax.science.sc_sdc``), prints the
per-layer target and twin counts with their relative error, writes
``WORKDIR/sc_sdc_twin.json`` and prints the ``train.py`` command that trains the twin
(the same config, ungated, with the twin's hidden widths). Training both arms over
densities and seeds is not automated here.
"""

import json
import os
import sys

from absl import app, flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from l0jax.science import sc_sdc  # pylint: disable=wrong-import-position

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of an evaluated gated MLP run.")
_CONFIG = flags.DEFINE_string("config", "configs/fashion_mnist_mlp.py",
                              "Config file of that run (for the printed command).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 10, "Output width of the MLP.")
_SOLVE = flags.DEFINE_enum("solve", "chain", ["chain", "balanced"],
                           "chain: every layer but the last matches; balanced: the "
                           "relative error spread evenly (l0jax.science.sc_sdc.dense_twin).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  del argv
  workdir = _WORKDIR.value
  with open(os.path.join(workdir, "eval.json")) as f:
    result = json.load(f)
  twin, names = sc_sdc.dense_twin_from_eval_json(result, _NUM_CLASSES.value, _SOLVE.value)
  print(f"dense twin widths {twin.widths}")
  print(f"{'layer':<8} {'sparse':>10} {'twin':>10} {'error':>8}")
  for name, t, w, e in zip(names, twin.target_weights, twin.twin_weights,
                           twin.relative_error):
    print(f"{name:<8} {t:>10} {w:>10} {100 * e:>7.1f}%")
  overrides = sc_sdc.twin_config_overrides(twin)
  command = (f"python train.py --config={_CONFIG.value} --workdir={workdir}_twin " +
             " ".join(f"'--config.{k}={v}'" for k, v in overrides.items()))
  out = {"layers": names, **twin._asdict(), "train_twin": command}
  path = os.path.join(workdir, "sc_sdc_twin.json")
  with open(path, "w") as f:
    json.dump(out, f, indent=2)
  print(command)
  print(f"wrote {path}")


if __name__ == "__main__":
  app.run(main)
