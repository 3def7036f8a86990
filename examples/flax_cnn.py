"""The Flax examples' MNIST CNN, sparsified by path specs without rewriting it.

    python examples/flax_cnn.py                   # widths 32-64-256, MACs <= 25%
    python examples/flax_cnn.py --tiny            # widths 4-8-16, seconds

``CNN`` is the model of the official Flax MNIST example, as its users have it. The
gates come from outside: ``GateSpec`` s pick the conv kernels' output channels (each
sharing its gate with the channel's bias) and the hidden dense layer's units, and
``apply_gates`` multiplies the params before ``CNN().apply``. The constraint is on
MACs: a ``Linear`` graph says which gates gate each layer's inputs and outputs, so a
closed channel of ``Conv_0`` also removes that input channel from ``Conv_1``, and a
closed ``Conv_1`` channel removes its 7x7 positions from ``Dense_0``'s inputs. The data
are synthetic 28x28 images (the class is where a bright square sits), so the example
runs anywhere; plug in MNIST batches to train the real thing. At the end,
``purge.masks`` exports boolean keep-masks of the params.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import l0jax
from l0jax import constrained, purge


class CNN(nn.Module):
  """A simple CNN model (the Flax examples' MNIST model; widths made configurable)."""
  widths: tuple = (32, 64, 256)

  @nn.compact
  def __call__(self, x):
    x = nn.Conv(features=self.widths[0], kernel_size=(3, 3))(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = nn.Conv(features=self.widths[1], kernel_size=(3, 3))(x)
    x = nn.relu(x)
    x = nn.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))  # flatten
    x = nn.Dense(features=self.widths[2])(x)
    x = nn.relu(x)
    x = nn.Dense(features=10)(x)
    return x


SPECS = (
    l0jax.GateSpec(r"Conv_\d/kernel", axis=-1, shared={"bias": -1}),  # channels
    l0jax.GateSpec(r"Dense_0/kernel", axis=-1, shared={"bias": -1}),  # hidden units
)


def macs_graph(widths):
  """MACs per example of each layer, and which gates keep its inputs and outputs."""
  c1, c2, hidden = widths
  L = l0jax.Linear
  return {
      "Conv_0": L(28 * 28 * 9 * 1 * c1, outputs=("Conv_0/kernel",)),
      "Conv_1": L(14 * 14 * 9 * c1 * c2, inputs=("Conv_0/kernel",),
                  outputs=("Conv_1/kernel",)),
      "Dense_0": L(7 * 7 * c2 * hidden, inputs=("Conv_1/kernel",),  # tiled over 7x7
                   outputs=("Dense_0/kernel",)),
      "Dense_1": L(hidden * 10, inputs=("Dense_0/kernel",)),
  }


def make_data(n: int, seed: int):
  """Images whose label is the cell (of a 3x4 grid, 10 used) holding a bright square."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 10, size=n)
  images = rng.normal(0.0, 0.3, size=(n, 28, 28, 1)).astype(np.float32)
  for i, label in enumerate(labels):
    r, c = divmod(int(label), 4)
    images[i, 2 + 9 * r:8 + 9 * r, 1 + 7 * c:7 + 7 * c, 0] += 1.0
  return jnp.asarray(images), jnp.asarray(labels, jnp.int32)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true", help="small widths, few steps")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--target_macs", type=float, default=0.25)
  args = parser.parse_args(argv)
  widths = (4, 8, 16) if args.tiny else (32, 64, 256)
  steps = args.steps or (400 if args.tiny else 1500)
  batch = 32

  model = CNN(widths)
  images, labels = make_data(2048, seed=0)
  test_images, test_labels = make_data(512, seed=1)
  params = model.init(jax.random.key(0), images[:1])["params"]
  log_alphas = l0jax.init_gates(jax.random.key(1), params, SPECS, droprate_init=0.1)
  graph = macs_graph(widths)

  def fn(p, key):
    k_batch, k_gates = jax.random.split(key)
    idx = jax.random.randint(k_batch, (batch,), 0, images.shape[0])
    gated = l0jax.apply_gates(p["params"], p["log_alphas"], SPECS, key=k_gates)
    logits = model.apply({"params": gated}, images[idx])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()
    layers = l0jax.gated_layers(p["params"], SPECS, p["log_alphas"])
    return loss, {"macs": l0jax.macs_density(graph, layers)}, None

  problem = constrained.Problem({"macs": args.target_macs})
  primal = constrained.primal_optimizer(optax.adam(3e-3), optax.adam(1e-2))
  dual = constrained.dual_optimizer(problem, optax.sgd(0.1))
  step = constrained.make_update(problem, primal, dual)

  @jax.jit
  def train(p):
    def body(carry, i):
      p, opt_state, cstate = carry
      p, opt_state, cstate, m = step(fn, p, opt_state, cstate, jax.random.key(i))
      return (p, opt_state, cstate), (m["objective"], m["constraint_values"][0])
    carry = (p, primal.init(p), constrained.init(problem, dual))
    return jax.lax.scan(body, carry, jnp.arange(steps))

  (p, _, _), (losses, macs) = train({"params": params, "log_alphas": log_alphas})
  test_params = l0jax.apply_gates(p["params"], p["log_alphas"], SPECS, deterministic=True)
  logits = model.apply({"params": test_params}, test_images)
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test_labels))
  layers = l0jax.gated_layers(p["params"], SPECS, p["log_alphas"])
  report = l0jax.density_report(layers)
  test_macs = float(l0jax.macs_density(graph, layers, "median"))
  masks = purge.masks(p["params"], SPECS, p["log_alphas"])
  kept = {name: int(report.kept_units[name]) for name in layers}
  print(f"test accuracy {accuracy:.3f}; expected MACs {float(macs[-1]):.3f} (target "
        f"{args.target_macs}), test-time MACs {test_macs:.3f}; kept units {kept}; "
        f"kept weights {sum(int(m.sum()) for m in jax.tree.leaves(masks))} of "
        f"{sum(m.size for m in jax.tree.leaves(masks))}")
  return {"accuracy": accuracy, "expected_macs": np.asarray(macs),
          "test_time_macs": test_macs, "kept": kept, "masks": masks,
          "losses": np.asarray(losses)}


if __name__ == "__main__":
  main()
