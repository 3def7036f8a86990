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

Edge cases, one rule for every function here: a NaN ``log_alpha`` gives a NaN gate
*and* a NaN gradient (nothing turns NaN into a finite number, so a non-finite check
downstream sees it); ``+-inf`` gives the saturated gate (0 or 1) and a zero gradient;
zero-size inputs (an empty batch) give empty outputs and zero gradients. The samplers
have a custom JVP rule, so forward mode (``jax.jvp``, ``jax.jacfwd``) and reverse mode
both work.

Example, gating the input neurons of a dense layer in your own code::

    key_init, key_noise = jax.random.split(jax.random.key(0))
    log_alpha = init_log_alpha(key_init, (784,), droprate=0.2)
    z = hard_concrete_sample(key_noise, log_alpha, shape=(batch, 784))  # train
    z = deterministic_gate(log_alpha)                                   # test
    z = gate(log_alpha, key_noise, (batch,), deterministic=not train)   # either
    y = (x * z) @ kernel + bias
    expected_l0 = prob_nonzero(log_alpha).sum()
"""

from __future__ import annotations

import functools
import math
from typing import Optional, Sequence, Tuple

import jax
from jax.custom_derivatives import SymbolicZero
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
    "gate",
    "uniform",
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


# Threefry-2x32 with 20 rounds (Salmon et al., "Parallel random numbers: as easy as
# 1, 2, 3", SC 2011): rotation constants and key-schedule parity.
_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_THREEFRY_PARITY = 0x1BD11BDA


def _threefry2x32(k0, k1, x0, x1):
  """Threefry-2x32-20 of counter words (x0, x1) under key (k0, k1), all uint32."""
  rotl = lambda x, r: (x << jnp.uint32(r)) | (x >> jnp.uint32(32 - r))
  schedule = (k0, k1, k0 ^ k1 ^ jnp.uint32(_THREEFRY_PARITY))
  x0, x1 = x0 + schedule[0], x1 + schedule[1]
  for block in range(1, 6):
    for r in _THREEFRY_ROTATIONS[(block - 1) % 2]:
      x0 = x0 + x1
      x1 = rotl(x1, r) ^ x0
    x0 = x0 + schedule[block % 3]
    x1 = x1 + schedule[(block + 1) % 3] + jnp.uint32(block)
  return x0, x1


def _fast_uniform_applies(keys, n: int, dtype) -> bool:
  return (jnp.dtype(dtype) == jnp.float32 and 0 < n < 2 ** 32
          and jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
          and str(jax.random.key_impl(keys)) == "threefry2x32"
          and jax.config.jax_threefry_partitionable)


def uniform(keys, n: int, dtype=jnp.float32):
  """``U[0, 1)`` noise of shape ``keys.shape + (n,)``: the same numbers as
  ``jax.random.uniform(keys[i], (n,), dtype)`` for every key ``keys[i]``.

  For float32 and threefry keys (JAX's default, with the default
  ``jax_threefry_partitionable``) the Threefry-2x32 hash of every counter is written
  out in ``jnp`` integer ops, which XLA fuses into one loop: on CPU this is about 5x
  faster than ``jax.random.uniform`` (whose threefry runs as a rolled loop there) and
  gives bit-identical results (``tests/test_gates.py`` checks this). Other key
  implementations and dtypes call ``jax.random.uniform`` per key.

  Args:
    keys: a typed PRNG key array (``jax.random.key``), any shape.
    n: numbers per key.
    dtype: a floating dtype.
  """
  keys = jnp.asarray(keys) if not isinstance(keys, jax.Array) else keys
  if not jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
    raise TypeError("uniform needs typed PRNG keys (jax.random.key), got dtype "
                    f"{keys.dtype}; wrap raw keys with jax.random.wrap_key_data")
  n = int(n)
  if not _fast_uniform_applies(keys, n, dtype):
    flat = keys.reshape(-1)
    draw = jax.vmap(lambda key: jax.random.uniform(key, (n,), dtype))
    return draw(flat).reshape(keys.shape + (n,))
  data = jax.random.key_data(keys)  # keys.shape + (2,) uint32
  k0, k1 = data[..., 0:1], data[..., 1:2]
  counter = jnp.arange(n, dtype=jnp.uint32)
  # JAX's partitionable threefry hashes the (high, low) words of the flat index and
  # XORs the two output words.
  b0, b1 = _threefry2x32(k0, k1, jnp.zeros_like(counter), counter)
  mantissa = ((b0 ^ b1) >> jnp.uint32(32 - 23)) | jnp.uint32(0x3F800000)
  return jnp.maximum(0.0, jax.lax.bitcast_convert_type(mantissa, jnp.float32) - 1.0)


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
  u = jnp.asarray(u, log_alpha.dtype)
  if any(isinstance(v, jax.core.Tracer) for v in (beta, gamma, zeta)):
    z = _hard_concrete_formula(u, log_alpha, beta, gamma, zeta)
  else:
    z = _hard_concrete_fast_grad(u, log_alpha, float(beta), float(gamma), float(zeta))
  return z.astype(out_dtype)


def _clip_uniform(u):
  finfo = jnp.finfo(u.dtype)
  return jnp.clip(u, finfo.tiny, 1.0 - finfo.epsneg)


def _hard_concrete_formula(u, log_alpha, beta, gamma, zeta):
  """The gate as a plain formula (autodiff through it is the reference gradient)."""
  u = _clip_uniform(u)
  logistic_noise = jnp.log(u / (1.0 - u))
  # log_alpha / beta before the broadcast keeps that division off (batch, gates).
  s = jax.nn.sigmoid(logistic_noise / beta + log_alpha / beta)
  return _stretch_and_clip(s, gamma, zeta)


def _broadcast_tangent(t, shape):
  """``t`` broadcast to ``shape``. The leading (batch) axes are a product with a column
  of ones, whose transpose (the reverse-mode cotangent sum over the batch) is a matvec:
  XLA:CPU runs that several times faster than a column reduce of the same size, and it
  stays defined for a zero-size batch."""
  shape = tuple(shape)
  lead = len(shape) - t.ndim
  if lead:
    rows = math.prod(shape[:lead])
    ones = jnp.ones((rows, 1), t.dtype)
    t = (ones @ t.reshape(1, -1)).reshape(shape[:lead] + t.shape)
  return jnp.broadcast_to(t, shape)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def _hard_concrete_fast_grad(u, log_alpha, beta, gamma, zeta):
  return _hard_concrete_formula(u, log_alpha, beta, gamma, zeta)


def _fast_grad_jvp(beta, gamma, zeta, primals, tangents):
  # Inside the clip, s = (z - gamma) / (zeta - gamma) and
  # dz/dlog_alpha = (zeta - gamma) * s * (1 - s) / beta; outside it the gate is
  # constant. The slope is computed from the output z. The test is "at either end"
  # (not "inside"), so that a NaN gate, for which every comparison is False, keeps
  # its NaN slope: NaN is never turned into a zero gradient. Forward mode (jax.jvp,
  # jacfwd) uses this rule as it is; reverse mode transposes it (_broadcast_tangent).
  u, log_alpha = primals
  du, dla = tangents
  z = _hard_concrete_formula(u, log_alpha, beta, gamma, zeta)
  s = (z - gamma) / (zeta - gamma)
  clipped = (z <= 0) | (z >= 1)
  slope = jnp.where(clipped, 0.0, (zeta - gamma) / beta * s * (1 - s))
  t = None
  if not isinstance(dla, SymbolicZero):
    t = _broadcast_tangent(dla, z.shape)
  if not isinstance(du, SymbolicZero):
    finfo = jnp.finfo(u.dtype)
    u_inside = (u > finfo.tiny) & (u < 1.0 - finfo.epsneg)
    uc = _clip_uniform(u)
    dlogit = _broadcast_tangent(jnp.where(u_inside, du / (uc * (1.0 - uc)), 0.0),
                                z.shape)
    t = dlogit if t is None else t + dlogit
  if t is None:
    return z, jnp.zeros_like(z)
  return z, slope * t


_hard_concrete_fast_grad.defjvp(_fast_grad_jvp, symbolic_zeros=True)


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

  Draws ``u ~ U(0, 1)``, the numbers of ``jax.random.uniform(key, shape)`` (through
  :func:`uniform`), and returns ``hard_concrete_from_uniform(u, log_alpha, ...)``.

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
  u = uniform(key, math.prod(shape), _compute_dtype(log_alpha.dtype)).reshape(shape)
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


def gate(
    log_alpha,
    key=None,
    batch_shape: Sequence[int] = (),
    *,
    deterministic: bool = False,
    test_gate: str = "median",
    beta: float = BETA,
    gamma: float = GAMMA,
    zeta: float = ZETA,
    clamp: Clamp = None,
):
  """The gate for training or test time, of the same rank in both.

  * training (``deterministic=False``): hard-concrete samples of shape
    ``batch_shape + log_alpha.shape`` drawn from ``key`` (one independent gate per
    entry of ``batch_shape``, e.g. ``(batch,)`` for per-example noise, ``()`` for one
    sample shared by the batch);
  * test time (``deterministic=True``): :func:`deterministic_gate` with mode
    ``test_gate``, shaped ``(1,) * len(batch_shape) + log_alpha.shape``; ``key`` is
    not used and may be None.

  So the output broadcasts against the same activations in both modes, e.g. head gates
  ``log_alpha`` of shape ``(heads,)`` on attention outputs ``(batch, seq, heads, dim)``::

      z = gate(log_alpha, key, (batch,), deterministic=not train)   # (batch|1, heads)
      y = y * z[:, None, :, None]
  """
  log_alpha = jnp.asarray(log_alpha)
  batch_shape = tuple(int(d) for d in batch_shape)
  kw = dict(beta=beta, gamma=gamma, zeta=zeta, clamp=clamp)
  if deterministic:
    z = deterministic_gate(log_alpha, test_gate, **kw)
    return z.reshape((1,) * len(batch_shape) + log_alpha.shape)
  if key is None:
    raise ValueError("gate(..., deterministic=False) needs a PRNG key for the noise")
  return hard_concrete_sample(key, log_alpha, batch_shape + log_alpha.shape, **kw)


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
