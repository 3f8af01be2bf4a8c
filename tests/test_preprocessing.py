"""Tests for gmn_jax.data.preprocessing against hand computations and sklearn."""

import numpy as np
import pytest
from sklearn import preprocessing as sk_preprocessing

from gmn_jax.data import preprocessing
from gmn_jax.errors import ConfigError


def test_l2_normalize_rows_by_hand():
  matrix = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, -2.0]])
  np.testing.assert_allclose(preprocessing.l2_normalize_rows(matrix),
                             [[0.6, 0.8], [0.0, 0.0], [0.0, -1.0]])


def test_l2_normalize_rows_integer_input_becomes_float():
  out = preprocessing.l2_normalize_rows(np.array([[1, 1], [0, 5]], dtype=np.uint8))
  assert out.dtype == np.float64
  np.testing.assert_allclose(out, [[2 ** -0.5, 2 ** -0.5], [0.0, 1.0]])


def test_normalize_class_embeddings_unit_rows_same_direction():
  embeddings = np.random.default_rng(0).random((5, 7)) * 10
  out = preprocessing.normalize_class_embeddings(embeddings)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0)
  np.testing.assert_allclose(out * np.linalg.norm(embeddings, axis=1, keepdims=True), embeddings)


_TRAIN = np.array([[0.0, 10.0, 1.0], [2.0, 10.0, 3.0], [4.0, 10.0, 5.0]])
_TEST = np.array([[6.0, 11.0, 3.0], [-2.0, 9.0, 1.0]])


def test_minmax_by_hand():
  train, test = preprocessing.normalize_features("minmax", _TRAIN, _TEST)
  # min (0, 10, 1), range (4, constant -> 1, 4).
  np.testing.assert_allclose(train, [[0, 0, 0], [0.5, 0, 0.5], [1, 0, 1]])
  np.testing.assert_allclose(test, [[1.5, 1, 0.5], [-0.5, -1, 0]])
  assert train.dtype == test.dtype == np.float32


def test_standardize_by_hand():
  train, test = preprocessing.normalize_features("standardize", _TRAIN, _TEST)
  std = np.sqrt(8 / 3)  # population std of (0, 2, 4) and of (1, 3, 5)
  floor = preprocessing.STANDARDIZE_MIN_STD
  np.testing.assert_allclose(train, [[-2 / std, 0, -2 / std], [0, 0, 0], [2 / std, 0, 2 / std]],
                             rtol=1e-6)
  np.testing.assert_allclose(test, [[4 / std, 1 / floor, 0], [-4 / std, -1 / floor, -2 / std]],
                             rtol=1e-6)


def test_l2_per_example_by_hand():
  train, test = preprocessing.normalize_features("l2", np.array([[3.0, 4.0]]),
                                                 np.array([[0.0, 2.0], [0.0, 0.0]]))
  np.testing.assert_allclose(train, [[0.6, 0.8]])
  np.testing.assert_allclose(test, [[0.0, 1.0], [0.0, 0.0]])


def test_none_is_identity():
  train, test = preprocessing.normalize_features("none", _TRAIN, _TEST)
  np.testing.assert_array_equal(train, _TRAIN)
  np.testing.assert_array_equal(test, _TEST)


@pytest.mark.parametrize("kind, reference", [
    ("minmax", sk_preprocessing.MinMaxScaler),
    ("standardize", sk_preprocessing.StandardScaler),
])
def test_matches_sklearn_fitted_on_train(kind, reference):
  rng = np.random.default_rng(1)
  train = rng.gamma(2.0, size=(50, 6))
  test = rng.gamma(3.0, size=(20, 6)) + 1
  ours_train, ours_test = preprocessing.normalize_features(kind, train, test)
  scaler = reference().fit(train)
  np.testing.assert_allclose(ours_train, scaler.transform(train), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ours_test, scaler.transform(test), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", preprocessing.FEATURE_NORMALIZATIONS)
def test_test_statistics_never_leak_into_the_fit(kind):
  rng = np.random.default_rng(2)
  train = rng.random((30, 4))
  test_a = rng.random((10, 4))
  test_b = test_a * 1000 - 50  # wildly different test statistics
  train_a, out_a = preprocessing.normalize_features(kind, train, test_a)
  train_b, out_b = preprocessing.normalize_features(kind, train, test_b)
  np.testing.assert_array_equal(train_a, train_b)
  fitted = preprocessing.fit_feature_normalization(kind, train)
  np.testing.assert_array_equal(out_b, preprocessing.apply_feature_normalization(fitted, test_b))
  # Each test example is mapped on its own, as if it were the only one.
  single = preprocessing.apply_feature_normalization(fitted, test_b[:1])
  np.testing.assert_allclose(single, out_b[:1], rtol=1e-6)


def test_unknown_kind():
  with pytest.raises(ConfigError, match="feature_norm: expected one of .*found 'unit-gaussian'"):
    preprocessing.fit_feature_normalization("unit-gaussian", _TRAIN)
