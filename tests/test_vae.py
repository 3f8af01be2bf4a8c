"""The conditional VAE of gmn_jax.vae: closed forms, statistics, gradients, training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmn_jax import models
from gmn_jax import vae
from gmn_jax.errors import ConfigError

B, D, K, Z = 5, 6, 4, 3


def _x64():
  """Context manager enabling float64 (restored on exit, so nothing leaks)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def _modules(dtype=jnp.float32, conditional=True, hidden=(16,)):
  encoder = vae.Encoder(D, K, Z, hidden, conditional=conditional, dtype=dtype)
  decoder = models.Generator("attribute_concat", K, D, Z, (12,), dtype=dtype)
  return encoder, decoder


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  x = (1.0 + rng.uniform(size=(B, D))).astype(np.float32)
  a = rng.normal(size=(B, K)).astype(np.float32)
  return x, a


def test_encoder_layout_and_init():
  encoder, _ = _modules(hidden=(16, 8))
  params = vae.init_encoder(encoder, jax.random.key(0))
  layer_0 = params["layers"]["layer_0"]
  assert set(layer_0) == {"kernel_features", "kernel_embedding", "bias"}
  assert layer_0["kernel_features"].shape == (D, 16)
  assert layer_0["kernel_embedding"].shape == (K, 16)
  assert params["layers"]["layer_1"]["kernel"].shape == (16, 8)
  for head in ("mu", "logvar"):
    assert params[head]["kernel"].shape == (8, Z)
    np.testing.assert_array_equal(params[head]["bias"], 0.0)
  x, a = _batch()
  mu, logvar = vae.encode(encoder, params, x, a)
  assert mu.shape == logvar.shape == (B, Z) and mu.dtype == jnp.float32
  # Xavier-normal with gain sqrt(2): std sqrt(2) * sqrt(2 / (fan_in + fan_out)).
  wide = vae.Encoder(400, 2, 300, (), conditional=False)
  kernel = vae.init_encoder(wide, jax.random.key(1))["mu"]["kernel"]
  np.testing.assert_allclose(np.std(kernel), math.sqrt(2.0) * math.sqrt(2.0 / 700), rtol=0.02)
  # Unconditional without hidden layers: the heads read x directly.
  bare, _ = _modules(conditional=False, hidden=())
  params = vae.init_encoder(bare, jax.random.key(2))
  assert set(params) == {"mu", "logvar"} and params["mu"]["kernel"].shape == (D, Z)
  assert vae.encode(bare, params, x)[0].shape == (B, Z)
  # Conditional without hidden layers: block heads on concat[x, a].
  block, _ = _modules(hidden=())
  params = vae.init_encoder(block, jax.random.key(3))
  assert params["mu"]["kernel_embedding"].shape == (K, Z)
  # vmap over keys, and bfloat16 hidden layers with float32 outputs.
  keys = jax.random.split(jax.random.key(4), 3)
  stacked = jax.vmap(lambda k: vae.init_encoder(encoder, k))(keys)
  assert stacked["mu"]["kernel"].shape == (3, 8, Z)
  bf16, _ = _modules(dtype=jnp.bfloat16)
  mu, logvar = vae.encode(bf16, vae.init_encoder(bf16, jax.random.key(0)), x, a)
  assert mu.dtype == logvar.dtype == jnp.float32


def test_encoder_rejects_wrong_embeddings():
  encoder, _ = _modules()
  params = vae.init_encoder(encoder, jax.random.key(0))
  x, a = _batch()
  with pytest.raises(ConfigError, match="conditional encoder"):
    vae.encode(encoder, params, x)
  bare, _ = _modules(conditional=False)
  with pytest.raises(ConfigError, match="unconditional encoder"):
    vae.encode(bare, vae.init_encoder(bare, jax.random.key(0)), x, a)


def test_kl_matches_the_closed_form():
  rng = np.random.default_rng(1)
  mu = rng.normal(size=(B, Z))
  logvar = rng.normal(size=(B, Z))
  sigma = np.exp(logvar / 2)
  # KL(N(m, s²) || N(0, 1)) = log(1 / s) + (s² + m²) / 2 - 1/2, per dimension.
  want = np.sum(np.log(1 / sigma) + (sigma**2 + mu**2) / 2 - 0.5, axis=1)
  np.testing.assert_allclose(vae.kl_to_standard_normal(mu.astype(np.float32),
                                                       logvar.astype(np.float32)),
                             want, rtol=1e-5)
  np.testing.assert_allclose(vae.kl_to_standard_normal(np.zeros(Z), np.zeros(Z)), 0.0)


def test_kl_matches_a_monte_carlo_estimate():
  mu = np.array([1.5, -0.5, 0.2])
  logvar = np.array([0.4, -1.2, 0.9])
  sigma = np.exp(logvar / 2)
  n = 400_000
  z = mu + sigma * np.random.default_rng(2).normal(size=(n, 3))

  def log_normal(v, mean, std):
    return np.sum(-0.5 * ((v - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi), axis=1)

  log_ratio = log_normal(z, mu, sigma) - log_normal(z, 0.0, 1.0)
  estimate, stderr = log_ratio.mean(), log_ratio.std() / math.sqrt(n)
  kl = float(vae.kl_to_standard_normal(mu.astype(np.float32), logvar.astype(np.float32)))
  # Six standard errors: a chance failure has probability ~2e-9 for any seed.
  assert abs(estimate - kl) < 6 * stderr, (estimate, kl, stderr)
  assert stderr < 0.01  # the test is sharp enough to see a wrong factor


def test_reconstruction_loss_matches_numpy():
  x, _ = _batch(3)
  x_hat = x + np.random.default_rng(4).normal(size=x.shape).astype(np.float32)
  want = np.array([sum((float(x[i, j]) - float(x_hat[i, j])) ** 2 for j in range(D))
                   for i in range(B)])
  np.testing.assert_allclose(vae.reconstruction_loss(x, x_hat), want, rtol=1e-5)


def test_reparameterised_draws_have_the_posterior_mean_and_std():
  mu = np.array([1.5, -2.0, 0.3], np.float32)
  logvar = np.array([0.2, -1.0, 1.5], np.float32)
  n = 200_000
  z = np.asarray(vae.reparameterize(np.tile(mu, (n, 1)), np.tile(logvar, (n, 1)),
                                    jax.random.key(5)), np.float64)
  sigma = np.exp(logvar.astype(np.float64) / 2)
  # Standard errors: sigma / sqrt(n) for the mean, ~sigma / sqrt(2 n) for the
  # std (normal data); six of them cannot be exceeded by chance (~2e-9).
  np.testing.assert_array_less(np.abs(z.mean(0) - mu), 6 * sigma / math.sqrt(n))
  np.testing.assert_array_less(np.abs(z.std(0) - sigma), 6 * sigma / math.sqrt(2 * n))
  # And it is the documented function of the key.
  eps = jax.random.normal(jax.random.key(5), (n, 3), jnp.float32)
  np.testing.assert_allclose(z[:4], (mu + np.exp(logvar / 2) * eps)[:4], rtol=1e-6)


def test_kl_annealing_weight():
  weights = [float(vae.kl_annealing_weight(t, 10)) for t in (0, 5, 10, 50)]
  np.testing.assert_allclose(weights, [0.0, 0.5, 1.0, 1.0])
  assert float(vae.kl_annealing_weight(3, 0)) == 1.0
  assert float(jax.jit(vae.kl_annealing_weight)(jnp.int32(2), jnp.int32(8))) == 0.25


def _linear_feedback(seed=6):
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(D, K)) * 0.3

  def feedback_fn(generated, embeddings):
    return jnp.mean(jnp.sum(jnp.square(generated @ w - embeddings), axis=-1))

  return feedback_fn


def test_cvae_loss_combines_its_terms():
  encoder, decoder = _modules()
  enc = vae.init_encoder(encoder, jax.random.key(0))
  dec = models.init_generator(decoder, jax.random.key(1))
  x, a = _batch(7)
  fb_embeddings = np.random.default_rng(8).normal(size=(9, K)).astype(np.float32)
  key = jax.random.key(9)
  feedback_fn = _linear_feedback()
  fn = jax.jit(lambda w_kl, w_rec, w_fb: vae.cvae_loss(
      encoder, enc, decoder, dec, x, a, key, kl_weight=w_kl, reconstruction_weight=w_rec,
      feedback_weight=w_fb, feedback_fn=feedback_fn, feedback_embeddings=fb_embeddings))
  loss, metrics = fn(jnp.float32(0.3), jnp.float32(2.0), jnp.float32(0.7))
  # By hand, with the documented key use.
  posterior_key, prior_key = jax.random.split(key)
  mu, logvar = vae.encode(encoder, enc, x, a)
  z = vae.reparameterize(mu, logvar, posterior_key)
  x_hat = decoder.apply({"params": dec}, a, z)
  rec = np.mean(vae.reconstruction_loss(x, x_hat))
  kl = np.mean(vae.kl_to_standard_normal(mu, logvar))
  fb = feedback_fn(models.generate(decoder, dec, fb_embeddings, prior_key), fb_embeddings)
  np.testing.assert_allclose(metrics["reconstruction_loss"], rec, rtol=1e-5)
  np.testing.assert_allclose(metrics["kl_loss"], kl, rtol=1e-5)
  np.testing.assert_allclose(metrics["feedback_loss"], fb, rtol=1e-5)
  np.testing.assert_allclose(metrics["negative_elbo"], rec + kl, rtol=1e-5)
  np.testing.assert_allclose(loss, 2.0 * rec + 0.3 * kl + 0.7 * fb, rtol=1e-5)
  # Without feedback_fn there is no feedback term (and no metric).
  loss, metrics = vae.cvae_loss(encoder, enc, decoder, dec, x, a, key)
  assert "feedback_loss" not in metrics
  np.testing.assert_allclose(loss, rec + kl, rtol=1e-5)
  # An unconditional encoder ignores the embeddings; the decoder still reads them.
  bare, _ = _modules(conditional=False)
  loss, _ = vae.cvae_loss(bare, vae.init_encoder(bare, jax.random.key(0)), decoder, dec, x, a,
                          key)
  assert np.isfinite(loss)


def test_cvae_loss_rejects_a_decoder_of_another_latent_size():
  encoder, _ = _modules()
  decoder = models.Generator("attribute_concat", K, D, Z + 1, (12,))
  x, a = _batch()
  with pytest.raises(ConfigError, match="noise_dim"):
    vae.cvae_loss(encoder, vae.init_encoder(encoder, jax.random.key(0)), decoder,
                  models.init_generator(decoder, jax.random.key(1)), x, a, jax.random.key(2))


def test_gradients_match_finite_differences():
  with _x64():
    encoder, decoder = _modules(dtype=jnp.float64)
    to64 = lambda tree: jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float64), tree)
    params = to64({"enc": vae.init_encoder(encoder, jax.random.key(0)),
                   "dec": models.init_generator(decoder, jax.random.key(1))})
    x, a = _batch(10)
    x, a = x.astype(np.float64), a.astype(np.float64)
    feedback_fn = _linear_feedback()

    @jax.jit
    def f(p):
      loss, _ = vae.cvae_loss(encoder, p["enc"], decoder, p["dec"], x, a, jax.random.key(11),
                              kl_weight=0.5, feedback_weight=0.3, feedback_fn=feedback_fn)
      return loss

    grads = jax.grad(f)(params)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    rng = np.random.default_rng(12)
    eps = 1e-6
    for _ in range(3):
      direction = jax.tree_util.tree_unflatten(
          treedef, [rng.normal(size=leaf.shape) for leaf in leaves])
      plus = jax.tree_util.tree_map(lambda p, d: p + eps * d, params, direction)
      minus = jax.tree_util.tree_map(lambda p, d: p - eps * d, params, direction)
      numeric = (f(plus) - f(minus)) / (2 * eps)
      analytic = sum(np.sum(g * d) for g, d in zip(jax.tree_util.tree_leaves(grads),
                                                    jax.tree_util.tree_leaves(direction)))
      np.testing.assert_allclose(analytic, numeric, rtol=1e-5)


def test_training_reduces_the_loss_and_matches_class_means():
  # Three classes of 40 examples around positive means (std 0.3); a frozen
  # least-squares regressor gives the feedback term.
  rng = np.random.default_rng(0)
  classes, per_class, latent = 3, 40, 2
  embeddings = rng.normal(size=(classes, K)).astype(np.float32)
  means = (2 + 3 * rng.uniform(size=(classes, D))).astype(np.float32)
  labels = np.repeat(np.arange(classes), per_class)
  x = (means[labels] + 0.3 * rng.normal(size=(classes * per_class, D))).astype(np.float32)
  a = embeddings[labels]
  w, *_ = np.linalg.lstsq(np.c_[x, np.ones(len(x))], a, rcond=None)
  w = w.astype(np.float32)

  def feedback_fn(generated, target):
    return jnp.mean(jnp.sum(jnp.square(generated @ w[:-1] + w[-1] - target), axis=-1))

  encoder = vae.Encoder(D, K, latent, (32,))
  decoder = models.Generator("attribute_concat", K, D, latent, (32,))
  params = {"enc": vae.init_encoder(encoder, jax.random.key(0)),
            "dec": models.init_generator(decoder, jax.random.key(1))}
  optimiser = optax.adam(1e-2)
  state = optimiser.init(params)

  def decoded_class_means(p):
    generated = models.generate(decoder, p["dec"], jnp.repeat(embeddings, 500, axis=0),
                                jax.random.key(2))
    return np.asarray(generated).reshape(classes, 500, D).mean(axis=1)

  @jax.jit
  def step(p, state, key):
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: vae.cvae_loss(encoder, p["enc"], decoder, p["dec"], x, a, key,
                                feedback_weight=0.1, feedback_fn=feedback_fn),
        has_aux=True)(p)
    updates, state = optimiser.update(grads, state, p)
    return optax.apply_updates(p, updates), state, loss, metrics

  error_before = np.max(np.abs(decoded_class_means(params) - means))
  history = []
  for t in range(400):
    params, state, loss, metrics = step(params, state, jax.random.key(100 + t))
    history.append(float(loss))
  error_after = np.max(np.abs(decoded_class_means(params) - means))
  assert np.mean(history[-20:]) < 0.02 * history[0]
  assert error_after < 0.2 and error_after < 0.1 * error_before, (error_before, error_after)
  # The reconstructions are as good as the class means allow: D * 0.3².
  assert float(metrics["reconstruction_loss"]) < 2 * D * 0.3**2
