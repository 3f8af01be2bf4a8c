"""Mixed precision for stage 1: bfloat16 matrix products, float32 everything else.

`config.precision = "bfloat16"` runs the generator and the critic with their
parameters and inputs cast to bfloat16 at the point of use, so that their
matrix products (and the element-wise work between them) run in bfloat16,
which GPUs and TPUs execute several times faster than float32. What stays
float32:

* the parameters, their gradients and the Adam states (the casts are inside
  the differentiated functions, so gradients flow back to float32 leaves);
* every network output (cast back to float32 before any loss);
* the gradient-penalty math: interpolation, the input gradient as it leaves
  the critic, its norm and the penalty;
* gradient matching entirely (its classifier sees float32 generated features:
  the second-order cosine math is the numerically delicate part);
* the noise (drawn in float32, then cast), so float32 and bfloat16 runs of
  the same seed see the same random numbers.

With "float32" every function here is exactly the plain `models` / `losses`
function, so the default program is unchanged.
"""

import jax
import jax.numpy as jnp

from gmn_jax import losses
from gmn_jax import models
from gmn_jax.errors import ConfigError

PRECISIONS = ("float32", "bfloat16")
_COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(precision: str):
  """The dtype of the networks' matrix products.

  Args:
    precision: one of PRECISIONS.

  Returns:
    jnp.float32 or jnp.bfloat16.

  Raises:
    ConfigError: for an unknown precision.
  """
  if precision not in _COMPUTE_DTYPES:
    raise ConfigError(f"config.precision: expected one of {PRECISIONS}, found {precision!r}")
  return _COMPUTE_DTYPES[precision]


def cast_floats(tree, dtype):
  """Casts the floating-point leaves of a pytree (others untouched).

  Args:
    tree: a pytree of arrays (or None).
    dtype: the target dtype.

  Returns:
    The cast pytree.
  """
  def cast(x):
    if x is None or not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      return x
    return jnp.asarray(x).astype(dtype)

  return jax.tree_util.tree_map(cast, tree)


def apply_generator(precision: str, params, embeddings, key) -> jax.Array:
  """`models.apply_generator` with the given matrix-product precision.

  Args:
    precision: one of PRECISIONS.
    params: float32 generator params.
    embeddings: (B, K) float32 class embeddings.
    key: PRNG key of the noise.

  Returns:
    (B, D) float32 features.
  """
  dtype = compute_dtype(precision)
  if dtype == jnp.float32:
    return models.apply_generator(params, embeddings, key)
  noise_shape = (embeddings.shape[0], models.generator_noise_dim(params))
  noise = jax.random.normal(key, noise_shape, jnp.float32)
  out = models.apply_generator_with_noise(cast_floats(params, dtype),
                                          cast_floats(embeddings, dtype),
                                          cast_floats(noise, dtype))
  return out.astype(jnp.float32)


def apply_critic(precision: str, params, features, embeddings=None) -> jax.Array:
  """`models.apply_critic` with the given matrix-product precision.

  Args:
    precision: one of PRECISIONS.
    params: float32 critic params.
    features: (B, D) float32.
    embeddings: (B, K) or None (unconditional critic).

  Returns:
    (B,) float32 scores.
  """
  dtype = compute_dtype(precision)
  if dtype == jnp.float32:
    return models.apply_critic(params, features, embeddings)
  scores = models.apply_critic(cast_floats(params, dtype), cast_floats(features, dtype),
                               cast_floats(embeddings, dtype))
  return scores.astype(jnp.float32)


def _norm_with_zero_gradient_at_zero(x, axis):
  squares = jnp.sum(jnp.square(x), axis=axis)
  positive = squares > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def gradient_penalty(precision: str, critic_params, real, fake, embeddings, key) -> jax.Array:
  """`losses.gradient_penalty` whose critic runs at `precision`.

  The interpolates, the input gradient (cast to float32 as it leaves the
  critic), its norm and the penalty are float32.

  Args:
    precision: one of PRECISIONS.
    critic_params: float32 critic params.
    real: (B, D) float32 real features.
    fake: (B, D) float32 generated features.
    embeddings: (B, K) or None.
    key: PRNG key of the interpolation weights.

  Returns:
    The scalar penalty.
  """
  if compute_dtype(precision) == jnp.float32:
    return losses.gradient_penalty(critic_params, real, fake, embeddings, key)
  weights = jax.random.uniform(key, (real.shape[0], 1), jnp.float32)
  interpolates = weights * real + (1.0 - weights) * fake

  def total_score(features):
    return jnp.sum(apply_critic(precision, critic_params, features, embeddings))

  input_grads = jax.grad(total_score)(interpolates).astype(jnp.float32)
  return jnp.mean(jnp.square(_norm_with_zero_gradient_at_zero(input_grads, axis=1) - 1.0))


def critic_loss(precision: str, critic_params, real, fake, embeddings, key, *, gp_weight):
  """`losses.critic_loss` whose critic runs at `precision`.

  Args:
    precision: one of PRECISIONS.
    critic_params: float32 critic params.
    real: (B, D) real features.
    fake: (B, D) generated features.
    embeddings: (B, K) or None.
    key: PRNG key of the penalty.
    gp_weight: λ.

  Returns:
    (loss, {"wasserstein", "gradient_penalty"}), all float32.
  """
  if compute_dtype(precision) == jnp.float32:
    return losses.critic_loss(critic_params, real, fake, embeddings, key, gp_weight=gp_weight)
  wasserstein = (jnp.mean(apply_critic(precision, critic_params, real, embeddings))
                 - jnp.mean(apply_critic(precision, critic_params, fake, embeddings)))
  penalty = gradient_penalty(precision, critic_params, real, fake, embeddings, key)
  loss = -wasserstein + gp_weight * penalty
  return loss, {"wasserstein": wasserstein, "gradient_penalty": penalty}


def generator_adversarial_loss(precision: str, critic_params, fake, embeddings) -> jax.Array:
  """`losses.generator_adversarial_loss` whose critic runs at `precision`.

  Args:
    precision: one of PRECISIONS.
    critic_params: float32 critic params.
    fake: (B, D) generated features.
    embeddings: (B, K) or None.

  Returns:
    The scalar loss -mean D(fake).
  """
  if compute_dtype(precision) == jnp.float32:
    return losses.generator_adversarial_loss(critic_params, fake, embeddings)
  return -jnp.mean(apply_critic(precision, critic_params, fake, embeddings))
