"""Tests of gmn_jax.metrics against hand-computed and numpy references."""

import jax
import numpy as np
import pytest

from gmn_jax import metrics


def numpy_per_class_accuracy(predictions, labels, classes):
  """The reference's rule: mean over classes present in the labels."""
  present = [c for c in np.unique(labels) if c in set(np.asarray(classes))]
  if not present:
    return float("nan")
  return 100.0 * np.mean([np.mean(predictions[labels == c] == c) for c in present])


def numpy_gzsl(scores_unseen, labels_unseen, scores_seen, labels_seen, seen, unseen):
  zsl_predictions = unseen[np.argmax(scores_unseen[:, unseen], axis=1)]
  u = numpy_per_class_accuracy(np.argmax(scores_unseen, 1), labels_unseen, unseen)
  s = numpy_per_class_accuracy(np.argmax(scores_seen, 1), labels_seen, seen)
  return {
      "zsl_t1": numpy_per_class_accuracy(zsl_predictions, labels_unseen, unseen),
      "gzsl_u": u,
      "gzsl_s": s,
      "gzsl_h": 0.0 if u + s == 0 else 2 * u * s / (u + s),
  }


def test_per_class_accuracy_hand_computed():
  labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 4])
  predictions = np.array([0, 1, 0, 1, 0, 3, 3, 1, 0, 4])
  # Class 0: 2/3; class 1: 1/2; class 2: 0/4 (none correct); class 3 absent
  # from the labels (ignored); label 4 is not among the classes (ignored).
  expected = 100.0 * (2 / 3 + 1 / 2 + 0) / 3
  got = metrics.per_class_accuracy(predictions, labels, np.array([0, 1, 2, 3]))
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  # The per-example accuracy would be 3/9; the per-class mean must differ.
  assert abs(float(got) - 100 * 3 / 9) > 1


def test_per_class_accuracy_is_nan_without_any_present_class():
  got = metrics.per_class_accuracy(np.array([0, 1]), np.array([0, 1]), np.array([5]))
  assert np.isnan(got)


def test_gzsl_metrics_hand_computed_with_ties():
  # Seen {0, 2} and unseen {1, 3} interleave, so restricting the argmax to the
  # unseen columns must map local column indices back to global ids.
  seen, unseen = np.array([0, 2]), np.array([1, 3])
  scores_unseen = np.array([
      [5, 4, 0, 1],  # label 1: all -> 0 (wrong); unseen-only -> 1 (right)
      [0, 2, 3, 2],  # label 1: all -> 2 (wrong); unseen tie 1/3 -> 1 (right)
      [0, 1, 0, 1],  # label 3: tie 1/3 -> 1 in both (wrong)
      [0, 0, 0, 9],  # label 3: right in both
  ], np.float32)
  labels_unseen = np.array([1, 1, 3, 3])
  scores_seen = np.array([
      [1, 0, 0, 0],  # label 0: right
      [2, 2, 0, 0],  # label 0: tie 0/1 -> 0 (right)
      [0, 3, 1, 0],  # label 2: -> 1 (wrong)
  ], np.float32)
  labels_seen = np.array([0, 0, 2])
  got = metrics.gzsl_metrics(scores_unseen, labels_unseen, scores_seen,
                             labels_seen, seen, unseen)
  expected = {
      "zsl_t1": (100 + 50) / 2,  # class 1: 2/2, class 3: 1/2
      "gzsl_u": (0 + 50) / 2,  # class 1: 0/2, class 3: 1/2
      "gzsl_s": (100 + 0) / 2,  # class 0: 2/2, class 2: 0/1
      "gzsl_h": 2 * 25 * 50 / 75,
  }
  assert set(got) == {"zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"}
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-6, err_msg=name)


def test_harmonic_mean_is_zero_when_both_are_zero():
  np.testing.assert_array_equal(metrics.harmonic_mean(0.0, 0.0), 0.0)
  np.testing.assert_allclose(metrics.harmonic_mean(40.0, 60.0), 48.0)
  np.testing.assert_allclose(metrics.harmonic_mean(0.0, 60.0), 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gzsl_metrics_match_numpy_on_random_data(seed):
  rng = np.random.default_rng(seed)
  num_classes = 9
  order = rng.permutation(num_classes)
  seen, unseen = np.sort(order[:5]), np.sort(order[5:])
  # Small integer scores make ties frequent; unseen class unseen[0] never
  # occurs in the labels and one seen class is dropped too.
  labels_unseen = rng.choice(unseen[1:], size=40)
  labels_seen = rng.choice(seen[:-1], size=30)
  scores_unseen = rng.integers(0, 4, size=(40, num_classes)).astype(np.float32)
  scores_seen = rng.integers(0, 4, size=(30, num_classes)).astype(np.float32)
  want = numpy_gzsl(scores_unseen, labels_unseen, scores_seen, labels_seen, seen, unseen)
  got = jax.jit(metrics.gzsl_metrics)(scores_unseen, labels_unseen, scores_seen,
                                      labels_seen, seen, unseen)
  assert set(got) == set(want)
  for name in want:
    np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)


def test_predict_restricted_columns_returns_global_ids():
  scores = np.array([[9, 1, 5, 2], [9, 1, 2, 5]], np.float32)
  np.testing.assert_array_equal(metrics.predict(scores), [0, 0])
  np.testing.assert_array_equal(metrics.predict(scores, np.array([1, 2, 3])), [2, 3])


def test_per_class_accuracy_vmaps_over_prediction_sets():
  labels = np.array([0, 0, 1, 1])
  predictions = np.array([[0, 0, 1, 1], [0, 1, 1, 0], [1, 1, 0, 0]])
  got = jax.vmap(metrics.per_class_accuracy, in_axes=(0, None, None))(
      predictions, labels, np.array([0, 1]))
  np.testing.assert_allclose(got, [100.0, 50.0, 0.0])
