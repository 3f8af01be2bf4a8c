"""The in-memory zero-shot dataset: a small immutable structure of numpy arrays."""

import dataclasses
from typing import Optional, Tuple

import numpy as np


def _freeze(array: np.ndarray) -> np.ndarray:
  array = np.ascontiguousarray(array)
  array.setflags(write=False)
  return array


@dataclasses.dataclass(frozen=True)
class ZSLDataset:
  """A zero-shot benchmark split, ready for training.

  Class ids are global (0-based indices into `class_embeddings`), the same in
  every split. In split mode `test` the training set is `trainval` and the
  test sets are `test_seen` / `test_unseen`; in mode `validation` they are the
  train part of the seen classes, a held-out part of the same classes, and the
  validation (unseen-for-now) classes.

  Attributes:
    name: a short dataset name (e.g. "CUB", "digits").
    split: "test" or "validation".
    train_features: (N_train, D) float32 features of seen classes.
    train_labels: (N_train,) int32 global class ids.
    test_seen_features: (N_s, D) float32.
    test_seen_labels: (N_s,) int32.
    test_unseen_features: (N_u, D) float32.
    test_unseen_labels: (N_u,) int32.
    class_embeddings: (C, K) float32 class embeddings of all classes.
    seen_classes: (S,) int32 sorted global ids of the seen classes.
    unseen_classes: (U,) int32 sorted global ids of the unseen classes.
    class_names: names of all C classes, or None when the files have none.
    embedding_source: which side information built `class_embeddings`.
    feature_normalization: how features were normalised.
  """

  name: str
  split: str
  train_features: np.ndarray
  train_labels: np.ndarray
  test_seen_features: np.ndarray
  test_seen_labels: np.ndarray
  test_unseen_features: np.ndarray
  test_unseen_labels: np.ndarray
  class_embeddings: np.ndarray
  seen_classes: np.ndarray
  unseen_classes: np.ndarray
  class_names: Optional[Tuple[str, ...]] = None
  embedding_source: str = "att"
  feature_normalization: str = "none"

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if isinstance(value, np.ndarray):
        object.__setattr__(self, field.name, _freeze(value))

  @property
  def feature_dim(self) -> int:
    return int(self.train_features.shape[1])

  @property
  def embedding_dim(self) -> int:
    return int(self.class_embeddings.shape[1])

  @property
  def num_classes(self) -> int:
    return int(self.class_embeddings.shape[0])

  def replace(self, **changes) -> "ZSLDataset":
    """Returns a copy with some fields replaced (arrays stay read-only)."""
    return dataclasses.replace(self, **changes)
