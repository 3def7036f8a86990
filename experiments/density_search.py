"""Layer-wise density search with short proxy runs of the real trainer.

    python experiments/density_search.py --config=configs/fashion_mnist_mlp.py \
        --workdir=/tmp/search_10 --global_density=0.1 --min_steps=300 --eta=3

Every gated layer's density is drawn from --grid, profiles whose parameter count
(sum of layer sizes x density) exceeds --global_density of the model are dropped, a
seeded sample of --num_candidates profiles goes through successive halving
(l0jax.science.density_search), and each evaluation is one ``train.py`` run with the
profile as layer-wise constraints (``--config.constraint=layerwise
--config.layer_targets=...``) for the rung's steps, scored by its final eval error.
Any ``--config.FIELD=VALUE`` given here is passed on to every run. By default the runs
train on ``train[:90%]`` and are scored on ``train[90%:]`` (--validation), so the
test split is not used to choose the profile.

Outputs in --workdir: ``search.jsonl`` (one line per evaluation; rerunning the same
command resumes and skips what is there), ``runs/`` (the proxy runs' workdirs) and
``best.json`` (the winner, its score, the trainer steps spent and the command that
trains it to completion; --train_best runs that command into ``best/``).
"""

import json
import os
import subprocess
import sys

from absl import app, flags
from ml_collections import config_flags

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # configs/*.py import `configs.default`, as under train.py

from l0jax import density, reporting, train_lib  # pylint: disable=wrong-import-position
from l0jax.science import density_search  # pylint: disable=wrong-import-position

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py[:arg]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the search.")
_DENSITY = flags.DEFINE_float("global_density", 0.1, "Parameter budget as a fraction of "
                              "the gated layers' weights.")
_GRID = flags.DEFINE_list("grid", ["0.02", "0.05", "0.1", "0.2", "0.33", "0.5", "1.0"],
                          "Densities each layer may take.")
_MIN_FRACTION = flags.DEFINE_float("min_fraction", 0.5, "Drop profiles using less than "
                                   "this fraction of the budget.")
_NUM = flags.DEFINE_integer("num_candidates", 27, "Profiles sampled for the first rung.")
_MIN_STEPS = flags.DEFINE_integer("min_steps", 300, "Trainer steps of the first rung.")
_ETA = flags.DEFINE_integer("eta", 3, "Keep 1/eta per rung; rungs train eta x longer.")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None, "Longest proxy run (default: "
                                  "rungs until one profile is left).")
_SEED = flags.DEFINE_integer("search_seed", 0, "Seed of the candidate sample.")
_VALIDATION = flags.DEFINE_bool("validation", True, "Train on train[:90%], score on "
                                "train[90%:].")
_TRAIN_BEST = flags.DEFINE_bool("train_best", False, "Then train the best profile with "
                                "the config's own steps into WORKDIR/best.")
flags.mark_flags_as_required(["config", "workdir"])


def config_args(argv):
  """The --config and --config.FIELD=VALUE arguments given to this script."""
  return [a for a in argv[1:] if a.startswith("--config=") or a.startswith("--config.")]


def layer_sizes(config):
  """Sparsifiable weights of each gated layer, in the order of layer_targets."""
  layers = density.gated_layers(train_lib.abstract_params(config))
  return [layer.num_sparsifiable for layer in layers.values()]


def targets_arg(profile):
  return "--config.layer_targets=(" + ", ".join(repr(float(d)) for d in profile) + ",)"


def run_train(args, workdir):
  cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={workdir}"] + args
  subprocess.run(cmd, check=True, cwd=ROOT)
  return cmd


def final_error(workdir):
  evals = [r for r in reporting.read_metrics(workdir) if r.get("eval")]
  if not evals:
    raise RuntimeError(f"{workdir}/metrics.jsonl has no eval record")
  return float(evals[-1]["test_error"])


def main(argv):
  config = _CONFIG.value
  workdir = _WORKDIR.value
  os.makedirs(os.path.join(workdir, "runs"), exist_ok=True)
  passed = config_args(sys.argv)
  split_args = (["--config.train_split=train[:90%]", "--config.eval_split=train[90%:]"]
                if _VALIDATION.value else [])

  sizes = layer_sizes(config)
  budget = density_search.budget_for_density(sizes, _DENSITY.value)
  feasible = density_search.feasible_profiles(sizes, [float(g) for g in _GRID.value],
                                              budget, _MIN_FRACTION.value)
  candidates = density_search.sample_profiles(feasible, _NUM.value, _SEED.value)
  print(f"layer sizes {sizes}, budget {budget:.0f} parameters, "
        f"{len(feasible)} feasible profiles, {len(candidates)} candidates", flush=True)

  def evaluate(profile, steps):
    name = "r{}_{}".format(steps, "_".join(f"{d:g}" for d in profile))
    run_dir = os.path.join(workdir, "runs", name)
    run_train(passed + split_args + [
        "--config.constraint=layerwise", targets_arg(profile),
        f"--config.num_train_steps={steps}", f"--config.eval_every_steps={steps}",
        f"--config.checkpoint_every_steps={steps}"], run_dir)
    error = final_error(run_dir)
    print(f"profile {profile} steps {steps}: error {error:.4f}", flush=True)
    return error

  result = density_search.successive_halving(
      candidates, evaluate, min_steps=_MIN_STEPS.value, eta=_ETA.value,
      max_steps=_MAX_STEPS.value, log_path=os.path.join(workdir, "search.jsonl"))
  final_args = passed + ["--config.constraint=layerwise", targets_arg(result.best_profile)]
  best_dir = os.path.join(workdir, "best")
  summary = {
      "best_profile": list(result.best_profile), "best_score": result.best_score,
      "layer_sizes": sizes, "budget_params": budget,
      "best_params": sum(s * d for s, d in zip(sizes, result.best_profile)),
      "num_feasible": len(feasible), "num_candidates": len(candidates),
      "rungs": [[e._asdict() for e in rung] for rung in result.rungs],
      "search_trainer_steps": result.steps_total,
      "train_best": " ".join(["python", "train.py", f"--workdir={best_dir}"] +
                             [repr(a) if "(" in a else a for a in final_args]),
  }
  with open(os.path.join(workdir, "best.json"), "w") as f:
    json.dump(summary, f, indent=2)
  print(f"best profile {result.best_profile} (score {result.best_score:.4f}) after "
        f"{result.steps_total} trainer steps; wrote {workdir}/best.json", flush=True)
  if _TRAIN_BEST.value:
    run_train(final_args, best_dir)


if __name__ == "__main__":
  app.run(main)
