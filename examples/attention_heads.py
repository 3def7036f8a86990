"""Attention-head pruning in a small transformer block, under a MACs constraint.

    python examples/attention_heads.py           # 8 heads, MACs <= 35%
    python examples/attention_heads.py --tiny

The gates sit on activations: one gate per attention head (on its output, so a closed
head's query, key, value and output projections and its attention products all go) and
one per MLP hidden unit, drawn per example by ``l0jax.gate``, whose output has the
same rank in training (``(batch, heads)``) and at test time (``(1, heads)``). The gates
live in the params as ``<module>/log_alpha`` (so ``param_labels`` gives them the gates'
learning rate); density accounting needs nothing but the log_alphas and a graph of the
block's MACs (``l0jax.Linear``): every product of a head counts against the constraint
only while that head is open. The task is synthetic and needs attention: the first
token points at a position, the answer is the token found there (read off the first
position's output).
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

import l0jax
from l0jax import constrained

CLASSES = 3  # token values; the pointer tokens come after them in the vocabulary


class Gates(nn.Module):
  """A vector of hard-concrete gates, for ``batch_shape`` examples."""
  size: int
  droprate_init: float = 0.1

  @nn.compact
  def __call__(self, batch_shape, train: bool):
    log_alpha = self.param("log_alpha", lambda k, s: l0jax.init_log_alpha(
        k, s, self.droprate_init), (self.size,))
    key = self.make_rng("gates") if train else None
    return l0jax.gate(log_alpha, key, batch_shape, deterministic=not train)


class Block(nn.Module):
  """Embedding, one pre-norm transformer block (gated heads and MLP units), a head."""
  seq_len: int
  dim: int = 32
  heads: int = 8
  head_dim: int = 8
  hidden: int = 64

  @nn.compact
  def __call__(self, tokens, train: bool = False):
    batch = tokens.shape[:1]
    x = nn.Embed(CLASSES + self.seq_len, self.dim)(tokens) + self.param(
        "position", nn.initializers.normal(0.02), (self.seq_len, self.dim))
    h = nn.LayerNorm()(x)
    q, k, v = (nn.DenseGeneral((self.heads, self.head_dim), name=n)(h)
               for n in ("query", "key", "value"))
    scores = jnp.einsum("bthd,bshd->bhts", q, k) / np.sqrt(self.head_dim)
    o = jnp.einsum("bhts,bshd->bthd", jax.nn.softmax(scores), v)
    o = o * Gates(self.heads, name="heads")(batch, train)[:, None, :, None]
    x = x + nn.DenseGeneral(self.dim, axis=(-2, -1), name="out")(o)
    h = nn.relu(nn.Dense(self.hidden, name="mlp_in")(nn.LayerNorm()(x)))
    h = h * Gates(self.hidden, name="mlp_units")(batch, train)[:, None, :]
    x = x + nn.Dense(self.dim, name="mlp_out")(h)
    return nn.Dense(CLASSES)(x[:, 0])


def macs_graph(m: Block):
  """MACs per example; a head's five products and an MLP unit's two go with it."""
  t, d, hd = m.seq_len, m.dim, m.heads * m.head_dim
  L = l0jax.Linear
  heads, units = ("heads",), ("mlp_units",)
  return {
      "query": L(t * d * hd, outputs=heads), "key": L(t * d * hd, outputs=heads),
      "value": L(t * d * hd, outputs=heads),
      "scores": L(t * t * hd, outputs=heads), "mix": L(t * t * hd, outputs=heads),
      "out": L(t * hd * d, inputs=heads),
      "mlp_in": L(t * d * m.hidden, outputs=units),
      "mlp_out": L(t * m.hidden * d, inputs=units),
      "classifier": L(d * CLASSES),
  }


def gated_layers(params, m: Block):
  """The gates and the parameters each one covers (for the density report)."""
  per_head = 4 * m.dim * m.head_dim + 3 * m.head_dim   # q, k, v, out kernels; q/k/v bias
  return {"heads": l0jax.GatedLayer(params["heads"]["log_alpha"], per_head),
          "mlp_units": l0jax.GatedLayer(params["mlp_units"]["log_alpha"], 2 * m.dim + 1)}


def make_data(n: int, seq_len: int, seed: int):
  """Token 0 is ``CLASSES + p`` for a position ``p >= 1``; the label is token ``p``."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, CLASSES, size=(n, seq_len))
  pointer = rng.integers(1, seq_len, size=n)
  labels = tokens[np.arange(n), pointer]
  tokens[:, 0] = CLASSES + pointer
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(labels, jnp.int32)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tiny", action="store_true")
  parser.add_argument("--steps", type=int, default=None)
  parser.add_argument("--target_macs", type=float, default=0.35)
  args = parser.parse_args(argv)
  model = (Block(seq_len=8, dim=16, heads=4, head_dim=4, hidden=16) if args.tiny
           else Block(seq_len=16))
  steps = args.steps or (500 if args.tiny else 2000)
  tokens, labels = make_data(2048, model.seq_len, seed=0)
  test_tokens, test_labels = make_data(1024, model.seq_len, seed=1)
  params = model.init({"params": jax.random.key(0), "gates": jax.random.key(1)},
                      tokens[:2], train=True)["params"]
  graph = macs_graph(model)

  def fn(params, key):
    k_batch, k_gates = jax.random.split(key)
    idx = jax.random.randint(k_batch, (64,), 0, tokens.shape[0])
    logits = model.apply({"params": params}, tokens[idx], train=True,
                         rngs={"gates": k_gates})
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()
    macs = l0jax.macs_density(graph, gated_layers(params, model))
    return loss, {"macs": macs}, None

  problem = constrained.Problem({"macs": args.target_macs})
  primal = constrained.primal_optimizer(optax.adam(3e-3), optax.adam(3e-2))
  dual = constrained.dual_optimizer(problem, optax.sgd(0.5))
  step = constrained.make_update(problem, primal, dual, "dual_primal")

  @jax.jit
  def train(params):
    def body(carry, i):
      p, opt_state, cstate = carry
      p, opt_state, cstate, m = step(fn, p, opt_state, cstate, jax.random.key(i))
      return (p, opt_state, cstate), m["constraint_values"][0]
    carry = (params, primal.init(params), constrained.init(problem, dual))
    return jax.lax.scan(body, carry, jnp.arange(steps))

  (params, _, _), macs = train(params)
  logits = model.apply({"params": params}, test_tokens)   # test-time gates
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == test_labels))
  layers = gated_layers(params, model)
  report = l0jax.density_report(layers)
  test_macs = float(l0jax.macs_density(graph, layers, "median"))
  kept = {k: int(v) for k, v in report.kept_units.items()}
  print(f"test accuracy {accuracy:.3f}; expected MACs {float(macs[-1]):.3f} (target "
        f"{args.target_macs}), test-time MACs {test_macs:.3f}; kept heads "
        f"{kept['heads']}/{model.heads}, MLP units {kept['mlp_units']}/{model.hidden}; "
        f"parameter density {float(report.model_test_time):.3f}")
  return {"accuracy": accuracy, "expected_macs": np.asarray(macs),
          "test_time_macs": test_macs, "kept": kept}


if __name__ == "__main__":
  main()
