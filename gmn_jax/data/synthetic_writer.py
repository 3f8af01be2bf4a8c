"""Writing synthetic dataset directories that load like the xlsa17 release.

A semi-real directory pairs a real att_splits.mat (copied, with its
companions) with a synthetic res101.mat; a preset directory gets an invented
att_splits.mat as well. Both load with `gmn_jax.data.xlsa17.load_xlsa17`.
"""

import os
import pathlib
from typing import Mapping, Optional, Sequence

import numpy as np
import scipy.io

from gmn_jax.data import synthetic_features
from gmn_jax.data import synthetic_labels
from gmn_jax.data import synthetic_presets
from gmn_jax.data import synthetic_split_files
from gmn_jax.errors import DataError

FEATURES_FILE = "res101.mat"


def write_features_file(
    out_dir: os.PathLike | str,
    att_splits: Mapping[str, np.ndarray],
    *,
    seed: int = 0,
    feature_dim: int = 2048,
    difficulty: synthetic_features.Difficulty = synthetic_features.DEFAULT_DIFFICULTY,
    unseen_classes: Optional[Sequence[int]] = None,
    source: str = synthetic_split_files.SPLITS_FILE) -> pathlib.Path:
  """Writes out_dir/res101.mat for the given split variables.

  `features` is stored D x N float32 and `labels` N x 1 (1-based, double), as
  in the xlsa17 release. The release's `image_files` (no loader reads it) is
  not written: a cell array of N strings takes scipy longer to save than the
  features.

  Args:
    out_dir: the dataset directory (created if missing).
    att_splits: the variables of its att_splits.mat.
    seed: random seed.
    feature_dim: D.
    difficulty: the generator's parameters.
    unseen_classes: 0-based unseen class ids, or None to draw them.
    source: the split file's name for error messages.

  Returns:
    The path of the written res101.mat.

  Raises:
    DataError: the split variables are inconsistent.
  """
  labels = synthetic_labels.labels_from_splits(att_splits, seed, unseen_classes=unseen_classes,
                                               source=source)
  embeddings = np.asarray(att_splits["att"], dtype=np.float64).T
  features = synthetic_features.make_features(embeddings, labels, feature_dim=feature_dim,
                                              seed=seed, difficulty=difficulty)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / FEATURES_FILE
  scipy.io.savemat(path, {"features": features.T, "labels": (labels + 1.0).reshape(-1, 1)},
                   format="5", do_compression=False, oned_as="column")
  return path


def write_semi_real(
    att_splits_path: os.PathLike | str,
    out_dir: os.PathLike | str,
    *,
    seed: int = 0,
    feature_dim: int = 2048,
    difficulty: synthetic_features.Difficulty = synthetic_features.DEFAULT_DIFFICULTY,
) -> pathlib.Path:
  """Builds a semi-real dataset directory from a real att_splits.mat.

  Writes res101.mat and copies the split file and its companions found beside
  it (sent_splits.mat, binaryAtt_splits.mat, the class lists) into out_dir.
  When testclasses.txt and the file's class names are there, the real unseen
  classes are used; otherwise they are drawn at random. When the file has no
  train_loc/val_loc but a companion split file with the same test splits has
  them (CUB's sent_splits.mat), the labels respect the companion's.

  Args:
    att_splits_path: a real (or any valid) att_splits.mat.
    out_dir: the directory to write (created if missing).
    seed: random seed.
    feature_dim: D.
    difficulty: the generator's parameters.

  Returns:
    The path of the written res101.mat.

  Raises:
    DataError: the split file is missing, unreadable or inconsistent.
  """
  att_splits_path = pathlib.Path(att_splits_path)
  att_splits = synthetic_split_files.read_splits(att_splits_path)
  for key in ("att", "trainval_loc", "test_seen_loc", "test_unseen_loc"):
    if key not in att_splits:
      raise DataError(att_splits_path, key, "a variable of that name", "no such key")
  out_dir = pathlib.Path(out_dir)
  unseen_classes = synthetic_split_files.unseen_from_class_lists(att_splits,
                                                                 att_splits_path.parent)
  att_splits = synthetic_split_files.with_companion_validation_locs(att_splits, att_splits_path)
  path = write_features_file(out_dir, att_splits, seed=seed, feature_dim=feature_dim,
                             difficulty=difficulty, unseen_classes=unseen_classes,
                             source=str(att_splits_path))
  synthetic_split_files.copy_split_files(att_splits_path, out_dir)
  return path


def write_preset(
    name: str,
    out_dir: os.PathLike | str,
    *,
    seed: int = 0,
    feature_dim: int = 2048,
    difficulty: synthetic_features.Difficulty = synthetic_features.DEFAULT_DIFFICULTY,
) -> pathlib.Path:
  """Writes a fully synthetic dataset directory with a preset's real shapes.

  Args:
    name: a key of PRESETS (CUB, SUN, AWA1, AWA2, APY, FLO).
    out_dir: the directory to write (created if missing).
    seed: random seed.
    feature_dim: D.
    difficulty: the generator's parameters.

  Returns:
    The path of the written res101.mat (att_splits.mat is beside it).

  Raises:
    DataError: unknown preset name.
  """
  if name not in synthetic_presets.PRESETS:
    raise DataError(name, None, f"a preset among {', '.join(synthetic_presets.PRESETS)}",
                    repr(name))
  att_splits = synthetic_presets.preset_att_splits(name, seed=seed)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  splits_path = out_dir / synthetic_split_files.SPLITS_FILE
  scipy.io.savemat(splits_path, att_splits, format="5", oned_as="column")
  return write_features_file(out_dir, att_splits, seed=seed, feature_dim=feature_dim,
                             difficulty=difficulty, source=str(splits_path))
