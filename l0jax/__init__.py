"""l0jax: sparse neural networks with hard-concrete L0 gates under constraints, in JAX.

The public names live here; submodules (``l0jax.gates``, ``l0jax.density``, ...) hold
the implementations and their documentation.
"""

from l0jax.gates import (
    BETA,
    GAMMA,
    TEST_GATE_MODES,
    ZETA,
    deterministic_gate,
    hard_concrete_from_uniform,
    hard_concrete_sample,
    init_log_alpha,
    prob_nonzero,
)
from l0jax.layers import L0Conv, L0Dense
from l0jax.density import (
    DensityReport,
    GatedLayer,
    cascade_expected_density,
    cascade_layer_densities,
    density_report,
    expected_density,
    gated_layers,
    layer_expected_densities,
)
from l0jax import constrained

__version__ = "0.1.0"
