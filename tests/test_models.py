"""Networks against NumPy re-implementations, plus init statistics and errors."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import models
from gmn_jax.errors import ConfigError

K, D, Z = 7, 12, 5


def _np(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def _leaky_relu(x):
  return np.where(x > 0, x, 0.2 * x)


def _np_mlp(layers, h):
  """Layers 1..n of a reference MLP, from the first layer's pre-activation."""
  for i in range(1, len(layers)):
    h = _leaky_relu(h) @ layers[f"layer_{i}"]["kernel"] + layers[f"layer_{i}"]["bias"]
  return h


def _random_like(tree, seed):
  """Non-zero biases too, so that a dropped bias term cannot go unnoticed."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: jnp.asarray(rng.normal(0, 0.5, np.shape(x)), jnp.float32), tree)


@pytest.mark.parametrize("hidden_dims", [(), (16,), (16, 9)])
def test_latent_noise_generator_matches_numpy(hidden_dims):
  params = models.init_generator(jax.random.key(0), kind="latent_noise", embedding_dim=K,
                                 feature_dim=D, noise_dim=Z, hidden_dims=hidden_dims)
  params = _random_like(params, 1)
  rng = np.random.default_rng(2)
  a = rng.normal(size=(4, K)).astype(np.float32)
  eps = rng.normal(size=(4, Z)).astype(np.float32)
  got = models.apply_generator_with_noise(params, a, eps)
  p = _np(params)
  mu = a @ p["mu"]["kernel"] + p["mu"]["bias"]
  logvar = a @ p["logvar"]["kernel"] + p["logvar"]["bias"]
  z = mu + np.exp(0.5 * logvar) * eps
  first = p["layers"]["layer_0"]
  want = np.maximum(_np_mlp(p["layers"], z @ first["kernel"] + first["bias"]), 0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert len(p["layers"]) == len(hidden_dims) + 1
  assert models.generator_kind(params) == "latent_noise"
  assert models.generator_noise_dim(params) == Z


@pytest.mark.parametrize("hidden_dims", [(), (16, 9)])
def test_attribute_concat_generator_matches_numpy(hidden_dims):
  params = models.init_generator(jax.random.key(0), kind="attribute_concat", embedding_dim=K,
                                 feature_dim=D, noise_dim=Z, hidden_dims=hidden_dims)
  params = _random_like(params, 3)
  rng = np.random.default_rng(4)
  a = rng.normal(size=(4, K)).astype(np.float32)
  noise = rng.normal(size=(4, Z)).astype(np.float32)
  got = models.apply_generator_with_noise(params, a, noise)
  p = _np(params)
  first = p["layers"]["layer_0"]
  joint_kernel = np.concatenate([first["kernel_noise"], first["kernel_embedding"]], axis=0)
  pre = np.concatenate([noise, a], axis=1) @ joint_kernel + first["bias"]
  want = np.maximum(_np_mlp(p["layers"], pre), 0)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert models.generator_kind(params) == "attribute_concat"
  assert models.generator_noise_dim(params) == Z


@pytest.mark.parametrize("kind", models.GENERATOR_KINDS)
def test_apply_generator_shapes_noise_and_relu(kind):
  params = models.init_generator(jax.random.key(0), kind=kind, embedding_dim=K, feature_dim=D,
                                 noise_dim=Z, hidden_dims=(32,))
  a = jax.random.normal(jax.random.key(1), (64, K))
  x1 = models.apply_generator(params, a, jax.random.key(2))
  x1_again = models.apply_generator(params, a, jax.random.key(2))
  x2 = models.apply_generator(params, a, jax.random.key(3))
  assert x1.shape == (64, D) and x1.dtype == jnp.float32
  assert np.all(np.asarray(x1) >= 0)
  assert np.any(np.asarray(x1) > 0)
  np.testing.assert_array_equal(x1, x1_again)
  assert not np.allclose(x1, x2)  # The noise really enters.
  # apply_generator is apply_generator_with_noise with N(0, I) from the key.
  noise = jax.random.normal(jax.random.key(2), (64, Z))
  np.testing.assert_allclose(x1, models.apply_generator_with_noise(params, a, noise),
                             rtol=1e-6, atol=1e-6)


def test_critic_conditional_matches_numpy():
  params = _random_like(models.init_critic(jax.random.key(0), feature_dim=D, embedding_dim=K,
                                           hidden_dims=(11, 6)), 5)
  rng = np.random.default_rng(6)
  x = rng.normal(size=(3, D)).astype(np.float32)
  a = rng.normal(size=(3, K)).astype(np.float32)
  p = _np(params)
  first = p["layers"]["layer_0"]
  pre = x @ first["kernel_features"] + a @ first["kernel_embedding"] + first["bias"]
  want = _np_mlp(p["layers"], pre)[:, 0]
  got = models.apply_critic(params, x, a)
  assert got.shape == (3,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert models.critic_is_conditional(params)
  with pytest.raises(ConfigError, match="conditional critic"):
    models.apply_critic(params, x)


def test_critic_unconditional():
  params = _random_like(models.init_critic(jax.random.key(0), feature_dim=D, embedding_dim=0,
                                           hidden_dims=(11,)), 7)
  x = np.random.default_rng(8).normal(size=(5, D)).astype(np.float32)
  p = _np(params)
  want = _np_mlp(p["layers"], x @ p["layers"]["layer_0"]["kernel"]
                 + p["layers"]["layer_0"]["bias"])[:, 0]
  got = models.apply_critic(params, x)
  assert got.shape == (5,)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not models.critic_is_conditional(params)
  assert params["layers"]["layer_0"]["kernel"].shape == (D, 11)
  with pytest.raises(ConfigError, match="unconditional critic"):
    models.apply_critic(params, x, np.zeros((5, K), np.float32))


def _assert_normal_std(sample, want_std, tol=0.03):
  sample = np.asarray(sample).ravel()
  # With n >= 1e5 draws the sample std is within ~0.3% and the mean within
  # ~0.3% of the std; the tolerances leave a wide margin, yet a wrong gain
  # (1 instead of sqrt(2)) or a uniform instead of a normal init would fail.
  assert abs(sample.std() / want_std - 1) < tol, (sample.std(), want_std)
  assert abs(sample.mean()) < 0.02 * want_std
  kurtosis = np.mean((sample - sample.mean()) ** 4) / sample.var() ** 2
  assert abs(kurtosis - 3.0) < 0.1  # A normal's kurtosis (a uniform's is 1.8).


def test_generator_init_is_xavier_normal_gain_sqrt2():
  hidden, noise, emb, feat = 384, 256, 312, 512
  params = models.init_generator(jax.random.key(0), kind="latent_noise", embedding_dim=emb,
                                 feature_dim=feat, noise_dim=noise, hidden_dims=(hidden,))
  xavier = lambda fan_in, fan_out: math.sqrt(2.0) * math.sqrt(2.0 / (fan_in + fan_out))
  _assert_normal_std(params["mu"]["kernel"], xavier(emb, noise))
  _assert_normal_std(params["logvar"]["kernel"], xavier(emb, noise))
  _assert_normal_std(params["layers"]["layer_0"]["kernel"], xavier(noise, hidden))
  _assert_normal_std(params["layers"]["layer_1"]["kernel"], xavier(hidden, feat))
  # Independent draws per head.
  assert not np.allclose(params["mu"]["kernel"], params["logvar"]["kernel"])
  for bias in [params["mu"]["bias"], params["logvar"]["bias"],
               params["layers"]["layer_0"]["bias"], params["layers"]["layer_1"]["bias"]]:
    np.testing.assert_array_equal(bias, 0)


def test_concat_layers_use_the_joint_fan_in():
  params = models.init_critic(jax.random.key(1), feature_dim=600, embedding_dim=200,
                              hidden_dims=(400,))
  first = params["layers"]["layer_0"]
  want = math.sqrt(2.0) * math.sqrt(2.0 / (800 + 400))
  _assert_normal_std(first["kernel_features"], want)
  _assert_normal_std(first["kernel_embedding"], want)
  gen = models.init_generator(jax.random.key(2), kind="attribute_concat", embedding_dim=300,
                              feature_dim=8, noise_dim=300, hidden_dims=(500,))
  want = math.sqrt(2.0) * math.sqrt(2.0 / (600 + 500))
  _assert_normal_std(gen["layers"]["layer_0"]["kernel_noise"], want)
  _assert_normal_std(gen["layers"]["layer_0"]["kernel_embedding"], want)


@pytest.mark.parametrize("kind", models.CLASSIFIER_KINDS)
def test_classifier_init_is_normal_002_zero_bias(kind):
  init_fn, _ = models.get_classifier(kind)
  params = init_fn(jax.random.key(0), feature_dim=512, embedding_dim=300, num_classes=300)
  assert params["kernel"].shape == (512, 300)
  _assert_normal_std(params["kernel"], 0.02)
  np.testing.assert_array_equal(params["bias"], 0)
  assert params["bias"].shape == (300,)


def test_bilinear_classifier_both_bias_forms_match_numpy():
  rng = np.random.default_rng(9)
  x = rng.normal(size=(6, D)).astype(np.float32)
  a = rng.normal(size=(4, K)).astype(np.float32)
  w = rng.normal(size=(D, K)).astype(np.float32)
  b_vec = rng.normal(size=(K,)).astype(np.float32)
  got = models.apply_bilinear_classifier({"kernel": w, "bias": b_vec}, x, a)
  want = np.stack([[(x[i] @ w + b_vec) @ a[c] for c in range(4)] for i in range(6)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  got = models.apply_bilinear_classifier({"kernel": w, "bias": np.float32(0.7)}, x, a)
  want = np.stack([[x[i] @ w @ a[c] + 0.7 for c in range(4)] for i in range(6)])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
  scalar = models.get_classifier("bilinear", bilinear_bias="scalar")[0](
      jax.random.key(0), feature_dim=D, embedding_dim=K, num_classes=3)
  assert scalar["bias"].shape == ()


def test_softmax_classifier_matches_numpy_and_checks_class_count():
  init_fn, apply_fn = models.get_classifier("softmax")
  params = _random_like(init_fn(jax.random.key(0), feature_dim=D, embedding_dim=K,
                                num_classes=4), 10)
  x = np.random.default_rng(11).normal(size=(6, D)).astype(np.float32)
  p = _np(params)
  got = apply_fn(params, x, np.zeros((4, K), np.float32))
  np.testing.assert_allclose(got, x @ p["kernel"] + p["bias"], rtol=1e-5, atol=1e-5)
  with pytest.raises(ConfigError, match="expected 4 rows"):
    apply_fn(params, x, np.zeros((5, K), np.float32))


def test_networks_jit_and_vmap_over_initialisation():
  init_fn, apply_fn = models.get_classifier("bilinear")
  thetas = jax.vmap(lambda k: init_fn(k, feature_dim=D, embedding_dim=K, num_classes=3))(
      jax.random.split(jax.random.key(0), 5))
  assert thetas["kernel"].shape == (5, D, K)
  assert not np.allclose(thetas["kernel"][0], thetas["kernel"][1])
  x = jnp.ones((2, D))
  logits = jax.jit(jax.vmap(apply_fn, in_axes=(0, None, None)))(thetas, x, jnp.ones((3, K)))
  assert logits.shape == (5, 2, 3)


@pytest.mark.parametrize("call, match", [
    (lambda: models.init_generator(jax.random.key(0), kind="gan", embedding_dim=K,
                                   feature_dim=D, noise_dim=Z, hidden_dims=()), "generator kind"),
    (lambda: models.init_generator(jax.random.key(0), kind="latent_noise", embedding_dim=K,
                                   feature_dim=D, noise_dim=0, hidden_dims=()), "noise_dim"),
    (lambda: models.init_critic(jax.random.key(0), feature_dim=D, embedding_dim=K,
                                hidden_dims=(8, -1)), "hidden_dims"),
    (lambda: models.init_critic(jax.random.key(0), feature_dim=D, embedding_dim=K,
                                hidden_dims=2048), "hidden_dims"),
    (lambda: models.init_bilinear_classifier(jax.random.key(0), feature_dim=D,
                                             embedding_dim=K, bias="matrix"), "bilinear bias"),
    (lambda: models.get_classifier("svm"), "classifier kind"),
])
def test_bad_configuration_raises_config_error(call, match):
  with pytest.raises(ConfigError, match=match):
    call()
