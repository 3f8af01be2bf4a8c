"""Stage 1's Adam, with the memory traffic of what its settings make unused left out.

`adam(lr, b1, b2, first_moment=True)` is `optax.adam`. With
`first_moment=False` it is the same transformation for β1 = 0, the
reference's setting: Adam's first moment is then the gradient itself
(mu = (1 - 0)·g + 0·mu = g, and its bias correction divides by 1 - 0^t = 1),
so the update reads the gradient directly and never reads or writes the
stored first moment. The state keeps optax's structure, `(ScaleByAdamState(count,
mu, nu), EmptyState())`, with `mu` carried through untouched (its zeros),
so checkpoints of either form restore into the other. On a GPU, where
stage 1 is bound by memory traffic, that saves 8 of Adam's 28 bytes per
parameter and step (docs/benchmarks.md).

`optimizer_moment_dtype="bfloat16"` (`train.adam_moments_dtype`) stores both
moments in bfloat16 and computes the update in float32: 8 more bytes per
parameter and step, at a rounding of the moments (relative 2^-8) that
changes results slightly (docs/benchmarks.md gives its effect).

`tests/test_optimizers.py` checks `first_moment=False` bit for bit against
`optax.adam(b1=0)` and the bfloat16 moments against a NumPy Adam.
"""

import jax
import jax.numpy as jnp
import optax

MOMENT_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _scale_by_adam(b1, b2, *, first_moment: bool, moment_dtype, eps: float = 1e-8
                   ) -> optax.GradientTransformation:
  """optax.scale_by_adam's update, without the first moment or with low-precision moments."""

  def init_fn(params):
    zeros = lambda p: jnp.zeros(p.shape, moment_dtype)
    return optax.ScaleByAdamState(count=jnp.zeros([], jnp.int32),
                                  mu=jax.tree_util.tree_map(zeros, params),
                                  nu=jax.tree_util.tree_map(zeros, params))

  def update_fn(updates, state, params=None):
    del params
    widen = lambda tree: jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), tree)
    nu = optax.tree_utils.tree_update_moment_per_elem_norm(updates, widen(state.nu), b2, 2)
    count = optax.safe_increment(state.count)
    if first_moment:
      mu = optax.tree_utils.tree_update_moment(updates, widen(state.mu), b1, 1)
    else:
      mu = updates  # β1 = 0: the first moment is the gradient.
    mu_hat = optax.tree_utils.tree_bias_correction(mu, b1, count)
    nu_hat = optax.tree_utils.tree_bias_correction(nu, b2, count)
    updates = jax.tree_util.tree_map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)
    narrow = lambda tree: jax.tree_util.tree_map(lambda x: x.astype(moment_dtype), tree)
    stored_mu = narrow(mu) if first_moment else state.mu
    return updates, optax.ScaleByAdamState(count=count, mu=stored_mu, nu=narrow(nu))

  return optax.GradientTransformation(init_fn, update_fn)


def adam(learning_rate, b1, b2, *, first_moment: bool = True,
         moment_dtype: str = "float32") -> optax.GradientTransformation:
  """Adam for a stage-1 network.

  Args:
    learning_rate: the step size (may be traced).
    b1: β1 (may be traced); must be 0 when `first_moment` is False.
    b2: β2 (may be traced).
    first_moment: False leaves the stored first moment unread and unwritten,
      which is exact only for β1 = 0 (`specs.TrainSpec.adam_first_moment`
      says when).
    moment_dtype: "float32" or "bfloat16", the dtype the moments are stored in.

  Returns:
    The transformation; with the defaults, `optax.adam` itself.
  """
  if first_moment and moment_dtype == "float32":
    return optax.adam(learning_rate, b1=b1, b2=b2)
  return optax.chain(
      _scale_by_adam(b1, b2, first_moment=first_moment, moment_dtype=MOMENT_DTYPES[moment_dtype]),
      optax.scale_by_learning_rate(learning_rate))


def init_state(params, moment_dtype: str = "float32"):
  """The Adam state of `params` before the first step (any settings: they come later).

  Args:
    params: a network's parameters.
    moment_dtype: as `adam`.

  Returns:
    The state `adam(...)` updates, for every learning rate, β and `first_moment`.
  """
  return adam(1.0, 0.9, 0.999, moment_dtype=moment_dtype).init(params)
