"""Stage 1's step: one generator iteration, a pure function (`train_iteration`).

One generator iteration t (all randomness from `fold_in(base_key, t)`, so a
resumed run repeats an uninterrupted one bit for bit):

1. `n_critic` critic steps: a real batch (class-balanced or uniform; in the
   transductive variant seen and unlabelled unseen features in the
   proportion S:U), fakes from the generator on the real batch's class
   embeddings, WGAN-GP loss, Adam. Every step's batch is drawn first and
   their fakes come from one generator pass (`critic_updates`); the loss
   and its gradient are `gmn_jax.wgan_gp`'s closed form of autodiff's.
2. One generator step on
   `-mean D(G(a_y)) + R·L_REG + β·L_GM + c·L_CLS`, labels y uniform over the
   generated classes (seen, or seen ∪ unseen when transductive); L_GM over
   `gm_num_classes` distinct seen classes, each with a real batch of that
   class and `gm_fake_repeat`× as many fakes, summed over classes, θ from the
   θ sampler, logits over all seen classes; L_CLS and L_REG from the frozen
   seen-class classifier and regressor on the adversarial fakes; all of
   the step's fakes from one generator pass (`step_terms.generate_together`).
   Adam (`gmn_jax.optimizers`: without its unused first moment when β1 = 0).
3. The θ sampler advances (the trajectory takes its SGD step).

Methods without a critic (`Variant.objective`) skip step 1 and replace the
adversarial term: "mmd" by the per-class maximum mean discrepancy between
real and generated features (GMMN), "cvae" by a conditional VAE's loss on a
real batch, whose encoder takes the critic's place in the state and is
updated with the generator (SE-GZSL).

With `spec.sampling == "reference"` the critic batches, the adversarial
labels and the GM classes and real batches come from the reference code's
epoch iterators instead (`gmn_jax.reference_batches`; their state is
`TrainState.batch_sampler`, carried through the critic scan and the chunk's
loop): short remainder batches are padded, and every mean over their rows
(WGAN-GP, adversarial, L_CLS, L_REG, and GM's real and fake classifier
losses) is masked to the valid ones.

Everything is a pure function of (state, data, hyper, key), where `hyper`
holds the numeric settings as traced scalars (changing a learning rate or a
loss weight does not recompile); no host callbacks, so the step can be
vmapped over seeds. `gmn_jax.train_chunk` runs many iterations of S seeds
in one jitted loop.

Data parallelism: called inside `parallel.data_parallel(mesh)`, every batch
drawn here (critic batches, the adversarial batch, the GM real and fake
batches) is split over the mesh's 'data' axis by `parallel.constrain_batch`
while state and data stay replicated; XLA inserts the all-reduces (the GM
inner gradients are summed before the cosine). Outside a mesh the
constraints are no-ops. The networks are `spec.generator` and `spec.critic`
(flax modules, `gmn_jax.models`), whose dtype (`config.precision`) is that of
their matrix products; their outputs, and so every loss, are float32.
"""

from typing import Any, Dict, NamedTuple, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from gmn_jax import classifiers
from gmn_jax import critic_updates
from gmn_jax import losses
from gmn_jax import mmd
from gmn_jax import parallel
from gmn_jax import reference_batches
from gmn_jax import regressor
from gmn_jax import step_terms
from gmn_jax import vae
from gmn_jax.data import samplers
from gmn_jax.specs import Hyperparameters, TrainSpec
from gmn_jax.train_state import TrainData, TrainState

Metrics = Dict[str, jax.Array]


def generated_class_embeddings(spec: TrainSpec, data: TrainData) -> jax.Array:
  """Embeddings of the classes the generator is trained on (local order).

  Args:
    spec: the run's settings.
    data: the training data.

  Returns:
    (S, K), or (S + U, K) in the transductive variant (seen rows first).
  """
  if spec.variant.transductive:
    return jnp.concatenate([data.seen_embeddings, data.unseen_embeddings], axis=0)
  return data.seen_embeddings


class GeneratorBatch(NamedTuple):
  """The random draws of one generator step (fixed before differentiating).

  Attributes:
    labels: (B,) local classes of the adversarial fakes (indices into
      `generated_class_embeddings`).
    noise_key: PRNG key of the adversarial fakes' noise.
    gm_classes: (n,) local seen classes of gradient matching: distinct, or
      with reference sampling the next n of the class cycle (which repeat a
      class when the cycle ends mid-step).
    gm_real_features: (n, r, D) real features, row j of class gm_classes[j].
    gm_noise_key: PRNG key of the GM fakes' noise: the fakes are
      `models.generate(spec.generator, params, repeat(seen_embeddings[
      gm_classes], f·r), gm_noise_key)` reshaped to (n, f·r, D) (see
      `step_terms.class_batch_embeddings`).
    thetas: the sampled classifier parameters, leading axis M.
    mmd_classes: (n,) distinct local seen classes of the MMD objective.
    mmd_real_features: (n, r, D) their real features (the MMD's fakes are
      drawn with `gm_noise_key`, which GM and MMD never both use).
    vae_real_features: (B, D) the cvae objective's real batch (drawn as the
      critic's, class-balanced or uniform); (0, D) otherwise.
    vae_real_embeddings: (B, K) their class embeddings.
    label_mask: None (i.i.d.), or with reference sampling the (B,) bool mask
      of the valid rows of `labels` (an epoch's short batch is padded).
    gm_real_mask: None, or the (n, r) bool masks of `gm_real_features`;
      the fakes' masks follow (`reference_batches.fake_mask`).
  """

  labels: jax.Array
  noise_key: jax.Array
  gm_classes: jax.Array
  gm_real_features: jax.Array
  gm_noise_key: jax.Array
  thetas: Any
  mmd_classes: Any = ()
  mmd_real_features: Any = ()
  vae_real_features: Any = ()
  vae_real_embeddings: Any = ()
  label_mask: Any = None
  gm_real_mask: Any = None


def draw_generator_batch(spec: TrainSpec, data: TrainData, key, thetas) -> GeneratorBatch:
  """Draws everything random in one generator step.

  Args:
    spec: the run's settings.
    data: the training data.
    key: PRNG key.
    thetas: the θ samples of this iteration (ignored without GM; pass {}).

  Returns:
    A `GeneratorBatch` (its GM fields are empty arrays without GM).
  """
  label_key, noise_key, class_key, real_key, gm_noise_key = jax.random.split(key, 5)
  labels = jax.random.randint(label_key, (spec.batch_size,), 0, spec.num_generated_classes)

  def per_class_real(num_classes, per_class):
    classes = samplers.distinct_classes(class_key, jnp.arange(spec.num_seen), num_classes)
    indices = samplers.per_class_batch(real_key, data.class_index, classes, per_class)
    # Split over devices along the examples of each class.
    return classes, parallel.constrain_batch(data.features[indices], axis=1)

  none = (jnp.zeros((0,), jnp.int32), jnp.zeros((0, 0, spec.feature_dim), jnp.float32))
  gm = none
  if spec.variant.gradient_matching:
    gm = per_class_real(spec.gm_num_classes, spec.gm_real_per_class)
  mmd = none
  if spec.variant.objective == "mmd":
    mmd = per_class_real(spec.mmd_num_classes, spec.mmd_real_per_class)
  vae_batch = (jnp.zeros((0, spec.feature_dim), jnp.float32),
               jnp.zeros((0, spec.embedding_dim), jnp.float32))
  if spec.variant.objective == "cvae":
    vae_batch = critic_updates.critic_batch(spec, data, real_key)
  return GeneratorBatch(labels, noise_key, *gm, gm_noise_key, thetas, *mmd, *vae_batch)


def draw_reference_generator_batch(spec: TrainSpec, data: TrainData, key, thetas, sampler
                                   ) -> Tuple[GeneratorBatch, Any]:
  """`draw_generator_batch` with reference sampling: the draws of the iterators.

  The labels, GM classes and GM real batches come from `sampler`
  (`reference_batches.generator_draws`), with their masks; the noise keys
  are those `draw_generator_batch` would use.

  Args:
    spec: the run's settings (`spec.sampling == "reference"`).
    data: the training data.
    key: PRNG key.
    thetas: the θ samples of this iteration ({} without GM).
    sampler: the `reference_sampling.ReferenceSampler` before this step.

  Returns:
    (the `GeneratorBatch`, the advanced sampler).
  """
  label_key, noise_key, class_key, _, gm_noise_key = jax.random.split(key, 5)
  sampler, labels, label_mask, gm_classes, gm_real, gm_mask = reference_batches.generator_draws(
      spec, data, sampler, label_key, class_key)
  batch = GeneratorBatch(labels, noise_key, gm_classes, gm_real, gm_noise_key, thetas,
                         label_mask=label_mask, gm_real_mask=gm_mask)
  return batch, sampler


def generator_loss(generator, spec: TrainSpec, hyper: Hyperparameters, critic,
                   frozen: TrainState, data: TrainData,
                   batch: GeneratorBatch) -> Tuple[jax.Array, Metrics]:
  """The generator's objective L_obj + R·L_REG + β·L_GM + c·L_CLS.

  L_obj is the variant's objective: -mean D(G(a_y)) (wgan), the per-class
  MMD of `gmn_jax.mmd` (mmd), or the conditional VAE's reconstruction error
  + w_kl·KL on a real batch (cvae, `gmn_jax.vae`, the generator as its
  decoder); the other terms are there where the variant has them (L_REG
  on the fakes G(z, a_y) drawn from the prior: SE-GZSL's feedback).

  Args:
    generator: generator params (differentiated).
    spec: the run's settings.
    hyper: the numeric settings (R, β and c).
    critic: critic params (fixed; {} without a critic); for the cvae
      objective the encoder's (differentiated too).
    frozen: the state whose frozen networks the terms read (`cls_classifier`,
      `regressor`; {} where the variant has none).
    data: the training data.
    batch: this step's draws.

  Returns:
    (loss, metrics) with, where the variant has them, "adversarial_loss",
    "mmd_loss", "reconstruction_loss" and "kl_loss", and the unweighted
    "regression_loss", "gm_loss" and "cls_loss".
  """
  embeddings = parallel.constrain_batch(generated_class_embeddings(spec, data)[batch.labels])
  # Every fake batch of the step from one generator pass (`generate_together`).
  segments = {}
  if (spec.variant.objective == "wgan" or spec.variant.regression_loss
      or spec.variant.classification_loss):
    segments["adversarial"] = (embeddings, batch.noise_key)
  if spec.variant.gradient_matching:
    segments["gm"] = (step_terms.class_batch_embeddings(
        data, batch.gm_classes, spec.gm_fake_repeat * spec.gm_real_per_class),
                      batch.gm_noise_key)
  if spec.variant.objective == "mmd":
    segments["mmd"] = (step_terms.class_batch_embeddings(
        data, batch.mmd_classes, spec.mmd_fake_per_class), batch.gm_noise_key)
  fakes = step_terms.generate_together(spec, generator, segments) if segments else {}
  fake = fakes.get("adversarial")
  loss, metrics = jnp.float32(0.0), {}
  if spec.variant.objective == "wgan":
    condition = embeddings if spec.variant.conditional_critic else None
    adversarial = losses.generator_adversarial_loss(
        critic_updates.critic_fn(spec), critic, fake, condition, mask=batch.label_mask)
    loss, metrics["adversarial_loss"] = adversarial, adversarial
  elif spec.variant.objective == "mmd":
    mmd_fake = fakes["mmd"].reshape(batch.mmd_classes.shape[0], spec.mmd_fake_per_class,
                                    spec.feature_dim)
    discrepancy = mmd.per_class_mmd(batch.mmd_real_features, mmd_fake, spec.mmd_bandwidths)
    loss, metrics["mmd_loss"] = discrepancy, discrepancy
  elif spec.variant.objective == "cvae":
    # `critic` holds the encoder here; both are differentiated.
    loss, vae_metrics = vae.cvae_loss(spec.encoder, critic, spec.generator, generator,
                                      batch.vae_real_features, batch.vae_real_embeddings,
                                      batch.gm_noise_key, kl_weight=hyper.kl_weight)
    metrics.update({name: vae_metrics[name] for name in ("reconstruction_loss", "kl_loss")})
  if spec.variant.regression_loss:
    regression = regressor.regression_loss(frozen.regressor, fake, embeddings,
                                           mask=batch.label_mask)
    loss, metrics["regression_loss"] = loss + hyper.regression_weight * regression, regression
  if spec.variant.gradient_matching:
    gm = step_terms.gradient_matching_loss(spec, generator, data, batch, fakes["gm"])
    loss, metrics["gm_loss"] = loss + hyper.gm_weight * gm, gm
  if spec.variant.classification_loss:
    _, apply_fn = classifiers.get_classifier(spec.cls_classifier)
    # Labels are seen classes here: L_CLS variants are never transductive.
    cls = losses.frozen_classifier_loss(apply_fn, frozen.cls_classifier, fake, batch.labels,
                                        data.seen_embeddings, mask=batch.label_mask)
    loss, metrics["cls_loss"] = loss + hyper.cls_weight * cls, cls
  return loss, metrics


# Whether the critic scan is unrolled; None: by the default backend
# (`unroll_critic_steps`). Compiling for a GPU from a CPU host
# (`experiments.benchmarking.gpu_aot`) sets True.
UNROLL_CRITIC_STEPS = None


def unroll_critic_steps() -> bool:
  """Whether the critic scan is unrolled: on accelerators, not on a CPU.

  Unrolled, a GPU runs the whole iteration as one command buffer (CUDA
  graph) and XLA updates each step's buffers in place; on a CPU it only
  lengthens compilation. The numbers are the same either way.

  Returns:
    `UNROLL_CRITIC_STEPS` when set, else whether the backend is not a CPU.
  """
  if UNROLL_CRITIC_STEPS is not None:
    return UNROLL_CRITIC_STEPS
  return jax.default_backend() != "cpu"


def train_iteration(spec: TrainSpec, state: TrainState, data: TrainData, hyper: Hyperparameters,
                    base_key, iteration=None) -> Tuple[TrainState, Metrics]:
  """One generator iteration (n_critic critic steps, one generator step).

  Args:
    spec: the run's settings.
    state: the state before the iteration (with reference sampling its
      `batch_sampler` supplies, and is advanced by, every batch drawn).
    data: the training data.
    hyper: the numeric settings.
    base_key: the run's PRNG key; this iteration uses
      `fold_in(base_key, iteration)`.
    iteration: the 0-based index of this iteration; None reads
      `state.iteration`. The chunk passes its own counter, which is shared by
      every seed of a vmapped group (they are always at the same iteration),
      so that the θ sampler's restart test stays a real branch under vmap.

  Returns:
    (new state, metrics of the iteration: the critic's averaged over its
    steps, plus "generator_loss" and "generator_grad_norm").
  """
  if iteration is None:
    iteration = state.iteration
  key = jax.random.fold_in(base_key, iteration)
  critic_key, generator_key, theta_key, trajectory_key = jax.random.split(key, 4)
  reference = spec.sampling == "reference"
  sampler = state.batch_sampler

  critic, critic_opt, metrics = state.critic, state.critic_opt, {}
  if spec.variant.has_critic:
    batches, critic_iterator = critic_updates.critic_batches(
        spec, data, state.generator, jax.random.split(critic_key, spec.n_critic),
        sampler.critic if reference else None)

    def one_critic_step(carry, batch):
      critic, critic_opt, metrics = critic_updates.update_critic(spec, hyper, *carry, batch)
      return (critic, critic_opt), metrics

    (critic, critic_opt), critic_metrics = lax.scan(
        one_critic_step, (state.critic, state.critic_opt), batches,
        unroll=unroll_critic_steps())
    metrics = {name: jnp.mean(values) for name, values in critic_metrics.items()}
    if reference:
      sampler = sampler._replace(critic=critic_iterator)

  theta_state, thetas = state.theta_sampler, {}
  if spec.variant.gradient_matching:
    theta_sampler = spec.theta_sampler(hyper)
    thetas, theta_state = theta_sampler.sample(theta_state, theta_key, iteration)
  if reference:
    batch, sampler = draw_reference_generator_batch(spec, data, generator_key, thetas, sampler)
  else:
    batch = draw_generator_batch(spec, data, generator_key, thetas)
  optimizer = hyper.generator_optimizer(**spec.adam_options)
  if spec.variant.objective == "cvae":
    # The encoder (in the critic's place) trains with the decoder, one loss.
    (loss, generator_metrics), (grads, encoder_grads) = jax.value_and_grad(
        generator_loss, argnums=(0, 3), has_aux=True)(
            state.generator, spec, hyper, critic, state, data, batch)
    updates, critic_opt = optimizer.update(encoder_grads, critic_opt, critic)
    critic = optax.apply_updates(critic, updates)
  else:
    (loss, generator_metrics), grads = jax.value_and_grad(generator_loss, has_aux=True)(
        state.generator, spec, hyper, critic, state, data, batch)
  updates, generator_opt = optimizer.update(grads, state.generator_opt, state.generator)
  generator = optax.apply_updates(state.generator, updates)
  metrics.update(generator_metrics)
  metrics["generator_loss"] = loss
  metrics["generator_grad_norm"] = optax.global_norm(grads)

  if spec.variant.gradient_matching and theta_sampler.needs_real_batches:
    # i.i.d. in both sampling modes (`reference_batches` says why).
    m, b = spec.num_theta_samples, spec.batch_size
    indices = samplers.class_balanced_indices(trajectory_key, data.class_index, m * b)
    indices = indices.reshape(m, b)
    theta_state = theta_sampler.step(theta_state, data.features[indices], data.labels[indices],
                                     data.seen_embeddings)

  new_state = state._replace(iteration=state.iteration + 1, generator=generator,
                             critic=critic, generator_opt=generator_opt,
                             critic_opt=critic_opt, theta_sampler=theta_state,
                             batch_sampler=sampler)
  return new_state, metrics
