"""Uses of gmn_jax's parts outside GMN (dataset condensation by gradient matching)."""
