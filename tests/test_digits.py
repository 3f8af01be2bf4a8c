"""Tests of the embedded digits dataset: attribute table, split rule, loader."""

import itertools

import numpy as np
import pytest

from gmn_jax.data import digits
from gmn_jax.data import registry
from gmn_jax.errors import ConfigError

# The standard seven-segment display codes, written out independently.
_DISPLAY = {
    0: "1111110", 1: "0110000", 2: "1101101", 3: "1111001", 4: "0110011",
    5: "1011011", 6: "1011111", 7: "1110000", 8: "1111111", 9: "1111011",
}


def test_seven_segment_codes_are_the_standard_display():
  table = digits.attribute_table()
  for digit, code in _DISPLAY.items():
    np.testing.assert_array_equal(table[digit, :7], [int(bit) for bit in code], err_msg=str(digit))
  assert table[8, :7].sum() == 7
  assert [digits.SEGMENTS[i] for i in np.flatnonzero(table[1, :7])] == ["b", "c"]


def test_stroke_attributes():
  table = digits.attribute_table()
  curved = table[:, digits.ATTRIBUTE_NAMES.index("curved_stroke")]
  diagonal = table[:, digits.ATTRIBUTE_NAMES.index("diagonal_stroke")]
  assert np.flatnonzero(curved == 0).tolist() == [1, 4, 7]
  assert np.flatnonzero(diagonal).tolist() == [2, 4, 7]
  assert table.shape == (10, len(digits.ATTRIBUTE_NAMES))
  assert set(np.unique(table)) == {0.0, 1.0}


def test_docstring_table_matches_the_code():
  rows = {}
  for line in digits.__doc__.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 12 and cells[0] in digits.ATTRIBUTE_NAMES:
      rows[cells[0]] = [float(c) for c in cells[1:11]]
  assert list(rows) == list(digits.ATTRIBUTE_NAMES)
  np.testing.assert_array_equal(np.array(list(rows.values())).T, digits.attribute_table())


def test_embeddings_are_unit_norm_and_distinct():
  embeddings = digits.class_embeddings()
  assert embeddings.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-6)
  distances = [np.linalg.norm(embeddings[i] - embeddings[j])
               for i, j in itertools.combinations(range(10), 2)]
  assert min(distances) > 0.3


def _brute_force_margin(candidates, unseen):
  """The split rule's criteria, recomputed with plain loops."""
  table = digits.attribute_table()
  emb = table / np.sqrt((table**2).sum(axis=1, keepdims=True))
  rest = [d for d in candidates if d not in unseen]
  learnable = all(len({table[d, j] for d in rest}) == 2 for j in range(table.shape[1]))
  margin = min(np.sqrt(((emb[u] - emb[d])**2).sum()) for u in unseen for d in candidates if d != u)
  return learnable, margin


@pytest.mark.parametrize("candidates,chosen", [
    (tuple(range(10)), digits.UNSEEN_DIGITS),
    (digits.SEEN_DIGITS, digits.VALIDATION_UNSEEN_DIGITS),
])
def test_split_follows_the_documented_rule(candidates, chosen):
  assert digits.choose_unseen(candidates, len(chosen)) == chosen
  learnable, margin = _brute_force_margin(candidates, chosen)
  assert learnable
  for other in itertools.combinations(candidates, len(chosen)):
    other_learnable, other_margin = _brute_force_margin(candidates, other)
    assert not (other_learnable and other_margin > margin + 1e-9), other


def test_test_split_layout():
  ds = digits.load_digits()
  assert ds.name == "digits" and ds.split == "test"
  assert ds.class_names == tuple("0123456789")
  np.testing.assert_array_equal(ds.seen_classes, [0, 1, 2, 5, 6, 8, 9])
  np.testing.assert_array_equal(ds.unseen_classes, [3, 4, 7])
  total = ds.train_labels.size + ds.test_seen_labels.size + ds.test_unseen_labels.size
  assert total == 1797 and ds.feature_dim == 64 and ds.embedding_dim == 9
  seen = {0, 1, 2, 5, 6, 8, 9}
  assert set(np.unique(ds.train_labels)) == set(np.unique(ds.test_seen_labels)) == seen
  assert set(np.unique(ds.test_unseen_labels)) == {3, 4, 7}
  for digit in ds.seen_classes:
    n_train = np.sum(ds.train_labels == digit)
    n_test = np.sum(ds.test_seen_labels == digit)
    assert n_test == (n_train + n_test) // 5
  for features in (ds.train_features, ds.test_seen_features, ds.test_unseen_features):
    assert features.dtype == np.float32 and features.min() >= 0 and features.max() <= 1


def _rows(features):
  return {row.tobytes() for row in features}


def test_validation_split_never_touches_test_images():
  test = digits.load_digits()
  val = digits.load_digits(split="validation")
  np.testing.assert_array_equal(val.unseen_classes, [0, 5])
  np.testing.assert_array_equal(val.seen_classes, [1, 2, 6, 8, 9])
  assert not set(np.unique(val.train_labels)) & {0, 5, 3, 4, 7}
  used = _rows(val.train_features) | _rows(val.test_seen_features) | _rows(val.test_unseen_features)
  assert used <= _rows(test.train_features)
  assert not used & (_rows(test.test_seen_features) | _rows(test.test_unseen_features)) - _rows(
      test.train_features)


def test_deterministic_and_feature_norm_fitted_on_train():
  first, second = digits.load_digits(), digits.load_digits()
  np.testing.assert_array_equal(first.test_seen_features, second.test_seen_features)
  standardized = digits.load_digits(feature_norm="standardize")
  train = first.train_features
  spread = np.maximum(train.std(axis=0, dtype=np.float64), 1e-4)
  np.testing.assert_allclose(standardized.test_unseen_features,
                             (first.test_unseen_features - train.mean(axis=0, dtype=np.float64))
                             / spread,
                             rtol=1e-4, atol=1e-4)
  assert standardized.feature_normalization == "standardize"


def test_bad_options():
  with pytest.raises(ConfigError, match="split"):
    digits.load_digits(split="train")
  with pytest.raises(ConfigError):
    digits.load_digits(feature_norm="zscore")


def test_registry_builtin():
  ds = registry.load_dataset("builtin:digits", split="validation")
  assert ds.name == "digits" and ds.split == "validation"
