"""Constrained optimisation: Lagrangians, multipliers and dual optimizers as optax pieces.

This module knows nothing about neural networks. It sees a scalar objective ``f(x)``, a
vector of constraint values ``g(x)`` and their targets, and solves

    min_x f(x)  s.t.  g_k(x) - target_k <= 0  (kind "ineq")  or  g_k(x) = target_k  ("eq")

by gradient descent on ``x`` and projected gradient ascent on the multipliers ``lambda``.

Example (minimise ``(x - 2)^2`` subject to ``x <= 1``; the KKT point is x = 1, lambda = 2)::

    import jax, jax.numpy as jnp, optax
    from l0jax import constrained

    problem = constrained.Problem(targets=(1.0,), kinds=("ineq",))
    primal, dual = optax.sgd(0.05), constrained.dual_optimizer(problem, optax.sgd(0.05))
    fn = lambda x: ((x - 2.0) ** 2, jnp.stack([x]), None)  # objective, constraints, aux
    step = jax.jit(constrained.make_update(problem, primal, dual), static_argnums=0)
    x, opt_state, cstate = jnp.float32(0.0), primal.init(0.0), constrained.init(problem, dual)
    for _ in range(1000):
      x, opt_state, cstate, metrics = step(fn, x, opt_state, cstate)
    print(x, cstate.multipliers)  # ~1.0 [~2.0]

Pieces, optax-style (pure functions, NamedTuple states, static configuration outside state):

- ``Problem``: the frozen, hashable specification (targets, kinds, formulation).
- ``dual_optimizer``: wraps any optax transformation into an *ascent* step on the multipliers
  with projection onto ``lambda >= 0`` for inequalities and dual restarts. ``nupi`` is a PI
  controller usable as the inner transformation.
- ``init`` / ``dual_step`` / ``lagrangian``: the multiplier state and its update.
- ``make_update``: one primal-dual step for the schemes "simultaneous", "alternating" and
  "extragradient".
- ``primal_optimizer`` / ``param_labels``: separate optimizers for weights, gates and the
  gate generator via ``optax.partition``.
- ``bisect_penalty``: geometric bisection of a fixed penalty to hit a target density.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, NamedTuple, Optional, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = [
    "BisectionResult",
    "ConstrainedState",
    "DualTransformation",
    "FORMULATIONS",
    "KINDS",
    "NuPIState",
    "Problem",
    "SCHEMES",
    "bisect_penalty",
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
SCHEMES = ("simultaneous", "alternating", "extragradient")

PyTree = Any


# ----------------------------------------------------------------------------------------
# Problem specification
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
  """Static, hashable description of the constraints ``g_k(x) - target_k (<= | =) 0``.

  Attributes:
    targets: one float per constraint (a single float means one constraint).
    kinds: ``"ineq"`` (``g_k - target_k <= 0``, multiplier ``lambda_k >= 0``) or ``"eq"``
      (``g_k = target_k``, multiplier of any sign), one per constraint. ``None`` means all
      inequalities; a single string applies to every constraint.
    formulation: ``"lagrangian"`` (``L = f + sum_k lambda_k v_k`` with ``v = g - target``),
      ``"augmented_lagrangian"`` (adds the quadratic penalty of ``penalty_coefficient``, see
      ``lagrangian``) or ``"penalized"`` (fixed ``lambda``, the dual step does nothing).
    penalty_coefficient: ``c > 0`` of the augmented Lagrangian; must be ``None`` otherwise.

  Being a frozen dataclass of tuples it can be closed over or passed as a static argument
  to ``jax.jit``; it never enters a state pytree.
  """
  targets: Sequence[float]
  kinds: Union[None, str, Sequence[str]] = None
  formulation: str = "lagrangian"
  penalty_coefficient: Optional[float] = None

  def __post_init__(self):
    targets = self.targets
    if np.ndim(targets) == 0:
      targets = (targets,)
    try:
      targets = tuple(float(t) for t in targets)
    except (TypeError, ValueError) as e:
      raise ValueError(f"targets must be a sequence of floats, got {self.targets!r}") from e
    if not all(math.isfinite(t) for t in targets):
      raise ValueError(f"targets must be finite, got {targets}")
    kinds = self.kinds
    if kinds is None:
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
    object.__setattr__(self, "kinds", kinds)
    object.__setattr__(self, "penalty_coefficient", c)

  @property
  def num_constraints(self) -> int:
    return len(self.targets)

  @property
  def is_inequality(self) -> np.ndarray:
    """Static boolean mask, True where the constraint is an inequality."""
    return np.array([k == "ineq" for k in self.kinds], dtype=bool)


class ConstrainedState(NamedTuple):
  """Multipliers (float32, shape ``(num_constraints,)``) and the dual optimizer's state."""
  multipliers: jax.Array
  dual_state: optax.OptState


def _targets(problem: Problem) -> jax.Array:
  return jnp.asarray(problem.targets, jnp.float32)


def _as_vector(values, problem: Problem, what: str) -> jax.Array:
  values = jnp.asarray(values)
  if values.size != problem.num_constraints or values.ndim > 1:
    raise ValueError(
        f"{what} must have shape ({problem.num_constraints},), got {values.shape}")
  return values.reshape((problem.num_constraints,))


def violations(constraint_values, problem: Problem) -> jax.Array:
  """``v_k = g_k - target_k`` in float32; ``v_k > 0`` means constraint ``k`` is violated.

  ``v`` is also the gradient of the (plain) Lagrangian with respect to ``lambda``.
  """
  g = _as_vector(constraint_values, problem, "constraint_values")
  return g.astype(jnp.float32) - _targets(problem)


def lagrangian(objective, constraint_values, multipliers, problem: Problem) -> jax.Array:
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
  v = violations(constraint_values, problem)
  f = jnp.asarray(objective)
  if problem.formulation != "augmented_lagrangian":
    return f + jnp.sum(lam * v)
  c = problem.penalty_coefficient
  eq_term = lam * v + 0.5 * c * v ** 2
  ineq_term = (jnp.maximum(0.0, lam + c * v) ** 2 - lam ** 2) / (2.0 * c)
  return f + jnp.sum(jnp.where(problem.is_inequality, ineq_term, eq_term))


def constraint_weights(constraint_values, multipliers, problem: Problem) -> jax.Array:
  """``w_k = dL/dg_k``: the weight of ``grad g_k`` in the primal gradient of ``L``.

  ``w = lambda`` for "lagrangian"/"penalized"; for "augmented_lagrangian"
  ``w_k = lambda_k + c v_k`` (equality) and ``w_k = max(0, lambda_k + c v_k)`` (inequality).
  The primal gradient is ``grad f + sum_k w_k grad g_k``.
  """
  lam = _as_vector(multipliers, problem, "multipliers").astype(jnp.float32)
  if problem.formulation != "augmented_lagrangian":
    return lam
  v = violations(constraint_values, problem)
  shifted = lam + problem.penalty_coefficient * v
  return jnp.where(problem.is_inequality, jnp.maximum(0.0, shifted), shifted)


# ----------------------------------------------------------------------------------------
# Dual optimizers
# ----------------------------------------------------------------------------------------


class NuPIState(NamedTuple):
  """State of ``nupi``: step count and the previous smoothed error ``xi_{t-1}``."""
  count: jax.Array
  xi: PyTree


def nupi(learning_rate: optax.ScalarOrSchedule, kp: float = 0.0, ki: float = 1.0,
         ema_nu: float = 0.0) -> optax.GradientTransformation:
  """nuPI: a PI controller as a (descent-convention) optax transformation.

  With incoming gradient ``e_t`` (``dual_optimizer`` feeds ``e_t = -v_t`` to ascend):

      xi_t = ema_nu * xi_{t-1} + (1 - ema_nu) * e_t,       xi_{-1} = 0
      u_t  = -lr_t * (ki * e_t + kp * (xi_t - xi_{t-1}))

  so that, without projection and with a constant ``lr``, the iterate is the positional PI
  law ``theta_t = theta_0 - lr * (ki * sum_{s<t} e_s + kp * xi_{t-1})``. For multipliers this
  reads ``lambda_{t+1} = lambda_t + lr * (kp * (v_t - v_{t-1}) + ki * v_t)`` (``ema_nu = 0``).
  The defaults ``kp = 0, ki = 1`` give exactly ``optax.sgd(lr)``. A dual restart resets
  ``xi`` of the restarted entries to 0, i.e. to a fresh controller.

  Args:
    learning_rate: scalar or schedule ``count -> lr``.
    kp: proportional gain (>= 0).
    ki: integral gain (>= 0).
    ema_nu: smoothing of the proportional term, in ``[0, 1)``.
  """
  if not 0.0 <= float(ema_nu) < 1.0:
    raise ValueError(f"ema_nu must be in [0, 1), got {ema_nu}")
  if float(kp) < 0 or float(ki) < 0:
    raise ValueError(f"gains must be >= 0, got kp={kp}, ki={ki}")

  def init_fn(params):
    return NuPIState(count=jnp.zeros([], jnp.int32),
                     xi=jax.tree.map(jnp.zeros_like, params))

  def update_fn(updates, state, params=None):
    del params
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    xi = jax.tree.map(lambda p, e: ema_nu * p + (1.0 - ema_nu) * e, state.xi, updates)
    new_updates = jax.tree.map(
        lambda e, x, p: ((-lr) * (ki * e + kp * (x - p))).astype(e.dtype),
        updates, xi, state.xi)
    return new_updates, NuPIState(count=state.count + 1, xi=xi)

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
  them off to converge to an active KKT point to high precision.

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
    return inner.init(_as_vector(multipliers, problem, "multipliers").astype(jnp.float32))

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


def init(problem: Problem, dual=None, init_multipliers=None) -> ConstrainedState:
  """Initial ``ConstrainedState``: multipliers ``lambda_0`` (zeros by default) and dual state.

  ``dual`` is a ``dual_optimizer(...)`` (anything else is wrapped with
  ``dual_optimizer(problem, dual)``, restarts on). For "penalized" the given multipliers are
  the fixed penalty weights. A negative initial multiplier of an inequality is an error.
  """
  n = problem.num_constraints
  if init_multipliers is None:
    lam = jnp.zeros((n,), jnp.float32)
  else:
    lam = _as_vector(init_multipliers, problem, "init_multipliers").astype(jnp.float32)
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
              dual=None) -> ConstrainedState:
  """One multiplier step from constraint values ``g``: ascent on ``v = g - target``.

  ``lambda' = proj(lambda + inner_step(v))`` with dual restarts, see ``dual_optimizer``;
  for "penalized" the state is returned unchanged.
  """
  dual = _as_dual(problem, dual)
  v = violations(constraint_values, problem)
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
  """A pure primal-dual step ``step(fn, params, opt_state, cstate, *args)``.

  ``fn(params, *args) -> (objective, constraint_values, aux)`` with a scalar objective and
  ``constraint_values`` of shape ``(num_constraints,)``. The primal gradient of the
  Lagrangian is ``grad f + sum_k w_k grad g_k`` with ``w = constraint_weights(g, lambda)``,
  taken with one ``jax.vjp`` (one forward and one backward pass of ``fn``). Schemes:

  - "simultaneous" (GDA): ``x' = x - P(grad_x L(x, lambda))``, ``lambda' = D(g(x))``.
  - "alternating": ``lambda' = D(g(x))`` first, then ``x' = x - P(grad_x L(x, lambda'))``,
    re-using the same evaluation of ``fn`` (no extra forward pass).
  - "extragradient": extrapolate ``(x~, lambda~)`` by one primal and dual step from
    ``(x, lambda)``, evaluate ``fn`` again at ``x~`` and update ``(x, lambda)`` (with the
    original optimizer states) using the gradients at ``(x~, lambda~)``. Two evaluations.
    For SGD this is exactly Korpelevich's method; for stateful optimizers the extrapolation's
    state is discarded.

  ``P`` is ``primal_tx``, ``D`` is ``dual_step`` with ``dual_tx`` (wrapped by
  ``dual_optimizer`` unless it already is one).

  Under ``pmap``/``shard_map`` pass ``grad_reduce=lambda t: jax.lax.pmean(t, 'batch')``: it
  is applied to ``(objective, constraint_values)`` before they are used (so multipliers stay
  identical on every device) and to the primal gradients before ``primal_tx``.

  Returns ``(params, opt_state, cstate, metrics)`` where metrics is a dict of the values at
  the evaluated point ``(x, lambda)``: "objective", "constraint_values", "violations",
  "lagrangian", the new "multipliers" and the user's "aux" (from the first evaluation).
  """
  if scheme not in SCHEMES:
    raise ValueError(f"unknown scheme {scheme!r}; expected one of {SCHEMES}")
  dual = _as_dual(problem, dual_tx)

  def evaluate(fn, params, args):
    def forward(p):
      objective, values, aux = fn(p, *args)
      objective = jnp.asarray(objective)
      if objective.ndim != 0:
        raise ValueError(f"the objective must be a scalar, got shape {objective.shape}")
      return (objective, _as_vector(values, problem, "constraint_values")), aux

    (objective, values), vjp_fn, aux = jax.vjp(forward, params, has_aux=True)
    objective, values = grad_reduce((objective, values))
    return objective, values, vjp_fn, aux

  def primal_grads(vjp_fn, objective, values, multipliers):
    w = constraint_weights(values, multipliers, problem)
    (grads,) = vjp_fn((jnp.ones_like(objective), w.astype(values.dtype)))
    return grad_reduce(grads)

  def primal_apply(grads, opt_state, params):
    updates, opt_state = primal_tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def step(fn, params, opt_state, cstate: ConstrainedState, *args):
    objective, values, vjp_fn, aux = evaluate(fn, params, args)
    lam = cstate.multipliers
    if scheme == "simultaneous":
      grads = primal_grads(vjp_fn, objective, values, lam)
      new_params, new_opt_state = primal_apply(grads, opt_state, params)
      new_cstate = dual_step(cstate, values, problem, dual)
    elif scheme == "alternating":
      new_cstate = dual_step(cstate, values, problem, dual)
      grads = primal_grads(vjp_fn, objective, values, new_cstate.multipliers)
      new_params, new_opt_state = primal_apply(grads, opt_state, params)
    else:  # extragradient
      grads = primal_grads(vjp_fn, objective, values, lam)
      params_x, _ = primal_apply(grads, opt_state, params)
      cstate_x = dual_step(cstate, values, problem, dual)
      _, values_x, vjp_x, _ = evaluate(fn, params_x, args)
      grads_x = primal_grads(vjp_x, objective, values_x, cstate_x.multipliers)
      new_params, new_opt_state = primal_apply(grads_x, opt_state, params)
      new_cstate = dual_step(cstate, values_x, problem, dual)
    metrics = {
        "objective": objective,
        "constraint_values": values,
        "violations": violations(values, problem),
        "lagrangian": lagrangian(objective, values, lam, problem),
        "multipliers": new_cstate.multipliers,
        "aux": aux,
    }
    return new_params, new_opt_state, new_cstate, metrics

  return step


# ----------------------------------------------------------------------------------------
# Primal optimizer with separate learning rates
# ----------------------------------------------------------------------------------------


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _label_of(path) -> str:
  names = [_key_name(k) for k in path]
  for name in names[:-1]:
    if "gategenerator" in name.lower().replace("_", ""):
      return "generator"
  if names and names[-1] == "log_alpha":
    return "gates"
  return "weights"


def param_labels(params: PyTree) -> PyTree:
  """Labels for ``optax.partition``: a pytree like ``params`` of "weights"/"gates"/"generator".

  A leaf below a path component containing "gate_generator" (case and underscores ignored,
  so "GateGenerator_0" matches) is "generator"; otherwise a leaf named ``log_alpha`` is
  "gates"; everything else is "weights".
  """
  return jax.tree.map_with_path(lambda path, _: _label_of(path), params)


def primal_optimizer(weights_tx: optax.GradientTransformation,
                     gates_tx: optax.GradientTransformation,
                     generator_tx: Optional[optax.GradientTransformation] = None, *,
                     label_fn: Optional[Callable[[PyTree], PyTree]] = None,
                     ) -> optax.GradientTransformation:
  """``optax.partition({"weights": ..., "gates": ..., "generator": ...}, labels)``.

  Each leaf is updated by the transformation of its label (``param_labels`` by default, or
  ``label_fn(params)`` returning the same three labels). ``generator_tx=None`` trains the
  gate generator with ``gates_tx`` (a separate state). E.g. WRN: weights ``sgd(0.1)``,
  gates ``sgd(6.0)``.
  """
  transforms = {
      "weights": weights_tx,
      "gates": gates_tx,
      "generator": gates_tx if generator_tx is None else generator_tx,
  }
  partition = getattr(optax, "partition", None) or optax.multi_transform
  return partition(transforms, param_labels if label_fn is None else label_fn)


# ----------------------------------------------------------------------------------------
# Penalty search
# ----------------------------------------------------------------------------------------


class BisectionResult(NamedTuple):
  """``penalty``: the chosen lambda; ``history``: every ``(lambda, value)`` evaluated."""
  penalty: float
  history: tuple


def bisect_penalty(run_fn: Callable[[float], float], target: float, lo: float, hi: float,
                   *, tol: float = 1e-3, max_iters: int = 30) -> BisectionResult:
  """Geometric bisection for ``lambda > 0`` with ``run_fn(lambda) ~= target``.

  ``run_fn`` (e.g. a penalized training run returning its density) must be decreasing in
  ``lambda``. Evaluates both ends (raises ``ValueError`` unless
  ``run_fn(hi) - tol <= target <= run_fn(lo) + tol``), then up to ``max_iters`` midpoints
  ``m = sqrt(lo * hi)``: ``run_fn(m) > target`` moves ``lo`` to ``m``, otherwise ``hi``.
  Stops at the first value within ``tol`` of the target; if none is, warns and returns the
  closest one seen.
  """
  lo, hi, target, tol = float(lo), float(hi), float(target), float(tol)
  if not (0 < lo < hi and math.isfinite(hi)):
    raise ValueError(f"need 0 < lo < hi < inf, got lo={lo}, hi={hi}")
  if not tol > 0:
    raise ValueError(f"tol must be > 0, got {tol}")
  if int(max_iters) < 1:
    raise ValueError(f"max_iters must be >= 1, got {max_iters}")
  history = []

  def run(lam):
    value = float(run_fn(lam))
    if not math.isfinite(value):
      raise ValueError(f"run_fn({lam}) returned {value}")
    history.append((lam, value))
    return value

  value_lo, value_hi = run(lo), run(hi)
  if not value_hi - tol <= target <= value_lo + tol:
    raise ValueError(
        f"the bracket [{lo}, {hi}] gives values [{value_lo}, {value_hi}] which do not "
        f"contain the target {target} (run_fn must decrease in lambda)")
  for lam, value in history:
    if abs(value - target) <= tol:
      return BisectionResult(lam, tuple(history))
  for _ in range(int(max_iters)):
    mid = math.sqrt(lo * hi)
    value = run(mid)
    if abs(value - target) <= tol:
      return BisectionResult(mid, tuple(history))
    if value > target:
      lo = mid
    else:
      hi = mid
  best = min(history, key=lambda h: abs(h[1] - target))
  warnings.warn(
      f"bisect_penalty: no value within tol={tol} of {target} after {max_iters} "
      f"iterations; returning the closest, lambda={best[0]} -> {best[1]}")
  return BisectionResult(best[0], tuple(history))
