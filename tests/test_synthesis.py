"""Tests of gmn_jax.synthesis: class counts, the synthetic plan, chunked synthesis."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import synthesis
from gmn_jax.errors import DataError
from test_final_classifier import FEATURE_DIM, SPEC, UNSEEN, make_dataset


def test_synthetic_class_counts_top_up_seen_classes():
  dataset, _ = make_dataset(per_class=(7, 5))  # 7 real samples per seen class
  counts = synthesis.synthetic_class_counts(dataset, n_synth_unseen=20, n_synth_seen=10)
  assert counts == {0: 3, 2: 3, 3: 3, 5: 3, 1: 20, 4: 20}
  # AWA1-like: a target below the real count adds nothing for that class.
  uneven = dataset.replace(train_labels=np.array([0] * 12 + [2] * 7 + [3] * 7 + [5] * 2,
                                                 np.int32))
  counts = synthesis.synthetic_class_counts(uneven, n_synth_unseen=5, n_synth_seen=10)
  assert counts == {0: 0, 2: 3, 3: 3, 5: 8, 1: 5, 4: 5}
  assert set(synthesis.synthetic_class_counts(dataset, 4, 0).values()) == {0, 4}
  # The plan keeps the classes with a count, aligned with their counts.
  ids, plan_counts = synthesis.synthetic_plan(
      uneven, dataclasses.replace(SPEC, n_synth_unseen=5, n_synth_seen=10))
  assert dict(zip(ids.tolist(), plan_counts.tolist())) == {2: 3, 3: 3, 5: 8, 1: 5, 4: 5}
  assert ids.dtype == np.int32
  ids, plan_counts = synthesis.synthetic_plan(dataset, SPEC)  # n_synth_seen = 0
  np.testing.assert_array_equal(ids, UNSEEN)
  np.testing.assert_array_equal(plan_counts, [SPEC.n_synth_unseen] * 2)


def projection_sampler(projection, embeddings, key):
  del key
  return embeddings @ projection


def test_synthesize_counts_labels_and_features():
  dataset, (projection, _) = make_dataset()
  ids, counts = np.array([4, 0, 1]), np.array([5, 0, 7])
  features, labels = synthesis.synthesize(
      projection_sampler, jnp.asarray(projection), jax.random.PRNGKey(0), ids,
      dataset.class_embeddings, counts, chunk_size=4)
  np.testing.assert_array_equal(labels, [4] * 5 + [1] * 7)
  np.testing.assert_allclose(features, dataset.class_embeddings[labels] @ projection,
                             rtol=1e-6)
  assert features.dtype == jnp.float32 and labels.dtype == jnp.int32
  empty, empty_labels = synthesis.synthesize(
      projection_sampler, jnp.asarray(projection), jax.random.PRNGKey(0), ids,
      dataset.class_embeddings, 0)
  assert empty.shape == (0, FEATURE_DIM) and empty_labels.shape == (0,)


def test_synthesize_traces_once_across_chunks_and_parameters():
  def counted(projection, embeddings, key):
    return embeddings @ projection + jax.random.normal(key, (embeddings.shape[0], 1))

  traced_once = chex.assert_max_traces(counted, n=1)
  dataset, (projection, _) = make_dataset()
  for scale in (1.0, 2.0):  # new weights, same shapes: no retrace
    features, _ = synthesis.synthesize(
        traced_once, jnp.asarray(scale * projection), jax.random.PRNGKey(0), UNSEEN,
        dataset.class_embeddings, 9, chunk_size=4)  # 18 rows: 5 chunks, the last one padded
    assert features.shape == (18, FEATURE_DIM)
  # The weights were those of this call (an argument, not a stale constant),
  # and each chunk draws fresh noise: no two rows of one class are equal.
  noise = np.asarray(features - dataset.class_embeddings[np.repeat(UNSEEN, 9)]
                     @ (2.0 * projection))
  np.testing.assert_allclose(noise, noise[:, :1] * np.ones((1, FEATURE_DIM)), atol=1e-5)
  assert len(np.unique(noise[:, 0].round(5))) == 18


def test_synthesize_refuses_bad_ids_and_counts():
  dataset, (projection, _) = make_dataset()
  args = (projection_sampler, jnp.asarray(projection), jax.random.PRNGKey(0))
  with pytest.raises(DataError, match=r"class_ids.*\[0, 6\)"):
    synthesis.synthesize(*args, [1, 6], dataset.class_embeddings, 2)
  with pytest.raises(DataError, match="num_per_class"):
    synthesis.synthesize(*args, [1, 4], dataset.class_embeddings, [2, 2, 2])
  with pytest.raises(DataError, match="num_per_class"):
    synthesis.synthesize(*args, [1, 4], dataset.class_embeddings, [2, -1])
