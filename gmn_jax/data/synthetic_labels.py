"""Synthetic labels: a class for every image, consistent with a split file.

att_splits.mat says which images are in which split but not which class each
image is (the real release takes that from res101.mat); `labels_from_splits`
assigns classes so that the labels agree with the loc arrays
(docs/synthetic_data.md, "Labels"). Deterministic in the seed; numpy only.
"""

from typing import Mapping, Optional, Sequence

import numpy as np

from gmn_jax.data import synthetic_presets
from gmn_jax.data import synthetic_streams
from gmn_jax.data import synthetic_split_files
from gmn_jax.errors import DataError


def _loc(att_splits: Mapping[str, np.ndarray], key: str, source: str, required: bool = True):
  """A loc array as 0-based int64 indices, checked for 1-based integers."""
  if key not in att_splits:
    if required:
      raise DataError(source, key, "a 1-based index array", "no such key")
    return None
  raw = np.asarray(att_splits[key])
  if raw.dtype.kind not in "uif" or raw.size == 0:
    raise DataError(source, key, "a non-empty numeric index array",
                    f"dtype {raw.dtype}, size {raw.size}")
  values = raw.reshape(-1).astype(np.float64)
  if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
    raise DataError(source, key, "integer indices", "non-integer values")
  if values.min() < 1:
    raise DataError(source, key, "1-based indices (>= 1)", f"minimum {values.min():g}")
  if np.unique(values).size != values.size:
    raise DataError(source, key, "distinct indices",
                    f"{values.size - np.unique(values).size} duplicates")
  return values.astype(np.int64) - 1


def _allocate(total: int, weights: np.ndarray) -> np.ndarray:
  """Splits `total` items into len(weights) counts >= 1, proportional to weights.

  Largest-remainder rounding, so counts sum exactly to `total`.
  """
  extra = total - weights.size
  shares = extra * weights / weights.sum()
  counts = np.floor(shares).astype(np.int64)
  leftover = extra - counts.sum()
  counts[np.argsort(-(shares - counts), kind="stable")[:leftover]] += 1
  return counts + 1


def labels_from_splits(att_splits: Mapping[str, np.ndarray],
                       seed: int = 0,
                       *,
                       unseen_classes: Optional[Sequence[int]] = None,
                       num_unseen: Optional[int] = None,
                       count_spread: Optional[float] = None,
                       source: str = synthetic_split_files.SPLITS_FILE) -> np.ndarray:
  """Assigns a class to every image so that the labels agree with the loc arrays.

  Unseen classes appear only in `test_unseen_loc`; every seen class appears
  in both `trainval_loc` and `test_seen_loc` with the same per-class
  proportion; when the file has `train_loc`/`val_loc`, the seen classes are
  further split into train classes (in `train_loc` only) and validation
  classes (in `val_loc` only). Per-class counts are uneven, drawn from
  log-normal class weights of spread `count_spread`.

  Which classes are unseen is not recorded in att_splits.mat (the real
  release takes it from res101.mat's labels), so it is drawn at random, with
  the real number of unseen classes when the file matches a preset.

  Args:
    att_splits: the variables of an att_splits.mat (`att` K x C and 1-based
      `trainval_loc`, `test_seen_loc`, `test_unseen_loc`; optionally
      `train_loc`, `val_loc`).
    seed: random seed.
    unseen_classes: 0-based unseen class ids; drawn at random when None.
    num_unseen: how many to draw; defaults to the matching preset's count, or
      else to the share of test_unseen images among all images.
    count_spread: log-normal spread of per-class counts; defaults to the
      matching preset's, else 0.3.
    source: the file name used in error messages.

  Returns:
    (N,) int32 0-based class ids, N the number of images.

  Raises:
    DataError: missing or inconsistent keys, or too few images to give every
      class an image in every split it must appear in.
  """
  if "att" not in att_splits:
    raise DataError(source, "att", "a K x C class-embedding matrix", "no such key")
  att = np.asarray(att_splits["att"])
  if att.ndim != 2 or min(att.shape) == 0:
    raise DataError(source, "att", "a non-empty K x C matrix", f"shape {att.shape}")
  num_classes = att.shape[1]
  trainval = _loc(att_splits, "trainval_loc", source)
  test_seen = _loc(att_splits, "test_seen_loc", source)
  test_unseen = _loc(att_splits, "test_unseen_loc", source)
  all_locs = np.concatenate([trainval, test_seen, test_unseen])
  num_images = all_locs.size
  if np.unique(all_locs).size != num_images or all_locs.max() != num_images - 1:
    raise DataError(source, "trainval_loc/test_seen_loc/test_unseen_loc",
                    f"disjoint arrays covering 1..{num_images}",
                    f"{num_images - np.unique(all_locs).size} shared indices, "
                    f"maximum {all_locs.max() + 1}")
  preset = synthetic_presets.match_preset(att_splits)

  rng = synthetic_streams.rng(seed, synthetic_streams.UNSEEN)
  if unseen_classes is None:
    if num_unseen is None:
      num_unseen = (preset.num_unseen if preset else
                    int(round(num_classes * test_unseen.size / num_images)))
    num_unseen = int(np.clip(num_unseen, 1, num_classes - 1))
    unseen_classes = rng.choice(num_classes, size=num_unseen, replace=False)
  unseen_classes = np.sort(np.asarray(unseen_classes, dtype=np.int64))
  if (unseen_classes.size == 0 or unseen_classes.size >= num_classes
      or unseen_classes.min() < 0 or unseen_classes.max() >= num_classes
      or np.unique(unseen_classes).size != unseen_classes.size):
    raise DataError(source, "att", f"room for the unseen classes among {num_classes} classes",
                    f"unseen class ids {unseen_classes.tolist()}")
  seen_classes = np.setdiff1d(np.arange(num_classes), unseen_classes)

  # Cells of images that must be shared out among a fixed set of classes.
  cells = []
  train = _loc(att_splits, "train_loc", source, required=False)
  val = _loc(att_splits, "val_loc", source, required=False)
  if train is not None and val is not None:
    seen_images = np.union1d(trainval, test_seen)
    if np.intersect1d(train, val).size or not np.array_equal(np.union1d(train, val), seen_images):
      raise DataError(source, "train_loc/val_loc",
                      "a disjoint split of trainval_loc + test_seen_loc",
                      "arrays that overlap or cover other images")
    num_val = preset.num_val_classes if preset else int(round(seen_classes.size * val.size
                                                              / seen_images.size))
    num_val = int(np.clip(num_val, 1, seen_classes.size - 1))
    val_rng = synthetic_streams.rng(seed, synthetic_streams.VALIDATION)
    val_classes = np.sort(val_rng.choice(seen_classes, size=num_val, replace=False))
    train_classes = np.setdiff1d(seen_classes, val_classes)
    for classes, part in ((train_classes, train), (val_classes, val)):
      cells += [(classes, np.intersect1d(trainval, part), "trainval_loc"),
                (classes, np.intersect1d(test_seen, part), "test_seen_loc")]
  else:
    cells += [(seen_classes, trainval, "trainval_loc"), (seen_classes, test_seen, "test_seen_loc")]
  cells.append((unseen_classes, test_unseen, "test_unseen_loc"))

  if count_spread is None:
    count_spread = preset.count_spread if preset else 0.3
  count_rng = synthetic_streams.rng(seed, synthetic_streams.COUNTS)
  weights = np.exp(count_spread * count_rng.standard_normal(num_classes))
  labels = np.full(num_images, -1, dtype=np.int64)
  rng = synthetic_streams.rng(seed, synthetic_streams.ASSIGN)
  for classes, images, key in cells:
    if images.size < classes.size:
      raise DataError(source, key, f"at least one image for each of its {classes.size} classes",
                      f"{images.size} images")
    counts = _allocate(images.size, weights[classes])
    labels[rng.permutation(images)] = np.repeat(classes, counts)
  return labels.astype(np.int32)

