"""gates.py against an independent float64 numpy implementation of the formulas."""

import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

from l0jax import gates

BETA, GAMMA, ZETA = 2.0 / 3.0, -0.1, 1.1


# ---------------------------------------------------------------- numpy reference
def np_sigmoid(x):
  x = np.asarray(x, np.float64)
  return np.where(x >= 0, 1 / (1 + np.exp(-np.abs(x))),
                  np.exp(-np.abs(x)) / (1 + np.exp(-np.abs(x))))


def np_sample(u, log_alpha, beta=BETA, gamma=GAMMA, zeta=ZETA):
  s = np_sigmoid((np.log(u) - np.log(1 - u) + log_alpha) / beta)
  return np.clip(s * (zeta - gamma) + gamma, 0, 1)


def np_prob_nonzero(log_alpha, beta=BETA, gamma=GAMMA, zeta=ZETA):
  # P(s * (zeta - gamma) + gamma > 0) = P(s > t), t = -gamma / (zeta - gamma);
  # s > t  <=>  logistic + log_alpha > beta * logit(t), logistic ~ Logistic(0, 1).
  t = -gamma / (zeta - gamma)
  return 1 - np_sigmoid(beta * math.log(t / (1 - t)) - log_alpha)


def np_test_gate(log_alpha, mode, beta=BETA, gamma=GAMMA, zeta=ZETA):
  logits = log_alpha / beta if mode == "median" else log_alpha
  return np.clip(np_sigmoid(logits) * (zeta - gamma) + gamma, 0, 1)


@pytest.fixture
def rng():
  return np.random.default_rng(0)


# ---------------------------------------------------------------- values
def test_sample_matches_numpy(rng):
  log_alpha = rng.normal(0, 3, size=(7, 5))
  u = rng.uniform(size=(4, 7, 5))
  got = gates.hard_concrete_from_uniform(jnp.asarray(u, jnp.float32),
                                         jnp.asarray(log_alpha, jnp.float32))
  np.testing.assert_allclose(got, np_sample(u, log_alpha), atol=2e-6)


@pytest.mark.parametrize("beta,gamma,zeta", [(0.5, -0.2, 1.3), (1.0, -0.1, 1.1)])
def test_sample_matches_numpy_other_hyperparameters(rng, beta, gamma, zeta):
  log_alpha, u = rng.normal(0, 2, 64), rng.uniform(size=64)
  got = gates.hard_concrete_from_uniform(
      jnp.asarray(u, jnp.float32), jnp.asarray(log_alpha, jnp.float32), beta=beta,
      gamma=gamma, zeta=zeta)
  np.testing.assert_allclose(got, np_sample(u, log_alpha, beta, gamma, zeta),
                             atol=2e-6)
  np.testing.assert_allclose(
      gates.prob_nonzero(jnp.asarray(log_alpha, jnp.float32), beta=beta,
                         gamma=gamma, zeta=zeta),
      np_prob_nonzero(log_alpha, beta, gamma, zeta), atol=1e-6)


def test_prob_nonzero_matches_numpy(rng):
  log_alpha = rng.normal(0, 4, size=100)
  np.testing.assert_allclose(
      gates.prob_nonzero(jnp.asarray(log_alpha, jnp.float32)),
      np_prob_nonzero(log_alpha), atol=1e-6)


@pytest.mark.parametrize("mode", ["median", "eq13"])
def test_deterministic_gate_matches_numpy(rng, mode):
  log_alpha = rng.normal(0, 4, size=100)
  np.testing.assert_allclose(
      gates.deterministic_gate(jnp.asarray(log_alpha, jnp.float32), mode),
      np_test_gate(log_alpha, mode), atol=1e-6)


def test_median_is_the_median_of_samples():
  log_alpha = jnp.array([-1.0, 0.3, 0.8, 1.5])
  z = gates.hard_concrete_sample(jax.random.key(1), log_alpha, (20001, 4))
  np.testing.assert_allclose(np.median(np.asarray(z), axis=0),
                             gates.deterministic_gate(log_alpha, "median"),
                             atol=0.02)


def test_unknown_mode_names_allowed_modes():
  with pytest.raises(ValueError, match="median.*eq13"):
    gates.deterministic_gate(jnp.zeros(3), "mean")


def test_prob_nonzero_matches_monte_carlo():
  log_alpha = jnp.array([-3.0, -1.0, 0.0, 1.0, 2.5])
  n = 200_000
  z = gates.hard_concrete_sample(jax.random.key(42), log_alpha, (n,) + log_alpha.shape)
  freq = np.mean(np.asarray(z) > 0, axis=0)
  p = np.asarray(gates.prob_nonzero(log_alpha), np.float64)
  se = np.sqrt(p * (1 - p) / n)
  assert np.all(np.abs(freq - p) < 5 * se + 1e-6), (freq, p, se)


# ---------------------------------------------------------------- gradients
def _central_difference(f, x, eps=1e-6):
  x = np.asarray(x, np.float64)
  grads = np.zeros_like(x)
  for i in range(x.size):
    e = np.zeros_like(x)
    e.flat[i] = eps
    grads.flat[i] = (f(x + e) - f(x - e)) / (2 * eps)
  return grads


def test_prob_nonzero_gradient_matches_finite_differences(rng):
  log_alpha = rng.normal(0, 2, size=6)
  with jax.enable_x64(True):
    grad = jax.grad(lambda a: gates.prob_nonzero(a).sum())(jnp.asarray(log_alpha))
    assert grad.dtype == jnp.float64
    fd = _central_difference(lambda a: np_prob_nonzero(a).sum(), log_alpha)
  np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)


def test_sample_gradient_matches_finite_differences(rng):
  log_alpha = rng.normal(0, 1, size=8)
  u = rng.uniform(0.05, 0.95, size=8)
  # Stay away from the clip's kinks, where the derivative jumps.
  raw = np_sigmoid((np.log(u) - np.log(1 - u) + log_alpha) / BETA) * 1.2 - 0.1
  keep = (raw > 0.01) & (raw < 0.99)
  assert keep.sum() >= 3
  with jax.enable_x64(True):
    f = lambda a: (gates.hard_concrete_from_uniform(jnp.asarray(u), a) ** 2).sum()
    grad = jax.grad(f)(jnp.asarray(log_alpha))
    fd = _central_difference(lambda a: (np_sample(u, a) ** 2).sum(), log_alpha)
  np.testing.assert_allclose(np.asarray(grad)[keep], fd[keep], rtol=1e-5, atol=1e-9)
  # Where the gate is clipped to 0 or 1 the gradient is exactly zero.
  clipped = (raw < -0.01) | (raw > 1.01)
  assert np.all(np.asarray(grad)[clipped] == 0)


@pytest.mark.parametrize("mode", ["median", "eq13"])
def test_deterministic_gate_gradient_matches_finite_differences(rng, mode):
  log_alpha = rng.normal(0, 1, size=6)
  with jax.enable_x64(True):
    grad = jax.grad(lambda a: gates.deterministic_gate(a, mode).sum())(
        jnp.asarray(log_alpha))
    fd = _central_difference(lambda a: np_test_gate(a, mode).sum(), log_alpha)
  np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- extremes
def test_extremes_are_finite():
  log_alpha = jnp.array([-1e3, -50.0, 0.0, 50.0, 1e3], jnp.float32)
  for u_value in (0.0, 1.0, 0.5):
    u = jnp.full(log_alpha.shape, u_value)
    f = lambda a: gates.hard_concrete_from_uniform(u, a).sum()
    assert np.all(np.isfinite(gates.hard_concrete_from_uniform(u, log_alpha)))
    assert np.all(np.isfinite(jax.grad(f)(log_alpha)))
  for fn in (gates.prob_nonzero,
             lambda a: gates.deterministic_gate(a, "median"),
             lambda a: gates.deterministic_gate(a, "eq13")):
    assert np.all(np.isfinite(fn(log_alpha)))
    assert np.all(np.isfinite(jax.grad(lambda a: fn(a).sum())(log_alpha)))
  ends = log_alpha[jnp.array([0, -1])]
  np.testing.assert_array_equal(gates.deterministic_gate(ends), [0, 1])
  # Noise at the extremes cannot flip a gate whose log_alpha is +-1e3.
  np.testing.assert_array_equal(
      gates.hard_concrete_from_uniform(jnp.array([1.0, 0.0]), ends), [0.0, 1.0])


def test_no_clamp_by_default_and_optional_clamp():
  log_alpha = jnp.array([-20.0, 20.0])
  p = gates.prob_nonzero(log_alpha)
  assert p[0] < 1e-7  # no 4.7% floor
  clamped = gates.prob_nonzero(log_alpha, clamp=(-4.6, 4.6))
  np.testing.assert_allclose(clamped, np_prob_nonzero(np.array([-4.6, 4.6])),
                             rtol=1e-5)
  assert clamped[0] > 0.04
  with pytest.raises(ValueError, match="clamp"):
    gates.prob_nonzero(log_alpha, clamp=(1.0, -1.0))


def test_bad_hyperparameters_raise():
  for kw in (dict(beta=0.0), dict(gamma=0.1), dict(zeta=0.9)):
    with pytest.raises(ValueError):
      gates.prob_nonzero(jnp.zeros(2), **kw)


# ---------------------------------------------------------------- dtypes, transforms
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtype_preserved(dtype):
  log_alpha = jnp.linspace(-3, 3, 12).astype(dtype)
  key = jax.random.key(0)
  outs = [
      gates.hard_concrete_sample(key, log_alpha),
      gates.hard_concrete_sample(key, log_alpha, (3, 12)),
      gates.hard_concrete_from_uniform(jnp.full((12,), 0.3), log_alpha),
      gates.prob_nonzero(log_alpha),
      gates.deterministic_gate(log_alpha, "median"),
      gates.deterministic_gate(log_alpha, "eq13"),
      gates.init_log_alpha(key, (4,), 0.3, dtype),
      jax.grad(lambda a: gates.prob_nonzero(a).astype(jnp.float32).sum())(log_alpha),
  ]
  for out in outs:
    assert out.dtype == dtype
  ref = np_prob_nonzero(np.asarray(log_alpha, np.float64))
  np.testing.assert_allclose(np.asarray(outs[3], np.float64), ref,
                             atol=1e-2 if dtype == jnp.bfloat16 else 1e-6)


def test_jit_and_vmap_agree_with_eager(rng):
  log_alpha = jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)
  u = jnp.asarray(rng.uniform(size=(5, 6)), jnp.float32)
  eager = gates.hard_concrete_from_uniform(u, log_alpha)
  jitted = jax.jit(gates.hard_concrete_from_uniform)(u, log_alpha)
  vmapped = jax.vmap(gates.hard_concrete_from_uniform)(u, log_alpha)
  np.testing.assert_allclose(jitted, eager, atol=3e-7)
  np.testing.assert_allclose(vmapped, eager, atol=3e-7)
  keys = jax.random.split(jax.random.key(3), 5)
  per_row = jax.vmap(gates.hard_concrete_sample)(keys, log_alpha)
  assert per_row.shape == (5, 6)
  np.testing.assert_allclose(
      jax.jit(gates.deterministic_gate, static_argnums=1)(log_alpha, "eq13"),
      gates.deterministic_gate(log_alpha, "eq13"), atol=3e-7)


def test_sample_shape_rules():
  log_alpha = jnp.zeros((3, 4))
  key = jax.random.key(0)
  assert gates.hard_concrete_sample(key, log_alpha).shape == (3, 4)
  z = gates.hard_concrete_sample(key, log_alpha, (10, 3, 4))
  assert z.shape == (10, 3, 4)
  assert not np.allclose(z[0], z[1])  # independent samples per example
  with pytest.raises(ValueError, match="must end with"):
    gates.hard_concrete_sample(key, log_alpha, (3, 5))
  with pytest.raises(ValueError, match="must end with"):
    gates.hard_concrete_sample(key, log_alpha, (4,))


def test_init_log_alpha():
  la = gates.init_log_alpha(jax.random.key(0), (10_000,), 0.2)
  assert la.shape == (10_000,) and la.dtype == jnp.float32
  np.testing.assert_allclose(np.mean(la), math.log(0.8 / 0.2), atol=1e-3)
  np.testing.assert_allclose(np.std(la), 0.01, rtol=0.05)
  for bad in (0.0, 1.0, -0.1, 1.5):
    with pytest.raises(ValueError, match="droprate"):
      gates.init_log_alpha(jax.random.key(0), (3,), bad)


# ---------------------------------------------------------------- properties
# A few fixed shapes keep XLA compilations (one per shape) out of the example loop.
_log_alphas = st.sampled_from([(6,), (2, 3), (1,)]).flatmap(
    lambda shape: hnp.arrays(np.float32, shape,
                             elements=st.floats(-1e3, 1e3, width=32)))


@settings(max_examples=25, deadline=None)
@given(log_alpha=_log_alphas, beta=st.floats(0.05, 1.0), seed=st.integers(0, 2**31))
def test_property_values_in_unit_interval(log_alpha, beta, seed):
  key = jax.random.key(seed)
  z = gates.hard_concrete_sample(key, log_alpha, beta=beta)
  p = gates.prob_nonzero(log_alpha, beta=beta)
  d = gates.deterministic_gate(log_alpha, "median", beta=beta)
  for out in (z, p, d):
    assert out.shape == log_alpha.shape
    assert np.all((np.asarray(out) >= 0) & (np.asarray(out) <= 1))


@settings(max_examples=25, deadline=None)
@given(log_alpha=_log_alphas, beta=st.floats(0.05, 1.0),
       u=st.floats(0.0, 1.0), delta=st.floats(0.01, 10.0))
def test_property_monotone_in_log_alpha(log_alpha, beta, u, delta):
  larger = log_alpha + np.float32(delta)
  kw = dict(beta=beta)
  for fn in (lambda a: gates.hard_concrete_from_uniform(jnp.full(a.shape, u), a, **kw),
             lambda a: gates.prob_nonzero(a, **kw),
             lambda a: gates.deterministic_gate(a, "median", **kw),
             lambda a: gates.deterministic_gate(a, "eq13", **kw)):
    assert np.all(np.asarray(fn(larger)) >= np.asarray(fn(log_alpha)))


# ---------------------------------------------------------------- fast paths
@pytest.mark.parametrize("key_shape,n", [((), 1), ((), 777), ((5,), 1184), ((2, 3), 64)])
def test_uniform_is_bit_identical_to_jax_random_uniform(key_shape, n):
  base = jax.random.key(42)
  keys = jax.random.split(base, max(1, math.prod(key_shape))).reshape(key_shape)
  want = jax.vmap(lambda k: jax.random.uniform(k, (n,)))(keys.reshape(-1))
  got = gates.uniform(keys, n)
  assert got.shape == key_shape + (n,)
  np.testing.assert_array_equal(np.asarray(got).reshape(-1, n), np.asarray(want))


def test_uniform_falls_back_for_other_key_implementations_and_rejects_raw_keys():
  keys = jax.random.split(jax.random.key(0, impl="rbg"), 3)
  np.testing.assert_array_equal(
      gates.uniform(keys, 10), jax.vmap(lambda k: jax.random.uniform(k, (10,)))(keys))
  with pytest.raises(TypeError, match="typed PRNG keys"):
    gates.uniform(jax.random.PRNGKey(0), 10)


def _jnp_reference_gate(u, log_alpha, beta=BETA, gamma=GAMMA, zeta=ZETA):
  """The gate formula written independently, for autodiff as the reference gradient."""
  s = 1 / (1 + jnp.exp(-(jnp.log(u) - jnp.log1p(-u) + log_alpha) / beta))
  return jnp.minimum(jnp.maximum(s * (zeta - gamma) + gamma, 0.0), 1.0)


@settings(max_examples=15, deadline=None)
@given(shapes=st.sampled_from([((30, 7), (7,)), ((7,), (7,)), ((4, 3, 5), (3, 1)),
                               ((5,), (2, 5)), ((), (6,)), ((3, 1), (1, 4))]),
       scale=st.floats(0.1, 6.0), seed=st.integers(0, 2 ** 16))
def test_property_custom_gradient_equals_autodiff_of_the_formula(shapes, scale, seed):
  u_shape, la_shape = shapes
  rng = np.random.default_rng(seed)
  u = rng.uniform(0.001, 0.999, size=u_shape)
  log_alpha = rng.normal(0, scale, size=la_shape)
  cotangent = rng.normal(size=np.broadcast_shapes(u_shape, la_shape))
  with jax.enable_x64(True):
    project = lambda f: lambda u, a: jnp.vdot(f(u, a), cotangent)
    got = jax.grad(project(gates.hard_concrete_from_uniform), (0, 1))(u, log_alpha)
    want = jax.grad(project(_jnp_reference_gate), (0, 1))(u, log_alpha)
    for g, w, shape in zip(got, want, (u_shape, la_shape)):
      assert g.shape == shape
      np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


def test_gradient_wrt_uniform_matches_finite_differences(rng):
  u = rng.uniform(0.2, 0.8, size=6)
  log_alpha = rng.normal(0, 0.5, size=6)
  with jax.enable_x64(True):
    grad = jax.grad(lambda u: (gates.hard_concrete_from_uniform(u, log_alpha) ** 2
                               ).sum())(jnp.asarray(u))
    fd = _central_difference(lambda v: (np_sample(v, log_alpha) ** 2).sum(), u)
  np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-5, atol=1e-9)


# ---------------------------------------------------------------- forward mode, edges
def test_forward_mode_matches_reverse_mode_and_finite_differences(rng):
  log_alpha = rng.normal(0, 1, size=5)
  u = rng.uniform(0.05, 0.95, size=(3, 5))
  with jax.enable_x64(True):
    f = lambda a: gates.hard_concrete_from_uniform(jnp.asarray(u), a)
    forward = jax.jacfwd(f)(jnp.asarray(log_alpha))
    reverse = jax.jacrev(f)(jnp.asarray(log_alpha))
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=0)
    tangent = rng.normal(size=5)
    _, jvp = jax.jvp(f, (jnp.asarray(log_alpha),), (jnp.asarray(tangent),))
    fd = (np_sample(u, log_alpha + 1e-6 * tangent)
          - np_sample(u, log_alpha - 1e-6 * tangent)) / 2e-6
    np.testing.assert_allclose(jvp, fd, rtol=1e-5, atol=1e-9)
    # Tangents in the noise too (the reparameterised sample is differentiable in u).
    du = rng.normal(size=(3, 5))
    _, jvp_u = jax.jvp(lambda v: gates.hard_concrete_from_uniform(v, log_alpha),
                       (jnp.asarray(u),), (jnp.asarray(du),))
    fd_u = (np_sample(u + 1e-7 * du, log_alpha)
            - np_sample(u - 1e-7 * du, log_alpha)) / 2e-7
    np.testing.assert_allclose(jvp_u, fd_u, rtol=1e-5, atol=1e-8)
  z, tz = jax.jvp(lambda a: gates.hard_concrete_sample(jax.random.key(0), a, (4, 5)),
                  (jnp.zeros(5),), (jnp.ones(5),))
  assert z.shape == tz.shape == (4, 5)


def test_zero_size_batch_gives_empty_gates_and_zero_gradients():
  log_alpha = jnp.linspace(-1.0, 1.0, 5)
  z = gates.hard_concrete_sample(jax.random.key(0), log_alpha, (0, 5))
  assert z.shape == (0, 5)
  for fn in (lambda a: gates.hard_concrete_sample(jax.random.key(0), a, (0, 5)).sum(),
             lambda a: gates.gate(a, jax.random.key(0), (0,)).sum()):
    g = jax.grad(fn)(log_alpha)
    np.testing.assert_array_equal(g, np.zeros(5))
    np.testing.assert_array_equal(jax.jit(jax.grad(fn))(log_alpha), np.zeros(5))
  empty = jnp.zeros((0,))
  assert gates.prob_nonzero(empty).shape == (0,)
  assert jax.grad(lambda a: gates.deterministic_gate(a).sum())(empty).shape == (0,)


@pytest.mark.parametrize("name", ["sample", "from_uniform", "gate", "prob_nonzero",
                                  "median", "eq13"])
def test_nan_log_alpha_gives_nan_value_and_nan_gradient(name):
  """One rule everywhere: NaN in, NaN out (value and gradient); others unaffected."""
  fns = {
      "sample": lambda a: gates.hard_concrete_sample(jax.random.key(0), a, (3, 2)),
      "from_uniform": lambda a: gates.hard_concrete_from_uniform(
          jnp.full((3, 2), 0.5), a),
      "gate": lambda a: gates.gate(a, jax.random.key(1), (3,)),
      "prob_nonzero": gates.prob_nonzero,
      "median": lambda a: gates.deterministic_gate(a, "median"),
      "eq13": lambda a: gates.deterministic_gate(a, "eq13"),
  }
  fn = fns[name]
  log_alpha = jnp.array([jnp.nan, 0.5])
  value = np.asarray(fn(log_alpha)).reshape(-1, 2)
  assert np.all(np.isnan(value[:, 0])) and np.all(np.isfinite(value[:, 1]))
  for grad in (jax.grad(lambda a: fn(a).sum())(log_alpha),
               jax.jit(jax.grad(lambda a: fn(a).sum()))(log_alpha)):
    assert np.isnan(grad[0]) and np.isfinite(grad[1])
  _, tangent = jax.jvp(fn, (log_alpha,), (jnp.ones(2),))
  assert np.all(np.isnan(np.asarray(tangent).reshape(-1, 2)[:, 0]))


def test_gate_has_one_rank_in_training_and_at_test_time(rng):
  log_alpha = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
  key = jax.random.key(3)
  train = gates.gate(log_alpha, key, (6,))
  np.testing.assert_array_equal(
      train, gates.hard_concrete_sample(key, log_alpha, (6, 4)))
  test = gates.gate(log_alpha, None, (6,), deterministic=True, test_gate="eq13")
  assert test.shape == (1, 4)
  np.testing.assert_allclose(test[0], np_test_gate(np.asarray(log_alpha, np.float64),
                                                   "eq13"), atol=1e-6)
  activations = jnp.ones((6, 5, 4))
  assert (activations * train[:, None]).shape == (activations * test[:, None]).shape
  assert gates.gate(log_alpha, key).shape == (4,)
  with pytest.raises(ValueError, match="PRNG key"):
    gates.gate(log_alpha)
