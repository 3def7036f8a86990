"""Effective Gradient Flow (EGF) and the plain gradient norms it is compared with.

Tessera, Hooker & Rosman, "Keep the Gradients Flowing: Using Gradient Flow to Study
Sparse Network Optimization" (arXiv 2102.01670) define EGF as a gradient norm taken
layer by layer over the *active* weights only, normalised by the number of active
weights of the layer and averaged evenly over the layers, so that a sparse network and
a dense one (or two layers of very different sizes) are measured on the same scale::

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
:func:`l0jax_kernel_masks` builds those for l0jax's gated layers.

A layer with no active weight has no flow: it contributes 0 to the sum and still
counts in ``L`` (the paper's "distributed evenly across all layers"), and the division
uses ``max(N_l, 1)`` so the result stays finite.
"""

from __future__ import annotations

from typing import Any, Dict

import jax
import jax.numpy as jnp

from l0jax import density, gates
from l0jax.errors import UserError

__all__ = [
    "EGFError",
    "layer_gradient_flow",
    "effective_gradient_flow",
    "gradient_norm",
    "l0jax_kernel_masks",
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


def l0jax_kernel_masks(params, grads, test_gate: str = "median"):
  """``(kernel_grads, kernel_masks)``, dicts keyed by gated-layer path, for l0jax layers.

  The kernels of the gated layers of ``params`` (the dicts holding ``kernel`` and
  ``log_alpha``, as :func:`l0jax.density.gated_layers` finds them) with their
  gradients from ``grads`` (same structure as ``params``) and keep masks from the
  test-time gates (``gate > 0``), shaped to broadcast against the kernel: input-unit
  gates ``(..., in)`` become ``(..., in, 1)``; output-channel and per-weight gates
  broadcast as they are. Pass the two dicts to :func:`effective_gradient_flow`.
  """
  layers = density.gated_layers(params)
  param_dicts = density._layer_dicts(density._plain(params))  # pylint: disable=protected-access
  grad_dicts = density._layer_dicts(density._plain(grads))  # pylint: disable=protected-access
  kernel_grads: Dict[str, Any] = {}
  kernel_masks: Dict[str, Any] = {}
  for path, node in param_dicts.items():
    name = "/".join(path)
    layer = layers[name]
    keep = gates.deterministic_gate(node["log_alpha"], test_gate) > 0
    if layer.kind == density.INPUTS:
      keep = keep[..., None]
    kernel_grads[name] = grad_dicts[path]["kernel"]
    kernel_masks[name] = keep
  return kernel_grads, kernel_masks
