"""A non-density constraint with a proxy: a demographic-parity gap, next to a density one.

    python examples/fairness_proxy.py           # gap <= 0.05 and density <= 50%
    python examples/fairness_proxy.py --tiny

A logistic regression with gated inputs (path API) under two named constraints:
"density" (the expected fraction of kept input features) and "gap", the difference in
positive-prediction rates between two groups. The true gap is the deployed model's
(test-time gates, thresholded predictions): it has no gradient. ``constrained.Proxy(proxy, value)`` gives the primal
step a differentiable surrogate (the gap of the predicted probabilities) while the
multiplier ascends on the true gap (the proxy-Lagrangian of Cotter et al., 2019).
Printed: the true gap and accuracy without and with the fairness constraint.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import l0jax
from l0jax import constrained

FEATURES = 12


def make_data(n: int, seed: int):
  """Labels depend on the group ``s``; feature 0 leaks ``s``; features 1-3 are signal."""
  rng = np.random.default_rng(seed)
  s = rng.integers(0, 2, n)
  x = rng.normal(size=(n, FEATURES)).astype(np.float32)
  x[:, 0] += 1.5 * s
  y = (x[:, 1] + x[:, 2] - x[:, 3] + 1.5 * s + 0.5 * rng.normal(size=n)) > 0.75
  return jnp.asarray(x), jnp.asarray(y, jnp.float32), jnp.asarray(s, bool)


def rate_gap(scores, s):
  """|mean score of group 1 - mean score of group 0|."""
  return jnp.abs(jnp.sum(scores * s) / jnp.sum(s) - jnp.sum(scores * ~s) / jnp.sum(~s))


def train(x, y, s, *, steps: int, gap: float, density: float):
  params = {"w": jnp.zeros(FEATURES), "b": jnp.zeros(())}
  specs = [l0jax.GateSpec("w", axis=0)]
  log_alphas = l0jax.init_gates(jax.random.key(0), params, specs, droprate_init=0.8)

  def fn(p, key):
    gated = l0jax.apply_gates(p["params"], p["log_alphas"], specs, key=key)
    logits = x @ gated["w"] + gated["b"]
    loss = optax.sigmoid_binary_cross_entropy(logits, y).mean()
    # The true gap is the deployed model's: test-time gates, thresholded predictions.
    deployed = l0jax.apply_gates(p["params"], p["log_alphas"], specs, deterministic=True)
    hard = (x @ deployed["w"] + deployed["b"] > 0).astype(jnp.float32)  # no gradient
    layers = l0jax.gated_layers(p["params"], specs, p["log_alphas"])
    # The proxy: the gap of soft predictions, on logits scaled to unit spread so that
    # shrinking the weights cannot fake a small gap.
    soft = jax.nn.sigmoid(4.0 * logits / jnp.sqrt(jnp.var(logits) + 1e-6))
    return loss, {"density": l0jax.expected_density(layers),
                  "gap": constrained.Proxy(proxy=rate_gap(soft, s),
                                           value=rate_gap(hard, s))}, None

  problem = constrained.Problem({"density": density, "gap": gap})
  primal = constrained.primal_optimizer(optax.adam(0.03), optax.adam(0.05))
  # No dual restarts: at an active constraint the gap oscillates around its target
  # and every dip below it would reset the multiplier to 0.
  dual = constrained.dual_optimizer(problem, optax.sgd(1.0), restarts=False)
  step = constrained.make_update(problem, primal, dual)

  @jax.jit
  def run(p):
    def body(carry, i):
      p, opt_state, cstate = carry
      p, opt_state, cstate, _ = step(fn, p, opt_state, cstate, jax.random.key(i))
      return (p, opt_state, cstate), None
    carry = (p, primal.init(p), constrained.init(problem, dual))
    return jax.lax.scan(body, carry, jnp.arange(steps))[0]

  p, _, cstate = run({"params": params, "log_alphas": log_alphas})
  final = l0jax.apply_gates(p["params"], p["log_alphas"], specs, deterministic=True)
  report = l0jax.density_report(l0jax.gated_layers(p["params"], specs, p["log_alphas"]))
  return final, report, problem.named(cstate.multipliers)


def evaluate(params, x, y, s):
  predictions = (x @ params["w"] + params["b"]) > 0
  return (float(jnp.mean(predictions == (y > 0.5))),
          float(rate_gap(predictions.astype(jnp.float32), s)))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--gap", type=float, default=0.05)
  parser.add_argument("--density", type=float, default=0.5)
  args = parser.parse_args(argv)
  steps = args.steps or (1200 if args.tiny else 3000)
  x, y, s = make_data(4000, seed=0)
  x_test, y_test, s_test = make_data(4000, seed=1)
  results = {}
  for name, gap in (("density only", 1.0), ("density and gap", args.gap)):
    params, report, multipliers = train(x, y, s, steps=steps, gap=gap,
                                        density=args.density)
    _, train_gap = evaluate(params, x, y, s)
    accuracy, test_gap = evaluate(params, x_test, y_test, s_test)
    kept = tuple(int(i) for i in np.flatnonzero(np.asarray(params["w"]) != 0))
    results[name] = {"accuracy": accuracy, "train_gap": train_gap, "test_gap": test_gap,
                     "kept": kept, "density": float(report.model_expected),
                     "multipliers": {k: float(v) for k, v in multipliers.items()}}
    print(f"{name:16} gap {train_gap:.3f} (target {gap}; test set {test_gap:.3f}), "
          f"test accuracy {accuracy:.3f}, expected density "
          f"{float(report.model_expected):.3f}, kept features {kept}")
  return results


if __name__ == "__main__":
  main()
