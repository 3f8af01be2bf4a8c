"""gmn_jax: Gradient Matching Generative Networks for zero-shot learning in JAX."""

__version__ = "0.1.0"
