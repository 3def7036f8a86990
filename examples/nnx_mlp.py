"""A Flax NNX model built from ``l0jax.nnx`` layers, trained under a density constraint.

    python examples/nnx_mlp.py          # 64-32-3 MLP, expected density <= 30%
    python examples/nnx_mlp.py --tiny

``l0jax.nnx.L0Linear`` gates its input units and draws per-example gate noise from the
model's ``"gates"`` rng stream; ``model.eval()`` switches to test-time gates. The
optimizer is a plain ``nnx.Optimizer`` over ``constrained.primal_optimizer`` (weights
and gates get their own learning rates, told apart by ``param_labels``, which reads NNX
states), and the multiplier is one ``constrained.dual_step`` per training step: the
simultaneous Lagrangian scheme, written out in NNX style. The data are synthetic: the
class depends on 4 of the inputs, the others are noise, so most inputs can go.
"""

import argparse

from flax import nnx
import jax.numpy as jnp
import numpy as np
import optax

import l0jax
from l0jax import constrained
from l0jax import nnx as l0nnx


class MLP(nnx.Module):
  def __init__(self, features, rngs: nnx.Rngs):
    self.layers = nnx.List([
        l0nnx.L0Linear(a, b, droprate_init=0.2, rngs=rngs)
        for a, b in zip(features[:-1], features[1:])])

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      x = layer(x)
      if i < len(self.layers) - 1:
        x = nnx.relu(x)
    return x


def make_data(n: int, informative: int, total: int, seed: int):
  """3 classes decided by the first ``informative`` features; the rest is noise."""
  w = np.random.default_rng(0).normal(size=(informative, 3)).astype(np.float32)
  x = np.random.default_rng(seed).normal(size=(n, total)).astype(np.float32)
  labels = np.argmax(np.tanh(x[:, :informative]) @ w, axis=1)
  return jnp.asarray(x), jnp.asarray(labels, jnp.int32)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--target", type=float, default=0.3)
  args = parser.parse_args(argv)
  features = (16, 12, 3) if args.tiny else (64, 32, 3)
  steps = args.steps or (600 if args.tiny else 2000)

  x, y = make_data(1024, 4, features[0], seed=1)
  x_test, y_test = make_data(512, 4, features[0], seed=2)
  model = MLP(features, nnx.Rngs(params=0, gates=1))
  optimizer = nnx.Optimizer(
      model, constrained.primal_optimizer(optax.adam(1e-2), optax.adam(5e-2)),
      wrt=nnx.Param)
  problem = constrained.Problem({"density": args.target})
  dual = constrained.dual_optimizer(problem, optax.sgd(0.5))
  cstate = constrained.init(problem, dual)

  def density(model):
    return l0jax.expected_density(nnx.state(model, nnx.Param))

  @nnx.jit
  def train_step(model, optimizer, cstate, idx):
    def lagrangian(model):
      logits = model(x[idx])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y[idx]).mean()
      values = {"density": density(model)}
      return constrained.lagrangian(loss, values, cstate.multipliers, problem), values
    grads, values = nnx.grad(lagrangian, has_aux=True)(model)
    optimizer.update(model, grads)
    return constrained.dual_step(cstate, values, problem, dual), values["density"]

  rng = np.random.default_rng(1)
  for _ in range(steps):
    cstate, d = train_step(model, optimizer, cstate,
                           jnp.asarray(rng.integers(0, x.shape[0], 64)))
  model.eval()
  accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))
  report = l0jax.density_report(nnx.state(model, nnx.Param))
  first = model.layers[0]
  kept_inputs = tuple(int(i) for i in np.flatnonzero(np.asarray(
      l0jax.deterministic_gate(first.log_alpha[...], first.test_gate)) > 0))
  print(f"test accuracy {accuracy:.3f}; expected density {float(d):.3f} (target "
        f"{args.target}); test-time density {float(report.model_test_time):.3f}; kept "
        f"inputs {kept_inputs} (informative: 0-3); kept units "
        f"{dict((k, int(v)) for k, v in report.kept_units.items())}")
  return {"accuracy": accuracy, "expected_density": float(d),
          "test_time_density": float(report.model_test_time),
          "kept_inputs": kept_inputs, "report": report}


if __name__ == "__main__":
  main()
