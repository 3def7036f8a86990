"""Tools for studying and designing sparse networks (Tessera, Hooker & Rosman, 2021).

* :mod:`l0jax.science.egf`: Effective Gradient Flow and plain gradient norms.
* :mod:`l0jax.science.sc_sdc`: the dense twin with the same active weights per layer.
* :mod:`l0jax.science.density_search`: successive halving over layer-wise densities.
"""
