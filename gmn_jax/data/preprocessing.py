"""Normalisation of class embeddings and image features (pure numpy).

Feature statistics are always fitted on the training features alone and then
applied unchanged to every split, so that nothing about the test examples
leaks into training.
"""

from typing import NamedTuple, Tuple

import numpy as np

from gmn_jax.errors import ConfigError

FEATURE_NORMALIZATIONS = ("none", "l2", "minmax", "standardize")

# The reference code's floor on the per-dimension standard deviation: constant
# dimensions are divided by this instead of by zero.
STANDARDIZE_MIN_STD = 1e-4


def l2_normalize_rows(matrix: np.ndarray) -> np.ndarray:
  """Scales every row to unit L2 norm; all-zero rows stay zero.

  Args:
    matrix: (R, K) array.

  Returns:
    (R, K) float array of the same float dtype (float64 for integer input).
  """
  matrix = np.asarray(matrix)
  if matrix.dtype.kind != "f":
    matrix = matrix.astype(np.float64)
  norms = np.linalg.norm(matrix, axis=1, keepdims=True)
  return matrix / np.where(norms > 0, norms, 1).astype(matrix.dtype)


def normalize_class_embeddings(embeddings: np.ndarray) -> np.ndarray:
  """Per-class L2 normalisation of a (C, K) embedding matrix, as the reference.

  Args:
    embeddings: (C, K) class embeddings, one row per class.

  Returns:
    (C, K) float64 array whose rows have unit norm.
  """
  return l2_normalize_rows(np.asarray(embeddings, dtype=np.float64))


class FeatureNormalization(NamedTuple):
  """A fitted affine feature map `(x - shift) / scale` (or per-example L2).

  Attributes:
    kind: one of FEATURE_NORMALIZATIONS.
    shift: (D,) float64 subtracted per dimension (zeros for "none"/"l2").
    scale: (D,) float64 divisor per dimension (ones for "none"/"l2").
  """

  kind: str
  shift: np.ndarray
  scale: np.ndarray


def check_feature_normalization(kind: str) -> str:
  """Returns `kind` if it is a known feature normalisation.

  Args:
    kind: the requested normalisation name.

  Returns:
    `kind` unchanged.

  Raises:
    ConfigError: `kind` is not one of FEATURE_NORMALIZATIONS.
  """
  if kind not in FEATURE_NORMALIZATIONS:
    raise ConfigError(f"feature_norm: expected one of {', '.join(FEATURE_NORMALIZATIONS)}, "
                      f"found {kind!r}")
  return kind


def fit_feature_normalization(kind: str, train_features: np.ndarray) -> FeatureNormalization:
  """Fits a feature normalisation on training features only.

  "minmax" follows f-CLSWGAN: per-dimension min-max scaling fitted on the
  training features, so training values land in [0, 1] (a constant
  dimension is only shifted, to 0). f-CLSWGAN then divides by the largest
  scaled training value, which is exactly 1, so that step is omitted. Test
  values outside the training range are not clipped.
  "standardize" subtracts the training mean and divides by the training
  standard deviation, floored at STANDARDIZE_MIN_STD as the reference does.

  Args:
    kind: one of FEATURE_NORMALIZATIONS.
    train_features: (N, D) training features; nothing else is looked at.

  Returns:
    The fitted FeatureNormalization.

  Raises:
    ConfigError: unknown `kind`.
  """
  check_feature_normalization(kind)
  train_features = np.asarray(train_features)
  dim = train_features.shape[1]
  shift = np.zeros(dim)
  scale = np.ones(dim)
  if kind == "minmax":
    low = train_features.min(axis=0).astype(np.float64)
    spread = train_features.max(axis=0).astype(np.float64) - low
    shift = low
    scale = np.where(spread > 0, spread, 1.0)
  elif kind == "standardize":
    shift = train_features.mean(axis=0, dtype=np.float64)
    scale = np.maximum(train_features.std(axis=0, dtype=np.float64), STANDARDIZE_MIN_STD)
  return FeatureNormalization(kind, shift, scale)


def apply_feature_normalization(normalization: FeatureNormalization,
                                features: np.ndarray) -> np.ndarray:
  """Applies a fitted normalisation to any split's features.

  Args:
    normalization: from fit_feature_normalization.
    features: (N, D) features.

  Returns:
    (N, D) float32 normalised features.
  """
  features = np.asarray(features, dtype=np.float32)
  if normalization.kind == "none":
    return features
  if normalization.kind == "l2":
    return l2_normalize_rows(features).astype(np.float32)
  shift = normalization.shift.astype(np.float32)
  scale = normalization.scale.astype(np.float32)
  return (features - shift) / scale


def normalize_features(kind: str, train_features: np.ndarray,
                       *other_features: np.ndarray) -> Tuple[np.ndarray, ...]:
  """Fits on `train_features` and normalises it and every other split.

  Args:
    kind: one of FEATURE_NORMALIZATIONS.
    train_features: (N, D) training features, the only ones fitted on.
    *other_features: further (M, D) feature arrays (test splits).

  Returns:
    The normalised training features followed by the normalised others, all
    float32.
  """
  normalization = fit_feature_normalization(kind, train_features)
  return tuple(apply_feature_normalization(normalization, features)
               for features in (train_features, *other_features))
