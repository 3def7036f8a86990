"""eval.py's library half: restore a run's newest verified checkpoint, evaluate it, export
its purged model.

Nothing here creates or changes the run's workdir (``eval.py`` writes ``eval.json`` and
the plots): a missing workdir or checkpoint, or an ``--export`` path inside the workdir,
raise ``l0jax.errors.UserError`` subclasses with one-line messages.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional

import numpy as np

from l0jax import reporting, workdir as workdir_lib
from l0jax.train_lib import (ConfigError, Task, eval_variables, evaluate, init_state,
                             input_shape, load_source, make_mesh, make_task, num_train_examples,
                             num_train_steps, preprocessing, purge_report, replicate,
                             step_functions, validate_config)

__all__ = ["restore_for_eval", "evaluate_checkpoint", "check_export", "export_purged"]


def _total_steps(config) -> int:
  return num_train_steps(config, num_train_examples(config))


def restore_for_eval(config, workdir: str, task: Optional[Task] = None):
  """``(task, state)`` of the newest verified checkpoint in ``workdir`` (host arrays).

  ``task`` defaults to the run's (:func:`make_task` over its total steps). Raises
  ``workdir.WorkdirError`` when ``workdir`` does not exist or holds no usable
  checkpoint; never creates anything.
  """
  path = workdir_lib.require_run(workdir)
  task = make_task(config, _total_steps(config)) if task is None else task
  checkpoints = workdir_lib.Checkpoints(path)
  state = checkpoints.restore(init_state(config, task))
  if state is None:
    found = len(checkpoints.steps())
    raise workdir_lib.WorkdirError(
        f"no usable checkpoint in {checkpoints.directory}: " + (
            f"none of its {found} steps could be verified (see the warnings above)"
            if found else f"run train.py with --workdir={workdir} first"))
  return task, state


def export_input_spec(config) -> Dict[str, Any]:
  """The exported model's input, as ``l0jax.data`` feeds the trained model: one
  example's shape, float32, ``(pixels / 255 - mean) / std`` per channel (so in
  ``[(0 - mean) / std, (1 - mean) / std]``)."""
  prep = preprocessing(config)
  mean, std = np.asarray(prep.mean, np.float64), np.asarray(prep.std, np.float64)
  return {"shape": list(input_shape(config)), "dtype": "float32",
          "scaling": "(uint8 pixels / 255 - mean) / std, per channel",
          "mean": [float(m) for m in prep.mean], "std": [float(v) for v in prep.std],
          "range": [float(np.min(-mean / std)), float(np.max((1 - mean) / std))]}


def check_export(config, workdir: str, path: str, overwrite: bool) -> None:
  """Raises unless :func:`export_purged` may write ``path``: the model must be gated,
  ``path`` must lie outside the run's workdir (and not hold it), and an existing
  ``path`` may only be replaced with ``overwrite`` when it is a previous export."""
  from l0jax import purge  # pylint: disable=g-import-not-at-top
  if not config.gated:
    raise ConfigError("config.gated=False: a dense model has nothing to purge; drop "
                      "--export")
  target, run = os.path.realpath(path), os.path.realpath(workdir)
  if target == run or target.startswith(run + os.sep) or run.startswith(target + os.sep):
    raise purge.ExportError(
        f"--export={path} would write into the run's --workdir={workdir} (or replace "
        "a folder holding it): export to a path outside it")
  purge.check_export_path(path, overwrite)


def export_purged(config, workdir: str, path: str, overwrite: bool = False) -> str:
  """Saves the purged (compacted, plain Flax) model of the newest checkpoint to ``path``.

  ``l0jax.purge.load(path)`` returns ``(model, params)``; ``spec.json`` records the
  input it expects. See :func:`check_export` for what ``path`` may be.
  """
  from l0jax import purge  # pylint: disable=g-import-not-at-top
  check_export(config, workdir, path, overwrite)
  task, state = restore_for_eval(config, workdir)
  purged_model, purged = purge.purge(task.model, eval_variables(state))
  return purge.save(path, purged_model, purged, overwrite=overwrite,
                    input_spec=export_input_spec(config))


def evaluate_checkpoint(config, workdir: str, devices=None) -> Dict[str, Any]:
  """Restores the newest verified checkpoint of ``workdir`` and evaluates it."""
  mesh = make_mesh(devices)
  validate_config(config, mesh.size)
  functions = step_functions(config, mesh, _total_steps(config))
  task, state = restore_for_eval(config, workdir, functions.task)
  result = evaluate(replicate(eval_variables(state), mesh), functions.eval,
                    load_source(config, config.eval_split), config, mesh)
  return {"step": int(state.step), **result, **reporting.gate_report(state.params, config),
          **purge_report(task.model, eval_variables(state), config),
          **reporting.constraint_report(task, state.params, config),
          "multipliers": [float(v) for v in np.asarray(state.constrained.multipliers)],
          "targets": list(task.problem.targets) if config.method == "constrained" else [],
          "layer_names": list(task.layer_names),
          **_gradient_flow(config, workdir)}


def _gradient_flow(config, workdir: str) -> Dict[str, Any]:
  """``reporting.gradient_flow_report`` of a ``log_egf`` run (the train split is only
  opened, to count its steps per epoch, when the run logged the flow)."""
  records = reporting.read_metrics(workdir)
  if not any("egf_l2" in r for r in records):
    return {}
  return reporting.gradient_flow_report(
      records, max(1, num_train_examples(config) // config.batch_size))
