"""Synthetic image features for zero-shot benchmarks (semi-real and presets).

A semi-real benchmark pairs a real `att_splits.mat` (real class embeddings,
real split sizes) with a synthetic `res101.mat`; a preset needs no input file
and also invents the class embeddings, with the real shapes of CUB, SUN,
AWA1, AWA2, APY or FLO. docs/synthetic_data.md gives the generating process
as equations and the calibration that sets the defaults of `Difficulty`.

This module builds a synthetic dataset in memory (`synthetic_dataset`) and
gathers the public names of the modules that do the work, one concept each:

- synthetic_features: the feature generator and its parameters
  (`make_features`, `Difficulty`, `DEFAULT_DIFFICULTY`, `NAIVE_DIFFICULTY`,
  `DIFFICULTIES`);
- synthetic_labels: a class for every image, consistent with the loc arrays
  (`labels_from_splits`);
- synthetic_presets: the six benchmark shapes and split files invented with
  them (`DatasetShape`, `PRESETS`, `match_preset`, `preset_att_splits`);
- synthetic_embeddings: invented class embeddings (`make_class_embeddings`);
- synthetic_split_files: reading a real split folder (`SPLITS_FILE`,
  `read_splits`, `unseen_from_class_lists`,
  `with_companion_validation_locs`, `copy_split_files`);
- synthetic_writer: writing dataset directories (`FEATURES_FILE`,
  `write_features_file`, `write_semi_real`, `write_preset`);
- synthetic_streams: the seeded random stream of each component.

Everything is deterministic in the seed and uses numpy only (no JAX).
"""

from typing import Mapping, Optional, Sequence

import numpy as np

from gmn_jax.data import synthetic_embeddings
from gmn_jax.data import synthetic_features
from gmn_jax.data import synthetic_labels
from gmn_jax.data import synthetic_presets
from gmn_jax.data import synthetic_split_files
from gmn_jax.data import synthetic_writer
from gmn_jax.data.dataset import ZSLDataset

# The public names of the modules above, so that `synthetic.X` keeps working.
Difficulty = synthetic_features.Difficulty
DEFAULT_DIFFICULTY = synthetic_features.DEFAULT_DIFFICULTY
NAIVE_DIFFICULTY = synthetic_features.NAIVE_DIFFICULTY
DIFFICULTIES = synthetic_features.DIFFICULTIES
make_features = synthetic_features.make_features
make_class_embeddings = synthetic_embeddings.make_class_embeddings
DatasetShape = synthetic_presets.DatasetShape
PRESETS = synthetic_presets.PRESETS
match_preset = synthetic_presets.match_preset
preset_att_splits = synthetic_presets.preset_att_splits
labels_from_splits = synthetic_labels.labels_from_splits
SPLITS_FILE = synthetic_split_files.SPLITS_FILE
unseen_from_class_lists = synthetic_split_files.unseen_from_class_lists
FEATURES_FILE = synthetic_writer.FEATURES_FILE
write_features_file = synthetic_writer.write_features_file
write_semi_real = synthetic_writer.write_semi_real
write_preset = synthetic_writer.write_preset


def synthetic_dataset(att_splits: Mapping[str, np.ndarray],
                      *,
                      name: str = "synthetic",
                      seed: int = 0,
                      feature_dim: int = 2048,
                      difficulty: Difficulty = DEFAULT_DIFFICULTY,
                      unseen_classes: Optional[Sequence[int]] = None) -> ZSLDataset:
  """Builds the split-mode `test` dataset in memory, without writing files.

  It holds exactly what loading the written directory gives with the default
  options (att embeddings L2-normalised per class, features unnormalised).

  Args:
    att_splits: the split variables (as from scipy.io.loadmat or
      preset_att_splits).
    name: the dataset name.
    seed: random seed.
    feature_dim: D.
    difficulty: the generator's parameters.
    unseen_classes: 0-based unseen class ids, or None to draw them.

  Returns:
    The ZSLDataset.

  Raises:
    DataError: the split variables are inconsistent.
  """
  labels = synthetic_labels.labels_from_splits(att_splits, seed, unseen_classes=unseen_classes)
  embeddings = np.asarray(att_splits["att"], dtype=np.float64).T
  features = synthetic_features.make_features(embeddings, labels, feature_dim=feature_dim,
                                              seed=seed, difficulty=difficulty)
  trainval, test_seen, test_unseen = (
      np.asarray(att_splits[key]).reshape(-1).astype(np.int64) - 1
      for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc"))
  norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
  return ZSLDataset(
      name=name, split="test",
      train_features=features[trainval], train_labels=labels[trainval],
      test_seen_features=features[test_seen], test_seen_labels=labels[test_seen],
      test_unseen_features=features[test_unseen], test_unseen_labels=labels[test_unseen],
      class_embeddings=(embeddings / np.where(norms > 0, norms, 1)).astype(np.float32),
      seen_classes=np.unique(labels[trainval]).astype(np.int32),
      unseen_classes=np.unique(labels[test_unseen]).astype(np.int32))
