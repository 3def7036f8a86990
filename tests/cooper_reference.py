"""l0jax.constrained against Cooper 1.0.1 itself, step by step, in float64.

Not part of the test suite (it needs PyTorch and Cooper, which the suite must not):

    pip install torch cooper-optim==1.0.1
    python tests/cooper_reference.py

Runs every case of ``tests/test_constrained.py``'s ``COOPER_CASES`` (the problem
``min ||x - a||^2`` s.t. two linear inequalities and one equality) through Cooper's
optimizers (``SimultaneousOptimizer``, ``AlternatingDualPrimalOptimizer``,
``AlternatingPrimalDualOptimizer``, ``ExtrapolationConstrainedOptimizer`` with
``ExtraSGD``; ``Lagrangian`` / ``AugmentedLagrangian``; SGD or ``nuPI`` duals) and
through ``l0jax.constrained.make_update``, and prints the largest difference of the
primal iterates and multipliers over the trajectory. Exits non-zero above 1e-10.
"""

import importlib.util
import os
import sys

import cooper
import jax
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
spec = importlib.util.spec_from_file_location(
    "test_constrained", os.path.join(HERE, "test_constrained.py"))
T = importlib.util.module_from_spec(spec)
spec.loader.exec_module(T)

F64 = torch.float64


class Toy(cooper.ConstrainedMinimizationProblem):
  """The test problem as a Cooper CMP: constraints ``A[:2] x <= b[:2]``, ``A[2] x = b[2]``."""

  def __init__(self, formulation: str, proxy: bool = False):
    super().__init__()
    self.proxy = proxy
    augmented = formulation == "augmented_lagrangian"
    kind = (cooper.formulations.AugmentedLagrangian if augmented
            else cooper.formulations.Lagrangian)

    def penalty(n):
      if not augmented:
        return None
      return cooper.penalty_coefficients.DensePenaltyCoefficient(
          torch.full((n,), T.PENALTY_C, dtype=F64))

    self.ineq = cooper.Constraint(
        cooper.ConstraintType.INEQUALITY, kind,
        multiplier=cooper.multipliers.DenseMultiplier(num_constraints=2, dtype=F64),
        penalty_coefficient=penalty(2))
    self.eq = cooper.Constraint(
        cooper.ConstraintType.EQUALITY, kind,
        multiplier=cooper.multipliers.DenseMultiplier(num_constraints=1, dtype=F64),
        penalty_coefficient=penalty(1))
    self.A = torch.tensor(T.COOPER_A, dtype=F64)
    self.b = torch.tensor(T.COOPER_B, dtype=F64)
    self.a = torch.tensor(T.COOPER_TARGET, dtype=F64)

  def compute_cmp_state(self, x):
    g = self.A @ x - self.b
    ineq = cooper.ConstraintState(violation=g[:2])
    if self.proxy:  # the dual sees floor(4 (x0 + x1)) / 4, as in the suite's proxy test
      hard = torch.floor(4 * (self.A[0] @ x)) / 4 - self.b[0]
      ineq = cooper.ConstraintState(violation=g[:2],
                                    strict_violation=torch.stack([hard, g[1]]).detach())
    return cooper.CMPState(
        loss=((x - self.a) ** 2).sum(),
        observed_constraints={self.ineq: ineq,
                              self.eq: cooper.ConstraintState(violation=g[2:])})


def cooper_trajectory(scheme, formulation, dual, steps=T.COOPER_STEPS, proxy=False):
  cmp = Toy(formulation, proxy)
  x = torch.zeros(4, dtype=F64, requires_grad=True)
  extra = scheme == "extragradient"
  primal = (cooper.optim.ExtraSGD([x], lr=T.LR_X) if extra
            else torch.optim.SGD([x], lr=T.LR_X))
  params = list(cmp.dual_parameters())
  if dual[0] == "sgd":
    duals = (cooper.optim.ExtraSGD(params, lr=dual[1], maximize=True) if extra
             else torch.optim.SGD(params, lr=dual[1], maximize=True))
  else:
    _, lr, kp, ki, nu, init = dual
    init_type = {"zeros": cooper.optim.nuPIInitType.ZEROS,
                 "sgd": cooper.optim.nuPIInitType.SGD}[init]
    # Gains as float64 tensors: Cooper makes floats into float32 tensors, and its
    # "zeros" update computes Kp * (1 - ema_nu) in that precision.
    duals = cooper.optim.nuPI(params, lr=lr, Kp=torch.tensor(kp, dtype=F64),
                              Ki=torch.tensor(ki, dtype=F64), ema_nu=nu,
                              init_type=init_type, maximize=True)
  optimizer_class = {
      "simultaneous": cooper.optim.SimultaneousOptimizer,
      "dual_primal": cooper.optim.AlternatingDualPrimalOptimizer,
      "primal_dual": cooper.optim.AlternatingPrimalDualOptimizer,
      "extragradient": cooper.optim.ExtrapolationConstrainedOptimizer,
  }[scheme]
  optimizer = optimizer_class(cmp=cmp, primal_optimizers=primal, dual_optimizers=duals)
  xs, lams = [], []
  for _ in range(steps):
    optimizer.roll(compute_cmp_state_kwargs={"x": x})
    xs.append(x.detach().numpy().copy())
    lams.append(np.concatenate([cmp.ineq.multiplier.weight.detach().numpy(),
                                cmp.eq.multiplier.weight.detach().numpy()]))
  return np.array(xs), np.array(lams)


def proxy_trajectory(steps=T.COOPER_STEPS):
  """l0jax with the quantised first constraint as the true value of a Proxy."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from l0jax import constrained as C  # pylint: disable=g-import-not-at-top
  with jax.enable_x64(True):
    problem = C.Problem(tuple(T.COOPER_B), T.COOPER_KINDS)
    A, a = jnp.asarray(T.COOPER_A), jnp.asarray(T.COOPER_TARGET)

    def fn(x):
      g = A @ x
      return jnp.sum((x - a) ** 2), C.Proxy(g, g.at[0].set(jnp.floor(4 * g[0]) / 4)), None

    dual = C.dual_optimizer(problem, T.LR_LAM, restarts=False)
    primal = optax.sgd(T.LR_X)
    step = jax.jit(C.make_update(problem, primal, dual), static_argnums=0)
    x = jnp.zeros(4)
    o, c = primal.init(x), C.init(problem, dual)
    xs, lams = [], []
    for _ in range(steps):
      x, o, c, _ = step(fn, x, o, c)
      xs.append(np.asarray(x))
      lams.append(np.asarray(c.multipliers))
  return np.array(xs), np.array(lams)


def main():
  print(f"cooper {cooper.__version__}, torch {torch.__version__}, jax {jax.__version__}")
  worst = 0.0
  for scheme, formulation, dual in T.COOPER_CASES:
    want_x, want_lam = cooper_trajectory(scheme, formulation, dual)
    with jax.enable_x64(True):
      got_x, got_lam = map(np.asarray, T._jax_trajectory(scheme, formulation, dual))
    hand_x, hand_lam = T._np_trajectory(scheme, formulation, dual)
    dx = np.abs(got_x - want_x).max()
    dlam = np.abs(got_lam - want_lam).max()
    dhand = max(np.abs(hand_x - want_x).max(), np.abs(hand_lam - want_lam).max())
    worst = max(worst, dx, dlam)
    print(f"{scheme:14} {formulation:21} {str(dual):38} l0jax-Cooper: x {dx:.1e}, "
          f"lambda {dlam:.1e}; hand-Cooper {dhand:.1e}")
  want_x, want_lam = cooper_trajectory("simultaneous", "lagrangian", ("sgd", T.LR_LAM),
                                       proxy=True)
  got_x, got_lam = proxy_trajectory()
  dx, dlam = np.abs(got_x - want_x).max(), np.abs(got_lam - want_lam).max()
  worst = max(worst, dx, dlam)
  print(f"{'simultaneous':14} {'lagrangian, proxy':21} {'(sgd, 0.3)':38} l0jax-Cooper: x "
        f"{dx:.1e}, lambda {dlam:.1e}")
  print(f"largest difference over {len(T.COOPER_CASES) + 1} cases x {T.COOPER_STEPS} "
        f"steps: {worst:.1e}")
  sys.exit(0 if worst <= 1e-10 else 1)


if __name__ == "__main__":
  main()
