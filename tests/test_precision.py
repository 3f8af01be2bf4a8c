"""Mixed precision: bf16 matrix products, float32 parameters, penalty and GM math."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import config as gmn_config
from gmn_jax import losses
from gmn_jax import models
from gmn_jax import precision
from gmn_jax import train_state
from gmn_jax import train_step
from gmn_jax.errors import ConfigError
from gmn_jax import specs
from test_train_support import tiny_config, tiny_dataset

D, K, Z, B = 64, 12, 16, 32
# Optimising the tiny programs costs more than running them.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _networks():
  keys = jax.random.split(jax.random.key(0), 5)
  generator = models.init_generator(keys[0], kind="latent_noise", embedding_dim=K,
                                    feature_dim=D, noise_dim=Z, hidden_dims=(48,))
  critic = models.init_critic(keys[1], feature_dim=D, embedding_dim=K, hidden_dims=(40,))
  embeddings = jax.random.uniform(keys[2], (B, K))
  real = jax.nn.relu(jax.random.normal(keys[3], (B, D)))
  return generator, critic, embeddings, real, keys[4]


def _relative_error(got, want):
  return float(jnp.linalg.norm(got - want) / jnp.linalg.norm(want))


def test_float32_is_exactly_the_plain_functions():
  generator, critic, embeddings, real, key = _networks()
  fake = models.apply_generator(generator, embeddings, key)
  np.testing.assert_array_equal(precision.apply_generator("float32", generator, embeddings, key),
                                fake)
  want = losses.critic_loss(critic, real, fake, embeddings, key, gp_weight=10.0)
  got = precision.critic_loss("float32", critic, real, fake, embeddings, key, gp_weight=10.0)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(
      precision.generator_adversarial_loss("float32", critic, fake, embeddings),
      losses.generator_adversarial_loss(critic, fake, embeddings))


def test_bfloat16_generator_and_critic_use_bf16_products_and_return_float32():
  generator, critic, embeddings, real, key = _networks()
  fake = precision.apply_generator("bfloat16", generator, embeddings, key)
  want = models.apply_generator(generator, embeddings, key)  # The same noise, in float32.
  assert fake.dtype == jnp.float32
  assert 0 < _relative_error(fake, want) < 3e-2
  scores = precision.apply_critic("bfloat16", critic, real, embeddings)
  assert scores.dtype == jnp.float32
  assert 0 < _relative_error(scores, models.apply_critic(critic, real, embeddings)) < 3e-2
  text = jax.jit(lambda g, e: precision.apply_generator("bfloat16", g, e, key)).lower(
      generator, embeddings).as_text()
  dots = [line for line in text.splitlines() if "dot_general" in line]
  assert dots and all("bf16" in line for line in dots)


def test_bfloat16_critic_gradients_are_float32_and_close():
  generator, critic, embeddings, real, key = _networks()
  fake = models.apply_generator(generator, embeddings, key)

  def grads(mode):
    return jax.grad(lambda c: precision.critic_loss(mode, c, real, fake, embeddings, key,
                                                    gp_weight=10.0)[0])(critic)

  low, high = grads("bfloat16"), grads("float32")
  for got, want in zip(jax.tree_util.tree_leaves(low), jax.tree_util.tree_leaves(high)):
    assert got.dtype == jnp.float32
  flat_low = jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(low)])
  flat_high = jnp.concatenate([g.ravel() for g in jax.tree_util.tree_leaves(high)])
  assert _relative_error(flat_low, flat_high) < 5e-2
  penalty = lambda mode: precision.gradient_penalty(mode, critic, real, fake, embeddings, key)
  np.testing.assert_allclose(penalty("bfloat16"), penalty("float32"), rtol=3e-2)


def test_bfloat16_training_stays_close_to_float32_on_a_tiny_problem():
  dataset = tiny_dataset()
  outcomes = {}
  for mode in ("float32", "bfloat16"):
    config = tiny_config(precision=mode)
    spec = specs.train_spec(config, dataset)
    assert spec.precision == mode
    data = jax.device_put(train_state.make_train_data(dataset, spec))
    state = train_state.init_train_state(jax.random.key(0), spec, data)
    chunk = jax.jit(train_step.make_chunk_fn(spec, 4), compiler_options=_FAST_COMPILE)
    outcomes[mode] = chunk(state, data, specs.hyperparameters(config),
                           jax.random.key(1), jnp.int32(0))
  (f32_state, f32_metrics, _), (bf16_state, bf16_metrics, _) = (outcomes["float32"],
                                                               outcomes["bfloat16"])
  for leaf in jax.tree_util.tree_leaves((bf16_state.generator, bf16_state.critic)):
    assert leaf.dtype == jnp.float32
  for name in ("critic_loss", "gradient_penalty", "gm_loss", "generator_loss"):
    assert np.isfinite(bf16_metrics[name]).all(), name
    np.testing.assert_allclose(bf16_metrics[name], f32_metrics[name], rtol=0.1, atol=0.05,
                               err_msg=name)
  assert not np.array_equal(bf16_metrics["generator_loss"], f32_metrics["generator_loss"])
  kernel = lambda s: s.generator["layers"]["layer_0"]["kernel"]
  assert _relative_error(kernel(bf16_state), kernel(f32_state)) < 1e-2


def test_unknown_precision_is_a_config_error():
  with pytest.raises(ConfigError, match=r"config\.precision: expected one of"):
    precision.compute_dtype("float16")
  with pytest.raises(ConfigError, match=r"config\.precision"):
    gmn_config.validate(tiny_config(precision="int8"), check_data_dir=False)
