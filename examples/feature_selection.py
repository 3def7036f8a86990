"""Feature selection in a pure-JAX linear model, under a density constraint.

    python examples/feature_selection.py            # 40 features, 5 of them matter
    python examples/feature_selection.py --steps=300

The model is a dict of arrays and a two-line forward pass; nothing about it knows
gates. A ``GateSpec`` puts one hard-concrete gate on each input feature (the rows of
``w``), and the constraint "expected fraction of kept features <= 15%" is solved by
``l0jax.constrained`` (Lagrangian, dual ascent on the multiplier) instead of a tuned
L0 penalty. Prints the features kept at test time: the five that generate ``y``.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import l0jax
from l0jax import constrained

TRUE_FEATURES = (3, 7, 11, 19, 31)
TRUE_WEIGHTS = (2.0, -1.5, 1.0, -2.0, 1.2)


def make_data(n: int, d: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = x[:, TRUE_FEATURES] @ np.asarray(TRUE_WEIGHTS, np.float32)
  return jnp.asarray(x), jnp.asarray(y + 0.1 * rng.normal(size=n).astype(np.float32))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=1500)
  parser.add_argument("--features", type=int, default=40)
  parser.add_argument("--target", type=float, default=0.15)
  args = parser.parse_args(argv)

  x, y = make_data(512, args.features)
  params = {"w": jnp.zeros((args.features,)), "b": jnp.zeros(())}
  specs = [l0jax.GateSpec("w", axis=0)]     # one gate per input feature
  log_alphas = l0jax.init_gates(jax.random.key(0), params, specs, droprate_init=0.3)

  def fn(p, key):
    gated = l0jax.apply_gates(p["params"], p["log_alphas"], specs, key=key)
    loss = jnp.mean((x @ gated["w"] + gated["b"] - y) ** 2)
    layers = l0jax.gated_layers(p["params"], specs, p["log_alphas"])
    return loss, {"density": l0jax.expected_density(layers)}, None

  problem = constrained.Problem({"density": args.target})
  primal = constrained.primal_optimizer(optax.adam(0.05), optax.adam(0.05))
  dual = constrained.dual_optimizer(problem, optax.sgd(0.5))
  step = constrained.make_update(problem, primal, dual)

  @jax.jit
  def train(p):
    def body(carry, i):
      p, opt_state, cstate = carry
      p, opt_state, cstate, m = step(fn, p, opt_state, cstate, jax.random.key(i))
      return (p, opt_state, cstate), m["constraint_values"][0]
    carry = (p, primal.init(p), constrained.init(problem, dual))
    return jax.lax.scan(body, carry, jnp.arange(args.steps))

  p = {"params": params, "log_alphas": log_alphas}   # gates get the "gates" label
  (p, _, cstate), densities = train(p)
  test_params = l0jax.apply_gates(p["params"], p["log_alphas"], specs,
                                  deterministic=True)
  kept = tuple(int(i) for i in np.flatnonzero(np.asarray(test_params["w"]) != 0))
  mse = float(jnp.mean((x @ test_params["w"] + test_params["b"] - y) ** 2))
  report = l0jax.density_report(l0jax.gated_layers(p["params"], specs, p["log_alphas"]))
  print(f"kept features {kept} (true {TRUE_FEATURES}); expected density "
        f"{float(report.model_expected):.3f} (target {args.target}); test-time density "
        f"{float(report.model_test_time):.3f}; multiplier "
        f"{float(cstate.multipliers[0]):.3f}; mse {mse:.4f}")
  return {"kept": kept, "mse": mse, "expected_density": float(report.model_expected),
          "densities": np.asarray(densities)}


if __name__ == "__main__":
  main()
