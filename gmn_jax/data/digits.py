"""The embedded default dataset: scikit-learn's handwritten digits.

Real images that need no download: the 1,797 8x8 grey-level digits bundled
with scikit-learn (`sklearn.datasets.load_digits`). Features are the 64 pixel
intensities scaled from 0..16 to [0, 1] (non-negative, like pool features).
Each digit class is described by 9 binary attributes: its seven-segment
display code and two properties of how the digit is drawn.

Segments follow the usual display naming::

     aaa
    f   b
     ggg
    e   c
     ddd

| attribute       | 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | meaning                          |
|-----------------|---|---|---|---|---|---|---|---|---|---|----------------------------------|
| seg_a           | 1 | 0 | 1 | 1 | 0 | 1 | 1 | 1 | 1 | 1 | top bar                          |
| seg_b           | 1 | 1 | 1 | 1 | 1 | 0 | 0 | 1 | 1 | 1 | upper right                      |
| seg_c           | 1 | 1 | 0 | 1 | 1 | 1 | 1 | 1 | 1 | 1 | lower right                      |
| seg_d           | 1 | 0 | 1 | 1 | 0 | 1 | 1 | 0 | 1 | 1 | bottom bar                       |
| seg_e           | 1 | 0 | 1 | 0 | 0 | 0 | 1 | 0 | 1 | 0 | lower left                       |
| seg_f           | 1 | 0 | 0 | 0 | 1 | 1 | 1 | 0 | 1 | 1 | upper left                       |
| seg_g           | 0 | 0 | 1 | 1 | 1 | 1 | 1 | 0 | 1 | 1 | middle bar                       |
| curved_stroke   | 1 | 0 | 1 | 1 | 0 | 1 | 1 | 0 | 1 | 1 | drawn with at least one curve    |
| diagonal_stroke | 0 | 0 | 1 | 0 | 1 | 0 | 0 | 1 | 0 | 0 | has a long slanted straight line |

Why these two extra attributes: the display code says which parts of the
cell are inked but is made of straight bars only; how a digit is *drawn*
is the other half of what tells handwritten digits apart, and the code
cannot express it. Handwritten 0, 2, 3, 5, 6, 8 and 9 are drawn with curves,
1, 4 and 7 with straight strokes only; 2 (its descending stroke), 4 (in its
closed, triangular form, which is what the mean image of scikit-learn's 4s
shows) and 7 (its stem) have a long diagonal. Properties that follow from
the code itself (number of loops, symmetries, stroke ends) were left out:
they add no information, only reweight the embedding. All ten embeddings
are distinct; the closest pairs (0-8, 6-8, 8-9) differ in one attribute.

Split. Unseen digits are 3, 4 and 7, chosen by a rule on the attribute table
alone (`choose_unseen` applies it): (1) every attribute takes both values
among the seen digits, so each can be learned; (2) maximise the smallest
L2 distance between an unseen digit's embedding and any other digit's, so
that no unseen digit is a near-copy of another class; (3) then maximise the
smallest distance among the unseen digits; (4) then the smallest digits.
In split mode "validation", seen digits 0 and 5 play the unseen role, chosen
by the same rule among the seven seen digits.

Seen-class images are split deterministically into trainval and test_seen:
within each class, every fifth image in the file's order goes to test_seen
(20%). Split mode "validation" uses trainval images only: its train /
test_seen are the same every-fifth split of the five train digits' trainval
images, and its test_unseen are the trainval images of digits 0 and 5, so
that tuning on it never sees a test image.
"""

import itertools
from typing import Sequence, Tuple

import numpy as np
import sklearn.datasets

from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.data.preprocessing import normalize_class_embeddings, normalize_features
from gmn_jax.errors import ConfigError

CLASS_NAMES = tuple(str(digit) for digit in range(10))
SEGMENTS = "abcdefg"
SEGMENT_CODES = {
    0: "abcdef", 1: "bc", 2: "abdeg", 3: "abcdg", 4: "bcfg",
    5: "acdfg", 6: "acdefg", 7: "abc", 8: "abcdefg", 9: "abcdfg",
}
ATTRIBUTE_NAMES = tuple(f"seg_{s}" for s in SEGMENTS) + ("curved_stroke", "diagonal_stroke")
CURVED_DIGITS = (0, 2, 3, 5, 6, 8, 9)
DIAGONAL_DIGITS = (2, 4, 7)

UNSEEN_DIGITS = (3, 4, 7)
SEEN_DIGITS = (0, 1, 2, 5, 6, 8, 9)
VALIDATION_UNSEEN_DIGITS = (0, 5)
# Within each class, images at positions 4, 9, 14, ... (in file order) are
# test_seen.
TEST_SEEN_EVERY = 5
SPLITS = ("test", "validation")


def attribute_table() -> np.ndarray:
  """The binary attribute table of the module docstring.

  Returns:
    (10, 9) float64 of 0/1, row d for digit d, columns in ATTRIBUTE_NAMES
    order.
  """
  return np.array([[s in SEGMENT_CODES[d] for s in SEGMENTS]
                   + [d in CURVED_DIGITS, d in DIAGONAL_DIGITS] for d in range(10)],
                  dtype=np.float64)


def choose_unseen(candidates: Sequence[int], num_unseen: int) -> Tuple[int, ...]:
  """Applies the split rule of the module docstring to the attribute table.

  Args:
    candidates: the digits to choose among (all ten, or the seen ones).
    num_unseen: how many to hold out.

  Returns:
    The chosen digits, sorted.
  """
  table = attribute_table()
  embeddings = normalize_class_embeddings(table)
  distance = np.linalg.norm(embeddings[:, None] - embeddings[None], axis=-1)

  def key(unseen):
    rest = [d for d in candidates if d not in unseen]
    learnable = all(np.unique(table[rest, j]).size > 1 for j in range(table.shape[1]))
    margin = min(distance[u, d] for u in unseen for d in candidates if d != u)
    spread = min(distance[u, v] for u, v in itertools.combinations(unseen, 2))
    return (not learnable, -round(margin, 9), -round(spread, 9), unseen)

  return min(itertools.combinations(sorted(candidates), num_unseen), key=key)


def class_embeddings() -> np.ndarray:
  """The per-class L2-normalised attribute embeddings, as the loaders give them.

  Returns:
    (10, 13) float32.
  """
  return normalize_class_embeddings(attribute_table()).astype(np.float32)


def _every_fifth_split(labels: np.ndarray, indices: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """Splits `indices` per class: every TEST_SEEN_EVERY-th (in order) is held out."""
  held_out = np.zeros(indices.size, dtype=bool)
  for digit in np.unique(labels[indices]):
    positions = np.flatnonzero(labels[indices] == digit)
    held_out[positions[TEST_SEEN_EVERY - 1::TEST_SEEN_EVERY]] = True
  return indices[~held_out], indices[held_out]


def load_digits(*, split: str = "test", feature_norm: str = "none") -> ZSLDataset:
  """The digits zero-shot dataset.

  Args:
    split: "test" (train on the seen digits' trainval images, test on their
      test_seen images and on the unseen digits 3, 4, 7) or "validation"
      (digits 5 and 9 play the unseen role; see the module docstring).
    feature_norm: "none" | "l2" | "minmax" | "standardize", fitted on the
      training features only.

  Returns:
    The ZSLDataset, name "digits", class names "0".."9".

  Raises:
    ConfigError: unknown split or feature normalisation.
  """
  if split not in SPLITS:
    raise ConfigError(f"split: expected one of {', '.join(SPLITS)}, found {split!r}")
  bunch = sklearn.datasets.load_digits()
  features = (np.asarray(bunch.data, dtype=np.float32) / 16.0)
  labels = np.asarray(bunch.target, dtype=np.int32)
  seen_images = np.flatnonzero(np.isin(labels, SEEN_DIGITS))
  trainval, test_seen = _every_fifth_split(labels, seen_images)
  test_unseen = np.flatnonzero(np.isin(labels, UNSEEN_DIGITS))
  seen, unseen = SEEN_DIGITS, UNSEEN_DIGITS
  if split == "validation":
    unseen = VALIDATION_UNSEEN_DIGITS
    seen = tuple(d for d in SEEN_DIGITS if d not in unseen)
    test_unseen = trainval[np.isin(labels[trainval], unseen)]
    trainval, test_seen = _every_fifth_split(labels, trainval[np.isin(labels[trainval], seen)])
  train_features, seen_features, unseen_features = normalize_features(
      feature_norm, features[trainval], features[test_seen], features[test_unseen])
  return ZSLDataset(
      name="digits", split=split,
      train_features=train_features, train_labels=labels[trainval],
      test_seen_features=seen_features, test_seen_labels=labels[test_seen],
      test_unseen_features=unseen_features, test_unseen_labels=labels[test_unseen],
      class_embeddings=class_embeddings(),
      seen_classes=np.array(seen, dtype=np.int32),
      unseen_classes=np.array(unseen, dtype=np.int32),
      class_names=CLASS_NAMES, embedding_source="att", feature_normalization=feature_norm)
