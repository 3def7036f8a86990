"""l0jax: sparse neural networks with hard-concrete L0 gates under constraints, in JAX.

The public API (``help(l0jax.<name>)`` documents each; the submodules hold them):

Gate math (``l0jax.gates``, pure functions of ``log_alpha``)
    hard_concrete_sample, hard_concrete_from_uniform, prob_nonzero, deterministic_gate,
    gate (train or test gate, one rank), init_log_alpha; BETA, GAMMA, ZETA,
    TEST_GATE_MODES

Gates on any params pytree by path (``l0jax.gating``: Linen, NNX, Equinox, dicts)
    GateSpec, init_gates, apply_gates

Layers
    L0Dense, L0Conv (Flax Linen, ``l0jax.layers``); L0Linear, L0Conv for Flax NNX in
    ``l0jax.nnx`` (``from l0jax import nnx as l0nnx``)

Density and MACs accounting (``l0jax.density``, from log_alphas + group sizes)
    gated_layers, GatedLayer, expected_density, layer_expected_densities,
    density_report, DensityReport, Linear, layer_macs, macs_density,
    cascade_expected_density, cascade_layer_densities

Constrained optimisation (``l0jax.constrained``, optax-style)
    Problem, Proxy, init, dual_optimizer, nupi, make_update, dual_step, lagrangian,
    violations, primal_optimizer, param_labels, SCHEMES

Dep-L0 gate generator (``l0jax.dependency``: ``from l0jax import dependency``)
    GateGenerator, execution_order, with_generated_log_alphas, attach, synced,
    generated_params, model_params

Deployment (``l0jax.purge``)
    purge, counts, masks, macs_graph, save, load, register_architecture, check_ops

Training: ``l0jax.train_lib`` (the trainer behind ``train.py``), ``l0jax.models``.
"""

from l0jax.gates import (
    BETA,
    GAMMA,
    TEST_GATE_MODES,
    ZETA,
    deterministic_gate,
    gate,
    hard_concrete_from_uniform,
    hard_concrete_sample,
    init_log_alpha,
    prob_nonzero,
)
from l0jax.gating import GateSpec, apply_gates, init_gates
from l0jax.layers import L0Conv, L0Dense
from l0jax.density import (
    DensityReport,
    GatedLayer,
    Linear,
    cascade_expected_density,
    cascade_layer_densities,
    density_report,
    expected_density,
    gated_layers,
    layer_expected_densities,
    layer_macs,
    macs_density,
)
from l0jax import constrained

__version__ = "0.1.0"
