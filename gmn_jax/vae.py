"""A conditional VAE feature generator with regressor feedback (after Verma et al. 2018).

Verma, Arora, Mishra & Rai, "Generalized Zero-Shot Learning via Synthesized
Examples" (SE-GZSL, CVPR 2018): an encoder q(z | x[, a]), a decoder
p(x | z, a) that is the feature generator, and a regressor from features back
to class embeddings whose error on generated features is part of the
generator's loss. Here the decoder is a `models.Generator` of kind
"attribute_concat" called with the encoder's sample as its noise, and the
regressor is whatever the caller passes (the project's frozen linear one).

Per example, with the Gaussian posterior q = N(mu, diag(exp(logvar))):

  loss = w_rec * ||x - x_hat||² + w_kl * KL(q || N(0, I))     (x_hat = G(a, z), z ~ q)
         + w_fb * feedback(G(a', z'), a')                      (z' ~ N(0, I))

averaged over the batch (the feedback term is the caller's scalar). With
w_rec = w_kl = 1 the first two terms are the negative evidence lower bound
of a Gaussian decoder N(x_hat, I / 2), up to a constant.

Encoder layout: {"layers": {"layer_0": ..., "layer_n": dense -> Hn}, "mu":
dense Hn->Z, "logvar": dense Hn->Z}, LeakyReLU(0.2) after every hidden
layer; the first layer reading concat[x, a] keeps one kernel block per input
({"kernel_features": (D, H1), "kernel_embedding": (K, H1), "bias"}, as the
critic's). Without hidden layers "mu" and "logvar" read the input directly
(each then a block layer for a conditional encoder). Initialisation and
precision follow `gmn_jax.models`: Xavier-normal (gain sqrt(2)) kernels, zero
biases; the hidden layers compute in `dtype`, the mu/logvar heads and
everything after them in float32.
"""

from typing import Any, Callable, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from gmn_jax import models
from gmn_jax.errors import ConfigError

Metrics = Dict[str, jax.Array]

# The building blocks of gmn_jax.models, so that the encoder's layers and
# initialisation are the generator's and critic's.
# pylint: disable=protected-access
_HiddenDimsAsTuple = models._HiddenDimsAsTuple
_MLP = models._MLP
_BlockDense = models._BlockDense
_dense = models._dense
_outer_dtype = models._outer_dtype
_init_params = models._init_params
# pylint: enable=protected-access


class Encoder(_HiddenDimsAsTuple, nn.Module):
  """The VAE encoder q(z | x, a) (conditional) or q(z | x): (mu, logvar) of a diagonal Gaussian.

  Attributes:
    feature_dim: D (read by `init_encoder`).
    embedding_dim: K (read by `init_encoder` when conditional; ignored
      otherwise).
    latent_dim: Z, the size of z (the decoder's noise_dim).
    hidden_dims: widths of the hidden layers (may be empty).
    conditional: whether the input is concat[x, a] (the project's issue,
      CVAE-style) or x alone (SE-GZSL's q(z | x), as we read the paper).
    dtype: the compute dtype of the hidden layers (jnp.float32 or
      jnp.bfloat16).
  """

  feature_dim: int
  embedding_dim: int
  latent_dim: int
  hidden_dims: Tuple[int, ...] = ()
  conditional: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, features, embeddings=None):
    """Encodes features (and their class embeddings).

    Args:
      features: (B, D).
      embeddings: (B, K) class embeddings for a conditional encoder; must be
        None for an unconditional one.

    Returns:
      (mu, logvar), each (B, Z) float32.

    Raises:
      ConfigError: when embeddings are missing for a conditional encoder or
        given to an unconditional one.
    """
    outer = _outer_dtype(self.dtype)
    x = models.conditional_input(features, embeddings, self.conditional, outer, "encoder")
    if self.hidden_dims:
      hidden = _MLP(self.hidden_dims, self.dtype, name="layers")(x)
      x = nn.leaky_relu(hidden, models.LEAKY_RELU_SLOPE).astype(outer)

    def head(name):
      # float32 heads, as the latent_noise generator's: exp(logvar / 2)
      # would magnify bfloat16 rounding.
      if isinstance(x, dict):
        return _BlockDense(self.latent_dim, outer, name=name)(x)
      return _dense(self.latent_dim, outer, name=name)(x)

    return head("mu").astype(outer), head("logvar").astype(outer)


def init_encoder(module: Encoder, key):
  """Initialises an encoder's parameters (jitted; works under vmap over keys).

  Args:
    module: the encoder.
    key: PRNG key.

  Returns:
    The parameter dict (layout in the module docstring), float32.
  """
  embeddings = (1, module.embedding_dim) if module.conditional else None
  return _init_params(module, key, ((1, module.feature_dim), embeddings))


def encode(module: Encoder, params, features, embeddings=None) -> Tuple[jax.Array, jax.Array]:
  """The posterior's parameters for a batch.

  Args:
    module: the encoder.
    params: its parameters (from `init_encoder`).
    features: (B, D).
    embeddings: (B, K) class embeddings (conditional encoder), or None.

  Returns:
    (mu, logvar), each (B, Z) float32.
  """
  return module.apply({"params": params}, features, embeddings)


def kl_to_standard_normal(mu, logvar) -> jax.Array:
  """KL(N(mu, diag(exp(logvar))) || N(0, I)) per example.

  Args:
    mu: (..., Z) means.
    logvar: (..., Z) log-variances.

  Returns:
    (...) 0.5 * sum_z (exp(logvar) + mu² - 1 - logvar).
  """
  return 0.5 * jnp.sum(jnp.exp(logvar) + jnp.square(mu) - 1.0 - logvar, axis=-1)


def reparameterize(mu, logvar, key) -> jax.Array:
  """A differentiable draw z = mu + exp(logvar / 2) * eps, eps ~ N(0, I).

  Args:
    mu: (..., Z) means.
    logvar: (..., Z) log-variances.
    key: PRNG key of eps (float32 draws whatever the dtype, as
      `models.generator_noise`).

  Returns:
    z, shaped as mu.
  """
  eps = jax.random.normal(key, jnp.shape(mu), jnp.float32)
  return mu + jnp.exp(0.5 * logvar) * eps


def reconstruction_loss(features, reconstructions) -> jax.Array:
  """The squared error ||x - x_hat||² per example (a Gaussian decoder's log-likelihood).

  Args:
    features: (..., D) real features x.
    reconstructions: (..., D) decoded x_hat.

  Returns:
    (...) the squared error summed over D (-2 log N(x; x_hat, I / 2) up to a
    constant; per example, not averaged over D, so that it balances the KL
    summed over Z as in the evidence lower bound).
  """
  return jnp.sum(jnp.square(features - reconstructions), axis=-1)


def kl_annealing_weight(iteration, warmup_iterations) -> jax.Array:
  """A linear KL warm-up, min(1, iteration / warmup_iterations); 1 without warm-up.

  Args:
    iteration: the 0-based iteration (may be traced).
    warmup_iterations: iterations to reach 1; 0 or less: always 1.

  Returns:
    The float32 factor to multiply the KL weight by.
  """
  iteration = jnp.asarray(iteration, jnp.float32)
  warmup = jnp.asarray(warmup_iterations, jnp.float32)
  return jnp.where(warmup > 0, jnp.clip(iteration / jnp.maximum(warmup, 1.0), 0.0, 1.0), 1.0)


def cvae_loss(encoder: Encoder, encoder_params, decoder: models.Generator, decoder_params,
              features, embeddings, key, *, kl_weight=1.0, reconstruction_weight=1.0,
              feedback_weight=0.0, feedback_fn: Optional[Callable] = None,
              feedback_embeddings=None) -> Tuple[jax.Array, Metrics]:
  """The conditional VAE's objective on a batch, with optional regressor feedback.

  Encodes (x, a), draws z from the posterior, decodes x_hat = G(a, z), and
  adds the batch means of w_rec * ||x - x_hat||² and w_kl * KL(q || N(0, I)).
  With `feedback_fn`, w_fb * feedback_fn(G(a', z'), a') with z' drawn from the
  prior and a' = `feedback_embeddings` (default: the batch's embeddings), the
  SE-GZSL generator's regressor term on features generated as at synthesis
  time. The weights may be traced scalars; the loss is differentiable w.r.t.
  both parameter sets (and anything feedback_fn closes over: keep a frozen
  regressor's parameters out of the differentiated arguments, or behind
  `lax.stop_gradient`).

  Args:
    encoder: the encoder module.
    encoder_params: its parameters.
    decoder: the generator (kind "attribute_concat"; its noise_dim must be
      the encoder's latent_dim).
    decoder_params: its parameters.
    features: (B, D) real features.
    embeddings: (B, K) their class embeddings.
    key: PRNG key (posterior draw, and the feedback's prior draw).
    kl_weight: w_kl (a KL warm-up multiplies it, `kl_annealing_weight`).
    reconstruction_weight: w_rec.
    feedback_weight: w_fb (read only with feedback_fn).
    feedback_fn: `feedback_fn(generated (B', D), embeddings (B', K)) ->
      scalar`, e.g. the mean squared error of the frozen regressor; None: no
      feedback term.
    feedback_embeddings: (B', K) class embeddings of the feedback fakes; None:
      `embeddings`.

  Returns:
    (loss, metrics) with the unweighted batch means "reconstruction_loss",
    "kl_loss", "negative_elbo" (their sum) and, with feedback_fn,
    "feedback_loss".

  Raises:
    ConfigError: when the decoder's noise_dim differs from the latent_dim.
  """
  if decoder.noise_dim != encoder.latent_dim:
    raise ConfigError(f"cvae decoder noise_dim: expected the encoder's latent_dim "
                      f"{encoder.latent_dim}, found {decoder.noise_dim}")
  posterior_key, prior_key = jax.random.split(key)
  mu, logvar = encode(encoder, encoder_params, features,
                      embeddings if encoder.conditional else None)
  z = reparameterize(mu, logvar, posterior_key)
  reconstructions = decoder.apply({"params": decoder_params}, embeddings, z)
  reconstruction = jnp.mean(reconstruction_loss(features, reconstructions))
  kl = jnp.mean(kl_to_standard_normal(mu, logvar))
  loss = reconstruction_weight * reconstruction + kl_weight * kl
  metrics = {"reconstruction_loss": reconstruction, "kl_loss": kl,
             "negative_elbo": reconstruction + kl}
  if feedback_fn is not None:
    if feedback_embeddings is None:
      feedback_embeddings = embeddings
    generated = models.generate(decoder, decoder_params, feedback_embeddings, prior_key)
    feedback = feedback_fn(generated, feedback_embeddings)
    loss = loss + feedback_weight * feedback
    metrics["feedback_loss"] = feedback
  return loss, metrics
