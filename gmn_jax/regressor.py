"""The frozen regressor of cycle-WGAN and SE-GZSL: features back to their class embedding.

Felix et al. (ECCV'18) pretrain a linear map r(x) = x W + b from real seen
features to their class embeddings, freeze it, and add to the generator's
loss R · MSE(r(G(z, a)), a): generated features must carry enough of their
class's description to be mapped back onto it (a "cycle" through the
embedding space). Verma et al. (CVPR'18) use such a regressor's prediction
as feedback to a conditional VAE. MSE is the mean over the batch and the K
embedding dimensions (torch's `nn.MSELoss`, as the reference repository's
`Regressor.loss`).

`train_state.init_train_state` pretrains it with Adam on the real seen
training features, the settings of `regressor.*` (defaults: the reference
repository's regg_*.sh).
"""

import jax
import jax.numpy as jnp

from gmn_jax import losses

# Glorot-normal kernel, zero bias: the frozen map only has to fit the data,
# its initialisation is not part of the method.
_kernel_init = jax.nn.initializers.glorot_normal()


def init_regressor(key, feature_dim: int, embedding_dim: int):
  """Initial parameters of the linear regressor.

  Args:
    key: PRNG key.
    feature_dim: D.
    embedding_dim: K.

  Returns:
    {"kernel": (D, K), "bias": (K,)} float32.
  """
  return {"kernel": _kernel_init(key, (feature_dim, embedding_dim), jnp.float32),
          "bias": jnp.zeros((embedding_dim,), jnp.float32)}


def regress(params, features) -> jax.Array:
  """r(x) = x W + b.

  Args:
    params: the regressor's parameters.
    features: (B, D).

  Returns:
    (B, K) predicted class embeddings.
  """
  return features @ params["kernel"] + params["bias"]


def regression_loss(params, features, embeddings, mask=None) -> jax.Array:
  """MSE(r(x), a): the mean over examples and embedding dimensions.

  Args:
    params: the regressor's parameters.
    features: (B, D) features (real, or generated: differentiable in them).
    embeddings: (B, K) each example's class embedding.
    mask: optional (B,) bool or float row weights of a padded batch (see
      `losses.masked_mean`): the mean over the valid rows of their mean over
      the K dimensions; None is the plain mean.

  Returns:
    The scalar loss.
  """
  squares = jnp.square(regress(params, features) - embeddings)
  if mask is None:
    return jnp.mean(squares)
  return losses.masked_mean(jnp.mean(squares, axis=-1), mask)
