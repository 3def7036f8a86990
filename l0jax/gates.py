"""Hard-concrete L0 gates (Louizos, Welling & Kingma, 2018) as pure JAX functions.

Every function here imports only ``jax``, is safe under ``jit``, ``vmap`` and
``grad``, and returns the dtype of its ``log_alpha`` argument (bfloat16 inputs are
computed in float32 and cast back, so the sigmoid and logarithms keep their
precision).

Notation, with temperature ``beta`` and stretch interval ``(gamma, zeta)``,
``gamma < 0 < 1 < zeta``::

    u ~ U(0, 1)
    s = sigmoid((log u - log(1 - u) + log_alpha) / beta)        # binary concrete
    z = clip(s * (zeta - gamma) + gamma, 0, 1)                  # hard concrete

    P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))  # expected L0

Test-time gates, both named conventions::

    "eq13"   (Louizos Eq. 13):  clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)
    "median" (true median):     clip(sigmoid(log_alpha / beta) * (zeta - gamma) + gamma, 0, 1)

``log_alpha`` is not clamped unless a caller passes ``clamp=(lo, hi)``; the
papers' PyTorch code clamps to ``(-4.6, 4.6)``, which puts a floor of about 4.7%
on every gate's ``P(z != 0)``, so low density targets become unreachable.

Example, gating the input neurons of a dense layer in your own code::

    key_init, key_noise = jax.random.split(jax.random.key(0))
    log_alpha = init_log_alpha(key_init, (784,), droprate=0.2)
    z = hard_concrete_sample(key_noise, log_alpha, shape=(batch, 784))  # train
    z = deterministic_gate(log_alpha)                                   # test
    y = (x * z) @ kernel + bias
    expected_l0 = prob_nonzero(log_alpha).sum()
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

BETA = 2.0 / 3.0
GAMMA = -0.1
ZETA = 1.1
TEST_GATE_MODES = ("median", "eq13")

Clamp = Optional[Tuple[float, float]]

__all__ = [
    "BETA",
    "GAMMA",
    "ZETA",
    "TEST_GATE_MODES",
    "hard_concrete_sample",
    "hard_concrete_from_uniform",
    "prob_nonzero",
    "deterministic_gate",
    "init_log_alpha",
]


def _check_hyperparameters(beta, gamma, zeta) -> None:
  """Raises ValueError for concrete hyper-parameters outside their domain."""
  if any(isinstance(v, jax.core.Tracer) for v in (beta, gamma, zeta)):
    return  # traced hyper-parameters cannot be checked; the caller chose that.
  if not beta > 0:
    raise ValueError(f"beta must be > 0, got {beta}")
  if not gamma < 0:
    raise ValueError(f"gamma must be < 0, got {gamma}")
  if not zeta > 1:
    raise ValueError(f"zeta must be > 1, got {zeta}")


def _compute_dtype(dtype) -> jnp.dtype:
  """At least float32: bfloat16/float16 inputs are computed in float32."""
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"log_alpha must be a floating array, got dtype {dtype}")
  return jnp.promote_types(dtype, jnp.float32)


def _prepare(log_alpha, clamp: Clamp):
  log_alpha = jnp.asarray(log_alpha)
  out_dtype = log_alpha.dtype
  log_alpha = log_alpha.astype(_compute_dtype(out_dtype))
  if clamp is not None:
    lo, hi = clamp
    if not lo < hi:
      raise ValueError(f"clamp must be (lo, hi) with lo < hi, got {clamp}")
    log_alpha = jnp.clip(log_alpha, lo, hi)
  return log_alpha, out_dtype


def _stretch_and_clip(s, gamma, zeta):
  return jnp.clip(s * (zeta - gamma) + gamma, 0.0, 1.0)


def hard_concrete_from_uniform(
    u,
    log_alpha,
    *,
    beta: float = BETA,
    gamma: float = GAMMA,
    zeta: float = ZETA,
    clamp: Clamp = None,
):
  """Hard-concrete gate from given uniform noise ``u`` in [0, 1].

  ``z = clip(sigmoid((log u - log(1 - u) + log_alpha) / beta) * (zeta - gamma)
  + gamma, 0, 1)``. ``u`` and ``log_alpha`` broadcast against each other. ``u`` is
  clipped to the open interval ``(tiny, 1 - eps)`` of the compute dtype, so
  ``u = 0`` and ``u = 1`` give finite values and gradients.

  Args:
    u: uniform noise, any shape broadcastable with ``log_alpha``.
    log_alpha: gate location parameters.
    beta: temperature, > 0.
    gamma: lower stretch limit, < 0.
    zeta: upper stretch limit, > 1.
    clamp: optional ``(lo, hi)`` applied to ``log_alpha`` first.

  Returns:
    Gates in [0, 1] with the broadcast shape and the dtype of ``log_alpha``.
  """
  _check_hyperparameters(beta, gamma, zeta)
  log_alpha, out_dtype = _prepare(log_alpha, clamp)
  finfo = jnp.finfo(log_alpha.dtype)
  u = jnp.clip(jnp.asarray(u, log_alpha.dtype), finfo.tiny, 1.0 - finfo.epsneg)
  logistic_noise = jnp.log(u) - jnp.log1p(-u)
  s = jax.nn.sigmoid((logistic_noise + log_alpha) / beta)
  return _stretch_and_clip(s, gamma, zeta).astype(out_dtype)


def hard_concrete_sample(
    key,
    log_alpha,
    shape: Optional[Sequence[int]] = None,
    *,
    beta: float = BETA,
    gamma: float = GAMMA,
    zeta: float = ZETA,
    clamp: Clamp = None,
):
  """Samples hard-concrete gates ``z`` (reparameterised; differentiable in log_alpha).

  Draws ``u ~ U(0, 1)`` with ``jax.random.uniform`` and returns
  ``hard_concrete_from_uniform(u, log_alpha, ...)``.

  Args:
    key: a PRNG key.
    log_alpha: gate location parameters.
    shape: output shape; defaults to ``log_alpha.shape``. It must end with
      ``log_alpha.shape``; extra leading dimensions give independent samples, e.g.
      ``(batch,) + log_alpha.shape`` for one gate sample per example.
    beta, gamma, zeta, clamp: as in :func:`hard_concrete_from_uniform`.

  Returns:
    Gates in [0, 1] of ``shape`` and the dtype of ``log_alpha``.
  """
  log_alpha = jnp.asarray(log_alpha)
  if shape is None:
    shape = log_alpha.shape
  shape = tuple(int(d) for d in shape)
  tail = shape[len(shape) - log_alpha.ndim:] if log_alpha.ndim else ()
  if len(shape) < log_alpha.ndim or tail != log_alpha.shape:
    raise ValueError(
        f"shape {shape} must end with log_alpha.shape {log_alpha.shape}")
  # Drawing flat and reshaping gives the same numbers as drawing `shape` directly,
  # and XLA:CPU compiles the 1-D draw several times faster.
  u = jax.random.uniform(key, (math.prod(shape),),
                         _compute_dtype(log_alpha.dtype)).reshape(shape)
  return hard_concrete_from_uniform(
      u, log_alpha, beta=beta, gamma=gamma, zeta=zeta, clamp=clamp)


def prob_nonzero(
    log_alpha,
    *,
    beta: float = BETA,
    gamma: float = GAMMA,
    zeta: float = ZETA,
    clamp: Clamp = None,
):
  """``P(z != 0) = sigmoid(log_alpha - beta * log(-gamma / zeta))``, the expected L0.

  The stretched concrete ``s * (zeta - gamma) + gamma`` is positive exactly when
  ``s > -gamma / (zeta - gamma)``, which has this closed-form probability.
  """
  _check_hyperparameters(beta, gamma, zeta)
  log_alpha, out_dtype = _prepare(log_alpha, clamp)
  shift = beta * jnp.log(-gamma / zeta)
  return jax.nn.sigmoid(log_alpha - shift).astype(out_dtype)


def deterministic_gate(
    log_alpha,
    mode: str = "median",
    *,
    beta: float = BETA,
    gamma: float = GAMMA,
    zeta: float = ZETA,
    clamp: Clamp = None,
):
  """The test-time gate.

  * ``mode="median"``: the true median of the hard concrete,
    ``clip(sigmoid(log_alpha / beta) * (zeta - gamma) + gamma, 0, 1)``
    (Gallego-Posada et al., 2022).
  * ``mode="eq13"``: Louizos et al. (2018) Eq. 13,
    ``clip(sigmoid(log_alpha) * (zeta - gamma) + gamma, 0, 1)``.

  Both are exactly 0 for a closed gate and exactly 1 for a fully open one.

  Raises:
    ValueError: for any other ``mode``.
  """
  if mode not in TEST_GATE_MODES:
    raise ValueError(
        f"unknown test-time gate mode {mode!r}; allowed: {TEST_GATE_MODES}")
  _check_hyperparameters(beta, gamma, zeta)
  log_alpha, out_dtype = _prepare(log_alpha, clamp)
  logits = log_alpha / beta if mode == "median" else log_alpha
  return _stretch_and_clip(jax.nn.sigmoid(logits), gamma, zeta).astype(out_dtype)


def init_log_alpha(key, shape: Sequence[int], droprate: float, dtype=jnp.float32):
  """``log_alpha = log((1 - droprate) / droprate) + N(0, 0.01^2)``.

  ``droprate`` is the initial probability that a gate is dropped, in (0, 1).

  Raises:
    ValueError: if ``droprate`` is not in the open interval (0, 1).
  """
  droprate = float(droprate)
  if not 0.0 < droprate < 1.0:
    raise ValueError(f"droprate must be in the open interval (0, 1), got {droprate}")
  mean = math.log(1.0 - droprate) - math.log(droprate)
  shape = tuple(shape)
  noise = jax.random.normal(key, (math.prod(shape),),
                            _compute_dtype(jnp.dtype(dtype))).reshape(shape)
  return (mean + 0.01 * noise).astype(dtype)
