"""Stage 1's batches from the reference code's epoch iterators (`train.sampling = "reference"`).

In the default mode ("iid") every batch of stage 1 is an independent draw of
a fixed size (`gmn_jax.train_step`). In "reference" mode the critic batches,
the adversarial labels, the GM classes and the GM real batches come instead
from the device-side model of the authors' `data.Iterator`s
(`gmn_jax.reference_sampling`), whose state rides in
`TrainState.batch_sampler`:

* critic: `xy_iter`, batches of B with one short remainder batch per epoch
  of the (tiled) training set; class-balanced i.i.d. draws or a shuffled
  epoch as `train.class_balanced` says;
* adversarial labels: `label_iter`, a shuffled, tiled list of the seen
  classes (CUB 150 classes, B 256: batches of 256, 44, 256, 44, ...);
* GM classes: `class_iter`, a shuffled cycle over the seen classes that runs
  on across generator iterations;
* GM real batches: one iterator per seen class (CUB 47 examples, 60 per
  batch: 60, 34, 60, 34, ...); the fakes are `gm_fake_repeat` × the real
  batch's size.

Short batches are padded to their fixed shapes; the masks returned here go
to every loss that averages over those rows, so a padded batch gives the
loss of its valid rows alone. Every key is derived from the iteration's key
(`fold_in(base_key, iteration)`), so a run resumed from a checkpoint (which
holds the iterators' state) repeats an uninterrupted one. What is not
modelled: the θ trajectory's real batches (`gm.theta_sampling =
"trajectory"`) stay i.i.d. draws (the reference's `clf_reset_iter > 1`
would draw them from `xy_iter`; its released configs use 1).
"""

from typing import Tuple

import jax
import jax.numpy as jnp

from gmn_jax import parallel
from gmn_jax import reference_sampling
from gmn_jax.specs import TrainSpec

def init_sampler(spec: TrainSpec, data) -> reference_sampling.ReferenceSampler:
  """The iterators before iteration 0 (all exhausted: the first calls draw the orders).

  Args:
    spec: the run's settings.
    data: the `train_state.TrainData` (numpy or device arrays; its sizes and
      class index are read).

  Returns:
    The `reference_sampling.ReferenceSampler`.
  """
  return reference_sampling.init_reference_sampler(
      data.class_index, int(data.features.shape[0]), spec.num_generated_classes,
      batch_size=spec.batch_size, gm_real_per_class=spec.gm_real_per_class,
      class_balanced=spec.class_balanced)


def critic_batch(spec: TrainSpec, data, iterator: reference_sampling.EpochIterator, key
                 ) -> Tuple[reference_sampling.EpochIterator, Tuple[jax.Array, ...]]:
  """The next critic batch of `xy_iter`.

  Args:
    spec: the run's settings (not transductive).
    data: the `train_state.TrainData`.
    iterator: the `ReferenceSampler.critic` iterator.
    key: PRNG key of this critic step's draw.

  Returns:
    (new iterator, (real (B, D), embeddings (B, K), mask (B,) bool)), the
    batch split over the mesh's 'data' axis like the i.i.d. one.
  """
  iterator, indices, mask = reference_sampling.next_critic_batch(
      iterator, key, data.class_index, spec.batch_size, spec.class_balanced)
  batch = (data.features[indices], data.seen_embeddings[data.labels[indices]], mask)
  return iterator, tuple(parallel.constrain_batch(x) for x in batch)


def generator_draws(spec: TrainSpec, data, sampler: reference_sampling.ReferenceSampler,
                    label_key, class_key):
  """One generator step's labels, GM classes and GM real batches from the iterators.

  Args:
    spec: the run's settings (objective "wgan", not transductive).
    data: the `train_state.TrainData`.
    sampler: the `ReferenceSampler` before the step.
    label_key: PRNG key of the adversarial labels (a new epoch's order).
    class_key: PRNG key of the GM draws (new cycles and class epochs).

  Returns:
    (sampler, labels (B,) int32, label_mask (B,) bool, gm_classes (n,),
    gm_real_features (n, r, D), gm_real_mask (n, r) bool). Without GM the
    class iterators are left as they are and the GM arrays are empty, with a
    None mask.
  """
  labels_state, labels, label_mask = reference_sampling.next_batch(
      sampler.labels, label_key, spec.batch_size)
  sampler = sampler._replace(labels=labels_state)
  label_mask = parallel.constrain_batch(label_mask)
  if not spec.variant.gradient_matching:
    return (sampler, labels, label_mask, jnp.zeros((0,), jnp.int32),
            jnp.zeros((0, 0, spec.feature_dim), jnp.float32), None)
  cycle, class_batches, classes, indices, gm_mask = reference_sampling.next_gm_batches(
      sampler.class_cycle, sampler.class_batches, class_key, data.class_index,
      spec.gm_num_classes, spec.gm_real_per_class)
  sampler = sampler._replace(class_cycle=cycle, class_batches=class_batches)
  # Split over devices along the examples of each class, mask with its batch.
  real = parallel.constrain_batch(data.features[indices], axis=1)
  return (sampler, labels, label_mask, classes, real,
          parallel.constrain_batch(gm_mask, axis=1))


def fake_mask(spec: TrainSpec, real_mask):
  """The GM fake batches' mask (`gm_fake_repeat` fakes per valid real row), or None.

  Args:
    spec: the run's settings.
    real_mask: (n, r) bool masks of the GM real batches, or None (i.i.d.).

  Returns:
    (n, f·r) bool, split over devices like the fakes, or None.
  """
  if real_mask is None:
    return None
  return parallel.constrain_batch(reference_sampling.repeated_mask(real_mask,
                                                                   spec.gm_fake_repeat), axis=1)
