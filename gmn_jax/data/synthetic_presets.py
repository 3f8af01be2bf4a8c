"""The six xlsa17 benchmark shapes, and split files invented with them.

A preset is a benchmark's real shapes (class count, embedding size, split
sizes, how uneven the classes are) without any of its data;
`preset_att_splits` invents an att_splits.mat with those shapes, and
`match_preset` recognises a real split file's benchmark by its shapes.
Deterministic in the seed; numpy only.
"""

import dataclasses
from typing import Mapping, Optional

import numpy as np

from gmn_jax.data import synthetic_embeddings
from gmn_jax.data import synthetic_streams


@dataclasses.dataclass(frozen=True)
class DatasetShape:
  """The shape of one xlsa17 benchmark (the proposed splits).

  Attributes:
    name: dataset name.
    num_classes: C.
    embedding_dim: K of the default (`att`) embedding.
    num_unseen: unseen (test) classes.
    num_val_classes: seen classes held out as validation-unseen
      (`val_loc`).
    trainval: size of `trainval_loc`.
    test_seen: size of `test_seen_loc`.
    test_unseen: size of `test_unseen_loc`.
    val_trainval: images of validation classes inside `trainval_loc`.
    val_test_seen: images of validation classes inside `test_seen_loc`.
    count_spread: log-normal spread of the per-class image counts (0: all
      classes the same size, as SUN's 20 images per class).
    embedding_mean_cosine: mean pairwise cosine between class embeddings of
      the real file (how fine-grained the classes are).
    embedding_zero_fraction: fraction of exact zeros in the real embeddings.
  """

  name: str
  num_classes: int
  embedding_dim: int
  num_unseen: int
  num_val_classes: int
  trainval: int
  test_seen: int
  test_unseen: int
  val_trainval: int
  val_test_seen: int
  count_spread: float
  embedding_mean_cosine: float
  embedding_zero_fraction: float

  @property
  def num_seen(self) -> int:
    return self.num_classes - self.num_unseen

  @property
  def num_images(self) -> int:
    return self.trainval + self.test_seen + self.test_unseen

  @property
  def train(self) -> int:
    return self.trainval + self.test_seen - self.val_trainval - self.val_test_seen

  @property
  def val(self) -> int:
    return self.val_trainval + self.val_test_seen


# Sizes are those of the real files in shared/data/xlsa17 (train/val sizes of
# CUB from its sent_splits.mat). APY's copy has no train_loc/val_loc, so its
# validation classes get their proportional share (5 of 20 seen classes).
# Count spreads follow the real per-class counts: CUB 41-60 images, SUN
# exactly 20, AWA 92-1645, APY dominated by "person", FLO 40-258.
PRESETS: Mapping[str, DatasetShape] = {
    shape.name: shape for shape in (
        DatasetShape("CUB", 200, 312, 50, 50, 7057, 1764, 2967, 2355, 591,
                     0.1, 0.59, 0.43),
        DatasetShape("SUN", 717, 102, 72, 65, 10320, 2580, 1440, 1040, 260,
                     0.0, 0.50, 0.46),
        DatasetShape("AWA1", 50, 85, 10, 13, 19832, 4958, 5685, 6372, 1554,
                     0.6, 0.58, 0.29),
        DatasetShape("AWA2", 50, 85, 10, 13, 23527, 5882, 7913, 7340, 1851,
                     0.6, 0.58, 0.29),
        DatasetShape("APY", 32, 64, 12, 5, 5932, 1483, 7924, 1483, 371,
                     1.0, 0.28, 0.80),
        DatasetShape("FLO", 102, 1024, 20, 20, 5631, 1403, 1155, 926, 230,
                     0.45, 0.77, 0.0),
    )
}


def match_preset(att_splits: Mapping[str, np.ndarray]) -> Optional[DatasetShape]:
  """The preset whose class count and test-mode split sizes match the file.

  Args:
    att_splits: the variables of an att_splits.mat.

  Returns:
    The matching DatasetShape, or None.
  """
  sizes = tuple(np.asarray(att_splits.get(key, np.zeros(0))).size
                for key in ("trainval_loc", "test_seen_loc", "test_unseen_loc"))
  num_classes = np.asarray(att_splits.get("att", np.zeros((0, 0)))).shape[-1]
  for shape in PRESETS.values():
    shape_sizes = (shape.trainval, shape.test_seen, shape.test_unseen)
    if (shape.num_classes, shape_sizes) == (num_classes, sizes):
      return shape
  return None


def _column(indices: np.ndarray) -> np.ndarray:
  """0-based indices as a 1-based uint16 column, as the release stores them."""
  return (np.sort(indices) + 1).astype(np.uint16).reshape(-1, 1)


def preset_att_splits(name: str, *, seed: int = 0) -> dict:
  """The variables of an att_splits.mat with a preset's real shapes.

  Args:
    name: a key of PRESETS.
    seed: random seed (embeddings and the image order of the splits).

  Returns:
    A dict ready for scipy.io.savemat: `att` (K x C float64),
    `allclasses_names` (C x 1 cell), and 1-based uint16 column vectors
    `trainval_loc`, `test_seen_loc`, `test_unseen_loc`, `train_loc`,
    `val_loc`.

  Raises:
    KeyError: unknown preset name.
  """
  shape = PRESETS[name]
  embeddings = synthetic_embeddings.make_class_embeddings(
      shape.num_classes, shape.embedding_dim, seed=seed,
      mean_cosine=shape.embedding_mean_cosine, zero_fraction=shape.embedding_zero_fraction)
  order = synthetic_streams.rng(seed, synthetic_streams.LOCS).permutation(shape.num_images)
  trainval, test_seen, test_unseen = np.split(
      order, [shape.trainval, shape.trainval + shape.test_seen])
  val = np.concatenate([trainval[:shape.val_trainval], test_seen[:shape.val_test_seen]])
  train = np.concatenate([trainval[shape.val_trainval:], test_seen[shape.val_test_seen:]])
  names = np.empty((shape.num_classes, 1), dtype=object)
  for c in range(shape.num_classes):
    names[c, 0] = f"{c + 1:03d}.{name.lower()}_class_{c + 1}"
  return {
      "att": embeddings.T.copy(),
      "allclasses_names": names,
      "trainval_loc": _column(trainval),
      "test_seen_loc": _column(test_seen),
      "test_unseen_loc": _column(test_unseen),
      "train_loc": _column(train),
      "val_loc": _column(val),
  }
