"""The generator step's per-class terms: generated class batches and L_GM.

`generate_together` generates several batches in one generator pass (the
step's adversarial fakes and the per-class fakes of gradient matching or of
the MMD objective, on `class_batch_embeddings`); `gradient_matching_loss` is the
step's L_GM over a `train_step.GeneratorBatch`, by the Gram form
(`gmn_jax.gram_gradient_matching`) or by autodiff
(`losses.per_class_gradient_matching`), masked to the valid rows with
reference sampling. `train_step.generator_loss` adds them to the generator's
objective.
"""

from typing import Any, Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gmn_jax import classifiers
from gmn_jax import gram_gradient_matching
from gmn_jax import losses
from gmn_jax import models
from gmn_jax import parallel
from gmn_jax import reference_batches
from gmn_jax.specs import TrainSpec
from gmn_jax.train_state import TrainData


def class_batch_embeddings(data: TrainData, classes, per_class: int) -> jax.Array:
  """The embeddings of per-class batches: (n · per_class, K), row j of class j // per_class.

  Args:
    data: the training data.
    classes: (n,) local seen classes.
    per_class: rows per class.

  Returns:
    The repeated seen-class embeddings.
  """
  return jnp.repeat(data.seen_embeddings[classes], per_class, axis=0)


def generate_together(spec: TrainSpec, generator, segments: Dict[str, Tuple[jax.Array, Any]]
                      ) -> Dict[str, jax.Array]:
  """Several generated batches from ONE generator pass (same values as one pass each).

  Each segment's noise is drawn from its own key at its own size, exactly as
  `models.generate` draws it, so every row equals its separate generation.
  One pass over the concatenated rows makes each layer one product forward
  and one weight-gradient product backward; separate passes would each
  write a gradient that the optimizer then sums (memory traffic on a GPU,
  docs/benchmarks.md).

  Args:
    spec: the run's settings.
    generator: generator params.
    segments: {name: ((rows, K) embeddings, PRNG key of their noise)}.

  Returns:
    {name: (rows, D) features}.
  """
  names = list(segments)
  embeddings = [segments[name][0] for name in names]
  noise = [models.generator_noise(spec.generator, segments[name][0].shape[0], segments[name][1])
           for name in names]
  fake = spec.generator.apply({"params": generator},
                              parallel.constrain_batch(jnp.concatenate(embeddings)),
                              parallel.constrain_batch(jnp.concatenate(noise)))
  ends = np.cumsum([e.shape[0] for e in embeddings])
  return {name: parallel.constrain_batch(fake[end - e.shape[0]:end])
          for name, e, end in zip(names, embeddings, ends)}


def gm_classifier_loss_fn(spec: TrainSpec, data: TrainData) -> Callable:
  """`loss_fn(theta, (features, labels), mask=None)` of GM: CE, logits over all seen classes.

  Args:
    spec: the run's settings.
    data: the training data.

  Returns:
    The loss function `losses.gradient_matching` differentiates.
  """
  _, apply_fn = classifiers.get_classifier(spec.gm_classifier)

  def loss_fn(theta, batch, mask=None):
    features, labels = batch
    return losses.classifier_loss(apply_fn, theta, features, labels, data.seen_embeddings,
                                  mask)

  return loss_fn


def gm_head_loss_fn(spec: TrainSpec, data: TrainData) -> Callable:
  """`gm_classifier_loss_fn` written after the classifier's kernel, for the Gram path.

  Args:
    spec: the run's settings.
    data: the training data.

  Returns:
    `head_loss_fn(theta_without_kernel, features @ kernel, labels, mask=None)`,
    equal to `gm_classifier_loss_fn(spec, data)(theta, (features, labels), mask)`.
  """
  head = classifiers.get_classifier_head(spec.gm_classifier)

  def head_loss_fn(theta, projected, labels, mask=None):
    return losses.cross_entropy(head(theta, projected, data.seen_embeddings), labels, mask)

  return head_loss_fn


def gradient_matching_loss(spec: TrainSpec, generator, data: TrainData,
                           batch, fake=None) -> jax.Array:
  """L_GM: per-class gradient matching over this step's classes.

  `spec.gm_implementation` picks how: "gram" (exact, from the batches' Gram
  matrices, `gram_gradient_matching.per_class_linear_head_gradient_matching`)
  or "autodiff" (`losses.per_class_gradient_matching` on the classifier
  loss). Both compute the same loss. With reference sampling the real
  batches' masks (and the fakes', `gm_fake_repeat` per valid real row) make
  each class's classifier losses means over its valid rows.

  Args:
    spec: the run's settings.
    generator: generator params (the loss is differentiated w.r.t. these).
    data: the training data.
    batch: this step's draws (a `train_step.GeneratorBatch`).
    fake: the (n · f · r, D) fakes of `batch.gm_classes` already generated
      (by the step's `generate_together`), or None to generate them here.

  Returns:
    The scalar GM loss summed over classes (not yet multiplied by β).
  """
  per_class = spec.gm_fake_repeat * spec.gm_real_per_class
  if fake is None:
    fake = generate_together(spec, generator, {"gm": (class_batch_embeddings(
        data, batch.gm_classes, per_class), batch.gm_noise_key)})["gm"]
  fake = fake.reshape(batch.gm_classes.shape[0], per_class, spec.feature_dim)
  n, real_count = batch.gm_real_features.shape[:2]
  real_labels = jnp.broadcast_to(batch.gm_classes[:, None], (n, real_count))
  fake_labels = jnp.broadcast_to(batch.gm_classes[:, None], (n, fake.shape[1]))
  real_batches = (batch.gm_real_features, real_labels)
  fake_batches = (fake, fake_labels)
  # None (i.i.d.) runs the unmasked losses.
  masks = dict(real_mask=batch.gm_real_mask,
               fake_mask=reference_batches.fake_mask(spec, batch.gm_real_mask))
  if spec.gm_implementation == "gram":
    return gram_gradient_matching.per_class_linear_head_gradient_matching(
        gm_head_loss_fn(spec, data), batch.thetas, real_batches, fake_batches,
        granularity=spec.gm_granularity, **masks)
  return losses.per_class_gradient_matching(
      gm_classifier_loss_fn(spec, data), batch.thetas, real_batches, fake_batches,
      granularity=spec.gm_granularity, **masks)
