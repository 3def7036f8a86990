"""Effective Gradient Flow (EGF) and the plain gradient norms it is compared with.

Tessera, Hooker & Rosman, "Keep the Gradients Flowing: Using Gradient Flow to Study
Sparse Network Optimization" (arXiv 2102.01670) describe EGF as a gradient-flow measure
"normalised by the number of active weights and distributed evenly across all the
layers", so that a sparse network and a dense one (or two layers of very different
sizes) are measured on the same scale. Written from that description (the paper's
equation itself was not available to check when this was written)::

    EGF_p = (1 / L) * sum_l  || g_l * m_l ||_p / N_l,       N_l = ||m_l||_0

where ``g_l`` is the gradient of layer ``l``'s weights, ``m_l`` its keep mask (or its
gate values: any nonzero entry counts as active) and ``L`` the number of layers. The
paper compares it with the plain gradient norms of all weights, ``||g||_1`` and
``||g||_2`` (:func:`gradient_norm`); ``ord`` selects the norm for both (1 or 2).

Every function is a pure function of pytrees, works under ``jit`` and computes in at
least float32. A "layer" is one leaf of ``grads``: pass the weight tensors you want
measured (e.g. only the kernels; biases and gate parameters are not weights of the
sparse network). A mask leaf only has to broadcast against its gradient leaf, so
``(in, 1)`` input-unit gates of an ``(in, out)`` kernel work as they are;
:func:`kernel_flow_inputs` builds those for Flax-style params (l0jax's gated
layers and plain dense ones) and :func:`gradient_flow_metrics` all four numbers.

A layer with no active weight has no flow: it contributes 0 to the sum and still
counts in ``L`` (the paper's "distributed evenly across all layers"), and the division
uses ``max(N_l, 1)`` so the result stays finite.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp

from l0jax import density, gates, gating
from l0jax.errors import UserError

__all__ = [
    "EGFError",
    "layer_gradient_flow",
    "effective_gradient_flow",
    "gradient_norm",
    "kernel_flow_inputs",
    "gradient_flow_metrics",
    "gradient_flow_metrics_on",
    "FLOW_METRICS",
]

ORDS = (1, 2)


class EGFError(UserError, ValueError):
  """Bad input to an EGF function (unknown norm, mismatched pytrees)."""


def _check_ord(ord: int) -> None:  # pylint: disable=redefined-builtin
  if ord not in ORDS:
    raise EGFError(f"ord={ord!r} is not a supported norm; use one of {ORDS}")


def _float(x) -> jax.Array:
  x = jnp.asarray(x)
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _norm(x: jax.Array, ord: int) -> jax.Array:  # pylint: disable=redefined-builtin
  x = jnp.abs(x)
  return jnp.sum(x) if ord == 1 else jnp.sqrt(jnp.sum(x * x))


def _leaves_pairs(grads, masks):
  g_leaves, g_def = jax.tree.flatten(grads)
  m_leaves, m_def = jax.tree.flatten(masks)
  if g_def != m_def:
    raise EGFError(f"grads and masks must have the same tree structure; got {g_def} "
                   f"and {m_def}")
  if not g_leaves:
    raise EGFError("grads has no leaves: pass at least one layer's gradient")
  return g_leaves, m_leaves, g_def


def layer_gradient_flow(grads, masks, *, ord: int = 2):  # pylint: disable=redefined-builtin
  """Per layer ``||g_l * m_l||_p / max(N_l, 1)`` as a pytree shaped like ``grads``.

  Args:
    grads: a pytree of gradient arrays, one leaf per layer.
    masks: the same structure; each leaf broadcastable to its gradient leaf, nonzero
      where a weight is active (bool keep masks or gate values).
    ord: 1 or 2, the norm.
  """
  _check_ord(ord)
  g_leaves, m_leaves, treedef = _leaves_pairs(grads, masks)
  out = []
  for g, m in zip(g_leaves, m_leaves):
    g = _float(g)
    active = jnp.broadcast_to(jnp.asarray(m) != 0, g.shape)
    n_active = jnp.sum(active).astype(g.dtype)
    out.append(_norm(jnp.where(active, g, 0), ord) / jnp.maximum(n_active, 1))
  return jax.tree.unflatten(treedef, out)


def effective_gradient_flow(grads, masks, *, ord: int = 2) -> jax.Array:  # pylint: disable=redefined-builtin
  """EGF: the even mean over layers of :func:`layer_gradient_flow` (a scalar)."""
  per_layer = jax.tree.leaves(layer_gradient_flow(grads, masks, ord=ord))
  return jnp.mean(jnp.stack(per_layer))


def gradient_norm(grads, *, ord: int = 2) -> jax.Array:  # pylint: disable=redefined-builtin
  """The plain gradient norm ``||g||_p`` of all leaves of ``grads`` taken as one vector."""
  _check_ord(ord)
  leaves = [_float(g) for g in jax.tree.leaves(grads)]
  if not leaves:
    raise EGFError("grads has no leaves: pass at least one gradient")
  if ord == 1:
    return sum(jnp.sum(jnp.abs(g)) for g in leaves)
  return jnp.sqrt(sum(jnp.sum(g * g) for g in leaves))


def _kernel_dicts(tree, path=()):
  """Every dict holding a ``kernel``, keyed by its '/'-joined path."""
  found = {}
  if isinstance(tree, Mapping):
    if "kernel" in tree:
      found["/".join(path)] = tree
    for key, child in tree.items():
      if isinstance(child, Mapping):
        found.update(_kernel_dicts(child, path + (str(key),)))
  return found


def kernel_flow_inputs(params, grads, test_gate: str = "median"):
  """``(kernel_grads, kernel_masks)``, dicts keyed by layer path, for Flax-style params.

  Every dict of ``params`` holding a ``kernel`` is a layer (l0jax's gated layers and
  plain ``nn.Dense`` / ``nn.Conv`` alike; biases, BatchNorm scales and gate
  parameters are not counted as weights). Its gradient comes from ``grads`` (same
  structure as ``params``); its keep mask from the test-time gates (``gate > 0``) when
  the dict also holds ``log_alpha``, shaped to broadcast against the kernel (input-unit
  gates ``(..., in)`` become ``(..., in, 1)``; output-channel and per-weight gates
  broadcast as they are), else all ones (a dense layer). Pass the two dicts to
  :func:`effective_gradient_flow`.
  """
  param_dicts = _kernel_dicts(density._plain(params))  # pylint: disable=protected-access
  grad_dicts = _kernel_dicts(density._plain(grads))  # pylint: disable=protected-access
  gated = density.gated_layers(params)
  kernel_grads: Dict[str, Any] = {}
  kernel_masks: Dict[str, Any] = {}
  for name in sorted(param_dicts, key=gating.natural_key):
    node = param_dicts[name]
    if "log_alpha" in node:
      keep = gates.deterministic_gate(node["log_alpha"], test_gate) > 0
      if gated[name].kind == density.INPUTS:
        keep = keep[..., None]
    else:
      keep = jnp.ones((), bool)
    kernel_grads[name] = grad_dicts[name]["kernel"]
    kernel_masks[name] = keep
  return kernel_grads, kernel_masks


def gradient_flow_metrics(grads, params, test_gate: str = "median") -> Dict[str, jax.Array]:
  """EGF and plain gradient norms of the kernels, L1 and L2, for logging.

  ``{"egf_l1", "egf_l2", "grad_norm_l1", "grad_norm_l2"}`` from
  :func:`kernel_flow_inputs`; the plain norms cover every kernel weight, active or not.
  """
  kernel_grads, kernel_masks = kernel_flow_inputs(params, grads, test_gate)
  out = {}
  for p in ORDS:
    out[f"egf_l{p}"] = effective_gradient_flow(kernel_grads, kernel_masks, ord=p)
    out[f"grad_norm_l{p}"] = gradient_norm(kernel_grads, ord=p)
  return out


FLOW_METRICS = ("egf_l1", "egf_l2", "grad_norm_l1", "grad_norm_l2")


def gradient_flow_metrics_on(should_log, loss_fn, params, *, grad_reduce=lambda g: g,
                             test_gate: str = "median") -> Dict[str, jax.Array]:
  """:func:`gradient_flow_metrics` of ``grad(loss_fn)(params)`` where ``should_log``
  (a traced bool) holds, else NaNs, under ``lax.cond``: the extra backward pass runs
  only on the steps that log. ``grad_reduce`` combines the gradients across devices
  (e.g. a ``pmean``); every device takes the same branch."""

  def flow(p):
    grads = grad_reduce(jax.grad(loss_fn)(p))
    out = gradient_flow_metrics(grads, p, test_gate)
    return {k: out[k].astype(jnp.float32) for k in FLOW_METRICS}

  def skip(p):
    del p
    return {k: jnp.full((), jnp.nan, jnp.float32) for k in FLOW_METRICS}

  return jax.lax.cond(should_log, flow, skip, params)
