"""Tests of the fused stage-1 step (gmn_jax.train_step) on a tiny dataset."""

import functools
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import classifiers
from gmn_jax import config as gmn_config
from gmn_jax import losses
from gmn_jax import models
from gmn_jax import seed_axis
from gmn_jax import specs
from gmn_jax import train_chunk
from gmn_jax import train_state
from gmn_jax import critic_updates
from gmn_jax import train_step
from gmn_jax.errors import ConfigError
from test_train_support import tiny_config, tiny_dataset

GENERATOR_METHODS = ("wgan_cls", "cwgan", "wgan_gm", "cwgan_gm", "wgan_su_gm", "cwgan_cls")
CRITIC_KEYS = {"critic_loss", "wasserstein", "gradient_penalty", "critic_grad_norm"}
GENERATOR_KEYS = {"adversarial_loss", "generator_loss", "generator_grad_norm"}


def _setup(config, dataset=None, seed=0):
  dataset = tiny_dataset() if dataset is None else dataset
  spec = specs.train_spec(config, dataset)
  data = jax.device_put(train_state.make_train_data(dataset, spec))
  state = train_state.init_train_state(jax.random.key(seed), spec, data)
  return spec, data, state, specs.hyperparameters(config)


def _tree_equal(a, b):
  return all(np.array_equal(x, y) for x, y in
             zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


# wgan_gm runs with the trajectory θ sampler and M = 2 samples, so that its
# state is exercised inside the scanned step as well.
VARIANT_CONFIGS = {
    "wgan_cls": {}, "cwgan": {}, "cwgan_gm": {}, "wgan_su_gm": {}, "cwgan_cls": {},
    "wgan_gm": {"gm.theta_sampling": "trajectory", "gm.trajectory_reset_every": 3,
                "gm.num_theta_samples": 2},
}
# Optimising the tiny test programs costs more than running them.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _one_seed_chunk(spec, num_iterations):
  """The chunk on one unstacked seed: (state, data, hyper, key, first) -> (state, metrics, finite)."""
  chunk = train_chunk.make_chunk_fn(spec, num_iterations)

  def one_seed(state, data, hyper, key, first_iteration):
    states, metrics, finite, done = chunk(seed_axis.add_axis(state), data, hyper, key[None],
                                          first_iteration, jnp.int32(num_iterations + 1))
    del done  # no report, so every iteration runs
    return (seed_axis.unstack(states, 0), {k: v[:, 0] for k, v in metrics.items()},
            finite[0])

  return one_seed


@pytest.mark.parametrize("method", GENERATOR_METHODS)
def test_every_variant_trains_with_finite_outputs_and_no_retracing(method):
  spec, data, state, hyper = _setup(tiny_config(method, **VARIANT_CONFIGS[method]))
  chex.clear_trace_counter()  # chex counts per source location, shared by the cases.
  chunk = jax.jit(chex.assert_max_traces(_one_seed_chunk(spec, 2), n=1),
                  compiler_options=_FAST_COMPILE)
  new_state, metrics, finite = chunk(state, data, hyper, jax.random.key(1), jnp.int32(0))
  assert bool(finite)
  expected = CRITIC_KEYS | GENERATOR_KEYS
  if spec.variant.gradient_matching:
    expected |= {"gm_loss"}
  if spec.variant.classification_loss:
    expected |= {"cls_loss"}
  assert set(metrics) == expected
  for name, values in metrics.items():
    assert values.shape == (2,), name
    assert np.isfinite(values).all(), name
  assert int(new_state.iteration) == 2
  assert not _tree_equal(new_state.generator, state.generator)
  assert not _tree_equal(new_state.critic, state.critic)
  # The critic type follows the variant (its first layer reads [x, a], with
  # one kernel block each, or x alone); the L_CLS classifier stays frozen.
  assert spec.critic.conditional == spec.variant.conditional_critic
  first_layer = {name: leaf.shape for name, leaf in state.critic["layers"]["layer_0"].items()}
  hidden = spec.critic_hidden[0]
  if spec.variant.conditional_critic:
    assert first_layer == {"kernel_features": (spec.feature_dim, hidden),
                           "kernel_embedding": (spec.embedding_dim, hidden), "bias": (hidden,)}
  else:
    assert first_layer == {"kernel": (spec.feature_dim, hidden), "bias": (hidden,)}
  assert _tree_equal(new_state.cls_classifier, state.cls_classifier)
  assert bool(jax.tree_util.tree_leaves(state.cls_classifier)) == spec.variant.classification_loss
  if spec.variant.gradient_matching:
    # The generator loss is adversarial + β·GM, as reported.
    np.testing.assert_allclose(
        metrics["generator_loss"],
        metrics["adversarial_loss"] + hyper.gm_weight * metrics["gm_loss"], rtol=1e-5)
  if spec.variant.classification_loss:
    np.testing.assert_allclose(
        metrics["generator_loss"],
        metrics["adversarial_loss"] + hyper.cls_weight * metrics["cls_loss"], rtol=1e-5)
  # A second call with the new state and other hyperparameter values reuses
  # the trace (assert_max_traces raises otherwise).
  later_state, _, _ = chunk(new_state, data, hyper._replace(lr_generator=np.float32(0.5)),
                            jax.random.key(1), jnp.int32(2))
  assert int(later_state.iteration) == 4
  if spec.theta_sampling == "trajectory":
    # After iterations 0-1 the two trajectories have taken SGD steps; iteration
    # 3 (a multiple of R = 3) restarted them from that iteration's fresh draw,
    # followed by one step: close to the fresh draw, not equal.
    momentum = new_state.theta_sampler.momentum["kernel"]
    assert momentum.shape[0] == 2 and float(jnp.abs(momentum).sum()) > 0
    theta_key = jax.random.split(jax.random.fold_in(jax.random.key(1), 3), 4)[2]
    fresh = spec.theta_sampler().sample(new_state.theta_sampler, theta_key, jnp.int32(3))[0]
    distance = jnp.abs(later_state.theta_sampler.params["kernel"] - fresh["kernel"]).max()
    assert 0 < float(distance) < 0.05


def test_generator_gradient_includes_the_gm_term_exactly():
  beta = 5.0
  config = tiny_config("cwgan_gm", **{"gm.num_classes": 3})
  spec, data, state, hyper = _setup(config)
  thetas, _ = spec.theta_sampler().sample({}, jax.random.key(3), 0)
  batch = jax.jit(train_step.draw_generator_batch, static_argnums=0)(
      spec, data, jax.random.key(4), thetas)

  @jax.jit
  def grad_and_aux(gm_weight):
    return jax.grad(train_step.generator_loss, has_aux=True)(
        state.generator, spec, hyper._replace(gm_weight=gm_weight), state.critic, {}, data,
        batch)

  # The GM loss written out independently: per class, real features of that
  # class vs fake_repeat x as many generated ones, bilinear CE over all seen
  # classes, summed over classes.
  _, apply_fn = classifiers.get_classifier("bilinear")
  n, r = batch.gm_real_features.shape[:2]
  f = spec.gm_fake_repeat * r

  def loss_fn(theta, b):
    return losses.cross_entropy(apply_fn(theta, b[0], data.seen_embeddings), b[1])

  module = models.Generator(spec.generator_kind, spec.embedding_dim, spec.feature_dim,
                            spec.noise_dim, spec.generator_hidden, jnp.float32)

  @jax.value_and_grad
  def independent_gm(generator):
    embeddings = jnp.repeat(data.seen_embeddings[batch.gm_classes], f, axis=0)
    fake = models.generate(module, generator, embeddings, batch.gm_noise_key)
    fake = fake.reshape(n, f, -1)
    labels = batch.gm_classes[:, None]
    return losses.per_class_gradient_matching(
        loss_fn, thetas, (batch.gm_real_features, jnp.broadcast_to(labels, (n, r))),
        (fake, jnp.broadcast_to(labels, (n, f))), granularity="row")

  gm_value, gm_grad = jax.jit(independent_gm)(state.generator)
  grad_zero, _ = grad_and_aux(0.0)
  grad_beta, aux = grad_and_aux(beta)
  difference = jax.tree_util.tree_map(lambda a, b: (a - b) / beta, grad_beta, grad_zero)
  for got, want in zip(jax.tree_util.tree_leaves(difference),
                       jax.tree_util.tree_leaves(gm_grad)):
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-6)
  assert float(sum(jnp.sum(jnp.abs(g)) for g in jax.tree_util.tree_leaves(gm_grad))) > 0
  np.testing.assert_allclose(aux["gm_loss"], gm_value, rtol=1e-5)
  # The GM real batches are distinct classes, each of real examples of its class.
  classes = np.asarray(batch.gm_classes)
  assert len(set(classes)) == classes.size == spec.gm_num_classes
  features, labels = np.asarray(data.features), np.asarray(data.labels)
  for local_class, rows in zip(classes, np.asarray(batch.gm_real_features)):
    for row in rows:
      matches = np.flatnonzero((features == row).all(axis=1))
      assert matches.size and (labels[matches] == local_class).all()


def test_transductive_critic_batch_mixes_seen_and_unlabelled_unseen():
  dataset = tiny_dataset()
  spec, data, _, _ = _setup(tiny_config("wgan_su_gm", **{"train.batch_size": 9}), dataset)
  real, embeddings = jax.jit(critic_updates.critic_batch, static_argnums=0)(
      spec, data, jax.random.key(0))
  real, embeddings = np.asarray(real), np.asarray(embeddings)
  seen_rows = {tuple(x) for x in dataset.train_features}
  unseen_rows = {tuple(x) for x in dataset.test_unseen_features}
  seen_emb = {tuple(a) for a in dataset.class_embeddings[dataset.seen_classes]}
  unseen_emb = {tuple(a) for a in dataset.class_embeddings[dataset.unseen_classes]}
  assert all(tuple(x) in seen_rows for x in real[:6])
  assert all(tuple(x) in unseen_rows for x in real[6:])
  assert all(tuple(a) in seen_emb for a in embeddings[:6])
  assert all(tuple(a) in unseen_emb for a in embeddings[6:])
  # Adversarial labels cover seen and unseen classes.
  batch = jax.jit(train_step.draw_generator_batch, static_argnums=0)(
      spec, data, jax.random.key(1), {})
  assert int(jnp.max(batch.labels)) < 9
  assert train_step.generated_class_embeddings(spec, data).shape[0] == 9


@pytest.mark.parametrize("balanced", [True, False])
def test_critic_real_batch_is_class_balanced_or_uniform(balanced):
  # Class sizes 40 : 4 : 4 : 4 : 4 : 4.
  base = tiny_dataset(train_per_class=4)
  extra = np.repeat(base.train_features[:1], 36, axis=0)
  dataset = base.replace(
      train_features=np.concatenate([base.train_features, extra]),
      train_labels=np.concatenate([base.train_labels,
                                   np.full(36, base.seen_classes[0], np.int32)]))
  spec, data, _, _ = _setup(tiny_config("cwgan", **{"train.batch_size": 6000,
                                                 "train.class_balanced": balanced}), dataset)
  _, embeddings = jax.jit(critic_updates.critic_batch, static_argnums=0)(
      spec, data, jax.random.key(0))
  first_class = np.asarray(data.seen_embeddings[0])
  share = np.mean(np.all(np.asarray(embeddings) == first_class, axis=1))
  expected = 1 / 6 if balanced else 40 / 60
  assert abs(share - expected) < 0.03


def test_pretrained_cls_classifier_beats_chance_on_seen_classes():
  config = tiny_config("cwgan_cls", **{"cls.pretrain_epochs": 30, "cls.pretrain_lr": 0.01})
  spec, data, state, _ = _setup(config)
  _, apply_fn = classifiers.get_classifier("bilinear")
  logits = apply_fn(state.cls_classifier, data.features, data.seen_embeddings)
  accuracy = float(jnp.mean(jnp.argmax(logits, axis=1) == data.labels))
  assert accuracy > 0.6  # 6 classes: chance is 1/6


# --------------------------------------------------------------------------
# Precision: config.precision = "bfloat16" runs the generator's and critic's
# matrix products in bf16 (tests/test_models.py checks the modules alone).


def _relative_error(got, want):
  got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
  return float(np.linalg.norm(got - want) / np.linalg.norm(want))


@functools.cache
def _lowered_chunk(precision):
  """(spec, inputs, lowered 4-iteration chunk) of the cwgan_gm tiny problem."""
  dataset = tiny_dataset()
  config = tiny_config(precision=precision)
  spec = specs.train_spec(config, dataset)
  data = jax.device_put(train_state.make_train_data(dataset, spec))
  state = train_state.init_train_state(jax.random.key(0), spec, data)
  inputs = (state, data, specs.hyperparameters(config), jax.random.key(1), jnp.int32(0))
  return spec, inputs, jax.jit(_one_seed_chunk(spec, 4)).lower(*inputs)


_DOT = re.compile(r"dot_general .*: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)$")


def _dots(text):
  """[(lhs, rhs, out) tensor types] of every dot_general of a lowered program, in order."""
  dots = [_DOT.search(line) for line in text.splitlines() if "dot_general" in line]
  assert dots and all(dots)
  return [m.groups() for m in dots]


def test_float32_program_has_no_bfloat16():
  spec, _, lowered = _lowered_chunk("float32")
  assert spec.generator.dtype == jnp.float32 and spec.critic.dtype == jnp.float32
  text = lowered.as_text()
  assert _dots(text) and "bf16" not in text


def test_bfloat16_program_runs_the_networks_products_in_bf16():
  spec, _, lowered = _lowered_chunk("bfloat16")
  assert spec.generator.dtype == jnp.bfloat16 and spec.critic.dtype == jnp.bfloat16
  dots32, dots16 = _dots(_lowered_chunk("float32")[2].as_text()), _dots(lowered.as_text())
  # The same program but for dtypes: pairwise the same products.
  assert len(dots16) == len(dots32)
  bf16_count, critic_first_layer_seen = 0, False
  for dot16, dot32 in zip(dots16, dots32):
    assert [t.replace("bf16", "f32") for t in dot16] == list(dot32), (dot16, dot32)
    is_bf16 = ["bf16" in t for t in dot16]
    assert all(is_bf16) or not any(is_bf16), dot16  # No mixed-precision product.
    bf16_count += all(is_bf16)
    # The critic's first layer (its D x hidden = 16 x 8 feature block) is bf16.
    if "tensor<16x8xf32>" in dot32:
      assert all(is_bf16), dot16
      critic_first_layer_seen = True
    # Gradient matching (products vmapped over the GM classes: rank 3 and
    # more) and the latent_noise mu/logvar layers (the K x Z = 5 x 4 kernel)
    # stay float32.
    if any(t.count("x") >= 3 for t in dot32) or "tensor<5x4xf32>" in dot32:
      assert not any(is_bf16), dot16
  assert 0 < bf16_count < len(dots16) and critic_first_layer_seen


def test_bfloat16_training_stays_close_to_float32_on_a_tiny_problem():
  outcomes = {}
  for mode in ("float32", "bfloat16"):
    spec, inputs, lowered = _lowered_chunk(mode)
    assert spec.precision == mode
    outcomes[mode] = lowered.compile(_FAST_COMPILE)(*inputs)
  (f32_state, f32_metrics, f32_finite), (bf16_state, bf16_metrics, bf16_finite) = (
      outcomes["float32"], outcomes["bfloat16"])
  assert bool(f32_finite) and bool(bf16_finite)
  for leaf in jax.tree_util.tree_leaves((bf16_state.generator, bf16_state.critic,
                                         bf16_state.generator_opt, bf16_state.critic_opt)):
    if jnp.issubdtype(leaf.dtype, jnp.floating):
      assert leaf.dtype == jnp.float32
  for name in ("critic_loss", "gradient_penalty", "gm_loss", "generator_loss"):
    assert bf16_metrics[name].dtype == jnp.float32, name
    assert np.isfinite(bf16_metrics[name]).all(), name
    np.testing.assert_allclose(bf16_metrics[name], f32_metrics[name], rtol=0.1, atol=0.05,
                               err_msg=name)
  assert not np.array_equal(bf16_metrics["generator_loss"], f32_metrics["generator_loss"])
  for kernel in (lambda s: s.generator["layers"]["layer_0"]["kernel"],
                 lambda s: s.critic["layers"]["layer_0"]["kernel_features"]):
    assert 0 < _relative_error(kernel(bf16_state), kernel(f32_state)) < 1e-2


def test_unknown_precision_is_a_config_error():
  with pytest.raises(ConfigError, match=r"config\.precision: expected one of"):
    gmn_config.validate(tiny_config(precision="int8"), check_data_dir=False)
