"""Jittable mini-batch samplers over device-resident arrays.

Every sampler is a pure function of a `jax.random` key with static output
shapes, so that it can run inside a jitted (or scanned) training step: the
dataset stays on the device and only indices are drawn. The samplers return
example indices (or class ids); the caller gathers features with them.

Host-side work happens once, in `build_class_index`, which groups example
indices by class so that every sampler is O(batch) (O(batch + max class size)
for sampling without replacement).

Sampling rules and how they relate to the reference PyTorch iterators:

* `class_balanced_indices` draws example i with probability proportional to
  1 / n_{y_i} (with replacement), exactly the reference's multinomial
  weights. It is implemented as "a class uniformly, then an example of that
  class uniformly", which is the same distribution.
* `uniform_class_labels` draws class ids i.i.d. uniformly. The reference
  cycles through shuffled (tiled) class lists, which has the same marginal
  distribution per draw; we do not reproduce its 256/44 batch alternation.
* `per_class_batch` gives every requested class a batch of fixed size. A
  class with at least `batch_size` examples is sampled without replacement;
  a smaller class is sampled with replacement. The reference instead tiles a
  small class until it exceeds the batch size and then returns batches of
  varying size (e.g. 60/34 on CUB). Both give each example of the class the
  same probability, so batch means are unbiased estimates of class means;
  fixed sizes keep shapes static and let the class axis be vmapped.
* `epoch_batches` shuffles an epoch and pads the last batch, returning a mask
  that is False on the padding, so that every example is seen exactly once
  per epoch (the reference keeps a smaller last batch) unless
  `drop_remainder=True`.

Sharding: the samplers work on sharded inputs under jit. Keep the
`ClassIndex` replicated (4 bytes per example); on a mesh with Explicit axes
(`jax.make_mesh`'s default since JAX 0.10) a gather from a sharded array must
name its output sharding, e.g.
`features.at[idx].get(out_sharding=NamedSharding(mesh, P("data")))`.
"""

import dataclasses
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from gmn_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class ClassIndex:
  """Example indices grouped by class (a pytree; put it on the device once).

  The examples of the class in row r are
  `members[starts[r] : starts[r] + counts[r]]`, in increasing order.

  Attributes:
    classes: (C,) int32 sorted global class ids, one row per class.
    counts: (C,) int32 number of examples of each class (all > 0).
    starts: (C,) int32 offset of each class's examples in `members`.
    members: (M,) int32 example indices grouped by class, M = sum(counts).
    row_of_class: (num_classes_total,) int32 row of each global class id, -1
      for ids that are not in `classes`.
    max_count: static Python int, the largest class size (sets the work of
      sampling without replacement; a change retraces jitted callers).
  """

  classes: jax.Array
  counts: jax.Array
  starts: jax.Array
  members: jax.Array
  row_of_class: jax.Array
  max_count: int

  @property
  def num_classes(self) -> int:
    """Number of classes (rows) in the index."""
    return int(self.classes.shape[0])


jax.tree_util.register_dataclass(
    ClassIndex,
    data_fields=["classes", "counts", "starts", "members", "row_of_class"],
    meta_fields=["max_count"],
)


def build_class_index(labels, classes=None,
                      num_classes_total: Optional[int] = None) -> ClassIndex:
  """Groups example indices by class, on the host, once per dataset.

  Examples whose label is not in `classes` are left out, so an index over the
  seen classes can be built from labels that also hold other classes.

  Args:
    labels: (N,) integer class ids of the examples (numpy or JAX array).
    classes: the class ids to index (any order, no repeats); defaults to the
      distinct values of `labels`. Every one must have at least one example.
    num_classes_total: length of the `row_of_class` lookup table; defaults to
      max(classes) + 1.

  Returns:
    A `ClassIndex` of numpy arrays (move it with `jax.device_put`).

  Raises:
    DataError: labels not a 1-D integer array, repeated or negative class ids,
      a class id beyond `num_classes_total`, or a class without examples.
  """
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise DataError("labels", None, "a 1-D integer array",
                    f"shape {labels.shape} dtype {labels.dtype}")
  if classes is None:
    classes = np.unique(labels)
  classes = np.asarray(classes)
  if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer):
    raise DataError("classes", None, "a 1-D integer array",
                    f"shape {classes.shape} dtype {classes.dtype}")
  if classes.size == 0:
    raise DataError("classes", None, "at least one class", "none")
  classes = np.sort(classes)
  if np.any(np.diff(classes) == 0):
    repeated = np.unique(classes[1:][np.diff(classes) == 0])
    raise DataError("classes", None, "distinct class ids",
                    f"repeated ids {repeated.tolist()}")
  if classes[0] < 0:
    raise DataError("classes", None, "non-negative class ids", int(classes[0]))
  if num_classes_total is None:
    num_classes_total = int(classes[-1]) + 1
  if classes[-1] >= num_classes_total:
    raise DataError("classes", None, f"class ids below {num_classes_total}",
                    int(classes[-1]))

  # A stable sort keeps the examples of each class in increasing order.
  order = np.argsort(labels, kind="stable")
  order = order[np.isin(labels[order], classes)]
  sorted_labels = labels[order]
  counts = (np.searchsorted(sorted_labels, classes, side="right")
            - np.searchsorted(sorted_labels, classes, side="left"))
  if np.any(counts == 0):
    raise DataError("labels", None, "at least one example of every class",
                    f"none of classes {classes[counts == 0].tolist()}")
  starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
  row_of_class = np.full(num_classes_total, -1, np.int32)
  row_of_class[classes] = np.arange(classes.size, dtype=np.int32)
  return ClassIndex(
      classes=classes.astype(np.int32),
      counts=counts.astype(np.int32),
      starts=starts.astype(np.int32),
      members=order.astype(np.int32),
      row_of_class=row_of_class,
      max_count=int(counts.max()),
  )


def uniform_indices(key: jax.Array, n, batch_size: int) -> jax.Array:
  """Draws example indices uniformly from [0, n), with replacement.

  Args:
    key: a `jax.random` key.
    n: number of examples (Python int or a scalar array; may be traced).
    batch_size: static number of indices to draw.

  Returns:
    (batch_size,) int32 indices.
  """
  return jax.random.randint(key, (batch_size,), 0, n, dtype=jnp.int32)


def uniform_class_labels(key: jax.Array, classes: jax.Array,
                         batch_size: int) -> jax.Array:
  """Draws class ids uniformly from `classes`, with replacement.

  This is the label distribution of the reference's generator step: uniform
  over (seen) classes, not over examples.

  Args:
    key: a `jax.random` key.
    classes: (S,) integer class ids to draw from.
    batch_size: static number of labels to draw.

  Returns:
    (batch_size,) int32 class ids.
  """
  classes = jnp.asarray(classes)
  picks = jax.random.randint(key, (batch_size,), 0, classes.shape[0])
  return classes[picks].astype(jnp.int32)


def distinct_classes(key: jax.Array, classes: jax.Array, n: int) -> jax.Array:
  """Draws `n` different class ids uniformly from `classes` (no repeats).

  Useful to pick the classes of one gradient-matching step.

  Args:
    key: a `jax.random` key.
    classes: (S,) integer class ids, S >= n.
    n: static number of classes to draw.

  Returns:
    (n,) int32 distinct class ids in random order.
  """
  classes = jnp.asarray(classes)
  return jax.random.choice(key, classes, (n,), replace=False).astype(jnp.int32)


def class_balanced_indices(key: jax.Array, class_index: ClassIndex,
                           batch_size: int) -> jax.Array:
  """Draws examples with probability proportional to 1/n_class (replacement).

  Equivalent to the reference's multinomial over weights w_i = 1/n_{y_i}:
  a class uniformly among the indexed classes, then one of its examples
  uniformly.

  Args:
    key: a `jax.random` key.
    class_index: from `build_class_index` (numpy or device arrays).
    batch_size: static number of indices to draw.

  Returns:
    (batch_size,) int32 example indices.
  """
  class_key, member_key = jax.random.split(key)
  rows = jax.random.randint(class_key, (batch_size,), 0,
                            class_index.counts.shape[0])
  offsets = jax.random.randint(member_key, (batch_size,), 0,
                               jnp.asarray(class_index.counts)[rows])
  members = jnp.asarray(class_index.members)
  return members[jnp.asarray(class_index.starts)[rows] + offsets]


def per_class_batch(key: jax.Array, class_index: ClassIndex,
                    class_ids: jax.Array, batch_size: int) -> jax.Array:
  """Draws a fixed-size batch of examples of each requested class.

  A class with at least `batch_size` examples gets distinct examples (a
  uniformly random subset in random order); a smaller class is sampled
  uniformly with replacement, so it repeats examples. Each class gets an
  independent key, and the class axis is vmapped.

  Args:
    key: a `jax.random` key.
    class_index: from `build_class_index`.
    class_ids: (n,) global class ids; each must be in `class_index.classes`
      (not checked inside jit: an absent id gives meaningless indices).
    batch_size: static number of examples per class.

  Returns:
    (n, batch_size) int32 example indices; row j holds examples of
    class_ids[j].
  """
  class_ids = jnp.asarray(class_ids)
  rows = jnp.asarray(class_index.row_of_class)[class_ids]
  starts = jnp.asarray(class_index.starts)[rows]
  counts = jnp.asarray(class_index.counts)[rows]
  members = jnp.asarray(class_index.members)
  max_count = class_index.max_count

  def one_class(class_key, start, count):
    subset_key, replacement_key = jax.random.split(class_key)
    positions = jax.random.randint(replacement_key, (batch_size,), 0, count)
    if batch_size <= max_count:  # Otherwise no class can skip replacement.
      # The top batch_size of i.i.d. noise over the class's slots is a
      # uniformly random subset, in random order.
      noise = jax.random.uniform(subset_key, (max_count,))
      noise = jnp.where(jnp.arange(max_count) < count, noise, -1.0)
      _, subset = jax.lax.top_k(noise, batch_size)
      positions = jnp.where(count >= batch_size, subset, positions)
    return members[start + positions]

  keys = jax.random.split(key, class_ids.shape[0])
  return jax.vmap(one_class)(keys, starts, counts).astype(jnp.int32)


class EpochBatches(NamedTuple):
  """One shuffled epoch split into equal batches.

  Attributes:
    indices: (num_batches, batch_size) int32 example indices; padding
      entries hold index 0 so that gathers stay in range.
    mask: (num_batches, batch_size) bool, False on padding entries.
  """

  indices: jax.Array
  mask: jax.Array


def epoch_batches(key: jax.Array, n: int, batch_size: int,
                  drop_remainder: bool = False) -> EpochBatches:
  """Shuffles range(n) and splits it into batches of `batch_size`.

  With `drop_remainder=False` (default) every example appears exactly once and
  the last batch is padded, its padding masked out; with True the last n %
  batch_size examples of the permutation are dropped and the mask is all True.

  Args:
    key: a `jax.random` key.
    n: static number of examples.
    batch_size: static batch size.
    drop_remainder: whether to drop the incomplete last batch.

  Returns:
    An `EpochBatches` of ceil(n / batch_size) batches (floor with
    `drop_remainder`).
  """
  permutation = jax.random.permutation(key, n).astype(jnp.int32)
  if drop_remainder:
    num_batches = n // batch_size
    kept = permutation[:num_batches * batch_size]
    indices = kept.reshape(num_batches, batch_size)
    return EpochBatches(indices, jnp.ones(indices.shape, bool))
  num_batches = -(-n // batch_size)
  padding = num_batches * batch_size - n
  indices = jnp.concatenate([permutation, jnp.zeros(padding, jnp.int32)])
  mask = jnp.arange(num_batches * batch_size) < n
  return EpochBatches(indices.reshape(num_batches, batch_size),
                      mask.reshape(num_batches, batch_size))
