"""Separate optimizers for weights, gates and a gate generator (``optax.partition``).

Gates need a far larger learning rate than SGD weights (WRN: weights ``sgd(0.1)``, gates
``sgd(6.0)``), so the primal optimizer is a partition by :func:`param_labels`::

    tx = primal_optimizer(optax.sgd(0.1), optax.sgd(6.0))
    opt_state = tx.init(params)                        # a Linen params dict
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)  # or an NNX model

The labels read the parameter paths (:func:`l0jax.gating.path_name`, so the trailing
``value`` of an NNX variable is ignored), in this order:

* ``"generator"``: below a path component containing "gate_generator" (case and
  underscores ignored: ``GateGenerator_0`` matches), the Dep-L0 gate generator;
* ``"gates"``: a leaf named ``log_alpha`` (l0jax's layers, :mod:`l0jax.nnx`), or any
  leaf below a component named ``log_alphas`` (hold the path API's gates as
  ``{"params": params, "log_alphas": log_alphas}``);
* ``"weights"``: everything else.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import optax

from l0jax import gating

__all__ = ["LABELS", "param_labels", "primal_optimizer"]

LABELS = ("weights", "gates", "generator")
PyTree = Any


def _label_of(path) -> str:
  names = gating.path_name(path).split("/")
  for name in names[:-1]:
    if "gategenerator" in name.lower().replace("_", ""):
      return "generator"
  if names[-1] == "log_alpha" or "log_alphas" in names[:-1]:
    return "gates"
  return "weights"


def param_labels(params: PyTree) -> PyTree:
  """A pytree like ``params`` of "weights" / "gates" / "generator" (see the module doc).

  Works on Linen params dicts, NNX states (the labels replace the variables' values,
  so the result has the state's structure, as ``optax.partition`` needs) and any other
  pytree.
  """
  return jax.tree_util.tree_map_with_path(lambda path, _: _label_of(path), params)


def primal_optimizer(weights_tx: optax.GradientTransformation,
                     gates_tx: optax.GradientTransformation,
                     generator_tx: Optional[optax.GradientTransformation] = None, *,
                     label_fn: Optional[Callable[[PyTree], PyTree]] = None,
                     ) -> optax.GradientTransformation:
  """``optax.partition({"weights": ..., "gates": ..., "generator": ...}, labels)``.

  Each leaf is updated by the transformation of its label (:func:`param_labels` by
  default, or ``label_fn(params)`` returning the same three labels).
  ``generator_tx=None`` trains the gate generator with ``gates_tx`` (a separate state).
  """
  transforms = {
      "weights": weights_tx,
      "gates": gates_tx,
      "generator": gates_tx if generator_tx is None else generator_tx,
  }
  partition = getattr(optax, "partition", None) or optax.multi_transform
  return partition(transforms, param_labels if label_fn is None else label_fn)
