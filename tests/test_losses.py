"""Classification and WGAN-GP losses against closed forms and finite differences."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import classifiers
from gmn_jax import losses
from gmn_jax import models

B, C, D, K = 6, 4, 9, 5


def _x64():
  """Context manager enabling float64 (restored on exit, so nothing leaks)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def _np_softmax(logits):
  shifted = logits - logits.max(axis=1, keepdims=True)
  e = np.exp(shifted)
  return e / e.sum(axis=1, keepdims=True)


def _data(seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(B, D)).astype(np.float32)
  a = rng.normal(size=(C, K)).astype(np.float32)
  y = rng.integers(0, C, size=B).astype(np.int32)
  return x, a, y


def test_cross_entropy_matches_numpy_and_flags_bad_labels():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(B, C)).astype(np.float32) * 3
  labels = rng.integers(0, C, size=B)
  want = -np.mean(np.log(_np_softmax(logits.astype(np.float64))[np.arange(B), labels]))
  np.testing.assert_allclose(losses.cross_entropy(logits, labels), want, rtol=1e-5)
  # Large logits must not overflow.
  big = np.array([[1000.0, 0.0]], np.float32)
  np.testing.assert_allclose(losses.cross_entropy(big, np.array([1])), 1000.0, rtol=1e-6)
  assert np.isnan(losses.cross_entropy(logits, np.full(B, C)))


@pytest.mark.parametrize("bias", ["vector", "scalar"])
def test_bilinear_cross_entropy_gradient_matches_closed_form(bias):
  x, a, y = _data(1)
  rng = np.random.default_rng(2)
  w = rng.normal(size=(D, K)).astype(np.float32)
  b = rng.normal(size=(K,) if bias == "vector" else ()).astype(np.float32)
  params = {"kernel": jnp.asarray(w), "bias": jnp.asarray(b)}
  _, apply_fn = classifiers.get_classifier("bilinear", bilinear_bias=bias)
  grads = jax.grad(losses.classifier_loss, argnums=1)(apply_fn, params, x, y, a)
  # d CE / d logits = (P - Y) / B, and logits = (x W + b) A^T (vector bias) or
  # x W A^T + b (scalar bias).
  logits = (x @ w + b) @ a.T if bias == "vector" else x @ w @ a.T + b
  residual = (_np_softmax(logits) - np.eye(C)[y]) / B
  np.testing.assert_allclose(grads["kernel"], x.T @ residual @ a, rtol=1e-4, atol=1e-6)
  if bias == "vector":
    np.testing.assert_allclose(grads["bias"], residual.sum(axis=0) @ a, rtol=1e-4, atol=1e-6)
  else:
    # Softmax rows sum to one, so a bias shared by all classes has no gradient.
    np.testing.assert_allclose(grads["bias"], 0.0, atol=1e-6)


def test_softmax_cross_entropy_gradient_matches_closed_form():
  x, a, y = _data(3)
  rng = np.random.default_rng(4)
  params = {"kernel": jnp.asarray(rng.normal(size=(D, C)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(C,)), jnp.float32)}
  _, apply_fn = classifiers.get_classifier("softmax")
  grads = jax.grad(losses.classifier_loss, argnums=1)(apply_fn, params, x, y, a)
  residual = (_np_softmax(x @ np.asarray(params["kernel"]) + np.asarray(params["bias"]))
              - np.eye(C)[y]) / B
  np.testing.assert_allclose(grads["kernel"], x.T @ residual, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grads["bias"], residual.sum(axis=0), rtol=1e-4, atol=1e-6)


def test_frozen_classifier_loss_trains_only_the_features():
  x, a, y = _data(5)
  init_fn, apply_fn = classifiers.get_classifier("bilinear")
  params = init_fn(jax.random.key(0), feature_dim=D, embedding_dim=K, num_classes=C)
  value, (g_params, g_x, g_a) = jax.value_and_grad(
      lambda p, f, e: losses.frozen_classifier_loss(apply_fn, p, f, y, e), argnums=(0, 1, 2))(
          params, x, a)
  np.testing.assert_allclose(value, losses.classifier_loss(apply_fn, params, x, y, a))
  for leaf in jax.tree_util.tree_leaves((g_params, g_a)):
    np.testing.assert_array_equal(leaf, 0.0)
  want_g_x = jax.grad(lambda f: losses.classifier_loss(apply_fn, params, f, y, a))(x)
  np.testing.assert_allclose(g_x, want_g_x, rtol=1e-6)
  assert np.abs(g_x).max() > 0


def _critic(conditional, hidden_dims, seed=0, dtype=jnp.float32):
  """(critic_fn, params) of a `models.Critic`, the params cast to `dtype`."""
  module = models.Critic(D, K, hidden_dims, conditional, dtype)
  params = models.init_critic(module, jax.random.key(seed))
  params = jax.tree_util.tree_map(lambda p: jnp.asarray(p, dtype), params)
  return (lambda p, x, a: module.apply({"params": p}, x, a)), params


@pytest.mark.parametrize("conditional", [True, False])
def test_gradient_penalty_matches_finite_differences(conditional):
  with _x64():
    critic_fn, params = _critic(conditional, (8, 6), dtype=jnp.float64)
    rng = np.random.default_rng(6)
    real = rng.normal(size=(B, D))
    fake = rng.normal(size=(B, D))
    emb = rng.normal(size=(B, K)) if conditional else None
    key = jax.random.key(7)
    penalty = jax.jit(functools.partial(losses.gradient_penalty, critic_fn))
    got = penalty(params, real, fake, emb, key)
    assert got.dtype == jnp.float64
    # Same interpolation weights as the function under test draws.
    weights = np.asarray(jax.random.uniform(key, (B, 1), jnp.float64))
    interp = weights * real + (1 - weights) * fake

    # Central differences of D in every input coordinate of every example, all
    # evaluated in one batch: rows (i, j, +h) and (i, j, -h).
    h = 1e-6
    steps = h * np.eye(D)
    plus = (interp[:, None, :] + steps[None]).reshape(B * D, D)
    minus = (interp[:, None, :] - steps[None]).reshape(B * D, D)
    emb_rows = None if emb is None else np.repeat(emb, D, axis=0)
    critic = jax.jit(critic_fn)
    assert critic(params, plus, emb_rows).dtype == jnp.float64
    diff = (np.asarray(critic(params, plus, emb_rows))
            - np.asarray(critic(params, minus, emb_rows))) / (2 * h)
    norms = np.linalg.norm(diff.reshape(B, D), axis=1)
    want = np.mean((np.asarray(norms) - 1.0) ** 2)
    np.testing.assert_allclose(got, want, rtol=1e-7)

    # The penalty's own gradient w.r.t. the critic (a double backward) along
    # a random direction, against a central difference.
    direction = jax.tree_util.tree_map(
        lambda p: jnp.asarray(rng.normal(size=p.shape)), params)
    along = lambda t: penalty(
        jax.tree_util.tree_map(lambda p, d: p + t * d, params, direction), real, fake, emb, key)
    grads = jax.jit(jax.grad(penalty))(params, real, fake, emb, key)
    analytic = sum(jnp.vdot(g, d) for g, d in zip(jax.tree_util.tree_leaves(grads),
                                                  jax.tree_util.tree_leaves(direction)))
    numeric = (along(1e-6) - along(-1e-6)) / 2e-6
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6)


def test_gradient_penalty_is_finite_for_a_flat_critic():
  critic_fn, params = _critic(True, (8,))
  flat = jax.tree_util.tree_map(jnp.zeros_like, params)
  x = np.ones((B, D), np.float32)
  e = np.ones((B, K), np.float32)
  value, grads = jax.jit(jax.value_and_grad(
      functools.partial(losses.gradient_penalty, critic_fn)))(
          flat, x, 2 * x, e, jax.random.key(0))
  np.testing.assert_allclose(value, 1.0)  # Zero input gradient: (0 - 1)^2.
  assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


@pytest.mark.parametrize("conditional", [True, False])
def test_critic_and_generator_losses(conditional):
  critic_fn, params = _critic(conditional, (8,), seed=1)
  rng = np.random.default_rng(8)
  real = rng.normal(size=(B, D)).astype(np.float32)
  fake = rng.normal(size=(B, D)).astype(np.float32)
  emb = rng.normal(size=(B, K)).astype(np.float32) if conditional else None
  key = jax.random.key(2)
  loss, aux = jax.jit(functools.partial(losses.critic_loss, critic_fn, gp_weight=3.0))(
      params, real, fake, emb, key)
  critic = jax.jit(critic_fn)
  d_real = np.asarray(critic(params, real, emb))
  d_fake = np.asarray(critic(params, fake, emb))
  np.testing.assert_allclose(aux["wasserstein"], d_real.mean() - d_fake.mean(), rtol=1e-5)
  np.testing.assert_allclose(aux["gradient_penalty"],
                             jax.jit(functools.partial(losses.gradient_penalty, critic_fn))(
                                 params, real, fake, emb, key),
                             rtol=1e-6)
  np.testing.assert_allclose(loss, d_fake.mean() - d_real.mean() + 3.0 * aux["gradient_penalty"],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(
      jax.jit(functools.partial(losses.generator_adversarial_loss, critic_fn))(
          params, fake, emb),
      -d_fake.mean(), rtol=1e-5)


def test_jitted_critic_step_does_not_retrace():
  critic_fn, params = _critic(True, (8,))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(params, real, fake, emb, key):
    grads, aux = jax.grad(functools.partial(losses.critic_loss, critic_fn), has_aux=True)(
        params, real, fake, emb, key)
    return jax.tree_util.tree_map(lambda p, g: p - 1e-3 * g, params, grads), aux

  chex.clear_trace_counter()
  key = jax.random.key(3)
  for _ in range(3):
    key, k_real, k_fake, k_emb, k_gp = jax.random.split(key, 5)
    params, aux = step(params, jax.random.normal(k_real, (B, D)),
                       jax.random.normal(k_fake, (B, D)), jax.random.normal(k_emb, (B, K)), k_gp)
    assert np.isfinite(aux["wasserstein"])


# --------------------------------------------------------------------------
# Masks: a padded batch with its padding masked out is the unpadded batch.

VALID = 4  # Valid rows of a padded batch of B.


def _padded_mask():
  return jnp.arange(B) < VALID


def _assert_trees_close(got, want, **tolerances):
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(g, w, **tolerances)


def test_masked_mean_weights_rows_and_ignores_padding():
  values = jnp.array([1.0, 2.0, 3.0, jnp.nan])
  np.testing.assert_allclose(losses.masked_mean(values, values == values), 2.0)
  np.testing.assert_allclose(losses.masked_mean(values, jnp.array([2.0, 1.0, 1.0, 0.0])), 1.75)
  assert losses.masked_mean(values, jnp.zeros(4, bool)) == 0.0
  np.testing.assert_array_equal(losses.masked_mean(values[:3]), jnp.mean(values[:3]))


def test_masked_cross_entropy_and_classifier_losses_equal_the_unpadded_batch():
  x, a, y = _data(11)
  mask = _padded_mask()
  _, apply_fn = classifiers.get_classifier("bilinear")
  rng = np.random.default_rng(12)
  params = {"kernel": jnp.asarray(rng.normal(size=(D, K)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(K,)), jnp.float32)}
  for loss in (losses.classifier_loss, losses.frozen_classifier_loss):
    value_and_grad = jax.jit(jax.value_and_grad(
        functools.partial(loss, apply_fn), argnums=(0, 1)))
    padded = value_and_grad(params, x, y, a, mask)
    unpadded = value_and_grad(params, x[:VALID], y[:VALID], a)
    np.testing.assert_allclose(padded[0], unpadded[0], rtol=1e-6)
    param_grads, feature_grads = padded[1]
    _assert_trees_close(param_grads, unpadded[1][0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(feature_grads[:VALID], unpadded[1][1], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(feature_grads[VALID:], 0.0)
  # Float weights: weight 2 on a row is that row twice; NaN padding stays out.
  logits = jnp.asarray(rng.normal(size=(B, C)), jnp.float32)
  weights = jnp.array([2.0, 1.0, 1.0, 1.0, 0.0, 0.0])
  doubled = jnp.concatenate([logits[:1], logits[:VALID]])
  np.testing.assert_allclose(
      losses.cross_entropy(logits.at[VALID:].set(jnp.nan), y, weights),
      losses.cross_entropy(doubled, jnp.concatenate([y[:1], y[:VALID]])), rtol=1e-6)
  # A bad label on a valid row is still flagged.
  assert np.isnan(losses.cross_entropy(logits, jnp.full(B, C), mask))


@pytest.mark.parametrize("conditional", [True, False])
def test_masked_wgan_losses_equal_the_unpadded_batch(conditional):
  critic_fn, params = _critic(conditional, (8,), seed=3)
  rng = np.random.default_rng(13)
  real = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  fake = jnp.asarray(rng.normal(size=(B, D)), jnp.float32)
  emb = jnp.asarray(rng.normal(size=(B, K)), jnp.float32) if conditional else None
  cut = lambda e: None if e is None else e[:VALID]
  mask = _padded_mask()
  key = jax.random.key(4)
  # The penalty draws one weight per row; the valid rows lead, and JAX's
  # random draws are prefix-stable, so both batches interpolate alike.
  np.testing.assert_array_equal(jax.random.uniform(key, (B, 1))[:VALID],
                                jax.random.uniform(key, (VALID, 1)))

  critic = jax.jit(jax.value_and_grad(
      functools.partial(losses.critic_loss, critic_fn, gp_weight=3.0), argnums=(0, 2),
      has_aux=True))
  (loss, aux), (param_grads, fake_grads) = critic(params, real, fake, emb, key, mask=mask)
  (want_loss, want_aux), (want_param_grads, want_fake_grads) = critic(
      params, real[:VALID], fake[:VALID], cut(emb), key)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
  _assert_trees_close(aux, want_aux, rtol=1e-5, atol=1e-6)
  _assert_trees_close(param_grads, want_param_grads, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(fake_grads[:VALID], want_fake_grads, rtol=1e-4, atol=1e-6)
  np.testing.assert_array_equal(fake_grads[VALID:], 0.0)

  penalty = jax.jit(jax.value_and_grad(functools.partial(losses.gradient_penalty, critic_fn)))
  got, got_grads = penalty(params, real, fake, emb, key, mask)
  want, want_grads = penalty(params, real[:VALID], fake[:VALID], cut(emb), key)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  _assert_trees_close(got_grads, want_grads, rtol=1e-4, atol=1e-6)

  adversarial = jax.jit(jax.value_and_grad(
      functools.partial(losses.generator_adversarial_loss, critic_fn), argnums=1))
  got, got_grads = adversarial(params, fake, emb, mask)
  want, want_grads = adversarial(params, fake[:VALID], cut(emb))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got_grads[:VALID], want_grads, rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(got_grads[VALID:], 0.0)
  # An all-valid mask is the unmasked loss.
  np.testing.assert_allclose(adversarial(params, fake, emb, jnp.ones(B, bool))[0],
                             adversarial(params, fake, emb)[0], rtol=1e-6)
