"""Tests for l0jax.constrained: closed-form KKT points, projections, restarts, schemes."""

import functools
import math
import warnings

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l0jax import constrained as C
from l0jax import penalty_search

SETTINGS = hypothesis.settings(max_examples=25, deadline=None, derandomize=True)


@functools.lru_cache(maxsize=None)
def _solver(problem, fn, scheme, primal_lr, dual, steps):
  primal = optax.sgd(primal_lr)
  step = C.make_update(problem, primal, dual, scheme)

  @jax.jit
  def run(x0, lam0):
    cstate = C.init(problem, dual, lam0)

    def body(carry, _):
      x, opt_state, cstate = carry
      x, opt_state, cstate, _ = step(fn, x, opt_state, cstate)
      return (x, opt_state, cstate), None

    (x, _, cstate), _ = jax.lax.scan(
        body, (x0, primal.init(x0), cstate), None, length=steps)
    return x, cstate.multipliers

  return run


def _scan_solve(problem, fn, x0, scheme, primal_lr, dual, steps, init_multipliers=None):
  """Runs ``steps`` of ``make_update`` under one (cached) jit; returns (x, multipliers)."""
  if init_multipliers is None:
    init_multipliers = jnp.zeros(problem.num_constraints)
  run = _solver(problem, fn, scheme, primal_lr, dual, steps)
  return run(jnp.asarray(x0, jnp.float32), jnp.asarray(init_multipliers, jnp.float32))


# ----------------------------------------------------------------------------------------
# Problem, init, validation
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, match", [
    (dict(targets=(0.1, 0.2), kinds=("ineq",)), "length"),
    (dict(targets=(0.1,), kinds=("leq",)), "unknown constraint kind"),
    (dict(targets=(0.1,), formulation="barrier"), "unknown formulation"),
    (dict(targets=(0.1,), formulation="augmented_lagrangian"), "penalty_coefficient"),
    (dict(targets=(0.1,), formulation="augmented_lagrangian", penalty_coefficient=-1.),
     "penalty_coefficient"),
    (dict(targets=(0.1,), penalty_coefficient=1.0), "only used by"),
    (dict(targets=(float("nan"),)), "finite"),
    (dict(targets=("a",)), "floats"),
])
def test_problem_rejects_bad_input(kwargs, match):
  with pytest.raises(ValueError, match=match):
    C.Problem(**kwargs)


def test_problem_normalises_and_is_hashable():
  p = C.Problem(targets=0.3)
  assert p.targets == (0.3,) and p.kinds == ("ineq",) and p.num_constraints == 1
  q = C.Problem(targets=[1, 2], kinds="eq")
  assert q.targets == (1.0, 2.0) and q.kinds == ("eq", "eq")
  assert not q.is_inequality.any()
  assert hash(C.Problem(targets=[0.3])) == hash(p) and C.Problem(targets=[0.3]) == p


def test_init_validates_and_is_float32():
  p = C.Problem((0.1, 0.2), ("ineq", "eq"))
  state = C.init(p, 0.1)
  assert state.multipliers.dtype == jnp.float32
  np.testing.assert_array_equal(state.multipliers, [0.0, 0.0])
  np.testing.assert_array_equal(C.init(p, 0.1, [1.0, -2.0]).multipliers, [1.0, -2.0])
  with pytest.raises(ValueError, match=">= 0"):
    C.init(p, 0.1, [-1.0, 0.0])
  with pytest.raises(ValueError, match="shape"):
    C.init(p, 0.1, [1.0, 2.0, 3.0])
  with pytest.raises(ValueError, match="learning rate"):
    C.init(p)  # a plain Lagrangian needs a dual learning rate
  # A checkpointable pytree: NamedTuples of arrays only.
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(C.init(p, optax.adam(1.))))


def test_misuse_errors():
  p = C.Problem((0.1,))
  dual = C.dual_optimizer(p, 0.1)
  with pytest.raises(ValueError, match="multipliers as params"):
    dual.update(jnp.ones(1), dual.init(jnp.zeros(1)))
  with pytest.raises(ValueError, match="unknown scheme"):
    C.make_update(p, optax.sgd(0.1), dual, scheme="gauss-seidel")
  with pytest.raises(TypeError, match="twice"):
    C.dual_optimizer(p, dual)
  with pytest.raises(ValueError, match="shape"):
    C.lagrangian(0.0, jnp.ones(2), jnp.zeros(1), p)
  with pytest.raises(ValueError, match="ema_nu"):
    C.nupi(0.1, ema_nu=1.0)


# ----------------------------------------------------------------------------------------
# Lagrangian formulas
# ----------------------------------------------------------------------------------------

_finite = st.floats(-5.0, 5.0, allow_nan=False, width=32)


@SETTINGS
@hypothesis.given(f=_finite, g=st.lists(_finite, min_size=3, max_size=3),
                  lam=st.lists(st.floats(0.0, 5.0, width=32), min_size=3, max_size=3),
                  c=st.floats(0.1, 10.0))
def test_lagrangian_closed_forms(f, g, lam, c):
  targets, kinds = (0.5, -0.25, 1.0), ("ineq", "eq", "ineq")
  v = np.asarray(g, np.float64) - np.asarray(targets)
  lam = np.asarray(lam, np.float64)
  plain = C.Problem(targets, kinds)
  np.testing.assert_allclose(
      C.lagrangian(f, jnp.asarray(g), jnp.asarray(lam), plain), f + lam @ v,
      rtol=1e-5, atol=1e-4)
  aug = C.Problem(targets, kinds, "augmented_lagrangian", c)
  expected = f
  for k, kind in enumerate(kinds):
    if kind == "eq":
      expected += lam[k] * v[k] + c / 2 * v[k] ** 2
    elif lam[k] + c * v[k] > 0:  # Rockafellar's piecewise form
      expected += lam[k] * v[k] + c / 2 * v[k] ** 2
    else:
      expected += -lam[k] ** 2 / (2 * c)
  np.testing.assert_allclose(
      C.lagrangian(f, jnp.asarray(g), jnp.asarray(lam), aug), expected,
      rtol=1e-4, atol=1e-3)
  # constraint_weights is dL/dg for both formulations.
  for p in (plain, aug):
    dl_dg = jax.grad(C.lagrangian, argnums=1)(f, jnp.asarray(g), jnp.asarray(lam), p)
    np.testing.assert_allclose(C.constraint_weights(jnp.asarray(g), jnp.asarray(lam), p),
                               dl_dg, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------
# Toy convex problems with closed-form KKT points
#   min ||x - a||^2  s.t.  sum_{i in S_k} x_i (<= | =) b_k,  disjoint S_k:
#   x*_S = a_S - s_k / |S_k|,  lambda*_k = 2 s_k / |S_k|,
#   s_k = sum(a_S) - b_k, clipped at 0 for an inequality.
# ----------------------------------------------------------------------------------------

TOYS = {
    "active": ([1., 2., 3.], [[0, 1, 2]], [3.], ["ineq"]),
    "inactive": ([1., 2., 3.], [[0, 1, 2]], [10.], ["ineq"]),
    "two_active": ([1., 2., .5, .2], [[0, 1], [2, 3]], [1., 0.], ["ineq", "ineq"]),
    "equality": ([1., 2., 3.], [[0, 1, 2]], [9.], ["eq"]),  # lambda* = -2 < 0
}


def _toy(name):
  a, groups, bs, kinds = TOYS[name]
  a = np.asarray(a, np.float64)
  x_star, lam_star = a.copy(), []
  A = np.zeros((len(groups), len(a)), np.float32)
  for k, (group, b, kind) in enumerate(zip(groups, bs, kinds)):
    s = a[group].sum() - b
    if kind == "ineq":
      s = max(s, 0.0)
    x_star[group] -= s / len(group)
    lam_star.append(2 * s / len(group))
    A[k, group] = 1.0
  a32, A = jnp.asarray(a, jnp.float32), jnp.asarray(A)
  fn = lambda x: (jnp.sum((x - a32) ** 2), A @ x, None)
  return fn, tuple(bs), tuple(kinds), x_star, np.asarray(lam_star), len(a)


@pytest.mark.parametrize("formulation", ["lagrangian", "augmented_lagrangian"])
@pytest.mark.parametrize("scheme", C.SCHEMES)
@pytest.mark.parametrize("toy", list(TOYS))
def test_converges_to_kkt_point(toy, scheme, formulation):
  fn, targets, kinds, x_star, lam_star, n = _toy(toy)
  if formulation == "lagrangian":
    problem = C.Problem(targets, kinds)
    optimizer = 0.5
  else:
    problem = C.Problem(targets, kinds, formulation, penalty_coefficient=0.5)
    optimizer = None  # method of multipliers: lambda <- proj(lambda + c v)
  # Restarts off: with exact gradients the iterates oscillate around an active constraint
  # and a restart at any tiny v < 0 would knock lambda back to 0 (tested separately).
  dual = C.dual_optimizer(problem, optimizer, restarts=False)
  x, lam = _scan_solve(problem, fn, np.zeros(n), scheme, 0.2, dual, 600)
  np.testing.assert_allclose(x, x_star, atol=1e-3)
  np.testing.assert_allclose(lam, lam_star, atol=1e-3)
  if "eq" in kinds:
    assert lam[0] < -1.0  # an equality multiplier is not projected


@pytest.mark.parametrize("scheme", C.SCHEMES)
def test_inactive_constraint_with_restarts_keeps_zero_multiplier(scheme):
  fn, targets, kinds, x_star, lam_star, n = _toy("inactive")
  problem = C.Problem(targets, kinds)
  # lambda starts high: the first strictly feasible step must restart it to exactly 0.
  x, lam = _scan_solve(problem, fn, np.zeros(n), scheme, 0.2,
                       C.dual_optimizer(problem, optax.adam(0.5)), 300, [5.0])
  np.testing.assert_allclose(x, x_star, atol=1e-3)
  np.testing.assert_array_equal(lam, [0.0])


# ----------------------------------------------------------------------------------------
# Projection: inequality multipliers are never negative
# ----------------------------------------------------------------------------------------

KINDS3 = ("ineq", "eq", "ineq")
INEQ3 = np.array([True, False, True])
_DUALS = {
    "sgd": lambda lr: optax.sgd(lr),
    "momentum": lambda lr: optax.sgd(lr, momentum=0.9),
    "adam": lambda lr: optax.adam(lr),
    "nupi": lambda lr: C.nupi(lr, kp=2.0, ema_nu=0.5),
}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _dual_trajectory(opt_name, restarts, lam0, vs, lr):
  problem = C.Problem((0.0, 0.0, 0.0), KINDS3)
  dual = C.dual_optimizer(problem, _DUALS[opt_name](lr), restarts=restarts)

  def body(state, g):
    state = C.dual_step(state, g, problem, dual)
    return state, state.multipliers

  return jax.lax.scan(body, C.init(problem, dual, lam0), vs)[1]


_violation = st.one_of(st.just(0.0), st.floats(-10.0, 10.0, width=32))


@SETTINGS
@hypothesis.given(
    opt_name=st.sampled_from(sorted(_DUALS)), restarts=st.booleans(),
    lam0=st.tuples(st.floats(0.0, 5.0), st.floats(-5.0, 5.0), st.floats(0.0, 5.0)),
    vs=st.lists(st.lists(_violation, min_size=3, max_size=3), min_size=6, max_size=6),
    lr=st.floats(1e-4, 10.0))
def test_dual_step_keeps_inequality_multipliers_nonnegative(opt_name, restarts, lam0, vs,
                                                            lr):
  traj = np.asarray(_dual_trajectory(opt_name, restarts, jnp.asarray(lam0),
                                     jnp.asarray(vs, jnp.float32), jnp.float32(lr)))
  assert np.all(traj[:, INEQ3] >= 0.0), traj
  if restarts:  # a strictly satisfied inequality ends with a zero multiplier
    v = np.asarray(vs, np.float32)
    assert np.all(traj[(v < 0) & INEQ3] == 0.0)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _scheme_trajectory(scheme, formulation, A, d, c, lrs):
  c_pen = 1.0 if formulation == "augmented_lagrangian" else None
  problem = C.Problem((0.0, 0.0, 0.0), KINDS3, formulation, c_pen)
  dual = C.dual_optimizer(problem, optax.sgd(lrs[1]))
  primal = optax.sgd(lrs[0])
  step = C.make_update(problem, primal, dual, scheme)
  fn = lambda x: (c @ x + 0.5 * x @ x, A @ x + d, None)

  def body(carry, _):
    x, o, s = carry
    x, o, s, _ = step(fn, x, o, s)
    return (x, o, s), s.multipliers

  x0 = jnp.ones(2)
  return jax.lax.scan(body, (x0, primal.init(x0), C.init(problem, dual)), None,
                      length=5)[1]


@SETTINGS
@hypothesis.given(
    scheme=st.sampled_from(C.SCHEMES),
    formulation=st.sampled_from(["lagrangian", "augmented_lagrangian"]),
    A=st.lists(_finite, min_size=6, max_size=6), d=st.lists(_finite, min_size=3,
                                                             max_size=3),
    c=st.lists(_finite, min_size=2, max_size=2),
    lrs=st.tuples(st.floats(1e-3, 1.0), st.floats(1e-3, 10.0)))
def test_schemes_keep_inequality_multipliers_nonnegative(scheme, formulation, A, d, c, lrs):
  traj = np.asarray(_scheme_trajectory(
      scheme, formulation, jnp.asarray(A).reshape(3, 2), jnp.asarray(d), jnp.asarray(c),
      jnp.asarray(lrs, jnp.float32)))
  assert np.all(np.isfinite(traj))
  assert np.all(traj[:, INEQ3] >= 0.0), traj


# ----------------------------------------------------------------------------------------
# Dual restarts
# ----------------------------------------------------------------------------------------

_RESTART_PROBLEM = C.Problem((0.0, 0.0, 0.0, 0.0), ("ineq", "ineq", "ineq", "eq"))


def _warm_then_step(inner, restarts, last):
  dual = C.dual_optimizer(_RESTART_PROBLEM, inner, restarts=restarts)
  state = C.init(_RESTART_PROBLEM, dual)
  for _ in range(3):
    state = jax.jit(C.dual_step, static_argnums=(2, 3))(
        state, jnp.ones(4), _RESTART_PROBLEM, dual)
  return state, C.dual_step(state, jnp.asarray(last), _RESTART_PROBLEM, dual)


@pytest.mark.parametrize("inner, keys", [
    (optax.adam(0.1), ("mu", "nu")),
    (C.nupi(0.1, kp=1.0), ("xi",)),
])
def test_restart_resets_strictly_satisfied_multiplier_and_state(inner, keys):
  # v = (strictly satisfied, active, violated, equality with v < 0)
  last = [-0.1, 0.0, 0.2, -0.3]
  warm, on = _warm_then_step(inner, True, last)
  _, off = _warm_then_step(inner, False, last)
  for key in keys:  # the warm state really has something to reset
    assert np.all(np.asarray(optax.tree_utils.tree_get(warm.dual_state, key)) != 0)
  assert np.all(np.asarray(warm.multipliers) > 0.2)
  # Restarted: multiplier and per-constraint optimizer state are zero.
  assert on.multipliers[0] == 0.0
  for key in keys:
    assert optax.tree_utils.tree_get(on.dual_state, key)[0] == 0.0
  # Restarts off leave it alone (a small step from lambda > 0.2 stays positive).
  assert off.multipliers[0] > 0.0
  for key in keys:
    assert optax.tree_utils.tree_get(off.dual_state, key)[0] != 0.0
  # Active, violated and equality entries are untouched by restarts.
  np.testing.assert_array_equal(on.multipliers[1:], off.multipliers[1:])
  assert off.multipliers[3] != 0.0
  for a, b in zip(jax.tree.leaves(on.dual_state), jax.tree.leaves(off.dual_state)):
    np.testing.assert_array_equal(np.asarray(a)[..., 1:] if np.ndim(a) else a,
                                  np.asarray(b)[..., 1:] if np.ndim(b) else b)


# ----------------------------------------------------------------------------------------
# Dual optimizers: nuPI, method of multipliers, penalized
# ----------------------------------------------------------------------------------------


@SETTINGS
@hypothesis.given(
    vs=st.lists(st.lists(_violation, min_size=3, max_size=3), min_size=5, max_size=5),
    lr=st.floats(1e-4, 10.0), restarts=st.booleans())
def test_nupi_with_default_gains_is_exactly_sgd(vs, lr, restarts):
  problem = C.Problem((0.0, 0.0, 0.0), KINDS3)
  trajs = []
  for inner in (C.nupi(lr), optax.sgd(lr)):
    dual = C.dual_optimizer(problem, inner, restarts=restarts)
    state, traj = C.init(problem, dual, [1.0, 0.5, 0.0]), []
    for v in vs:
      state = C.dual_step(state, jnp.asarray(v, jnp.float32), problem, dual)
      traj.append(np.asarray(state.multipliers))
    trajs.append(np.stack(traj))
  np.testing.assert_array_equal(trajs[0], trajs[1])


@pytest.mark.parametrize("kp, ki, nu", [(1.0, 1.0, 0.0), (2.0, 0.5, 0.7), (0.0, 2.0, 0.3)])
def test_nupi_matches_positional_pi_law(kp, ki, nu):
  # Equality constraints: no projection, no restart, so the positional PI law holds:
  # lambda_t = lambda_0 + lr * (ki * sum_{s<t} v_s + kp * xi_{t-1}).
  lr, rng = 0.3, np.random.default_rng(0)
  vs = rng.normal(size=(8, 2)).astype(np.float32)
  problem = C.Problem((0.0, 0.0), "eq")
  dual = C.dual_optimizer(problem, C.nupi(lr, kp=kp, ki=ki, ema_nu=nu))
  state = C.init(problem, dual, [0.5, -0.5])
  xi = np.zeros(2)
  for t, v in enumerate(vs):
    state = C.dual_step(state, v, problem, dual)
    xi = nu * xi + (1 - nu) * v
    expected = np.array([0.5, -0.5]) + lr * (ki * vs[:t + 1].sum(0) + kp * xi)
    np.testing.assert_allclose(state.multipliers, expected, rtol=1e-5, atol=1e-5)


def test_augmented_lagrangian_default_dual_is_method_of_multipliers():
  c = 2.5
  problem = C.Problem((0.5, 0.5, 0.0), ("ineq", "ineq", "eq"), "augmented_lagrangian", c)
  state = C.init(problem, None, [1.0, 0.1, 0.3])
  g = jnp.asarray([0.7, 0.2, -0.4])
  new = C.dual_step(state, g, problem)  # default: sgd(c); restarts on
  v = np.asarray(g) - np.array([0.5, 0.5, 0.0])
  mom = np.array([1.0, 0.1, 0.3]) + c * v
  mom[:2] = np.maximum(mom[:2], 0.0)
  mom[1] = 0.0  # v_1 < 0: restarted (would be max(0, 0.1 - 0.75) = 0 anyway)
  np.testing.assert_allclose(new.multipliers, mom, rtol=1e-6)


@pytest.mark.parametrize("scheme", C.SCHEMES)
def test_penalized_keeps_lambda_fixed(scheme):
  a = np.array([1.0, 2.0, 3.0])
  problem = C.Problem((0.0,), formulation="penalized")
  fn = lambda x: (jnp.sum((x - jnp.asarray(a, jnp.float32)) ** 2), jnp.sum(x)[None], None)
  dual = C.dual_optimizer(problem, optax.sgd(10.0))  # ignored for "penalized"
  x, lam = _scan_solve(problem, fn, np.zeros(3), scheme, 0.2, dual, 200, [1.5])
  np.testing.assert_array_equal(lam, [1.5])
  np.testing.assert_allclose(x, a - 1.5 / 2, atol=1e-4)  # argmin ||x-a||^2 + lambda sum x
  state = C.init(problem, dual, [1.5])
  np.testing.assert_array_equal(C.dual_step(state, [-7.0], problem, dual).multipliers,
                                [1.5])


# ----------------------------------------------------------------------------------------
# Schemes on a bilinear game: min_x max_lambda x + lambda * x  (min x s.t. x = 0),
# saddle point (x, lambda) = (0, -1).
# ----------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _bilinear_distances(scheme, steps=250, lr=0.3):
  problem = C.Problem((0.0,), ("eq",))
  primal, dual = optax.sgd(lr), C.dual_optimizer(problem, optax.sgd(lr))
  step = C.make_update(problem, primal, dual, scheme)
  fn = lambda x: (x[0], x, None)

  @jax.jit
  def run():
    x0 = jnp.ones(1)

    def body(carry, _):
      x, o, s = carry
      x, o, s, _ = step(fn, x, o, s)
      return (x, o, s), jnp.hypot(x[0], s.multipliers[0] + 1.0)

    return jax.lax.scan(body, (x0, primal.init(x0), C.init(problem, dual)), None,
                        length=steps)[1]

  return math.sqrt(2.0), np.asarray(run())


def test_bilinear_simultaneous_diverges_extragradient_converges():
  d0, sim = _bilinear_distances("simultaneous")
  assert np.all(np.diff(np.concatenate([[d0], sim])) > 0)  # grows every step
  assert sim[-1] > 100 * d0
  d0, extra = _bilinear_distances("extragradient")
  assert np.all(np.diff(np.concatenate([[d0], extra])) < 0)  # shrinks every step
  assert extra[-1] < 1e-3
  for scheme in ("dual_primal", "primal_dual"):  # symplectic: bounded, not convergent
    d0, alt = _bilinear_distances(scheme)
    assert 0.1 * d0 < alt.min() and alt.max() < 10 * d0


# ----------------------------------------------------------------------------------------
# One step of each scheme against a hand-written reference (eager and jitted)
# ----------------------------------------------------------------------------------------


def _nonlinear_fn(params, batch):
  w = params["w"]
  objective = jnp.mean((batch @ w - 1.0) ** 2)
  values = jnp.stack([jnp.sum(w ** 2), jnp.sum(jnp.sin(w)) + jnp.mean(batch)])
  return objective, values, {"pred": batch @ w}


@pytest.mark.parametrize("formulation", ["lagrangian", "augmented_lagrangian"])
@pytest.mark.parametrize("scheme", C.SCHEMES)
def test_one_step_matches_reference(scheme, formulation):
  c = 0.7 if formulation == "augmented_lagrangian" else None
  problem = C.Problem((0.5, 0.2), ("ineq", "eq"), formulation, c)
  lr_p, lr_d = 0.1, 0.3
  dual = C.dual_optimizer(problem, optax.sgd(lr_d), restarts=False)
  primal = optax.sgd(lr_p)
  rng = np.random.default_rng(1)
  batch = jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)
  params = {"w": jnp.asarray(rng.normal(size=3), jnp.float32)}
  lam0 = jnp.asarray([0.4, -0.3])
  cstate = C.init(problem, dual, lam0)

  def grad_l(w, lam):
    def lag(w):
      f, g, _ = _nonlinear_fn({"w": w}, batch)
      return C.lagrangian(f, g, lam, problem)
    return jax.grad(lag)(w)

  def dual_ref(w, lam):
    v = _nonlinear_fn({"w": w}, batch)[1] - jnp.asarray(problem.targets)
    new = lam + lr_d * v
    return jnp.where(problem.is_inequality, jnp.maximum(new, 0.0), new)

  w = params["w"]
  if scheme == "simultaneous":
    w_ref, lam_ref = w - lr_p * grad_l(w, lam0), dual_ref(w, lam0)
  elif scheme == "dual_primal":
    lam_ref = dual_ref(w, lam0)
    w_ref = w - lr_p * grad_l(w, lam_ref)
  elif scheme == "primal_dual":
    w_ref = w - lr_p * grad_l(w, lam0)
    lam_ref = dual_ref(w_ref, lam0)
  else:
    w_x, lam_x = w - lr_p * grad_l(w, lam0), dual_ref(w, lam0)
    w_ref, lam_ref = w - lr_p * grad_l(w_x, lam_x), dual_ref(w_x, lam0)

  step = C.make_update(problem, primal, dual, scheme)
  f0, g0, aux0 = _nonlinear_fn(params, batch)
  for run in (step, jax.jit(step, static_argnums=0)):
    new_params, _, new_cstate, metrics = run(_nonlinear_fn, params, primal.init(params),
                                             cstate, batch)
    np.testing.assert_allclose(new_params["w"], w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new_cstate.multipliers, lam_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["objective"], f0, rtol=1e-6)
    np.testing.assert_allclose(metrics["constraint_values"], g0, rtol=1e-6)
    np.testing.assert_allclose(metrics["lagrangian"],
                               C.lagrangian(f0, g0, lam0, problem), rtol=1e-6)
    np.testing.assert_allclose(metrics["aux"]["pred"], aux0["pred"], rtol=1e-6)
    np.testing.assert_array_equal(metrics["multipliers"], new_cstate.multipliers)


def test_grad_reduce_matches_full_batch_under_named_axis():
  # vmap with an axis name stands in for pmap: two "devices" with half a batch each.
  problem = C.Problem((0.5, 0.2), ("ineq", "eq"), "augmented_lagrangian", 0.7)
  dual = C.dual_optimizer(problem, 0.3, restarts=False)
  primal = optax.sgd(0.1)
  rng = np.random.default_rng(2)
  batch = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
  params = {"w": jnp.asarray(rng.normal(size=3), jnp.float32)}
  cstate = C.init(problem, dual, [0.4, -0.3])
  opt_state = primal.init(params)

  full = jax.jit(C.make_update(problem, primal, dual), static_argnums=0)(
      _nonlinear_fn, params, opt_state, cstate, batch)
  step = C.make_update(problem, primal, dual,
                       grad_reduce=lambda t: jax.lax.pmean(t, "batch"))
  split = jax.jit(jax.vmap(functools.partial(step, _nonlinear_fn, params, opt_state, cstate),
                           axis_name="batch"))(batch.reshape(2, 2, 3))
  for device in range(2):
    np.testing.assert_allclose(split[0]["w"][device], full[0]["w"], rtol=1e-5)
    np.testing.assert_allclose(split[2].multipliers[device], full[2].multipliers,
                               rtol=1e-5)
  # Without the reduction the per-device steps differ (the test can fail).
  local = jax.jit(jax.vmap(functools.partial(C.make_update(problem, primal, dual),
                                             _nonlinear_fn, params, opt_state, cstate)))(
      batch.reshape(2, 2, 3))
  assert not np.allclose(local[0]["w"][0], full[0]["w"], rtol=1e-5)


# ----------------------------------------------------------------------------------------
# Primal optimizer with separate learning rates
# ----------------------------------------------------------------------------------------


def test_primal_optimizer_separate_learning_rates_exact():
  rng = np.random.default_rng(3)
  params = {"layer": {"kernel": jnp.asarray(rng.normal(size=(3, 2)), jnp.float32),
                      "log_alpha": jnp.asarray(rng.normal(size=3), jnp.float32)}}
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  tx = C.primal_optimizer(optax.sgd(0.1), optax.sgd(6.0))
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  layer, g = params["layer"], grads["layer"]
  np.testing.assert_array_equal(new["layer"]["log_alpha"],
                                layer["log_alpha"] - jnp.float32(6.0) * g["log_alpha"])
  np.testing.assert_array_equal(new["layer"]["kernel"],
                                layer["kernel"] - jnp.float32(0.1) * g["kernel"])


def test_param_labels_and_generator_optimizer():
  leaf = jnp.ones(2)
  params = {"params": {
      "fc1": {"kernel": leaf, "bias": leaf, "log_alpha": leaf},
      "GateGenerator_0": {"Dense_0": {"kernel": leaf, "bias": leaf}},
      "gate_generator": {"log_alpha": leaf},
  }}
  labels = C.param_labels(params)["params"]
  assert labels["fc1"] == {"kernel": "weights", "bias": "weights", "log_alpha": "gates"}
  assert labels["GateGenerator_0"]["Dense_0"] == {"kernel": "generator",
                                                  "bias": "generator"}
  assert labels["gate_generator"] == {"log_alpha": "generator"}

  grads = jax.tree.map(jnp.ones_like, params)
  for generator_tx, gen_lr in ((optax.sgd(2.0), 2.0), (None, 6.0)):
    tx = C.primal_optimizer(optax.sgd(0.1), optax.sgd(6.0), generator_tx)
    updates = tx.update(grads, tx.init(params), params)[0]["params"]
    np.testing.assert_allclose(updates["fc1"]["kernel"], -0.1)
    np.testing.assert_allclose(updates["fc1"]["log_alpha"], -6.0)
    np.testing.assert_allclose(updates["GateGenerator_0"]["Dense_0"]["kernel"], -gen_lr)

  custom = C.primal_optimizer(optax.sgd(0.1), optax.sgd(6.0),
                              label_fn=lambda p: jax.tree.map(lambda _: "gates", p))
  updates = custom.update(grads, custom.init(params), params)[0]["params"]
  np.testing.assert_allclose(updates["fc1"]["kernel"], -6.0)


# ----------------------------------------------------------------------------------------
# Penalty bisection
# ----------------------------------------------------------------------------------------


def test_bisect_penalty_hits_target():
  # density(lambda) = sum(x*(lambda)) / sum(a) with x* = a - lambda / 2 solved by the
  # penalized driver: 1 - n lambda / (2 sum a), decreasing; target 0.4 at lambda = 2.4.
  a = np.array([1.0, 2.0, 3.0])
  problem = C.Problem((0.0,), formulation="penalized")
  fn = lambda x: (jnp.sum((x - jnp.asarray(a, jnp.float32)) ** 2), jnp.sum(x)[None], None)
  dual = C.dual_optimizer(problem)

  def run_fn(lam):
    x, _ = _scan_solve(problem, fn, np.zeros(3), "simultaneous", 0.2, dual, 200, [lam])
    return float(jnp.sum(x)) / a.sum()

  tol = 1e-3
  lam, history = penalty_search.bisect_penalty(run_fn, 0.4, 0.01, 10.0, tol=tol, max_iters=40)
  assert abs(run_fn(lam) - 0.4) <= tol
  assert abs(lam - 2.4) <= 2 * tol * 2 * a.sum() / 3  # |d lambda / d density| = 4
  assert history[-1][0] == lam and len(history) > 3
  values = [h[1] for h in history]
  assert values[0] > 0.4 > values[1]  # the bracket ends are evaluated first


def test_bisect_penalty_errors_and_warning():
  density = lambda lam: 1.0 / (1.0 + lam)
  with pytest.raises(ValueError, match="do not contain the target"):
    penalty_search.bisect_penalty(density, 0.3, 5.0, 10.0)  # density in [0.09, 0.17] < 0.3
  with pytest.raises(ValueError, match="0 < lo < hi"):
    penalty_search.bisect_penalty(density, 0.3, 0.0, 10.0)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    lam, history = penalty_search.bisect_penalty(density, 0.3, 0.01, 100.0, tol=1e-9, max_iters=2)
  assert len(history) == 4 and any("closest" in str(w.message) for w in caught)
  # Geometric midpoints: sqrt(0.01 * 100) = 1 (density 0.5 > 0.3), then sqrt(1 * 100).
  np.testing.assert_allclose([h[0] for h in history], [0.01, 100.0, 1.0, 10.0])
  assert lam == min(history, key=lambda h: abs(h[1] - 0.3))[0]
  lam, _ = penalty_search.bisect_penalty(density, 0.3, 0.01, 100.0, tol=1e-6, max_iters=60)
  np.testing.assert_allclose(lam, 7.0 / 3.0, rtol=1e-4)


# ----------------------------------------------------------------------------------------
# Cooper-grade trajectories in float64: every scheme's update derived by hand in numpy
#   min ||x - a||^2  s.t.  x0 + x1 <= 1 (active), x2 - x3 <= 2 (inactive), x1 - x3 = 0
# (tests/cooper_reference.py runs the same problems through Cooper 1.0.1 itself.)
# ----------------------------------------------------------------------------------------

COOPER_A = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, -1.0], [0.0, 1.0, 0.0, -1.0]])
COOPER_B = np.array([1.0, 2.0, 0.0])
COOPER_KINDS = ("ineq", "ineq", "eq")
COOPER_INEQ = np.array([True, True, False])
COOPER_TARGET = np.array([1.0, 2.0, -1.0, 0.5])  # the "a" of ||x - a||^2
COOPER_STEPS = 40
LR_X, LR_LAM, PENALTY_C = 0.1, 0.3, 0.8


def _np_dual(lam, v, state, dual):
  """One projected dual-ascent step by hand: ``(lambda', state')``.

  SGD: ``lambda + lr v``. nuPI (error e = v, ascent): ``xi_t = nu xi_{t-1} + (1-nu) e``,
  step ``lr (ki e + kp (xi_t - xi_{t-1}))``; "sgd" init: the first step is ``lr ki e``
  and leaves ``xi = 0``. Inequality multipliers are clipped at 0 (no restarts).
  """
  kind, lr = dual[0], dual[1]
  if kind == "sgd":
    step = lr * v
  else:
    _, _, kp, ki, nu, init = dual
    xi_prev, started = state if state is not None else (np.zeros_like(v), init == "zeros")
    if started:
      xi = nu * xi_prev + (1 - nu) * v
      step = lr * (ki * v + kp * (xi - xi_prev))
    else:
      xi, step = np.zeros_like(v), lr * ki * v
    state = (xi, True)
  new = lam + step
  return np.where(COOPER_INEQ, np.maximum(new, 0.0), new), state


def _np_grad(x, lam, formulation, proxy_a=COOPER_A, b=COOPER_B):
  """grad_x of the Lagrangian: 2 (x - a) + A^T w, w = lambda or the AL weights."""
  w = lam
  if formulation == "augmented_lagrangian":
    shifted = lam + PENALTY_C * (proxy_a @ x - b)
    w = np.where(COOPER_INEQ, np.maximum(shifted, 0.0), shifted)
  return 2 * (x - COOPER_TARGET) + proxy_a.T @ w


def _np_trajectory(scheme, formulation, dual, steps=COOPER_STEPS):
  x, lam, state = np.zeros(4), np.zeros(3), None
  xs, lams = [], []
  for _ in range(steps):
    v = COOPER_A @ x - COOPER_B
    if scheme == "simultaneous":
      new_x = x - LR_X * _np_grad(x, lam, formulation)
      lam, state = _np_dual(lam, v, state, dual)
    elif scheme == "dual_primal":
      lam, state = _np_dual(lam, v, state, dual)
      new_x = x - LR_X * _np_grad(x, lam, formulation)
    elif scheme == "primal_dual":
      new_x = x - LR_X * _np_grad(x, lam, formulation)
      lam, state = _np_dual(lam, COOPER_A @ new_x - COOPER_B, state, dual)
    else:  # extragradient (SGD duals): gradients at the extrapolated point
      x_tilde = x - LR_X * _np_grad(x, lam, formulation)
      lam_tilde, _ = _np_dual(lam, v, state, dual)
      new_x = x - LR_X * _np_grad(x_tilde, lam_tilde, formulation)
      lam, state = _np_dual(lam, COOPER_A @ x_tilde - COOPER_B, state, dual)
    x = new_x
    xs.append(x)
    lams.append(lam)
  return np.array(xs), np.array(lams)


def _jax_dual(problem, dual):
  if dual[0] == "sgd":
    inner = optax.sgd(dual[1])
  else:
    _, lr, kp, ki, nu, init = dual
    inner = C.nupi(lr, kp=kp, ki=ki, ema_nu=nu, init=init)
  return C.dual_optimizer(problem, inner, restarts=False)


def _jax_trajectory(scheme, formulation, dual, steps=COOPER_STEPS):
  c = PENALTY_C if formulation == "augmented_lagrangian" else None
  problem = C.Problem(tuple(COOPER_B), COOPER_KINDS, formulation, c)
  dual_tx = _jax_dual(problem, dual)
  primal = optax.sgd(LR_X)
  A, a = jnp.asarray(COOPER_A), jnp.asarray(COOPER_TARGET)
  fn = lambda x: (jnp.sum((x - a) ** 2), A @ x, None)
  step = C.make_update(problem, primal, dual_tx, scheme)

  @jax.jit
  def run(x0):
    def body(carry, _):
      x, o, s = carry
      x, o, s, _ = step(fn, x, o, s)
      return (x, o, s), (x, s.multipliers)
    return jax.lax.scan(body, (x0, primal.init(x0), C.init(problem, dual_tx)), None,
                        length=steps)[1]

  return run(jnp.zeros(4, jnp.float64))


COOPER_CASES = [
    ("simultaneous", "lagrangian", ("sgd", LR_LAM)),
    ("dual_primal", "lagrangian", ("sgd", LR_LAM)),
    ("primal_dual", "lagrangian", ("sgd", LR_LAM)),
    ("extragradient", "lagrangian", ("sgd", LR_LAM)),
    ("primal_dual", "augmented_lagrangian", ("sgd", PENALTY_C)),
    ("simultaneous", "augmented_lagrangian", ("sgd", PENALTY_C)),
    ("simultaneous", "lagrangian", ("nupi", LR_LAM, 2.0, 1.0, 0.0, "zeros")),
    ("simultaneous", "lagrangian", ("nupi", LR_LAM, 2.0, 1.0, 0.0, "sgd")),
    ("dual_primal", "lagrangian", ("nupi", LR_LAM, 1.5, 0.5, 0.3, "zeros")),
    ("primal_dual", "lagrangian", ("nupi", LR_LAM, 1.5, 0.5, 0.3, "sgd")),
]


@pytest.mark.parametrize("scheme, formulation, dual", COOPER_CASES)
def test_float64_trajectory_matches_hand_derived_updates(scheme, formulation, dual):
  want_x, want_lam = _np_trajectory(scheme, formulation, dual)
  with jax.enable_x64(True):
    got_x, got_lam = _jax_trajectory(scheme, formulation, dual)
    assert got_x.dtype == got_lam.dtype == jnp.float64
  np.testing.assert_allclose(got_x, want_x, rtol=0, atol=1e-10)
  np.testing.assert_allclose(got_lam, want_lam, rtol=0, atol=1e-10)
  # The trajectory goes somewhere: the active multiplier moved, the inactive one is 0.
  assert want_lam[-1, 0] > 0.5 and want_lam[-1, 1] == 0.0


def test_float64_converges_to_the_kkt_point_to_1e_10():
  # KKT by hand, with x0 + x1 = 1 and x1 - x3 = 0 active: stationarity
  # 2 (x - a) + l (1, 1, 0, 0) + m (0, 1, 0, -1) = 0 gives x = a - (l, l + m, 0, -m) / 2,
  # and the two constraints give [[1, 1/2], [1/2, 1]] (l, m) = (a0 + a1 - 1, a1 - a3).
  a = COOPER_TARGET
  l, m = np.linalg.solve([[1.0, 0.5], [0.5, 1.0]], [a[0] + a[1] - 1.0, a[1] - a[3]])
  x_star = a - np.array([l, l + m, 0.0, -m]) / 2
  assert l > 0 and x_star[2] - x_star[3] < 2  # first active, second inactive
  with jax.enable_x64(True):
    xs, lams = _jax_trajectory("dual_primal", "lagrangian", ("sgd", LR_LAM), steps=1500)
  np.testing.assert_allclose(xs[-1], x_star, rtol=0, atol=1e-10)
  np.testing.assert_allclose(lams[-1], [l, 0.0, m], rtol=0, atol=1e-10)


def test_dtype_follows_inputs():
  problem = C.Problem((1.0, 2.0))
  assert C.init(problem, 0.1).multipliers.dtype == jnp.float32
  assert C.init(problem, 0.1, dtype=jnp.bfloat16).multipliers.dtype == jnp.bfloat16
  assert C.violations(jnp.ones(2, jnp.bfloat16), problem).dtype == jnp.float32
  with jax.enable_x64(True):
    state = C.init(problem, C.nupi(0.1, kp=1.0))
    assert state.multipliers.dtype == jnp.float64
    assert state.dual_state.xi.dtype == jnp.float64
    v = C.violations(jnp.ones(2, jnp.float64), problem)
    assert v.dtype == jnp.float64
    # A target that float32 cannot hold survives: 1 + 1e-12 - 1 is 1e-12, not 0.
    fine = C.Problem((1.0 + 1e-12,))
    assert float(C.violations(jnp.ones(1, jnp.float64), fine)[0]) == pytest.approx(
        -1e-12, rel=1e-3)
    new = C.dual_step(state, jnp.ones(2, jnp.float64), problem, C.nupi(0.1, kp=1.0))
    assert new.multipliers.dtype == jnp.float64


# ----------------------------------------------------------------------------------------
# Named constraints, run-time targets, proxies
# ----------------------------------------------------------------------------------------


def test_named_constraints_equal_positional_ones():
  named = C.Problem({"sum": 1.0, "diff": 2.0, "link": 0.0}, kinds={"link": "eq"})
  assert named.names == ("sum", "diff", "link") and named.kinds == COOPER_KINDS
  positional = C.Problem(tuple(COOPER_B), COOPER_KINDS)
  A, a = jnp.asarray(COOPER_A, jnp.float32), jnp.asarray(COOPER_TARGET, jnp.float32)
  fns = {
      named: lambda x: (jnp.sum((x - a) ** 2),
                        {"link": (A @ x)[2], "sum": (A @ x)[0], "diff": (A @ x)[1]}, None),
      positional: lambda x: (jnp.sum((x - a) ** 2), A @ x, None),
  }
  results = []
  for problem, fn in fns.items():
    dual = C.dual_optimizer(problem, 0.3, restarts=False)
    step = jax.jit(C.make_update(problem, optax.sgd(0.1), dual), static_argnums=0)
    x, o, s = jnp.zeros(4), optax.sgd(0.1).init(jnp.zeros(4)), C.init(problem, dual)
    for _ in range(5):
      x, o, s, m = step(fn, x, o, s)
    results.append((x, s.multipliers))
  np.testing.assert_array_equal(results[0][0], results[1][0])
  np.testing.assert_array_equal(results[0][1], results[1][1])
  assert set(named.named(results[0][1])) == {"sum", "diff", "link"}
  np.testing.assert_array_equal(named.named(results[0][1])["link"], results[0][1][2])
  with pytest.raises(ValueError, match="keys"):
    C.violations({"sum": 1.0}, named)
  with pytest.raises(ValueError, match="no names"):
    C.violations({"sum": 1.0}, C.Problem((1.0,)))
  with pytest.raises(ValueError, match="unknown constraints"):
    C.Problem({"sum": 1.0}, kinds={"other": "eq"})


def test_run_time_targets_follow_a_schedule_under_jit():
  """Targets passed to each step (here a linear schedule inside a jitted scan)."""
  schedule = lambda t: COOPER_B + jnp.asarray([0.05, 0.0, -0.02]) * t
  problem = C.Problem(tuple(COOPER_B), COOPER_KINDS)
  with jax.enable_x64(True):
    dual = C.dual_optimizer(problem, LR_LAM, restarts=False)
    primal = optax.sgd(LR_X)
    A, a = jnp.asarray(COOPER_A), jnp.asarray(COOPER_TARGET)
    step = C.make_update(problem, primal, dual, "simultaneous")
    fn = lambda x: (jnp.sum((x - a) ** 2), A @ x, None)

    @jax.jit
    def run(x0):
      def body(carry, t):
        x, o, s = carry
        x, o, s, m = step(fn, x, o, s, targets=schedule(t))
        return (x, o, s), (x, s.multipliers, m["violations"])
      return jax.lax.scan(body, (x0, primal.init(x0), C.init(problem, dual)),
                          jnp.arange(20, dtype=jnp.float64))[1]

    xs, lams, vs = run(jnp.zeros(4))
  x, lam = np.zeros(4), np.zeros(3)
  for t in range(20):
    b = COOPER_B + np.array([0.05, 0.0, -0.02]) * t
    v = COOPER_A @ x - b
    np.testing.assert_allclose(vs[t], v, rtol=0, atol=1e-12)
    x = x - LR_X * (2 * (x - COOPER_TARGET) + COOPER_A.T @ lam)
    lam = lam + LR_LAM * v
    lam = np.where(COOPER_INEQ, np.maximum(lam, 0.0), lam)
    np.testing.assert_allclose(xs[t], x, rtol=0, atol=1e-10)
    np.testing.assert_allclose(lams[t], lam, rtol=0, atol=1e-10)


@pytest.mark.parametrize("per_entry", [False, True])
def test_proxy_drives_the_primal_and_the_true_value_the_dual(per_entry):
  """Proxy x0 + x1 for the primal; the dual sees the quantised floor(4 (x0 + x1)) / 4,
  which has no gradient at all (Cotter et al.'s proxy-Lagrangian)."""
  problem = C.Problem({"sum": 1.0, "diff": 2.0, "link": 0.0}, kinds={"link": "eq"})
  A, a = jnp.asarray(COOPER_A), jnp.asarray(COOPER_TARGET)

  def fn(x):
    g = A @ x
    hard = jnp.floor(4 * g[0]) / 4
    if per_entry:
      values = {"sum": C.Proxy(g[0], hard), "diff": g[1], "link": g[2]}
    else:
      values = C.Proxy(g, g.at[0].set(hard))
    return jnp.sum((x - a) ** 2), values, None

  with jax.enable_x64(True):
    dual = C.dual_optimizer(problem, LR_LAM, restarts=False)
    step = jax.jit(C.make_update(problem, optax.sgd(LR_X), dual), static_argnums=0)
    x, o, s = jnp.zeros(4), optax.sgd(LR_X).init(jnp.zeros(4)), C.init(problem, dual)
    got = []
    for _ in range(15):
      x, o, s, m = step(fn, x, o, s)
      got.append((np.asarray(x), np.asarray(s.multipliers), m))
  xr, lam = np.zeros(4), np.zeros(3)
  for gx, glam, m in got:
    g = COOPER_A @ xr
    true = g.copy()
    true[0] = np.floor(4 * g[0]) / 4
    np.testing.assert_allclose(m["constraint_values"], true, rtol=0, atol=1e-12)
    np.testing.assert_allclose(m["proxy_values"], g, rtol=0, atol=1e-12)
    xr = xr - LR_X * (2 * (xr - COOPER_TARGET) + COOPER_A.T @ lam)
    lam = lam + LR_LAM * (true - COOPER_B)
    lam = np.where(COOPER_INEQ, np.maximum(lam, 0.0), lam)
    np.testing.assert_allclose(gx, xr, rtol=0, atol=1e-10)
    np.testing.assert_allclose(glam, lam, rtol=0, atol=1e-10)
  assert got[-1][1][0] > 0  # the non-differentiable constraint still moved lambda


def test_nupi_init_option_first_steps():
  problem = C.Problem((0.0,), "eq")
  vs = [1.0, 2.0, -1.0]
  for init, want in (("zeros", [0.3 * (1 + 2) * 1.0]), ("sgd", [0.3 * 1.0])):
    dual = C.dual_optimizer(problem, C.nupi(0.3, kp=2.0, init=init))
    state = C.dual_step(C.init(problem, dual), [vs[0]], problem, dual)
    np.testing.assert_allclose(state.multipliers, want, rtol=1e-6)
  with pytest.raises(ValueError, match="init"):
    C.nupi(0.1, init="ones")


def test_nupi_sgd_init_restarts_to_a_fresh_controller():
  """After a dual restart, an "sgd" controller's next step is plain SGD again."""
  problem = C.Problem((0.0,))
  dual = C.dual_optimizer(problem, C.nupi(0.5, kp=3.0, init="sgd"), restarts=True)
  state = C.init(problem, dual)
  for v in (1.0, 2.0):
    state = C.dual_step(state, [v], problem, dual)
  assert bool(state.dual_state.started[0])
  state = C.dual_step(state, [-1.0], problem, dual)  # strictly satisfied: restart
  assert float(state.multipliers[0]) == 0.0 and not bool(state.dual_state.started[0])
  state = C.dual_step(state, [0.4], problem, dual)
  np.testing.assert_allclose(state.multipliers, [0.5 * 0.4], rtol=1e-6)  # SGD step


def test_interpolating_steps_by_hand_and_with_fewer_runs():
  density = lambda lam: 1.0 / (1.0 + lam)  # 0.3 at lambda = 7/3
  with pytest.warns(UserWarning, match="closest"):
    _, history = penalty_search.bisect_penalty(density, 0.3, 0.01, 100.0, tol=1e-9,
                                               max_iters=1, step="interpolate")
  # The first step by hand: linear in log lambda between the ends' distances to 0.3.
  f_lo, f_hi = density(0.01) - 0.3, density(100.0) - 0.3
  x = math.log(0.01) + f_lo / (f_lo - f_hi) * (math.log(100.0) - math.log(0.01))
  np.testing.assert_allclose(history[2][0], math.exp(x), rtol=1e-12)
  runs = {}
  for step in penalty_search.STEPS:
    lam, history = penalty_search.bisect_penalty(density, 0.3, 1e-3, 1e3, tol=1e-3,
                                                 max_iters=60, step=step)
    assert abs(density(lam) - 0.3) <= 1e-3
    runs[step] = len(history)
  assert runs["interpolate"] < runs["geometric"]
  with pytest.raises(ValueError, match="step="):
    penalty_search.bisect_penalty(density, 0.3, 0.01, 100.0, step="newton")


@hypothesis.settings(max_examples=60, deadline=None, derandomize=True)
@hypothesis.given(st.floats(0.05, 0.95), st.floats(0.5, 5.0), st.floats(-3.0, 3.0))
def test_interpolating_steps_stay_in_the_shrinking_bracket(target, slope, shift):
  # A decreasing sigmoid of log lambda: every evaluation lies strictly inside the
  # bracket of the values seen so far, and the result is within tol.
  density = lambda lam: 1.0 / (1.0 + math.exp(slope * (math.log(lam) - shift)))
  lam, history = penalty_search.bisect_penalty(density, target, 1e-4, 1e4, tol=1e-3,
                                               max_iters=80, step="interpolate")
  assert abs(density(lam) - target) <= 1e-3
  for i in range(2, len(history)):
    above = [p for p, v in history[:i] if v > target]
    below = [p for p, v in history[:i] if v < target]
    assert max(above) < history[i][0] < min(below)
