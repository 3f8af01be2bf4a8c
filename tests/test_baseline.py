"""Tests of the seen-only linear baseline (gmn_jax.baseline)."""

import numpy as np
import pytest

from gmn_jax import baseline
from gmn_jax.data import synthetic
from gmn_jax.data import synthetic_presets


def _mean_over_present_classes(labels, predictions):
  """The baseline's former per-class accuracy: a plain loop over the classes in `labels`."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  return 100.0 * np.mean([np.mean(predictions[labels == c] == c) for c in np.unique(labels)])


@pytest.mark.parametrize("num_classes,dim", [(3, 7), (9, 4)])
def test_compatibility_scores_both_orders(num_classes, dim):
  rng = np.random.default_rng(0)
  x, w, b, a = (rng.standard_normal(s) for s in [(5, 6), (6, dim), (dim,), (num_classes, dim)])
  expected = np.einsum("nd,dk,ck->nc", x, w, a) + a @ b
  np.testing.assert_allclose(baseline.compatibility_scores(x, w, b, a), expected, rtol=1e-10)


def test_predict_is_the_argmax_over_the_candidates():
  rng = np.random.default_rng(1)
  params = baseline.BilinearParams(rng.standard_normal((6, 4)).astype(np.float32),
                                   rng.standard_normal(4).astype(np.float32))
  features = rng.standard_normal((40, 6))
  embeddings = rng.standard_normal((8, 4))
  candidates = np.array([6, 1, 3])
  scores = (features @ params.weights + params.bias) @ embeddings.T
  expected = candidates[np.argmax(scores[:, candidates], axis=1)]
  np.testing.assert_array_equal(baseline.predict(params, features, embeddings, candidates),
                                expected)


def test_numbers_are_the_former_per_class_means_on_a_preset():
  # The baseline's metrics come from gmn_jax.metrics; they must equal what its
  # own per-class mean over the classes present gave before, on the same
  # predictions (float32 against float64, hence the tolerance).
  dataset = synthetic.synthetic_dataset(synthetic_presets.preset_att_splits("FLO", seed=2),
                                        seed=2, feature_dim=64)
  seen = np.asarray(dataset.seen_classes)
  params = baseline.train_bilinear(dataset.train_features,
                                   np.searchsorted(seen, dataset.train_labels),
                                   np.asarray(dataset.class_embeddings)[seen], steps=100,
                                   learning_rate=1e-2)
  result = baseline.evaluate_bilinear(params, dataset)

  embeddings = np.asarray(dataset.class_embeddings)
  every_class = np.arange(dataset.num_classes)
  def accuracy(features, labels, candidates):
    predictions = baseline.predict(params, features, embeddings, candidates)
    return _mean_over_present_classes(labels, predictions)
  t1 = accuracy(dataset.test_unseen_features, dataset.test_unseen_labels, dataset.unseen_classes)
  u = accuracy(dataset.test_unseen_features, dataset.test_unseen_labels, every_class)
  s = accuracy(dataset.test_seen_features, dataset.test_seen_labels, every_class)
  train = accuracy(dataset.train_features, dataset.train_labels, seen)
  expected = (t1, u, s, 2 * u * s / (u + s), train)
  np.testing.assert_allclose(tuple(result), expected, rtol=1e-5)
  # A trained model, not a degenerate one: the checks above compare numbers
  # that differ from each other and from chance.
  assert 0 < u < s and t1 > 100 / dataset.unseen_classes.size + 5
  assert train > s / 2
