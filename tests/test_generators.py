"""Tests of Table 2's generators: f-CLSWGAN, cycle-(CLS)WGAN, GMMN, CVAE (gmn_jax.train_step).

Each new term is compared with an independent computation: the regressor's
MSE and its gradient in numpy / by finite differences, its pretraining with
the least-squares fit, the generator's gradient with the term's own
gradient; and each method trains (finite, no retracing) with two vmapped
seeds equal to separate ones.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import models
from gmn_jax import regressor
from gmn_jax import seed_axis
from gmn_jax import specs
from gmn_jax import train_chunk
from gmn_jax import train_state
from gmn_jax import train_step
from test_train_support import tiny_config, tiny_dataset

NEW_METHODS = ("fclswgan", "cyclewgan", "cycle_clswgan", "gmmn", "cvae")


def _setup(config, seed=0):
  dataset = tiny_dataset()
  spec = specs.train_spec(config, dataset)
  data = jax.device_put(train_state.make_train_data(dataset, spec))
  state = train_state.init_train_state(jax.random.key(seed), spec, data)
  return spec, data, state, specs.hyperparameters(config)


# --------------------------------------------------------------------------
# The regressor of L_REG.


def test_regression_loss_and_its_gradient_match_numpy():
  rng = np.random.default_rng(0)
  params = {"kernel": rng.normal(size=(5, 3)).astype(np.float32),
            "bias": rng.normal(size=3).astype(np.float32)}
  x = rng.normal(size=(7, 5)).astype(np.float32)
  a = rng.normal(size=(7, 3)).astype(np.float32)
  residual = x.astype(np.float64) @ params["kernel"] + params["bias"] - a
  np.testing.assert_allclose(regressor.regression_loss(params, x, a),
                             np.mean(residual ** 2), rtol=1e-5)
  # d/dx mean((xW + b - a)^2) = 2 (xW + b - a) W^T / (B K).
  np.testing.assert_allclose(
      jax.grad(regressor.regression_loss, argnums=1)(params, x, a),
      2 * residual @ params["kernel"].T / residual.size, rtol=1e-4, atol=1e-6)


def test_pretrained_regressor_approaches_the_least_squares_fit():
  config = tiny_config("cyclewgan", **{"regressor.pretrain_epochs": 300,
                                       "regressor.pretrain_lr": 0.01,
                                       "regressor.pretrain_batch_size": 16})
  spec, data, state, _ = _setup(config)
  targets = np.asarray(data.seen_embeddings)[np.asarray(data.labels)]
  design = np.concatenate([np.asarray(data.features), np.ones((targets.shape[0], 1))], axis=1)
  solution = np.linalg.lstsq(design, targets, rcond=None)[0]
  best = np.mean((design @ solution - targets) ** 2)
  fitted = float(regressor.regression_loss(state.regressor, data.features, targets))
  untrained = float(regressor.regression_loss(
      regressor.init_regressor(jax.random.key(0), spec.feature_dim, spec.embedding_dim),
      data.features, targets))
  assert fitted < best + 0.1 * (untrained - best)
  assert state.regressor["kernel"].shape == (spec.feature_dim, spec.embedding_dim)


def test_generator_gradient_includes_the_regression_term_exactly():
  config = tiny_config("cyclewgan")
  spec, data, state, hyper = _setup(config)
  batch = jax.jit(train_step.draw_generator_batch, static_argnums=0)(
      spec, data, jax.random.key(4), {})

  @jax.jit
  def grad_and_aux(weight):
    return jax.grad(train_step.generator_loss, has_aux=True)(
        state.generator, spec, hyper._replace(regression_weight=weight), state.critic, state,
        data, batch)

  def regression_term(generator):
    # Written out from the batch: the adversarial fakes, their classes'
    # embeddings, the frozen regressor.
    embeddings = data.seen_embeddings[batch.labels]
    fake = models.generate(spec.generator, generator, embeddings, batch.noise_key)
    prediction = fake @ state.regressor["kernel"] + state.regressor["bias"]
    return jnp.mean((prediction - embeddings) ** 2)

  weight = 3.0
  with_term, aux = grad_and_aux(jnp.float32(weight))
  without_term, _ = grad_and_aux(jnp.float32(0.0))
  expected = jax.grad(regression_term)(state.generator)
  np.testing.assert_allclose(float(aux["regression_loss"]), float(regression_term(state.generator)),
                             rtol=1e-5)
  for got, base, want in zip(*(jax.tree_util.tree_leaves(t)
                               for t in (with_term, without_term, expected))):
    np.testing.assert_allclose(got - base, weight * want, rtol=1e-3, atol=1e-6)
  assert any(float(jnp.abs(w).max()) > 0 for w in jax.tree_util.tree_leaves(expected))


def test_fclswgan_freezes_a_softmax_classifier_and_the_repository_variant_a_bilinear_one():
  _, _, xian, _ = _setup(tiny_config("fclswgan"))
  spec, _, repository, _ = _setup(tiny_config("cwgan_cls"))
  assert xian.cls_classifier["kernel"].shape == (spec.feature_dim, spec.num_seen)
  assert repository.cls_classifier["kernel"].shape == (spec.feature_dim, spec.embedding_dim)
  # cycle-CLSWGAN has both frozen networks; cycle-WGAN only the regressor.
  _, _, both, _ = _setup(tiny_config("cycle_clswgan"))
  _, _, cycle, _ = _setup(tiny_config("cyclewgan"))
  assert both.cls_classifier and both.regressor
  assert cycle.regressor and not cycle.cls_classifier


# --------------------------------------------------------------------------
# Every new method in the fused step.


def _chunk(spec, num_iterations, num_seeds):
  chunk = train_chunk.make_chunk_fn(spec, num_iterations, num_seeds)
  # Optimising the tiny programs costs more than running them.
  return jax.jit(lambda states, data, hyper, keys: chunk(
      states, data, hyper, keys, jnp.int32(0), jnp.int32(num_iterations + 1))[:3],
                 compiler_options={"xla_backend_optimization_level": 0})


@pytest.mark.parametrize("method", NEW_METHODS)
def test_new_methods_train_with_finite_outputs_and_frozen_networks(method):
  config = tiny_config(method)
  spec, data, _, hyper = _setup(config)
  seeds = (1, 2)
  states = [train_state.init_train_state(jax.random.key(s), spec, data) for s in seeds]
  keys = jnp.stack([jax.random.key(10 + s) for s in seeds])
  together, metrics, finite = _chunk(spec, 3, 2)(seed_axis.stack(states), data, hyper, keys)
  assert bool(np.all(finite))
  expected = {"generator_loss", "generator_grad_norm"}
  if spec.variant.has_critic:
    expected |= {"adversarial_loss", "critic_loss", "wasserstein", "gradient_penalty",
                 "critic_grad_norm"}
  expected |= {"mmd": {"mmd_loss"}, "cvae": {"reconstruction_loss", "kl_loss"},
               "wgan": set()}[spec.variant.objective]
  if spec.variant.regression_loss:
    expected |= {"regression_loss"}
  if spec.variant.classification_loss:
    expected |= {"cls_loss"}
  assert set(metrics) == expected
  assert all(np.isfinite(v).all() for v in metrics.values())
  trained = seed_axis.unstack(together, 0)
  assert not np.allclose(jax.tree_util.tree_leaves(trained.generator)[0],
                         jax.tree_util.tree_leaves(states[0].generator)[0])
  # The second network: the critic trains, the cvae's encoder trains, gmmn has none.
  if spec.variant.objective == "mmd":
    assert not jax.tree_util.tree_leaves(trained.critic)
  else:
    assert not np.allclose(jax.tree_util.tree_leaves(trained.critic)[0],
                           jax.tree_util.tree_leaves(states[0].critic)[0])
  # Frozen networks stay frozen.
  for name in ("cls_classifier", "regressor"):
    for got, want in zip(jax.tree_util.tree_leaves(getattr(trained, name)),
                         jax.tree_util.tree_leaves(getattr(states[0], name))):
      np.testing.assert_array_equal(got, want)
  # The new objectives' step vmapped over seeds equals one seed alone (the
  # WGAN-based ones share the tested program of cwgan_cls).
  if spec.variant.objective != "wgan":
    for g, seed in enumerate(seeds):
      alone, alone_metrics, _ = _chunk(spec, 3, 1)(seed_axis.add_axis(states[g]), data, hyper,
                                                  keys[g:g + 1])
      for got, want in zip(jax.tree_util.tree_leaves(seed_axis.unstack(together, g)),
                           jax.tree_util.tree_leaves(seed_axis.unstack(alone, 0))):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-5, err_msg=f"seed {seed}")
      np.testing.assert_allclose(metrics["generator_loss"][:, g],
                                 alone_metrics["generator_loss"][:, 0], rtol=2e-4, atol=2e-5)


def test_gmmn_generator_loss_is_the_per_class_mmd_of_its_batches():
  config = tiny_config("gmmn", **{"mmd.bandwidths": (0.5, 1.0, 2.0)})
  spec, data, state, hyper = _setup(config)
  batch = jax.jit(train_step.draw_generator_batch, static_argnums=0)(
      spec, data, jax.random.key(4), {})
  loss, aux = jax.jit(train_step.generator_loss, static_argnums=1)(
      state.generator, spec, hyper, state.critic, state, data, batch)
  # Independently: the batch's classes, their fakes, a float64 numpy MMD with
  # sigmas in units of the features' RMS distance to their mean.
  features = np.asarray(data.features, np.float64)
  scale = np.sqrt(np.mean(np.sum((features - features.mean(0)) ** 2, axis=1)))
  sigmas = scale * np.array([0.5, 1.0, 2.0])
  classes = np.asarray(batch.mmd_classes)
  assert len(set(classes.tolist())) == spec.mmd_num_classes == 2
  fake = np.asarray(models.generate(
      spec.generator, state.generator,
      jnp.repeat(data.seen_embeddings[classes], spec.mmd_fake_per_class, axis=0),
      batch.gm_noise_key), np.float64).reshape(2, spec.mmd_fake_per_class, -1)

  def kernel(a, b):
    d2 = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    return sum(np.exp(-d2 / (2 * s ** 2)) for s in sigmas)

  def root_mmd(x, y):
    return np.sqrt(max(kernel(x, x).mean() + kernel(y, y).mean() - 2 * kernel(x, y).mean(), 0))

  real = np.asarray(batch.mmd_real_features, np.float64)
  assert real.shape[:2] == (2, spec.mmd_real_per_class)
  want = np.mean([root_mmd(real[c], fake[c]) for c in range(2)])
  np.testing.assert_allclose(float(aux["mmd_loss"]), want, rtol=1e-4)
  np.testing.assert_allclose(float(loss), want, rtol=1e-4)  # no other term


def test_cvae_generator_loss_is_the_vae_loss_plus_the_regressor_feedback():
  config = tiny_config("cvae", **{"cvae.kl_weight": 0.5, "regressor.weight": 2.0})
  spec, data, state, hyper = _setup(config)
  batch = jax.jit(train_step.draw_generator_batch, static_argnums=0)(
      spec, data, jax.random.key(4), {})
  loss, aux = jax.jit(train_step.generator_loss, static_argnums=1)(
      state.generator, spec, hyper, state.critic, state, data, batch)
  # Written out: encode the real batch, a posterior draw, decode, squared
  # error summed over features, closed-form KL; feedback on prior fakes.
  from gmn_jax import vae  # pylint: disable=g-import-not-at-top
  x = np.asarray(batch.vae_real_features, np.float64)
  a = batch.vae_real_embeddings
  assert x.shape == (spec.batch_size, spec.feature_dim)
  mu, logvar = vae.encode(spec.encoder, state.critic, batch.vae_real_features, a)
  posterior_key, _ = jax.random.split(batch.gm_noise_key)
  z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(posterior_key, mu.shape)
  x_hat = np.asarray(spec.generator.apply({"params": state.generator}, a, z), np.float64)
  mu, logvar = np.asarray(mu, np.float64), np.asarray(logvar, np.float64)
  reconstruction = np.mean(np.sum((x - x_hat) ** 2, axis=1))
  kl = np.mean(0.5 * np.sum(np.exp(logvar) + mu ** 2 - 1 - logvar, axis=1))
  np.testing.assert_allclose(float(aux["reconstruction_loss"]), reconstruction, rtol=1e-4)
  np.testing.assert_allclose(float(aux["kl_loss"]), kl, rtol=1e-4)
  embeddings = data.seen_embeddings[batch.labels]
  fake = models.generate(spec.generator, state.generator, embeddings, batch.noise_key)
  feedback = float(regressor.regression_loss(state.regressor, fake, embeddings))
  np.testing.assert_allclose(float(aux["regression_loss"]), feedback, rtol=1e-5)
  np.testing.assert_allclose(float(loss), reconstruction + 0.5 * kl + 2.0 * feedback, rtol=1e-4)


@pytest.mark.parametrize("method", [
    "gmmn", pytest.param("cvae", marks=pytest.mark.slow),
    pytest.param("cycle_clswgan", marks=pytest.mark.slow)])
def test_new_methods_on_four_devices_equal_one_device(tmp_path, method):
  # pylint: disable=g-import-not-at-top
  from gmn_jax import parallel
  from gmn_jax import stage1
  from reference_training import assert_trees_close, plain_stage1
  # pylint: enable=g-import-not-at-top
  config = tiny_config(method, **{"mmd.real_per_class": 8, "mmd.fake_per_class": 8})
  spec, data, _, hyper = _setup(config)
  data = jax.device_get(data)
  schedule = specs.Schedule(num_iterations=2, iterations_per_call=2, checkpoint_every=2,
                            log_every=1)
  single, _ = plain_stage1(spec, data, hyper, 3, schedule.num_iterations)
  (sharded,) = stage1.train_generators(
      spec, data, hyper, seeds=(3,), schedule=schedule,
      checkpoint_dirs=[str(tmp_path / "four")], mesh=parallel.make_mesh())
  assert jax.device_count() == 4
  assert_trees_close(sharded.state, single, rtol=1e-3, atol=1e-4)
  init = train_state.init_train_state(train_state.seed_keys(3).init, spec, data)
  assert not np.allclose(jax.tree_util.tree_leaves(sharded.state.generator)[0],
                         jax.tree_util.tree_leaves(init.generator)[0])
