"""Stage 1's device-resident data and training state, and a seed's PRNG streams.

* `TrainData`: the training data as a small pytree of arrays that lives on
  the device, in *local* class indices: seen classes are 0..S-1 in the order
  of `dataset.seen_classes`, unseen classes S..S+U-1 (transductive only).
* `TrainState`: a NamedTuple of everything that changes during training
  (generator/critic params and Adam states, the θ-sampler state, the frozen
  L_CLS classifier, the reference iterators' state, the iteration counter).
  A pure function of the seed.
* `seed_keys`: the independent PRNG streams of one generator seed.

The static settings and hyperparameters that go with them are in
`gmn_jax.specs`.
"""

import functools
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from gmn_jax import classifiers
from gmn_jax import losses
from gmn_jax import models
from gmn_jax import optimizers
from gmn_jax import reference_batches
from gmn_jax import regressor
from gmn_jax import vae
from gmn_jax.data import samplers
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.specs import TrainSpec

# Sub-keys of a seed's PRNG key (fold_in constants), one per consumer.
_INIT_STREAM, _TRAIN_STREAM, _EVAL_STREAM = 0, 1, 2


class SeedKeys(NamedTuple):
  """The PRNG streams of one generator seed.

  Attributes:
    init: the initial state (networks, θ sampler, L_CLS pretraining).
    train: stage 1's iterations (`fold_in(train, iteration)`).
    eval: stage 2 (synthesis and final classifiers).
  """

  init: jax.Array
  train: jax.Array
  eval: jax.Array


def seed_keys(seed: int) -> SeedKeys:
  """The independent PRNG streams of a generator seed.

  Args:
    seed: the generator seed.

  Returns:
    Its `SeedKeys` (folded from `jax.random.key(seed)`).
  """
  base = jax.random.key(seed)
  return SeedKeys(*(jax.random.fold_in(base, s)
                    for s in (_INIT_STREAM, _TRAIN_STREAM, _EVAL_STREAM)))


class TrainData(NamedTuple):
  """Stage 1's data on the device, in local class indices.

  Attributes:
    features: (N, D) float32 real seen training features.
    labels: (N,) int32 local seen class of each (0..S-1).
    class_index: `samplers.ClassIndex` over the local seen classes.
    seen_embeddings: (S, K) embeddings of the seen classes.
    unseen_embeddings: (U, K) embeddings of the unseen classes.
    unlabelled_features: (N_u, D) unlabelled unseen test features for the
      transductive variant; (0, D) otherwise (never read then).
  """

  features: jax.Array
  labels: jax.Array
  class_index: samplers.ClassIndex
  seen_embeddings: jax.Array
  unseen_embeddings: jax.Array
  unlabelled_features: jax.Array


def make_train_data(dataset: ZSLDataset, spec: TrainSpec) -> TrainData:
  """Builds the device pytree of stage 1 from a dataset (host side, once).

  Args:
    dataset: the loaded dataset.
    spec: the run's settings (decides whether unseen test features are kept).

  Returns:
    A `TrainData` of numpy arrays (`jax.device_put` it, or pass it to jit).
  """
  seen = np.asarray(dataset.seen_classes)
  local = np.searchsorted(seen, dataset.train_labels).astype(np.int32)
  embeddings = np.asarray(dataset.class_embeddings, np.float32)
  if spec.variant.transductive:
    unlabelled = np.asarray(dataset.test_unseen_features, np.float32)
  else:
    unlabelled = np.zeros((0, dataset.feature_dim), np.float32)
  return TrainData(
      features=np.asarray(dataset.train_features, np.float32),
      labels=local,
      class_index=samplers.build_class_index(local, np.arange(seen.size)),
      seen_embeddings=embeddings[seen],
      unseen_embeddings=embeddings[np.asarray(dataset.unseen_classes)],
      unlabelled_features=unlabelled,
  )


class TrainState(NamedTuple):
  """Everything stage 1 changes, plus the frozen L_CLS classifier.

  Attributes:
    iteration: int32 scalar, generator iterations done so far.
    generator: generator params.
    critic: the critic's params; for the cvae objective the encoder's (the
      network trained beside the generator); {} for the mmd objective.
    generator_opt: the generator's Adam state.
    critic_opt: the critic's (or encoder's) Adam state.
    theta_sampler: the θ sampler's state (an empty dict for random_init).
    cls_classifier: the frozen, pretrained seen-class classifier of L_CLS (an
      empty dict when the variant has no L_CLS).
    regressor: the frozen, pretrained feature-to-embedding regressor of
      L_REG (`gmn_jax.regressor`; an empty dict when the variant has none).
    batch_sampler: with `train.sampling = "reference"` the state of the
      reference's epoch iterators (`reference_sampling.ReferenceSampler`,
      int32 arrays, checkpointed with the rest so that a resumed run
      continues their epochs); an empty dict for i.i.d. sampling.
  """

  iteration: jax.Array
  generator: Any
  critic: Any
  generator_opt: Any
  critic_opt: Any
  theta_sampler: Any
  cls_classifier: Any
  regressor: Any
  batch_sampler: Any


def _fit_with_adam(params, loss_fn, rows, key, *, epochs: int, batch_size: int,
                   learning_rate):
  """Adam on `loss_fn(params, *batch_rows)` over shuffled mini-batches of `rows`.

  The pretraining of the frozen networks (L_CLS classifier, L_REG regressor):
  `epochs` passes, batches of min(batch_size, N) rows, the last incomplete
  batch dropped.

  Returns:
    The trained parameters.
  """
  n = rows[0].shape[0]
  optimizer = optax.adam(learning_rate)

  def step(carry, indices):
    p, opt_state = carry
    grads = jax.grad(loss_fn)(p, *(r[indices] for r in rows))
    updates, opt_state = optimizer.update(grads, opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), None

  def epoch(carry, epoch_key):
    batches = samplers.epoch_batches(epoch_key, n, min(batch_size, n), drop_remainder=True)
    return lax.scan(step, carry, batches.indices)[0], None

  keys = jax.random.split(key, epochs)
  return lax.scan(epoch, (params, optimizer.init(params)), keys)[0][0]


@functools.partial(jax.jit, static_argnums=0)
def _pretrain(spec: TrainSpec, key, features, labels, seen_embeddings):
  init_fn, apply_fn = classifiers.get_classifier(spec.cls_classifier)
  init_key, shuffle_key = jax.random.split(key)
  params = init_fn(init_key, feature_dim=spec.feature_dim, embedding_dim=spec.embedding_dim,
                   num_classes=spec.num_seen)
  loss_fn = lambda p, x, y: losses.classifier_loss(apply_fn, p, x, y, seen_embeddings)
  return _fit_with_adam(params, loss_fn, (features, labels), shuffle_key,
                        epochs=spec.cls_pretrain_epochs, batch_size=spec.batch_size,
                        learning_rate=spec.cls_pretrain_lr)


@functools.partial(jax.jit, static_argnums=0)
def _pretrain_regressor(spec: TrainSpec, key, features, labels, seen_embeddings):
  init_key, shuffle_key = jax.random.split(key)
  params = regressor.init_regressor(init_key, spec.feature_dim, spec.embedding_dim)
  return _fit_with_adam(params, regressor.regression_loss, (features, seen_embeddings[labels]),
                        shuffle_key, epochs=spec.regressor_pretrain_epochs,
                        batch_size=spec.regressor_pretrain_batch_size,
                        learning_rate=spec.regressor_pretrain_lr)


def pretrain_seen_classifier(key, spec: TrainSpec, data: TrainData):
  """Trains the frozen L_CLS classifier on real seen train features.

  Adam (lr `cls_pretrain_lr`) for `cls_pretrain_epochs` epochs of shuffled
  batches of `batch_size` (the last, incomplete batch dropped), cross-entropy
  with logits over the seen classes. This plays the role of the reference's
  separately pretrained checkpoint (`--pretrained_clf_ckpt`).

  Args:
    key: PRNG key (init and shuffling).
    spec: the run's settings.
    data: the training data.

  Returns:
    The classifier params.
  """
  return _pretrain(spec, key, data.features, data.labels, data.seen_embeddings)


@functools.partial(jax.jit, static_argnums=0)
def _init_networks(spec: TrainSpec, key):
  """Generator, critic, their Adam states and the θ-sampler state (one program)."""
  gen_key, critic_key, theta_key = jax.random.split(key, 3)
  generator = models.init_generator(spec.generator, gen_key)
  critic = {}  # the mmd objective trains no second network
  if spec.variant.has_critic:
    critic = models.init_critic(spec.critic, critic_key)
  elif spec.variant.objective == "cvae":
    critic = vae.init_encoder(spec.encoder, critic_key)
  theta_state = spec.theta_sampler().init(theta_key) if spec.variant.gradient_matching else {}
  # Adam's state does not depend on its settings, which come later as
  # (traced) `Hyperparameters`.
  return (generator, critic, optimizers.init_state(generator, spec.adam_moment_dtype),
          optimizers.init_state(critic, spec.adam_moment_dtype), theta_state)


def init_train_state(key, spec: TrainSpec, data: TrainData) -> TrainState:
  """The state before iteration 0 (a pure function of key).

  Args:
    key: PRNG key of this generator seed's initialisation.
    spec: the run's settings.
    data: the training data (read when the variant has L_CLS or L_REG,
      whose networks are pretrained here, and for reference sampling, whose
      iterators it sizes).

  Returns:
    The initial `TrainState`.
  """
  network_key, cls_key = jax.random.split(key)
  # Its own stream: adding L_REG leaves the other networks' draws unchanged.
  regressor_key = jax.random.fold_in(key, 2)
  generator, critic, generator_opt, critic_opt, theta_state = _init_networks(spec, network_key)
  cls_classifier = {}
  if spec.variant.classification_loss:
    cls_classifier = pretrain_seen_classifier(cls_key, spec, data)
  regressor_params = {}
  if spec.variant.regression_loss:
    regressor_params = _pretrain_regressor(spec, regressor_key, data.features, data.labels,
                                           data.seen_embeddings)
  # Exhausted iterators, a constant: the first iteration draws their orders.
  batch_sampler = {}
  if spec.sampling == "reference":
    batch_sampler = reference_batches.init_sampler(spec, data)
  return TrainState(
      iteration=jnp.zeros((), jnp.int32),
      generator=generator,
      critic=critic,
      generator_opt=generator_opt,
      critic_opt=critic_opt,
      theta_sampler=theta_state,
      cls_classifier=cls_classifier,
      regressor=regressor_params,
      batch_sampler=batch_sampler,
  )
