"""The closed-form WGAN-GP gradient (`gmn_jax.wgan_gp`) against autodiff of its definition."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import losses
from gmn_jax import models
from gmn_jax import wgan_gp
from gmn_jax.errors import ConfigError

B, D, K = 6, 5, 3


def _x64():
  """Context manager enabling float64 (restored on exit, so nothing leaks)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def _problem(hidden_dims, conditional, seed=0, dtype=jnp.float32):
  module = models.Critic(feature_dim=D, embedding_dim=K, hidden_dims=hidden_dims,
                         conditional=conditional, dtype=dtype)
  keys = jax.random.split(jax.random.key(seed), 5)
  real = jax.random.normal(keys[0], (B, D))
  fake = jax.random.normal(keys[1], (B, D))
  embeddings = jax.random.normal(keys[2], (B, K)) if conditional else None
  params = models.init_critic(module, keys[3])
  # Larger weights than the init, so that many pre-activations are negative
  # and the penalty's norms are far from 1.
  params = jax.tree_util.tree_map(lambda p: 3.0 * p + 0.1, params)
  return module, params, real, fake, embeddings, keys[4]


def _autodiff(module, params, real, fake, embeddings, key, mask=None, gp_weight=10.0):
  critic_fn = lambda p, x, a: module.apply({"params": p}, x, a)
  loss_fn = functools.partial(losses.critic_loss, critic_fn)
  return jax.value_and_grad(loss_fn, has_aux=True)(params, real, fake, embeddings, key,
                                                   gp_weight=gp_weight, mask=mask)


def _assert_same(closed, reference, rtol=1e-5, atol=1e-6):
  (loss, aux), grads = closed
  (ref_loss, ref_aux), ref_grads = reference
  np.testing.assert_allclose(loss, ref_loss, rtol=rtol, atol=atol)
  for name in ("wasserstein", "gradient_penalty"):
    np.testing.assert_allclose(aux[name], ref_aux[name], rtol=rtol, atol=atol)
  assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(ref_grads)
  for got, want in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
    assert got.shape == want.shape and got.dtype == want.dtype
    # Float rounding is relative to a leaf's largest entries (sums cancel).
    np.testing.assert_allclose(got, want, rtol=rtol,
                               atol=max(atol, rtol * float(np.max(np.abs(want)))))


def _float64(problem):
  module, params, real, fake, embeddings, key = problem
  cast = lambda tree: jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), tree)
  return module.clone(dtype=jnp.float64), cast(params), cast(real), cast(fake), \
      cast(embeddings), key


@pytest.mark.parametrize("hidden_dims", [(), (7,), (7, 4)])
@pytest.mark.parametrize("conditional", [True, False])
def test_equals_autodiff_of_the_definition(hidden_dims, conditional):
  problem = _problem(hidden_dims, conditional)
  closed = jax.jit(functools.partial(wgan_gp.critic_value_and_grad, problem[0],
                                     gp_weight=10.0))(*problem[1:])
  _assert_same(closed, _autodiff(*problem))
  # The penalty is active (the norms are not 1), so its second-order terms count.
  assert float(closed[0][1]["gradient_penalty"]) > 0.1
  # In float64 the two agree to rounding: the same function, not a close one.
  with _x64():
    problem = _float64(problem)
    _assert_same(wgan_gp.critic_value_and_grad(problem[0], *problem[1:], gp_weight=10.0),
                 _autodiff(*problem), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("mask", [
    np.array([1, 1, 0, 1, 0, 1], bool),
    np.array([0.5, 2.0, 0.0, 1.0, 1.0, 0.25], np.float32),
    np.zeros((B,), bool),
])
def test_masks_weigh_rows_like_masked_mean(mask):
  module, params, real, fake, embeddings, key = _problem((7, 4), True, seed=1)
  closed = wgan_gp.critic_value_and_grad(module, params, real, fake, embeddings, key,
                                         gp_weight=3.0, mask=jnp.asarray(mask))
  _assert_same(closed, _autodiff(module, params, real, fake, embeddings, key,
                                 mask=jnp.asarray(mask), gp_weight=3.0))


def test_a_row_with_a_zero_input_gradient_is_finite_like_autodiff():
  # A zero feature kernel makes every input gradient zero: the safe norm's
  # gradient there is 0 (not NaN), in both.
  module, params, real, fake, embeddings, key = _problem((7,), True, seed=2)
  layer = params["layers"]["layer_0"]
  params["layers"]["layer_0"] = dict(layer, kernel_features=jnp.zeros_like(
      layer["kernel_features"]))
  closed = wgan_gp.critic_value_and_grad(module, params, real, fake, embeddings, key,
                                         gp_weight=10.0)
  assert all(np.isfinite(g).all() for g in jax.tree_util.tree_leaves(closed[1]))
  _assert_same(closed, _autodiff(module, params, real, fake, embeddings, key))


def test_finite_differences_of_the_loss():
  # An independent check of the reference itself at one parameter: central
  # differences of the loss in float64.
  with _x64():
    module, params, real, fake, embeddings, key = _float64(_problem((7,), True, seed=3))
    (_, _), grads = wgan_gp.critic_value_and_grad(module, params, real, fake, embeddings, key,
                                                  gp_weight=10.0)

    def loss_at(delta, name, index):
      layer = dict(params["layers"]["layer_0"])
      layer[name] = layer[name].at[index].add(delta)
      shifted = {"layers": dict(params["layers"], layer_0=layer)}
      return wgan_gp.critic_value_and_grad(module, shifted, real, fake, embeddings, key,
                                           gp_weight=10.0)[0][0]

    for name, index in (("kernel_features", (1, 2)), ("kernel_embedding", (0, 3)),
                        ("bias", (4,))):
      h = 1e-6
      numeric = (loss_at(h, name, index) - loss_at(-h, name, index)) / (2 * h)
      np.testing.assert_allclose(grads["layers"]["layer_0"][name][index], numeric, rtol=1e-6,
                                 atol=1e-8)


def test_bfloat16_critic_agrees_at_bfloat16_tolerance():
  module, params, real, fake, embeddings, key = _problem((7,), True, seed=4,
                                                         dtype=jnp.bfloat16)
  closed = wgan_gp.critic_value_and_grad(module, params, real, fake, embeddings, key,
                                         gp_weight=10.0)
  reference = _autodiff(module, params, real, fake, embeddings, key)
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(reference[1]))
  _assert_same(closed, reference, rtol=5e-2, atol=5e-2 * scale)


def test_condition_errors_are_the_modules():
  module, params, real, fake, _, key = _problem((7,), True)
  with pytest.raises(ConfigError, match="critic embeddings: expected"):
    wgan_gp.critic_value_and_grad(module, params, real, fake, None, key, gp_weight=10.0)


# --------------------------------------------------------------------------
# In the training step: the critic scan and the generator's batched fakes.


def _step_setup(method="cwgan_gm", **overrides):
  # pylint: disable=g-import-not-at-top
  from gmn_jax import specs
  from gmn_jax import train_state
  from test_train_support import tiny_config, tiny_dataset
  # pylint: enable=g-import-not-at-top
  config = tiny_config(method, **overrides)
  dataset = tiny_dataset()
  spec = specs.train_spec(config, dataset)
  data = jax.device_put(train_state.make_train_data(dataset, spec))
  state = train_state.init_train_state(jax.random.key(0), spec, data)
  return spec, data, state, specs.hyperparameters(config)


@pytest.mark.parametrize("method, overrides", [
    ("cwgan_gm", {}),
    # The unconditional critic and Adam with its first moment: outside CI
    # (the closed form's both critics are checked above, in milliseconds).
    pytest.param("wgan_gm", {}, marks=pytest.mark.slow),
    pytest.param("cwgan", {"train.adam_b1": 0.5}, marks=pytest.mark.slow)])
def test_the_critic_scan_equals_step_by_step_autodiff_updates(method, overrides):
  # The reference is what the step did before the closed form: per step,
  # draw the batch, generate its fakes, differentiate `losses.critic_loss`
  # with autodiff and apply optax's Adam.
  # pylint: disable=g-import-not-at-top
  import optax
  from gmn_jax import critic_updates
  from gmn_jax import train_step
  # pylint: enable=g-import-not-at-top
  spec, data, state, hyper = _step_setup(method, **overrides)
  new_state, metrics = jax.jit(functools.partial(train_step.train_iteration, spec))(
      state, data, hyper, jax.random.key(5))
  critic_key = jax.random.split(jax.random.fold_in(jax.random.key(5), 0), 4)[0]
  critic, opt = state.critic, state.critic_opt
  adam = optax.adam(hyper.lr_critic, b1=hyper.adam_b1, b2=hyper.adam_b2)
  critic_fn = critic_updates.critic_fn(spec)
  step_keys = jax.random.split(critic_key, spec.n_critic)
  batches, _ = critic_updates.critic_batches(spec, data, state.generator, step_keys)
  losses_seen, small = [], jax.tree_util.tree_map(lambda p: np.zeros(p.shape, bool), critic)
  for i, step_key in enumerate(step_keys):
    batch_key, noise_key, penalty_key = jax.random.split(step_key, 3)
    real, embeddings = critic_updates.critic_batch(spec, data, batch_key)
    fake = models.generate(spec.generator, state.generator, embeddings, noise_key)
    # The step's draws: its batch, its fakes (one generator pass for all
    # steps) and its interpolates.
    np.testing.assert_allclose(batches.inputs[i], wgan_gp.stack_inputs(real, fake, penalty_key),
                               rtol=1e-5, atol=1e-6)
    condition = embeddings if spec.variant.conditional_critic else None
    (loss, _), grads = jax.value_and_grad(losses.critic_loss, argnums=1, has_aux=True)(
        critic_fn, critic, real, fake, condition, penalty_key, gp_weight=hyper.gp_weight)
    # The closed form at the same parameters.
    _assert_close_trees(wgan_gp.critic_value_and_grad(
        spec.critic, critic, real, fake, condition, penalty_key, gp_weight=hyper.gp_weight)[1],
                        grads)
    # Entries whose gradient is 0 up to rounding (a unit whose real and fake
    # terms cancel): Adam divides by the entry's own scale, so a rounding
    # residue moves them by a full step.
    small = jax.tree_util.tree_map(
        lambda s, g: s | (np.abs(g) < 1e-6 * np.max(np.abs(g))), small, grads)
    updates, opt = adam.update(grads, opt, critic)
    critic = optax.apply_updates(critic, updates)
    losses_seen.append(loss)
  np.testing.assert_allclose(metrics["critic_loss"], np.mean(losses_seen), rtol=1e-5, atol=1e-6)
  mask_leaves = jax.tree_util.tree_leaves(small)
  assert sum(m.sum() for m in mask_leaves) <= 0.05 * sum(m.size for m in mask_leaves)
  for got, want, skip in zip(jax.tree_util.tree_leaves(new_state.critic),
                             jax.tree_util.tree_leaves(critic), mask_leaves):
    got, want = np.asarray(got)[~skip], np.asarray(want)[~skip]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # The optimizer state too, but for the first moment, which Adam without
  # it (β1 = 0) leaves unwritten.
  _assert_close_trees(new_state.critic_opt[0].nu, opt[0].nu)
  if spec.adam_first_moment:
    _assert_close_trees(new_state.critic_opt[0].mu, opt[0].mu)
  assert spec.adam_first_moment == (float(hyper.adam_b1) != 0.0)


def _assert_close_trees(got, want, atol=1e-6):
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol + 1e-5 * float(np.max(np.abs(b))))


def test_generated_together_equals_generated_apart_values_and_gradients():
  # pylint: disable=g-import-not-at-top
  from gmn_jax import step_terms
  # pylint: enable=g-import-not-at-top
  spec, data, state, _ = _step_setup()
  keys = jax.random.split(jax.random.key(3), 2)
  first = data.seen_embeddings[jnp.array([0, 2, 2, 1])]
  second = step_terms.class_batch_embeddings(data, jnp.array([1, 3]), 3)
  weights = jax.random.normal(jax.random.key(4), (10, spec.feature_dim))

  def together(params):
    fakes = step_terms.generate_together(spec, params, {"a": (first, keys[0]),
                                                        "b": (second, keys[1])})
    return fakes, jnp.sum(jnp.concatenate([fakes["a"], fakes["b"]]) * weights)

  def apart(params):
    a = models.generate(spec.generator, params, first, keys[0])
    b = models.generate(spec.generator, params, second, keys[1])
    return {"a": a, "b": b}, jnp.sum(jnp.concatenate([a, b]) * weights)

  (got, got_grad), (want, want_grad) = (
      jax.value_and_grad(lambda p, f=f: f(p)[1])(state.generator) for f in (together, apart))
  for name in ("a", "b"):
    np.testing.assert_allclose(together(state.generator)[0][name],
                               apart(state.generator)[0][name], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  _assert_close_trees(got_grad, want_grad)


def test_the_unrolled_critic_scan_of_accelerators_gives_the_loops_numbers(monkeypatch):
  # pylint: disable=g-import-not-at-top
  from gmn_jax import train_step
  # pylint: enable=g-import-not-at-top
  spec, data, state, hyper = _step_setup()
  outcomes = []
  for unroll in (False, True):
    monkeypatch.setattr(train_step, "UNROLL_CRITIC_STEPS", unroll)
    step = jax.jit(functools.partial(train_step.train_iteration, spec))
    outcomes.append(step(state, data, hyper, jax.random.key(5)))
    assert train_step.unroll_critic_steps() is unroll
  (looped, looped_metrics), (unrolled, unrolled_metrics) = outcomes
  _assert_close_trees(unrolled, looped)
  _assert_close_trees(unrolled_metrics, looped_metrics)
