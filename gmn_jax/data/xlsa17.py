"""Loads and validates an xlsa17-format dataset directory into a ZSLDataset.

A directory holds `res101.mat` (`features`, `labels`) and a split file with
the class embeddings `att` (K x C) and 1-based `*_loc` index arrays:
`att_splits.mat`, `sent_splits.mat` (CUB sentences) or
`binaryAtt_splits.mat` (binary attributes). docs/data.md describes the
accepted variants and every error this module raises.

Every check names the file, the key and what was expected versus found, so
that a broken directory gives one actionable line. Only numpy, scipy, h5py
and absl are imported: check_data must start without JAX.
"""

import pathlib
from typing import Dict, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from gmn_jax.data import mat_io
from gmn_jax.data import preprocessing
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import DataError

SPLITS = ("test", "validation")
EMBEDDINGS = ("att", "sent", "binary", "att+sent")
FEATURE_FILE = "res101.mat"
EMBEDDING_FILES = {
    "att": "att_splits.mat",
    "sent": "sent_splits.mat",
    "binary": "binaryAtt_splits.mat",
}
TEST_LOC_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")
VALIDATION_LOC_KEYS = ("train_loc", "val_loc")
# Holding out a third of the seen classes reproduces the official validation
# class counts of CUB (100/50) and AWA1/AWA2 (27/13).
DEFAULT_VALIDATION_FRACTION = 1 / 3
# Share of each training class held out as test_seen in validation mode (the
# reference code's 80/20).
HELD_OUT_SEEN_FRACTION = 0.2

_SPLIT_FILE_KEYS = ("att", "allclasses_names") + TEST_LOC_KEYS + VALIDATION_LOC_KEYS


def load_xlsa17(data_dir,
                *,
                split: str = "test",
                embedding: str = "att",
                feature_norm: str = "none",
                normalize_embeddings: bool = True,
                validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
                seed: int = 0) -> ZSLDataset:
  """Loads, validates and preprocesses one xlsa17 dataset directory.

  Args:
    data_dir: directory holding res101.mat and the split file(s).
    split: "test" (train on trainval, test on test_seen / test_unseen) or
      "validation" (train_loc split 80/20 per class into train / test_seen,
      unseen = val_loc classes; synthesised when the file has no
      train_loc / val_loc, see docs/data.md).
    embedding: "att" (att_splits.mat), "sent" (sent_splits.mat), "binary"
      (binaryAtt_splits.mat) or "att+sent" (attributes, per-class L2, next to
      the sentence matrix divided by its Frobenius norm, as the reference).
    feature_norm: one of preprocessing.FEATURE_NORMALIZATIONS, fitted on the
      training features only.
    normalize_embeddings: L2-normalise each class embedding (the reference
      does); for "att+sent" this applies to the attribute block only.
    validation_fraction: share of the seen classes held out as unseen when
      the validation split has to be synthesised.
    seed: seed of the validation mode's random choices (80/20 split and the
      synthesised class split); test mode is fully deterministic.

  Returns:
    The ZSLDataset, with global 0-based class ids (column j of `att` is
    class j).

  Raises:
    DataError: a bad option, or any way the directory can be wrong.
  """
  data_dir = pathlib.Path(data_dir)
  _check_options(data_dir, split, embedding, feature_norm, validation_fraction)
  if not data_dir.is_dir():
    raise DataError(data_dir, None, f"a directory holding {FEATURE_FILE} and a split file",
                    "no such directory")
  # "att+sent" takes its splits (and attribute block) from att_splits.mat.
  split_file = _MatFile(data_dir / EMBEDDING_FILES.get(embedding, EMBEDDING_FILES["att"]),
                        _SPLIT_FILE_KEYS)
  embeddings = _class_embeddings(split_file, data_dir, embedding, normalize_embeddings)
  num_classes = embeddings.shape[0]
  class_names = _class_names(split_file, num_classes)

  feature_file = _MatFile(data_dir / FEATURE_FILE, ("features", "labels"))
  labels = _labels(feature_file, num_classes, split_file.path)
  features = _features(feature_file, len(labels))

  describe = _ClassDescriber(class_names)
  if split == "test":
    parts = _test_parts(split_file, labels, describe)
  else:
    parts = _validation_parts(split_file, labels, describe, validation_fraction, seed)
  train, test_seen, test_unseen = parts

  train_features, test_seen_features, test_unseen_features = preprocessing.normalize_features(
      feature_norm, features[train], features[test_seen], features[test_unseen])
  return ZSLDataset(
      name=data_dir.resolve().name,
      split=split,
      train_features=train_features,
      train_labels=labels[train].astype(np.int32),
      test_seen_features=test_seen_features,
      test_seen_labels=labels[test_seen].astype(np.int32),
      test_unseen_features=test_unseen_features,
      test_unseen_labels=labels[test_unseen].astype(np.int32),
      class_embeddings=embeddings.astype(np.float32),
      seen_classes=np.unique(np.concatenate([labels[train], labels[test_seen]])).astype(np.int32),
      unseen_classes=np.unique(labels[test_unseen]).astype(np.int32),
      class_names=class_names,
      embedding_source=embedding,
      feature_normalization=feature_norm,
  )


def _check_options(data_dir: pathlib.Path, split: str, embedding: str, feature_norm: str,
                   validation_fraction: float) -> None:
  """Rejects unknown option names before touching any file."""
  choices = {"split": (split, SPLITS), "embedding": (embedding, EMBEDDINGS),
             "feature_norm": (feature_norm, preprocessing.FEATURE_NORMALIZATIONS)}
  for option, (value, allowed) in choices.items():
    if value not in allowed:
      raise DataError(data_dir, option, f"one of {', '.join(allowed)}", repr(value))
  if not 0 < validation_fraction < 1:
    raise DataError(data_dir, "validation_fraction", "a number strictly between 0 and 1",
                    repr(validation_fraction))


class _MatFile:
  """One loaded .mat file whose accessors raise DataError naming file and key."""

  def __init__(self, path: pathlib.Path, keys: Sequence[str]):
    self.path = path
    if not path.is_file():
      raise DataError(path, None, "an existing file", "no such file")
    self.variables = mat_io.load_mat(path, keys)

  def has(self, key: str) -> bool:
    return key in self.variables

  def error(self, key: Optional[str], expected: str, found: str) -> DataError:
    return DataError(self.path, key, expected, found)

  def numeric(self, key: str, expected: str = "a numeric array") -> np.ndarray:
    """The variable `key` as a numeric numpy array (logical counts as numeric)."""
    if key not in self.variables:
      present = ", ".join(sorted(self.variables)) or "nothing readable"
      raise self.error(key, f"a variable named {key!r}", f"no such key (file holds {present})")
    value = self.variables[key]
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biuf":
      kind = (f"{value.dtype} array" if isinstance(value, np.ndarray) else type(value).__name__)
      raise self.error(key, expected, f"a non-numeric {kind}")
    return value

  def vector(self, key: str) -> np.ndarray:
    """The variable `key` as a non-empty 1-D numeric array (row or column)."""
    value = self.numeric(key, "a numeric vector")
    if value.size == 0:
      raise self.error(key, "a non-empty array", "0 entries (an empty split)")
    if value.ndim > 2 or (value.ndim == 2 and 1 not in value.shape):
      raise self.error(key, "a row or column vector", f"shape {value.shape}")
    return value.ravel()

  def integers(self, key: str) -> np.ndarray:
    """The variable `key` as an int64 vector; floats must hold whole numbers."""
    value = self.vector(key)
    if value.dtype.kind == "f":
      bad = ~np.isfinite(value) | (value != np.round(value))
      if bad.any():
        position = int(np.argmax(bad)) + 1
        raise self.error(key, "whole numbers", f"{float(value[bad][0])!r} at position {position}")
    return value.astype(np.int64)


def _embedding_matrix(mat: _MatFile, key: str = "att") -> np.ndarray:
  """The (C, K) float64 class embeddings stored as K x C in `mat[key]`."""
  att = mat.numeric(key, "a numeric K x C matrix (one column per class)")
  if att.ndim != 2 or 0 in att.shape:
    raise mat.error(key, "a non-empty K x C matrix", f"shape {att.shape}")
  att = att.astype(np.float64)
  finite = np.isfinite(att)
  if not finite.all():
    row, column = np.argwhere(~finite)[0] + 1
    raise mat.error(key, "finite values",
                    f"{int((~finite).sum())} NaN/Inf (first at row {row}, class column {column})")
  zero_columns = np.flatnonzero(~att.any(axis=0))
  if zero_columns.size:
    raise mat.error(key, "a non-zero embedding for every class",
                    f"{zero_columns.size} all-zero class column(s): {_first(zero_columns + 1)}")
  return att.T


def _class_embeddings(split_file: _MatFile, data_dir: pathlib.Path, embedding: str,
                      normalize: bool) -> np.ndarray:
  """Builds the (C, K) embedding matrix of the requested source."""
  main = _embedding_matrix(split_file)
  if normalize:
    main = preprocessing.normalize_class_embeddings(main)
  if embedding != "att+sent":
    return main
  sentence_file = _MatFile(data_dir / EMBEDDING_FILES["sent"], ("att",))
  sentences = _embedding_matrix(sentence_file)
  if sentences.shape[0] != main.shape[0]:
    raise sentence_file.error("att", f"{main.shape[0]} class columns (as {split_file.path.name})",
                              f"{sentences.shape[0]}")
  # The reference scales the whole sentence block by one number and does not
  # renormalise the concatenation: sentence rows end up ~1/sqrt(C) long.
  return np.concatenate([main, sentences / np.linalg.norm(sentences)], axis=1)


def _class_names(mat: _MatFile, num_classes: int) -> Optional[Tuple[str, ...]]:
  """`allclasses_names` as a tuple of C strings, or None when absent."""
  key = "allclasses_names"
  if not mat.has(key):
    return None
  value = mat.variables[key]
  if not isinstance(value, np.ndarray) or value.dtype.kind not in "OU":
    raise mat.error(key, "a cell array of strings", f"{getattr(value, 'dtype', type(value))}")
  names = value.ravel().tolist()
  if not all(isinstance(name, str) for name in names):
    raise mat.error(key, "a cell array of strings", "non-string entries")
  if len(names) != num_classes:
    raise mat.error(key, f"{num_classes} names (one per column of att)", f"{len(names)}")
  return tuple(name.strip() for name in names)


def _labels(mat: _MatFile, num_classes: int, embedding_path: pathlib.Path) -> np.ndarray:
  """0-based int64 class ids from the 1-based `labels` vector."""
  labels = mat.integers("labels")
  if labels.min() < 1:
    raise mat.error("labels", "1-based class ids (>= 1)", f"{labels.min()}")
  if labels.max() > num_classes:
    columns = f"the class columns of {embedding_path.name} [att]"
    raise mat.error("labels", f"class ids in 1..{num_classes} ({columns})", f"{labels.max()}")
  return labels - 1


def _features(mat: _MatFile, num_examples: int) -> np.ndarray:
  """(N, D) float32 features from `features` stored D x N or N x D."""
  features = mat.numeric("features", "a numeric D x N matrix")
  if features.ndim != 2:
    raise mat.error("features", "a 2-D D x N matrix", f"shape {features.shape}")
  # xlsa17 stores D x N, so that layout wins when both axes have length N.
  if features.shape[1] == num_examples:
    features = features.T
  elif features.shape[0] != num_examples:
    raise mat.error("features", f"D x {num_examples} or {num_examples} x D (one example per label)",
                    f"shape {features.shape}")
  features = np.asarray(features, dtype=np.float32)
  finite = np.isfinite(features)
  if not finite.all():
    bad_rows = np.flatnonzero(~finite.all(axis=1))
    raise mat.error("features", "finite values",
                    f"NaN/Inf in {bad_rows.size} example(s): {_first(bad_rows + 1)}")
  return features


def _locations(mat: _MatFile, key: str, num_examples: int) -> np.ndarray:
  """0-based int64 example indices from a 1-based `*_loc` vector."""
  loc = mat.integers(key)
  if (loc == 0).any():
    raise mat.error(key, "1-based (MATLAB) indices", "index 0: the indices look zero-based")
  out_of_range = (loc < 1) | (loc > num_examples)
  if out_of_range.any():
    raise mat.error(key, f"indices in 1..{num_examples} (the examples of {FEATURE_FILE})",
                    f"{int(out_of_range.sum())} outside, e.g. {loc[out_of_range][0]}")
  unique, counts = np.unique(loc, return_counts=True)
  if (counts > 1).any():
    repeated = unique[counts > 1]
    raise mat.error(key, "distinct indices", f"{repeated.size} repeated, e.g. {repeated[0]}")
  return loc - 1


def _check_disjoint(mat: _MatFile, locs: Dict[str, np.ndarray]) -> None:
  """Every example belongs to at most one of the given splits."""
  keys = list(locs)
  for i, first in enumerate(keys):
    for second in keys[i + 1:]:
      shared = np.intersect1d(locs[first], locs[second])
      if shared.size:
        raise mat.error(second, f"no examples shared with {first}",
                        f"{shared.size} shared, e.g. index {shared[0] + 1}")


class _ClassDescriber:
  """Formats class ids for messages: 1-based as in the files, with names."""

  def __init__(self, names: Optional[Tuple[str, ...]]):
    self.names = names

  def __call__(self, class_ids: np.ndarray) -> str:
    shown = [f"{c + 1} ({self.names[c]})" if self.names else str(c + 1) for c in class_ids[:3]]
    more = f" and {class_ids.size - 3} more" if class_ids.size > 3 else ""
    return ", ".join(shown) + more


def _check_classes(mat: _MatFile, labels: np.ndarray, describe: _ClassDescriber,
                   train: Tuple[str, np.ndarray], test_seen: Tuple[str, np.ndarray],
                   test_unseen: Tuple[str, np.ndarray]) -> None:
  """Seen classes appear in train and test_seen and never among the unseen.

  Each argument pair is (key named in messages, 0-based example indices).
  """
  train_classes = np.unique(labels[train[1]])
  test_seen_classes = np.unique(labels[test_seen[1]])
  unseen = np.unique(labels[test_unseen[1]])
  seen = np.union1d(train_classes, test_seen_classes)
  both = np.intersect1d(seen, unseen)
  if both.size:
    raise mat.error(test_unseen[0],
                    f"classes disjoint from the seen classes of {train[0]} / {test_seen[0]} "
                    f"(classes from {FEATURE_FILE} [labels])",
                    f"class(es) both seen and unseen: {describe(both)}")
  missing = np.setdiff1d(seen, test_seen_classes)
  if missing.size:
    raise mat.error(test_seen[0], "examples of every seen class",
                    f"none of seen class(es) {describe(missing)}")
  missing = np.setdiff1d(seen, train_classes)
  if missing.size:
    raise mat.error(train[0], "examples of every seen class",
                    f"none of seen class(es) {describe(missing)}")


def _test_parts(mat: _MatFile, labels: np.ndarray, describe: _ClassDescriber):
  """Mode "test": trainval / test_seen / test_unseen, validated."""
  locs = {key: _locations(mat, key, len(labels)) for key in TEST_LOC_KEYS}
  _check_disjoint(mat, locs)
  _check_classes(mat, labels, describe, *locs.items())
  return tuple(locs[key] for key in TEST_LOC_KEYS)


def _validation_parts(mat: _MatFile, labels: np.ndarray, describe: _ClassDescriber,
                      validation_fraction: float, seed: int):
  """Mode "validation": train / held-out seen / validation classes."""
  rng = np.random.default_rng(seed)
  present = [key for key in VALIDATION_LOC_KEYS if mat.has(key)]
  if present:
    locs = {key: _locations(mat, key, len(labels)) for key in VALIDATION_LOC_KEYS}
    _check_disjoint(mat, locs)
    seen_pool, unseen, pool_key = locs["train_loc"], locs["val_loc"], "train_loc"
    both = np.intersect1d(labels[seen_pool], labels[unseen])
    if both.size:
      raise mat.error("val_loc", f"classes disjoint from those of train_loc (classes from "
                      f"{FEATURE_FILE} [labels])", f"class(es) in both: {describe(both)}")
  else:
    trainval, test_seen, _ = _test_parts(mat, labels, describe)
    pool = np.union1d(trainval, test_seen)
    seen = np.unique(labels[pool])
    if seen.size < 2:
      raise mat.error("trainval_loc", "at least 2 seen classes to hold some out for validation",
                      f"{seen.size}")
    num_held_out = int(np.clip(round(validation_fraction * seen.size), 1, seen.size - 1))
    held_out = np.sort(rng.permutation(seen)[:num_held_out])
    is_held_out = np.isin(labels[pool], held_out)
    seen_pool, unseen = pool[~is_held_out], pool[is_held_out]
    pool_key = "trainval_loc + test_seen_loc"
    logging.warning(
        "%s has no %s: synthesised a class-disjoint validation split, holding out %d of %d seen "
        "classes (validation_fraction=%.3g, seed=%d) as validation-unseen.",
        mat.path, " / ".join(VALIDATION_LOC_KEYS), num_held_out, seen.size, validation_fraction,
        seed)
  train, test_seen = _split_each_class(mat, pool_key, seen_pool, labels, describe, rng)
  return train, test_seen, np.sort(unseen)


def _split_each_class(mat: _MatFile, key: str, indices: np.ndarray, labels: np.ndarray,
                      describe: _ClassDescriber, rng: np.random.Generator):
  """Splits every class's examples HELD_OUT_SEEN_FRACTION out, at least one each side.

  Per class rather than globally (as the reference does), so that every seen
  class is both trained on and tested.
  """
  train, held_out = [], []
  for class_id in np.unique(labels[indices]):
    members = rng.permutation(indices[labels[indices] == class_id])
    if members.size < 2:
      raise mat.error(key, "at least 2 examples per seen class, to split them into train and "
                      "test_seen", f"1 example of class {describe(np.array([class_id]))}")
    count = int(np.clip(round(HELD_OUT_SEEN_FRACTION * members.size), 1, members.size - 1))
    held_out.append(members[:count])
    train.append(members[count:])
  return np.sort(np.concatenate(train)), np.sort(np.concatenate(held_out))


def _first(values: np.ndarray, limit: int = 3) -> str:
  shown = ", ".join(str(v) for v in values[:limit])
  return shown + (f" and {values.size - limit} more" if values.size > limit else "")
