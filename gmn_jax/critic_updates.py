"""Stage 1's critic updates: the batches of a critic scan and one WGAN-GP step.

`critic_batches` draws every step of an iteration's critic scan at once (the
generator is fixed during the scan, so one generator pass makes all their
fakes) and stacks each step's real, fake and interpolated features
(`wgan_gp.stack_inputs`); `update_critic` is one Adam step on the closed-form
WGAN-GP gradient (`gmn_jax.wgan_gp`). `critic_step` is one step drawing its
own batch (the benchmark's component, and tests). `train_step.train_iteration`
runs the scan. The reasons are a GPU's memory traffic (docs/benchmarks.md):
the generator's weights are read once per iteration instead of once per
step, and the critic's products are fewer and larger.
"""

from typing import Any, Callable, NamedTuple, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from gmn_jax import models
from gmn_jax import parallel
from gmn_jax import reference_batches
from gmn_jax import wgan_gp
from gmn_jax.data import samplers
from gmn_jax.specs import Hyperparameters, TrainSpec
from gmn_jax.train_state import TrainData


def critic_fn(spec: TrainSpec) -> Callable:
  """`critic_fn(params, features, embeddings) -> scores` of the run's critic.

  Args:
    spec: the run's settings.

  Returns:
    The critic's apply as the function `losses`' WGAN-GP terms take.
  """
  return lambda params, features, embeddings: spec.critic.apply({"params": params}, features,
                                                                 embeddings)


def _real_seen_indices(spec: TrainSpec, data: TrainData, key, count: int) -> jax.Array:
  if spec.class_balanced:
    return samplers.class_balanced_indices(key, data.class_index, count)
  return samplers.uniform_indices(key, data.features.shape[0], count)


def critic_batch(spec: TrainSpec, data: TrainData, key) -> Tuple[jax.Array, jax.Array]:
  """Draws one critic step's real features and the embeddings for its fakes.

  Args:
    spec: the run's settings.
    data: the training data.
    key: PRNG key.

  Returns:
    (real (B, D), embeddings (B, K)). The fakes are generated on
    `embeddings`; for a conditional critic they are also the condition of both
    batches. In the transductive variant the first `transductive_seen_count`
    rows are labelled seen examples (and their classes), the rest unlabelled
    unseen examples (and unseen classes drawn uniformly).
  """
  seen_key, unseen_key, class_key = jax.random.split(key, 3)
  if not spec.variant.transductive:
    indices = _real_seen_indices(spec, data, seen_key, spec.batch_size)
    return (parallel.constrain_batch(data.features[indices]),
            parallel.constrain_batch(data.seen_embeddings[data.labels[indices]]))
  n_seen = spec.transductive_seen_count
  n_unseen = spec.batch_size - n_seen
  seen_indices = _real_seen_indices(spec, data, seen_key, n_seen)
  unseen_indices = samplers.uniform_indices(unseen_key, data.unlabelled_features.shape[0],
                                            n_unseen)
  unseen_classes = jax.random.randint(class_key, (n_unseen,), 0, spec.num_unseen)
  real = jnp.concatenate([data.features[seen_indices],
                          data.unlabelled_features[unseen_indices]], axis=0)
  embeddings = jnp.concatenate([data.seen_embeddings[data.labels[seen_indices]],
                                data.unseen_embeddings[unseen_classes]], axis=0)
  return parallel.constrain_batch(real), parallel.constrain_batch(embeddings)


class CriticBatch(NamedTuple):
  """One critic step's inputs (stacked on a leading axis for the scan).

  Attributes:
    inputs: (3, B, D) the real features, the generator's fakes on
      `embeddings` (constants here) and the penalty's interpolates between
      them (`wgan_gp.stack_inputs`).
    embeddings: (B, K) the class embeddings the fakes are generated on (and
      the condition of all three for a conditional critic).
    mask: None (i.i.d.), or with reference sampling the (B,) bool mask of
      the valid rows (an epoch's short batch is padded).
  """

  inputs: jax.Array
  embeddings: jax.Array
  mask: Any = None


def critic_batches(spec: TrainSpec, data: TrainData, generator, step_keys, iterator=None
                   ) -> Tuple[CriticBatch, Any]:
  """The batches of a whole critic scan, with their fakes generated in one call.

  The generator is fixed during the critic steps, so every step's fakes come
  from one generator pass over the stacked batches: its weights are read
  once per iteration instead of once per step (the GPU program is bound by
  memory traffic, docs/benchmarks.md). The draws are those the steps would
  make one by one: step n's key gives its batch (or, with reference
  sampling, the iterator's next batch), its noise and its penalty key.

  Args:
    spec: the run's settings.
    data: the training data.
    generator: generator params (held fixed).
    step_keys: (n,) the steps' PRNG keys.
    iterator: with reference sampling, the `ReferenceSampler.critic`
      iterator before the first step; None otherwise.

  Returns:
    (a `CriticBatch` of arrays with leading axis n, the advanced iterator
    (None in i.i.d. mode)).
  """
  reference = spec.sampling == "reference"

  def draw(iterator, step_key):
    mask = None
    if reference:
      # The critic iterator advances one batch per step.
      draw_key, step_key = jax.random.split(step_key)
      iterator, (real, embeddings, mask) = reference_batches.critic_batch(
          spec, data, iterator, draw_key)
    batch_key, noise_key, penalty_key = jax.random.split(step_key, 3)
    if not reference:
      real, embeddings = critic_batch(spec, data, batch_key)
    noise = models.generator_noise(spec.generator, spec.batch_size, noise_key)
    return iterator, (real, embeddings, noise, penalty_key, mask)

  if reference:
    iterator, (real, embeddings, noise, penalty_keys, mask) = lax.scan(draw, iterator, step_keys)
  else:
    # Independent draws: one vectorised draw, not a loop of launches.
    _, (real, embeddings, noise, penalty_keys, mask) = jax.vmap(
        lambda key: draw(None, key))(step_keys)
  steps, rows = embeddings.shape[:2]
  # The barrier keeps XLA from merging this pass with the generator step's
  # (same weights): the merged product would copy both passes' activations
  # into one buffer, more traffic than reading the weights twice.
  fake = spec.generator.apply({"params": lax.optimization_barrier(generator)},
                              embeddings.reshape(steps * rows, -1),
                              noise.reshape(steps * rows, -1))
  fake = lax.stop_gradient(fake).reshape(steps, rows, -1)
  # Stacked for all steps at once: one pass writes them (cheaper on a GPU
  # than a stack per step).
  inputs = parallel.constrain_batch(jax.vmap(wgan_gp.stack_inputs)(real, fake, penalty_keys),
                                    axis=2)
  return CriticBatch(inputs, embeddings, mask), iterator


def update_critic(spec: TrainSpec, hyper: Hyperparameters, critic, critic_opt,
                  batch: CriticBatch):
  """One WGAN-GP critic update on a drawn batch.

  The loss and its gradient come from `wgan_gp.critic_loss_and_grads`, the
  closed form of `jax.value_and_grad(losses.critic_loss)` (the same numbers
  to float rounding, in fewer and larger products).

  Args:
    spec: the run's settings.
    hyper: the numeric settings.
    critic: critic params.
    critic_opt: the critic's Adam state.
    batch: the step's `CriticBatch` (unstacked).

  Returns:
    (critic, critic_opt, metrics) with metrics "critic_loss", "wasserstein",
    "gradient_penalty", "critic_grad_norm".
  """
  condition = batch.embeddings if spec.variant.conditional_critic else None
  loss, aux, grads = wgan_gp.critic_loss_and_grads(
      spec.critic, critic, batch.inputs, condition, gp_weight=hyper.gp_weight, mask=batch.mask)
  optimizer = hyper.critic_optimizer(**spec.adam_options)
  updates, critic_opt = optimizer.update(grads, critic_opt, critic)
  metrics = {"critic_loss": loss, "wasserstein": aux["wasserstein"],
             "gradient_penalty": aux["gradient_penalty"],
             "critic_grad_norm": optax.global_norm(grads)}
  return optax.apply_updates(critic, updates), critic_opt, metrics


def critic_step(spec: TrainSpec, hyper: Hyperparameters, critic, critic_opt, generator,
                data: TrainData, key, batch=None):
  """One WGAN-GP critic update, drawing its own batch (one step of the scan).

  Args:
    spec: the run's settings.
    hyper: the numeric settings.
    critic: critic params.
    critic_opt: the critic's Adam state.
    generator: generator params (held fixed).
    data: the training data.
    key: PRNG key (split as the scan's steps split theirs).
    batch: (real (B, D), embeddings (B, K), mask (B,)) drawn by the caller
      (reference sampling, `reference_batches.critic_batch`), every mean of
      the loss over the mask's rows; None draws an i.i.d. batch
      (`critic_batch`).

  Returns:
    (critic, critic_opt, metrics) of `update_critic`.
  """
  batch_key, noise_key, penalty_key = jax.random.split(key, 3)
  mask = None
  if batch is None:
    real, embeddings = critic_batch(spec, data, batch_key)
  else:
    real, embeddings, mask = batch
  fake = lax.stop_gradient(models.generate(spec.generator, generator, embeddings, noise_key))
  inputs = wgan_gp.stack_inputs(real, fake, penalty_key)
  return update_critic(spec, hyper, critic, critic_opt, CriticBatch(inputs, embeddings, mask))
