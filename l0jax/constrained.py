"""Constrained optimisation: Lagrangians, multipliers and dual optimizers as optax pieces.

This module knows nothing about neural networks. It sees a scalar objective ``f(x)``, a
vector of constraint values ``g(x)`` and their targets, and solves

    min_x f(x)  s.t.  g_k(x) - target_k <= 0  (kind "ineq")  or  g_k(x) = target_k  ("eq")

by gradient descent on ``x`` and projected gradient ascent on the multipliers ``lambda``.
The updates are those of Cooper (Gallego-Posada et al., the PyTorch library for
constrained optimisation): its simultaneous, alternating (dual-primal and primal-dual)
and extrapolation optimizers, (augmented) Lagrangian formulations, proxy constraints and
nuPI, written as pure functions (``tests/test_constrained.py`` derives each update by
hand and checks them step by step in float64).

Example (minimise ``(x - 2)^2`` subject to ``x <= 1``; the KKT point is x = 1, lambda = 2)::

    import jax, jax.numpy as jnp, optax
    from l0jax import constrained

    problem = constrained.Problem(targets={"x_max": 1.0})
    primal, dual = optax.sgd(0.05), constrained.dual_optimizer(problem, optax.sgd(0.05),
                                                                restarts=False)
    fn = lambda x: ((x - 2.0) ** 2, {"x_max": x}, None)   # objective, constraints, aux
    step = jax.jit(constrained.make_update(problem, primal, dual), static_argnums=0)
    x = jnp.float32(0.0)
    opt_state, cstate = primal.init(x), constrained.init(problem, dual)
    for _ in range(1000):
      x, opt_state, cstate, metrics = step(fn, x, opt_state, cstate)
    print(x, problem.named(cstate.multipliers))  # ~1.0 {'x_max': ~2.0}

Pieces, optax-style (pure functions, NamedTuple states, static configuration outside state):

- ``Problem``: the frozen, hashable specification (targets, kinds, formulation, names).
  Constraint values and targets are vectors in ``problem.names`` order, or mappings
  ``{name: value}`` wherever a vector is accepted. Targets given to a step
  (``targets=``) replace the problem's for that step: schedules, run-time changes.
- ``Proxy(proxy, value)``: a constraint measured twice, a differentiable surrogate for
  the primal gradient and the true (possibly non-differentiable) value for the
  multipliers (Cotter et al., 2019).
- ``dual_optimizer``: wraps any optax transformation into an *ascent* step on the
  multipliers with projection onto ``lambda >= 0`` for inequalities and dual restarts.
  ``nupi`` is a PI controller usable as the inner transformation.
- ``init`` / ``dual_step`` / ``lagrangian``: the multiplier state and its update.
- ``make_update``: one primal-dual step for the ``SCHEMES``.
- ``primal_optimizer`` / ``param_labels``: separate optimizers for weights, gates and the
  gate generator (from :mod:`l0jax.param_groups`, re-exported here).

Dtypes follow the inputs: multipliers take ``init``'s ``dtype`` (JAX's default float,
float64 under ``jax_enable_x64``, unless given), violations the constraint values'
dtype (at least float32).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l0jax.param_groups import param_labels, primal_optimizer

__all__ = [
    "ConstrainedState",
    "DualTransformation",
    "FORMULATIONS",
    "KINDS",
    "NUPI_INITS",
    "NuPIState",
    "Problem",
    "Proxy",
    "SCHEMES",
    "constraint_weights",
    "dual_optimizer",
    "dual_step",
    "init",
    "lagrangian",
    "make_update",
    "nupi",
    "param_labels",
    "primal_optimizer",
    "violations",
]

KINDS = ("ineq", "eq")
FORMULATIONS = ("lagrangian", "augmented_lagrangian", "penalized")
SCHEMES = ("simultaneous", "dual_primal", "primal_dual", "extragradient")
NUPI_INITS = ("zeros", "sgd")

PyTree = Any


# ----------------------------------------------------------------------------------------
# Problem specification
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
  """Static, hashable description of the constraints ``g_k(x) - target_k (<= | =) 0``.

  Attributes:
    targets: one float per constraint (a single float means one constraint), or a
      mapping ``{name: target}`` for named constraints (the mapping's order is the
      constraints' order). These are the defaults; a step may be given other targets
      at run time (see ``make_update``).
    kinds: ``"ineq"`` (``g_k - target_k <= 0``, multiplier ``lambda_k >= 0``) or ``"eq"``
      (``g_k = target_k``, multiplier of any sign), one per constraint, or a mapping
      ``{name: kind}`` (missing names are inequalities). ``None`` means all
      inequalities; a single string applies to every constraint.
    formulation: ``"lagrangian"`` (``L = f + sum_k lambda_k v_k`` with ``v = g - target``),
      ``"augmented_lagrangian"`` (adds the quadratic penalty of ``penalty_coefficient``, see
      ``lagrangian``) or ``"penalized"`` (fixed ``lambda``, the dual step does nothing).
    penalty_coefficient: ``c > 0`` of the augmented Lagrangian; must be ``None`` otherwise.
    names: the constraints' names (set from a ``targets`` mapping), or ``None``.

  Being a frozen dataclass of tuples it can be closed over or passed as a static argument
  to ``jax.jit``; it never enters a state pytree.
  """
  targets: Union[Sequence[float], Mapping[str, float]]
  kinds: Union[None, str, Sequence[str], Mapping[str, str]] = None
  formulation: str = "lagrangian"
  penalty_coefficient: Optional[float] = None
  names: Optional[Sequence[str]] = None

  def __post_init__(self):
    targets, names = self.targets, self.names
    if isinstance(targets, Mapping):
      if names is not None and tuple(names) != tuple(targets):
        raise ValueError(f"names {tuple(names)} differ from the targets' keys "
                         f"{tuple(targets)}")
      names, targets = tuple(str(k) for k in targets), tuple(targets.values())
    if np.ndim(targets) == 0:
      targets = (targets,)
    try:
      targets = tuple(float(t) for t in targets)
    except (TypeError, ValueError) as e:
      raise ValueError(f"targets must be a sequence of floats, got {self.targets!r}") from e
    if not all(math.isfinite(t) for t in targets):
      raise ValueError(f"targets must be finite, got {targets}")
    if names is not None:
      names = tuple(str(n) for n in names)
      if len(names) != len(targets) or len(set(names)) != len(names):
        raise ValueError(f"names must be {len(targets)} distinct strings, got {names}")
    kinds = self.kinds
    if isinstance(kinds, Mapping):
      unknown = set(kinds) - set(names or ())
      if unknown:
        raise ValueError(f"kinds names unknown constraints {sorted(unknown)}; the "
                         f"constraints are {names}")
      kinds = tuple(kinds.get(n, "ineq") for n in names)
    elif kinds is None:
      kinds = ("ineq",) * len(targets)
    elif isinstance(kinds, str):
      kinds = (kinds,) * len(targets)
    kinds = tuple(kinds)
    if len(kinds) != len(targets):
      raise ValueError(
          f"kinds and targets differ in length: {len(kinds)} kinds {kinds} for "
          f"{len(targets)} targets {targets}")
    for k in kinds:
      if k not in KINDS:
        raise ValueError(f"unknown constraint kind {k!r}; expected one of {KINDS}")
    if self.formulation not in FORMULATIONS:
      raise ValueError(
          f"unknown formulation {self.formulation!r}; expected one of {FORMULATIONS}")
    c = self.penalty_coefficient
    if self.formulation == "augmented_lagrangian":
      if c is None or not math.isfinite(float(c)) or float(c) <= 0:
        raise ValueError(
            "formulation='augmented_lagrangian' needs a finite penalty_coefficient > 0, "
            f"got {c!r}")
      c = float(c)
    elif c is not None:
      raise ValueError(
          f"penalty_coefficient={c!r} is only used by formulation='augmented_lagrangian', "
          f"not {self.formulation!r}")
    object.__setattr__(self, "targets", targets)
    object.__setattr__(self, "names", names)
    object.__setattr__(self, "kinds", kinds)
    object.__setattr__(self, "penalty_coefficient", c)

  @property
  def num_constraints(self) -> int:
    return len(self.targets)

  @property
  def is_inequality(self) -> np.ndarray:
    """Static boolean mask, True where the constraint is an inequality."""
    return np.array([k == "ineq" for k in self.kinds], dtype=bool)

  def named(self, vector) -> dict:
    """``{name: entry}`` of a vector in constraint order (indices as names if unnamed)."""
    names = self.names or tuple(str(i) for i in range(self.num_constraints))
    vector = _as_vector(vector, self, "vector")
    return {name: vector[i] for i, name in enumerate(names)}


class Proxy(NamedTuple):
  """A constraint measured twice (Cotter et al., 2019; Cooper's ``strict_violation``).

  ``proxy``: a differentiable surrogate; the primal gradient of the Lagrangian uses it.
  ``value``: the true value, possibly non-differentiable (a count, an accuracy, a
  measured latency); the multipliers ascend on it and it is what ``metrics`` report.
  Use it for one entry of a constraint mapping (``{"gap": Proxy(smooth, hard)}``) or for
  the whole vector (``Proxy(proxy_vector, value_vector)``).
  """
  proxy: Any
  value: Any


class ConstrainedState(NamedTuple):
  """Multipliers (shape ``(num_constraints,)``) and the dual optimizer's state."""
  multipliers: jax.Array
  dual_state: optax.OptState


def _as_vector(values, problem: Problem, what: str) -> jax.Array:
  if isinstance(values, Mapping):
    if problem.names is None:
      raise ValueError(f"{what} is a mapping, but the problem's constraints have no "
                       "names (give Problem a targets mapping)")
    if set(values) != set(problem.names):
      raise ValueError(f"{what} has keys {sorted(values)}; the constraints are "
                       f"{list(problem.names)}")
    values = jnp.stack([jnp.asarray(values[n]).reshape(()) for n in problem.names]
                       ) if problem.names else jnp.zeros((0,))
  values = jnp.asarray(values)
  if values.size != problem.num_constraints or values.ndim > 1:
    raise ValueError(
        f"{what} must have shape ({problem.num_constraints},), got {values.shape}")
  return values.reshape((problem.num_constraints,))


def _split_proxies(values, problem: Problem):
  """``(proxy vector, value vector)`` of what ``fn`` returned as constraint values."""
  if isinstance(values, Proxy):
    return (_as_vector(values.proxy, problem, "proxy constraint values"),
            _as_vector(values.value, problem, "constraint values"))
  if isinstance(values, Mapping):
    proxies = {k: v.proxy if isinstance(v, Proxy) else v for k, v in values.items()}
    true = {k: v.value if isinstance(v, Proxy) else v for k, v in values.items()}
    return (_as_vector(proxies, problem, "proxy constraint values"),
            _as_vector(true, problem, "constraint values"))
  vector = _as_vector(values, problem, "constraint_values")
  return vector, vector


def _float(x: jax.Array) -> jax.Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def violations(constraint_values, problem: Problem, targets=None) -> jax.Array:
  """``v_k = g_k - target_k``; ``v_k > 0`` means constraint ``k`` is violated.

  ``targets``: this step's targets (vector or mapping), default ``problem.targets``.
  ``v`` has the dtype of ``g`` (at least float32) and is the gradient of the (plain)
  Lagrangian with respect to ``lambda``.
  """
  g = _float(_as_vector(constraint_values, problem, "constraint_values"))
  t = problem.targets if targets is None else _as_vector(targets, problem, "targets")
  return g - jnp.asarray(t, g.dtype)


def lagrangian(objective, constraint_values, multipliers, problem: Problem,
               targets=None) -> jax.Array:
  """The scalar Lagrangian of ``problem.formulation``, with ``v = g - target``.

  - "lagrangian" and "penalized": ``L = f + sum_k lambda_k v_k``.
  - "augmented_lagrangian" with coefficient ``c``:
    ``L_c = f + sum_{k eq} (lambda_k v_k + c/2 v_k^2)
              + sum_{k ineq} (max(0, lambda_k + c v_k)^2 - lambda_k^2) / (2c)``.
    For an inequality this equals ``lambda v + c/2 v^2`` where ``lambda + c v > 0`` and
    ``-lambda^2 / (2c)`` elsewhere (Rockafellar's form).

  Differentiable in all arguments; ``dL/dg = constraint_weights(...)``.
  """
  lam = _as_vector(multipliers, problem, "multipliers")
  v = violations(constraint_values, problem, targets)
  f = jnp.asarray(objective)
  if problem.formulation != "augmented_lagrangian":
    return f + jnp.sum(lam * v)
  c = problem.penalty_coefficient
  eq_term = lam * v + 0.5 * c * v ** 2
  ineq_term = (jnp.maximum(0.0, lam + c * v) ** 2 - lam ** 2) / (2.0 * c)
  return f + jnp.sum(jnp.where(problem.is_inequality, ineq_term, eq_term))


def constraint_weights(constraint_values, multipliers, problem: Problem,
                       targets=None) -> jax.Array:
  """``w_k = dL/dg_k``: the weight of ``grad g_k`` in the primal gradient of ``L``.

  ``w = lambda`` for "lagrangian"/"penalized"; for "augmented_lagrangian"
  ``w_k = lambda_k + c v_k`` (equality) and ``w_k = max(0, lambda_k + c v_k)`` (inequality).
  The primal gradient is ``grad f + sum_k w_k grad g_k``.
  """
  lam = _as_vector(multipliers, problem, "multipliers")
  if problem.formulation != "augmented_lagrangian":
    return lam
  v = violations(constraint_values, problem, targets)
  shifted = lam + problem.penalty_coefficient * v
  return jnp.where(problem.is_inequality, jnp.maximum(0.0, shifted), shifted)


# ----------------------------------------------------------------------------------------
# Dual optimizers
# ----------------------------------------------------------------------------------------


class NuPIState(NamedTuple):
  """State of ``nupi``: step count, the smoothed error ``xi_{t-1}`` and, per entry,
  whether the controller has taken its first step."""
  count: jax.Array
  xi: PyTree
  started: PyTree


def nupi(learning_rate: optax.ScalarOrSchedule, kp: float = 0.0, ki: float = 1.0,
         ema_nu: float = 0.0, init: str = "zeros") -> optax.GradientTransformation:
  """nuPI (Sohrabi et al., 2024): a PI controller as a (descent-convention) optax
  transformation.

  With incoming gradient ``e_t`` (``dual_optimizer`` feeds ``e_t = -v_t`` to ascend):

      xi_t = ema_nu * xi_{t-1} + (1 - ema_nu) * e_t
      u_t  = -lr_t * (ki * e_t + kp * (xi_t - xi_{t-1}))

  ``init`` sets the first step, per entry (and again after a dual restart):

  * ``"zeros"``: ``xi_{-1} = 0``; the first step is ``-lr (ki + kp (1 - ema_nu)) e_0``.
    Without projection and with a constant ``lr`` the iterate is the positional PI law
    ``theta_t = theta_0 - lr * (ki * sum_{s<t} e_s + kp * xi_{t-1})``.
  * ``"sgd"`` (Cooper's default): the first step is plain SGD, ``-lr ki e_0``, and the
    controller starts from ``xi_0 = 0`` (``e_0`` enters the integral term only), as
    Cooper 1.0.1's nuPI does for dense multipliers.

  For multipliers (``ema_nu = 0``, "zeros") this reads
  ``lambda_{t+1} = lambda_t + lr * (kp * (v_t - v_{t-1}) + ki * v_t)``. The defaults
  ``kp = 0, ki = 1`` give exactly ``optax.sgd(lr)`` with either ``init``.

  Args:
    learning_rate: scalar or schedule ``count -> lr``.
    kp: proportional gain (>= 0).
    ki: integral gain (>= 0).
    ema_nu: smoothing of the proportional term, in ``[0, 1)``.
    init: ``"zeros"`` or ``"sgd"``, see above.
  """
  if not 0.0 <= float(ema_nu) < 1.0:
    raise ValueError(f"ema_nu must be in [0, 1), got {ema_nu}")
  if float(kp) < 0 or float(ki) < 0:
    raise ValueError(f"gains must be >= 0, got kp={kp}, ki={ki}")
  if init not in NUPI_INITS:
    raise ValueError(f"nupi init must be one of {NUPI_INITS}, got {init!r}")

  def init_fn(params):
    return NuPIState(
        count=jnp.zeros([], jnp.int32), xi=jax.tree.map(jnp.zeros_like, params),
        started=jax.tree.map(lambda p: jnp.full(jnp.shape(p), init == "zeros"),
                             params))

  def update_fn(updates, state, params=None):
    del params
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate

    xi = jax.tree.map(
        lambda e, prev, started: jnp.where(
            started, ema_nu * prev + (1.0 - ema_nu) * e, 0.0).astype(prev.dtype),
        updates, state.xi, state.started)
    new_updates = jax.tree.map(
        lambda e, x, prev, started: ((-lr) * (
            ki * e + kp * jnp.where(started, x - prev, 0.0))).astype(e.dtype),
        updates, xi, state.xi, state.started)
    started = jax.tree.map(jnp.ones_like, state.started)
    return new_updates, NuPIState(count=state.count + 1, xi=xi, started=started)

  return optax.GradientTransformation(init_fn, update_fn)


class DualTransformation(optax.GradientTransformation):
  """A ``GradientTransformation`` built by ``dual_optimizer`` (ascent + projection).

  ``update(violations, state, multipliers)`` returns ``(new_multipliers - multipliers,
  state)``; apply with ``optax.apply_updates``. Its state is the inner optimizer's state.
  """
  __slots__ = ()


def _resolve_inner(problem: Problem, optimizer) -> optax.GradientTransformation:
  if isinstance(optimizer, DualTransformation):
    raise TypeError("optimizer is already a dual transformation; do not wrap it twice")
  if isinstance(optimizer, optax.GradientTransformation):
    return optimizer
  if optimizer is None:
    if problem.formulation == "augmented_lagrangian":
      return optax.sgd(problem.penalty_coefficient)  # method of multipliers
    raise ValueError(
        "dual_optimizer needs an optax transformation or a learning rate for "
        f"formulation={problem.formulation!r}")
  if callable(optimizer) or np.ndim(optimizer) == 0:
    return optax.sgd(optimizer)
  raise TypeError(f"expected an optax transformation or a learning rate, got {optimizer!r}")


def dual_optimizer(problem: Problem,
                   optimizer: Union[None, float, optax.Schedule,
                                    optax.GradientTransformation] = None,
                   *, restarts: bool = True) -> DualTransformation:
  """Projected gradient *ascent* on the multipliers with optional dual restarts.

  ``update(v, state, lambda)`` with ``v = g - target = dL/dlambda`` computes

      u, state' = inner.update(-v, state, lambda)         # inner descends on -v: ascent
      lambda'   = max(0, lambda + u)   for inequalities,  lambda + u  for equalities
      if restarts:  lambda'_k = 0 and state'_k = inner.init(lambda')_k  where
                    k is an inequality with v_k < 0 (strictly satisfied)

  and returns ``lambda' - lambda`` as the update, so ``optax.apply_updates(lambda, u)`` is
  ``lambda'`` (bitwise; it stays ``>= 0`` for inequalities). The restart resets the
  per-constraint entries of every state leaf whose shape equals the multipliers' shape
  (moments of adam, nuPI's ``xi``, momentum traces); scalar leaves (counts) are kept.
  Equality multipliers are never restarted nor projected. Restarts suit noisy training where
  a satisfied constraint should stop pulling; with exact gradients the iterates oscillate
  around an *active* constraint and every dip to ``v < 0`` zeroes its multiplier, so switch
  them off to converge to an active KKT point to high precision (Cooper has no restarts).

  Args:
    problem: the ``Problem``.
    optimizer: any optax transformation (descent convention, e.g. ``optax.sgd(1e-3)``,
      ``nupi(1e-3, kp=1.)``), or a learning rate / schedule for plain SGD (no momentum).
      ``None`` is allowed for "augmented_lagrangian" (``sgd(c)``: the method-of-multipliers
      step ``lambda <- proj(lambda + c v)``) and "penalized". For "penalized" the
      transformation returns zero updates and keeps no state.
    restarts: dual restarts on (default) or off.
  """
  if problem.formulation == "penalized":
    def init_penalized(multipliers):
      del multipliers
      return optax.EmptyState()

    def update_penalized(updates, state, params=None):
      del params
      return jax.tree.map(jnp.zeros_like, updates), state

    return DualTransformation(init_penalized, update_penalized)

  inner = _resolve_inner(problem, optimizer)
  ineq = problem.is_inequality
  shape = (problem.num_constraints,)

  def init_fn(multipliers):
    return inner.init(_as_vector(multipliers, problem, "multipliers"))

  def update_fn(updates, state, params=None):
    if params is None:
      raise ValueError("the dual update needs the current multipliers as params")
    lam = _as_vector(params, problem, "multipliers")
    v = _as_vector(updates, problem, "violations").astype(lam.dtype)
    step, new_state = inner.update(-v, state, lam)
    candidate = lam + step.astype(lam.dtype)
    new_lam = jnp.where(ineq, jnp.maximum(candidate, 0.0), candidate)
    if restarts:
      reset = jnp.logical_and(ineq, v < 0)
      new_lam = jnp.where(reset, jnp.zeros_like(new_lam), new_lam)
      fresh = inner.init(new_lam)

      def restart_leaf(leaf, fresh_leaf):
        if jnp.shape(leaf) != shape:
          return leaf
        return jnp.where(reset, jnp.asarray(fresh_leaf, jnp.result_type(leaf)), leaf)

      new_state = jax.tree.map(restart_leaf, new_state, fresh)
    return new_lam - lam, new_state

  return DualTransformation(init_fn, update_fn)


def _as_dual(problem: Problem, dual) -> DualTransformation:
  if isinstance(dual, DualTransformation):
    return dual
  return dual_optimizer(problem, dual)


def init(problem: Problem, dual=None, init_multipliers=None,
         dtype=None) -> ConstrainedState:
  """Initial ``ConstrainedState``: multipliers ``lambda_0`` (zeros by default) and dual state.

  ``dual`` is a ``dual_optimizer(...)`` (anything else is wrapped with
  ``dual_optimizer(problem, dual)``, restarts on). For "penalized" the given multipliers are
  the fixed penalty weights (a vector or a ``{name: value}`` mapping). ``dtype``: the
  multipliers' dtype; default that of ``init_multipliers`` when it is a floating array,
  else JAX's default float (float64 under ``jax_enable_x64``). A negative initial
  multiplier of an inequality is an error.
  """
  n = problem.num_constraints
  if dtype is None:
    given = getattr(init_multipliers, "dtype", None)
    dtype = (given if given is not None and jnp.issubdtype(given, jnp.floating)
             else jnp.result_type(float))
  if init_multipliers is None:
    lam = jnp.zeros((n,), dtype)
  else:
    lam = _as_vector(init_multipliers, problem, "init_multipliers").astype(dtype)
    try:
      concrete = np.asarray(lam)
    except jax.errors.TracerArrayConversionError:
      concrete = None
    if concrete is not None:
      bad = problem.is_inequality & ~(concrete >= 0)
      if bad.any():
        raise ValueError(
            f"initial multipliers of inequality constraints must be >= 0, got {concrete} "
            f"for kinds {problem.kinds}")
  return ConstrainedState(multipliers=lam, dual_state=_as_dual(problem, dual).init(lam))


def dual_step(state: ConstrainedState, constraint_values, problem: Problem,
              dual=None, targets=None) -> ConstrainedState:
  """One multiplier step from constraint values ``g``: ascent on ``v = g - target``.

  ``lambda' = proj(lambda + inner_step(v))`` with dual restarts, see ``dual_optimizer``;
  for "penalized" the state is returned unchanged. ``targets`` as in ``violations``.
  """
  dual = _as_dual(problem, dual)
  v = violations(constraint_values, problem, targets)
  updates, dual_state = dual.update(v, state.dual_state, state.multipliers)
  multipliers = optax.apply_updates(state.multipliers, updates)
  return ConstrainedState(multipliers=multipliers, dual_state=dual_state)


# ----------------------------------------------------------------------------------------
# Primal-dual driver
# ----------------------------------------------------------------------------------------


def _identity(tree):
  return tree


def make_update(problem: Problem, primal_tx: optax.GradientTransformation, dual_tx=None,
                scheme: str = "simultaneous", *,
                grad_reduce: Callable[[PyTree], PyTree] = _identity) -> Callable:
  """A pure primal-dual step ``step(fn, params, opt_state, cstate, *args, targets=None)``.

  ``fn(params, *args) -> (objective, constraint_values, aux)`` with a scalar objective and
  constraint values as a vector of shape ``(num_constraints,)``, a ``{name: value}``
  mapping, with ``Proxy(proxy, value)`` for the whole vector or for single entries. The
  primal gradient of the Lagrangian is ``grad f + sum_k w_k grad p_k`` with ``p`` the
  proxies (the values themselves where there is no proxy) and ``w =
  constraint_weights(p, lambda)``, taken with one ``jax.vjp`` (one forward and one
  backward pass of ``fn``); the dual step ascends on the true values. ``targets``: this
  step's targets (a vector or mapping, e.g. ``schedule(step)``), default
  ``problem.targets``. Schemes, with ``P`` the primal and ``D`` the dual update:

  - "simultaneous" (GDA): ``x' = P(x, grad_x L(x, lambda))``, ``lambda' = D(lambda, g(x))``.
  - "dual_primal": ``lambda' = D(lambda, g(x))`` first, then
    ``x' = P(x, grad_x L(x, lambda'))``, re-using the evaluation of ``fn`` at ``x``
    (Cooper's ``AlternatingDualPrimalOptimizer``).
  - "primal_dual": ``x' = P(x, grad_x L(x, lambda))`` first, then
    ``lambda' = D(lambda, g(x'))``: a second forward pass at ``x'`` (the objective is
    not needed; under ``jit`` XLA drops it). Cooper's ``AlternatingPrimalDualOptimizer``,
    the order it uses for the augmented Lagrangian.
  - "extragradient": extrapolate ``(x~, lambda~)`` by one primal and dual step from
    ``(x, lambda)``, evaluate ``fn`` again at ``x~`` and update ``(x, lambda)`` (with the
    original optimizer states) using the gradients at ``(x~, lambda~)``. Two evaluations.
    For SGD this is exactly Korpelevich's method (Cooper's extrapolation optimizer); for
    stateful optimizers the extrapolation's state is discarded.

  ``D`` is ``dual_step`` with ``dual_tx`` (wrapped by ``dual_optimizer`` unless it
  already is one).

  Under ``pmap``/``shard_map`` pass ``grad_reduce=lambda t: jax.lax.pmean(t, 'batch')``: it
  is applied to the objective and constraint values before they are used (so multipliers
  stay identical on every device) and to the primal gradients before ``primal_tx``.

  Returns ``(params, opt_state, cstate, metrics)`` where metrics is a dict of the values at
  the evaluated point ``(x, lambda)``: "objective", "constraint_values" (true values),
  "proxy_values", "violations", "lagrangian", the new "multipliers" and the user's "aux"
  (from the first evaluation).
  """
  if scheme not in SCHEMES:
    hint = " ('alternating' is now 'dual_primal')" if scheme == "alternating" else ""
    raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}{hint}")
  dual = _as_dual(problem, dual_tx)

  def evaluate(fn, params, args):
    def forward(p):
      objective, values, aux = fn(p, *args)
      objective = jnp.asarray(objective)
      if objective.ndim != 0:
        raise ValueError(f"the objective must be a scalar, got shape {objective.shape}")
      proxies, true = _split_proxies(values, problem)
      return (objective, proxies), (aux, jax.lax.stop_gradient(true))

    (objective, proxies), vjp_fn, (aux, true) = jax.vjp(forward, params, has_aux=True)
    objective, proxies, true = grad_reduce((objective, proxies, true))
    return objective, proxies, true, vjp_fn, aux

  def primal_grads(vjp_fn, objective, proxies, multipliers, targets):
    w = constraint_weights(proxies, multipliers, problem, targets)
    (grads,) = vjp_fn((jnp.ones_like(objective), w.astype(proxies.dtype)))
    return grad_reduce(grads)

  def primal_apply(grads, opt_state, params):
    updates, opt_state = primal_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def step(fn, params, opt_state, cstate: ConstrainedState, *args, targets=None):
    objective, proxies, values, vjp_fn, aux = evaluate(fn, params, args)
    lam = cstate.multipliers
    dual_at = lambda state, g: dual_step(state, g, problem, dual, targets)
    if scheme == "simultaneous":
      grads = primal_grads(vjp_fn, objective, proxies, lam, targets)
      new_params, new_opt_state = primal_apply(grads, opt_state, params)
      new_cstate = dual_at(cstate, values)
    elif scheme == "dual_primal":
      new_cstate = dual_at(cstate, values)
      grads = primal_grads(vjp_fn, objective, proxies, new_cstate.multipliers, targets)
      new_params, new_opt_state = primal_apply(grads, opt_state, params)
    elif scheme == "primal_dual":
      grads = primal_grads(vjp_fn, objective, proxies, lam, targets)
      new_params, new_opt_state = primal_apply(grads, opt_state, params)
      _, _, values_new, _, _ = evaluate(fn, new_params, args)
      new_cstate = dual_at(cstate, values_new)
    else:  # extragradient
      grads = primal_grads(vjp_fn, objective, proxies, lam, targets)
      params_x, _ = primal_apply(grads, opt_state, params)
      cstate_x = dual_at(cstate, values)
      _, proxies_x, values_x, vjp_x, _ = evaluate(fn, params_x, args)
      grads_x = primal_grads(vjp_x, objective, proxies_x, cstate_x.multipliers, targets)
      new_params, new_opt_state = primal_apply(grads_x, opt_state, params)
      new_cstate = dual_at(cstate, values_x)
    metrics = {
        "objective": objective,
        "constraint_values": values,
        "proxy_values": proxies,
        "violations": violations(values, problem, targets),
        "lagrangian": lagrangian(objective, values, lam, problem, targets),
        "multipliers": new_cstate.multipliers,
        "aux": aux,
    }
    return new_params, new_opt_state, new_cstate, metrics

  return step
