"""Stage 2's synthetic set: features drawn from a trained generator.

`synthetic_class_counts` gives every unseen class `n_synth_unseen` samples
and tops every seen class up to `n_synth_seen` (the reference's rule);
`synthesize` draws them class by class in fixed-size chunks, so the
generator compiles once per chunk shape whatever the counts and whatever
the weights (they are arguments of the compiled program, not constants);
`pooled_training_set` puts them beside the real seen training features.
"""

import functools
from typing import Callable, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from gmn_jax import scoring
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.specs import EvalSpec

# sample_fn(params, embeddings (B, K), key) -> (B, D) features; hashable (a
# module-level function, or `models.sample_fn(generator)`), as it is a static
# jit argument.
SampleFn = Callable


def synthetic_class_counts(dataset: ZSLDataset, n_synth_unseen: int,
                           n_synth_seen: int) -> Dict[int, int]:
  """How many synthetic features each class gets (the reference's rule).

  Every unseen class gets `n_synth_unseen`; every seen class is topped up to
  `n_synth_seen` samples: max(0, n_synth_seen - #real training samples).

  Args:
    dataset: the dataset (its training labels give the real counts).
    n_synth_unseen: synthetic samples per unseen class.
    n_synth_seen: the seen-class target size (0: no synthetic seen samples).

  Returns:
    {global class id: count} for every seen and unseen class (counts may be 0).
  """
  real = np.bincount(np.asarray(dataset.train_labels), minlength=dataset.num_classes)
  counts = {int(c): max(0, int(n_synth_seen) - int(real[c])) for c in dataset.seen_classes}
  counts.update({int(c): int(n_synth_unseen) for c in dataset.unseen_classes})
  return counts


def synthetic_plan(dataset: ZSLDataset, spec: EvalSpec) -> Tuple[np.ndarray, np.ndarray]:
  """(class ids, counts) of the synthetic set, the classes with a count > 0.

  Args:
    dataset: the dataset.
    spec: stage 2's settings (n_synth_unseen, n_synth_seen).

  Returns:
    (int32 global class ids, int64 counts), aligned.
  """
  counts = synthetic_class_counts(dataset, spec.n_synth_unseen, spec.n_synth_seen)
  ids = [c for c, n in counts.items() if n > 0]
  return np.asarray(ids, np.int32), np.asarray([counts[c] for c in ids], np.int64)


@functools.partial(jax.jit, static_argnums=0)
def _sample_chunk(sample_fn, params, class_embeddings, labels, key):
  return sample_fn(params, class_embeddings[labels], key)


def synthesize(sample_fn: SampleFn, params, key, class_ids, class_embeddings, num_per_class, *,
               chunk_size: int = 4096) -> Tuple[jax.Array, jax.Array]:
  """Draws synthetic features class by class, in fixed-size chunks.

  All chunks have the same shape, so `sample_fn` is traced once per chunk
  shape (the last chunk is padded, the padding dropped). Chunk i draws with
  jax.random.fold_in(key, i), so the samples depend on chunk_size.

  Args:
    sample_fn: `sample_fn(params, embeddings (B, K), key) -> (B, D)`, e.g.
      `models.sample_fn(generator)`; hashable (it is a static jit argument).
    params: the generator parameters (an argument of the compiled program).
    key: PRNG key.
    class_ids: (n,) global class ids to synthesise.
    class_embeddings: (C, K) embeddings of all classes.
    num_per_class: an int for every class, or (n,) ints aligned with class_ids.
    chunk_size: the most rows generated per call.

  Returns:
    (features (M, D) float32, labels (M,) int32 global ids), grouped by class
    in the order of class_ids, M = total count.

  Raises:
    DataError: for class ids outside the embedding matrix, or counts that
      are not non-negative ints aligned with class_ids.
  """
  ids = scoring.as_int_array(np.atleast_1d(class_ids), "class_ids")
  class_embeddings = jnp.asarray(class_embeddings, jnp.float32)
  scoring.check_ids(ids, "class_ids", class_embeddings.shape[0])
  counts = np.asarray(num_per_class)
  if (counts.ndim > 1 or (counts.ndim == 1 and counts.shape != ids.shape)
      or (counts.size and (not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0))):
    raise scoring.DataError(scoring.INPUT, "num_per_class",
                            f"a non-negative int or {ids.size} of them",
                            f"{counts.dtype} of shape {counts.shape}")
  labels = np.repeat(ids, np.broadcast_to(counts, ids.shape)).astype(np.int32)
  total = labels.size
  if total == 0:
    shape = jax.eval_shape(sample_fn, params, class_embeddings[:1], key).shape
    return jnp.zeros((0, shape[-1]), jnp.float32), jnp.zeros((0,), jnp.int32)
  chunk = min(int(chunk_size), total)
  num_chunks = -(-total // chunk)
  padded = np.zeros(num_chunks * chunk, np.int32)
  padded[:total] = labels
  pieces = [
      _sample_chunk(sample_fn, params, class_embeddings,
                    jnp.asarray(padded[i * chunk:(i + 1) * chunk]), jax.random.fold_in(key, i))
      for i in range(num_chunks)
  ]
  features = jnp.concatenate(pieces)[:total].astype(jnp.float32)
  return features, jnp.asarray(labels)


def pooled_training_set(sample_fn: SampleFn, params, dataset: ZSLDataset, plan,
                        key) -> Tuple[jax.Array, jax.Array]:
  """Real seen training features pooled with a generator's synthetic ones.

  Args:
    sample_fn: as for `synthesize`.
    params: the generator parameters, or None for the real features alone.
    dataset: the dataset.
    plan: (class ids, counts) from `synthetic_plan`.
    key: PRNG key of the synthesis.

  Returns:
    (features (N, D), labels (N,) global ids), real rows first.
  """
  real_features = jnp.asarray(dataset.train_features, jnp.float32)
  real_labels = jnp.asarray(dataset.train_labels)
  if params is None:
    return real_features, real_labels
  ids, counts = plan
  fake_features, fake_labels = synthesize(sample_fn, params, key, ids, dataset.class_embeddings,
                                          counts)
  return (jnp.concatenate([real_features, fake_features]),
          jnp.concatenate([real_labels, fake_labels]))
