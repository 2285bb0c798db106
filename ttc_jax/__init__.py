"""ttc_jax: test-time compute scaling (Snell et al., 2024) in pure-functional JAX."""

__version__ = "0.1.0"
