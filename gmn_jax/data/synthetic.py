"""Synthetic image features for zero-shot benchmarks (semi-real and presets).

A semi-real benchmark pairs a real `att_splits.mat` (real class embeddings,
real split sizes) with a synthetic `res101.mat`; a preset needs no input file
and also invents the class embeddings, with the real shapes of CUB, SUN,
AWA1, AWA2, APY or FLO. docs/synthetic_data.md gives the generating process
as equations and the calibration that sets the defaults of `Difficulty`.

The generating process, in short. Each class c has an embedding a_c. A fixed
random nonlinear map turns it into a latent class code m_c; to it are added
an unpredictable class-specific part, one of several class-dependent mode
offsets, a shared low-rank nuisance ("pose/background") and heteroscedastic
noise, giving a latent vector l. The feature vector is a ReLU of a random
projection of l plus per-feature noise, scaled so that the features look like
ResNet-101 pool5 activations: non-negative, mean about 0.45, about 40% exact
zeros and a long tail.

Everything is deterministic in the seed and uses numpy only (no JAX).
"""

import dataclasses
import os
import pathlib
import shutil
from typing import Mapping, Optional, Sequence

import numpy as np
import scipy.io
import scipy.special

from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import DataError

FEATURES_FILE = "res101.mat"
SPLITS_FILE = "att_splits.mat"
# Side files of a real dataset folder that travel with att_splits.mat.
_COMPANION_GLOBS = ("*_splits.mat", "*classes*.txt")

# Rows of features generated at once; fixed so that the output does not depend
# on memory limits (every block draws from its own seeded stream).
_BLOCK_ROWS = 2048

# Seed-stream ids: each random component draws from its own stream, so that
# changing one size (e.g. the number of images) leaves the others unchanged.
_STREAM_MAP, _STREAM_CLASSES, _STREAM_SAMPLES = 0, 1, 2
_STREAM_UNSEEN, _STREAM_VAL, _STREAM_COUNTS, _STREAM_ASSIGN = 10, 11, 12, 13
_STREAM_EMBEDDINGS, _STREAM_LOCS = 20, 21


@dataclasses.dataclass(frozen=True)
class Difficulty:
  """Parameters of the feature generator (defaults are the calibrated ones).

  Variances are per latent coordinate and relative to the between-class
  variance of the predictable class code, which is 1.

  Attributes:
    latent_dim: L, dimension of the latent space the classes live in.
    embedding_gain: kappa, slope of the tanh in the embedding map; larger is
      more nonlinear (saturated).
    unexplained_class_fraction: rho, the fraction of each class mean that is
      class-specific randomness, not a function of the embedding. It bounds
      how well any method can place unseen classes.
    modes_per_class: M, mixture components per class.
    mode_scale: standard deviation of the mode offsets.
    mode_unexplained_fraction: the fraction of a mode offset that is random
      rather than a function of the class code.
    mode_concentration: Dirichlet concentration of the per-class mode weights
      (small: one dominant mode; large: balanced modes).
    nuisance_rank: r, number of shared nuisance factors.
    nuisance_scale: standard deviation (per latent coordinate) of the shared
      nuisance variation.
    noise_scale: sigma, typical standard deviation of the isotropic latent
      noise.
    noise_spread: gamma, log-normal spread of the per-class noise scale
      (heteroscedasticity across classes).
    feature_noise: omega, standard deviation of the independent per-feature
      noise before the ReLU, relative to the latent signal of gain 1.
    active_fraction: the mean fraction of non-zero features.
    feature_mean: the mean feature value.
  """

  latent_dim: int = 96
  embedding_gain: float = 1.0
  unexplained_class_fraction: float = 0.15
  modes_per_class: int = 3
  mode_scale: float = 1.2
  mode_unexplained_fraction: float = 0.5
  mode_concentration: float = 2.0
  nuisance_rank: int = 6
  nuisance_scale: float = 2.0
  noise_scale: float = 2.0
  noise_spread: float = 0.35
  feature_noise: float = 1.0
  active_fraction: float = 0.6
  feature_mean: float = 0.45


DEFAULT_DIFFICULTY = Difficulty()
# The naive generator that calibration starts from: class mean = a fixed map
# of the embedding plus small isotropic noise. ZSL on it is trivially easy.
NAIVE_DIFFICULTY = Difficulty(unexplained_class_fraction=0.0, modes_per_class=1, mode_scale=0.0,
                              nuisance_scale=0.0, noise_scale=0.3, noise_spread=0.0,
                              feature_noise=0.1)
DIFFICULTIES = {"calibrated": DEFAULT_DIFFICULTY, "naive": NAIVE_DIFFICULTY}


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


def _rng(seed: int, *stream: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), *stream])


def _standardize_columns(matrix: np.ndarray) -> np.ndarray:
  """Centres every column and scales it to unit variance (constant: zero)."""
  centred = matrix - matrix.mean(axis=0)
  std = centred.std(axis=0)
  return centred / np.where(std > 0, std, 1.0)


def _truncated_relu_mean(threshold: np.ndarray) -> np.ndarray:
  """E[max(0, z + t)] for z ~ N(0, 1), elementwise in t."""
  density = np.exp(-0.5 * threshold**2) / np.sqrt(2 * np.pi)
  return threshold * scipy.special.ndtr(threshold) + density


class _FeatureMap:
  """The fixed random parts of the generator that do not depend on classes."""

  def __init__(self, embedding_dim: int, feature_dim: int, difficulty: Difficulty, seed: int):
    rng = _rng(seed, _STREAM_MAP)
    latent = difficulty.latent_dim
    self.embedding_projection = rng.standard_normal((embedding_dim, latent))
    self.embedding_bias = rng.standard_normal(latent)
    self.mode_maps = (rng.standard_normal((difficulty.modes_per_class, latent, latent))
                      / np.sqrt(latent))
    self.nuisance = rng.standard_normal((difficulty.nuisance_rank, latent)) * (
        difficulty.nuisance_scale / np.sqrt(max(difficulty.nuisance_rank, 1)))
    # Unit-norm rows make w . l unit-variance for a unit-variance latent.
    projection = rng.standard_normal((latent, feature_dim))
    self.projection = (projection / np.linalg.norm(projection, axis=0)).astype(np.float32)
    # How strongly each feature follows the latent signal (log-normal gains)
    # and how often it fires (logit-normal around active_fraction).
    self.gain = np.exp(0.5 * rng.standard_normal(feature_dim))
    pre_std = np.sqrt(self.gain**2 + difficulty.feature_noise**2)
    active = scipy.special.expit(scipy.special.logit(difficulty.active_fraction)
                                 + 0.8 * rng.standard_normal(feature_dim))
    threshold = scipy.special.ndtri(active)
    self.bias = pre_std * threshold
    # Per-feature means are log-normal around feature_mean (a long tail of
    # strongly active features); out_scale makes E[x_d] equal to them.
    feature_means = np.exp(0.7 * rng.standard_normal(feature_dim))
    feature_means *= difficulty.feature_mean / feature_means.mean()
    self.out_scale = feature_means / (pre_std * _truncated_relu_mean(threshold))

  def class_codes(self, class_embeddings: np.ndarray, gain: float) -> np.ndarray:
    """m_c: the standardised nonlinear image of the centred embeddings, (C, L)."""
    centred = class_embeddings - class_embeddings.mean(axis=0)
    spread = np.sqrt(np.mean(np.sum(centred**2, axis=1)))
    centred = centred / (spread if spread > 0 else 1.0)
    return _standardize_columns(np.tanh(gain * centred @ self.embedding_projection
                                        + self.embedding_bias))


def make_features(class_embeddings: np.ndarray,
                  labels: np.ndarray,
                  *,
                  feature_dim: int = 2048,
                  seed: int = 0,
                  difficulty: Difficulty = DEFAULT_DIFFICULTY) -> np.ndarray:
  """Draws one synthetic feature vector per label.

  Args:
    class_embeddings: (C, K) class embeddings, one row per class (any scale;
      the generator centres and rescales them as a whole).
    labels: (N,) 0-based class ids into `class_embeddings`.
    feature_dim: D.
    seed: the generator's seed; the same seed and inputs give the same
      features.
    difficulty: the generator's parameters.

  Returns:
    (N, D) float32 non-negative features.

  Raises:
    ValueError: labels out of range or bad shapes.
  """
  class_embeddings = np.asarray(class_embeddings, dtype=np.float64)
  labels = np.asarray(labels).reshape(-1).astype(np.int64)
  if class_embeddings.ndim != 2:
    raise ValueError(f"class_embeddings must be (C, K), got shape {class_embeddings.shape}")
  num_classes, embedding_dim = class_embeddings.shape
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
  d = difficulty
  feature_map = _FeatureMap(embedding_dim, feature_dim, d, seed)

  # Class-level draws: the unexplained part of the mean, the mode offsets and
  # weights, and the per-class noise scale.
  rng = _rng(seed, _STREAM_CLASSES)
  codes = feature_map.class_codes(class_embeddings, d.embedding_gain)
  rho = d.unexplained_class_fraction
  means = np.sqrt(1 - rho) * codes + np.sqrt(rho) * rng.standard_normal(codes.shape)
  explained_offsets = np.einsum("cl,mlk->cmk", codes, feature_map.mode_maps)
  rho_mode = d.mode_unexplained_fraction
  offsets = d.mode_scale * (np.sqrt(1 - rho_mode) * explained_offsets
                            + np.sqrt(rho_mode) * rng.standard_normal(explained_offsets.shape))
  mode_weights = rng.dirichlet(np.full(d.modes_per_class, d.mode_concentration), size=num_classes)
  noise_scales = d.noise_scale * np.exp(d.noise_spread * rng.standard_normal(num_classes)
                                        - d.noise_spread**2)
  latent_std = np.sqrt(1 + d.mode_scale**2 + d.nuisance_scale**2 + d.noise_scale**2)
  mode_cdf = np.cumsum(mode_weights, axis=1)

  features = np.empty((labels.size, feature_dim), dtype=np.float32)
  for block, start in enumerate(range(0, labels.size, _BLOCK_ROWS)):
    block_labels = labels[start:start + _BLOCK_ROWS]
    n = block_labels.size
    rng = _rng(seed, _STREAM_SAMPLES, block)
    modes = (rng.random(n)[:, None] > mode_cdf[block_labels]).sum(axis=1)
    modes = np.minimum(modes, d.modes_per_class - 1)
    latent = (means[block_labels] + offsets[block_labels, modes]
              + rng.standard_normal((n, d.nuisance_rank)) @ feature_map.nuisance
              + noise_scales[block_labels, None] * rng.standard_normal((n, d.latent_dim)))
    latent = (latent / latent_std).astype(np.float32)
    pre = (latent @ feature_map.projection) * feature_map.gain.astype(np.float32)
    pre += d.feature_noise * rng.standard_normal((n, feature_dim), dtype=np.float32)
    pre += feature_map.bias.astype(np.float32)
    np.maximum(pre, 0, out=pre)
    features[start:start + n] = pre * feature_map.out_scale.astype(np.float32)
  return features


def make_class_embeddings(num_classes: int,
                          embedding_dim: int,
                          *,
                          seed: int = 0,
                          mean_cosine: float = 0.55,
                          zero_fraction: float = 0.4) -> np.ndarray:
  """Random but realistic class embeddings: non-negative, correlated, unit-norm.

  Classes come in groups (as birds within families), attributes are a ReLU of
  a low-rank map of class factors (so attributes are correlated), and a shared
  non-negative "prevalence" profile, whose weight is set by bisection, makes
  the mean pairwise cosine between classes match `mean_cosine`.

  Args:
    num_classes: C.
    embedding_dim: K.
    seed: random seed.
    mean_cosine: target mean pairwise cosine similarity between classes.
    zero_fraction: target fraction of exact zeros.

  Returns:
    (C, K) float64, each row L2-normalised and non-negative.
  """
  rng = _rng(seed, _STREAM_EMBEDDINGS)
  rank = min(16, embedding_dim)
  num_groups = max(2, int(round(np.sqrt(num_classes))))
  groups = rng.integers(num_groups, size=num_classes)
  group_factors = rng.standard_normal((num_groups, rank))
  factors = group_factors[groups] + 0.7 * rng.standard_normal((num_classes, rank))
  loadings = rng.standard_normal((rank, embedding_dim)) / np.sqrt(rank)
  specific = 0.3 * rng.standard_normal((num_classes, embedding_dim))
  signal = factors @ loadings + specific
  signal /= signal.std()
  prevalence = np.abs(rng.standard_normal(embedding_dim))

  def embeddings_for(weight):
    pre = signal + weight * prevalence
    if zero_fraction > 0:
      att = np.maximum(pre - np.quantile(pre, zero_fraction), 0)
    else:  # A smooth ReLU: small but positive values instead of zeros.
      att = np.logaddexp(0, 4 * (pre - np.median(pre))) / 4
    # A class left all-zero would be invalid; give it its largest attribute.
    empty = ~att.any(axis=1)
    att[empty, np.argmax(pre[empty], axis=1)] = 1.0
    return att / np.linalg.norm(att, axis=1, keepdims=True)

  def mean_cosine_of(att):
    # Rows are unit-norm: the sum of all pairwise cosines is |sum_c a_c|^2 - C.
    return (np.sum(att.sum(axis=0)**2) - num_classes) / (num_classes * (num_classes - 1))

  low, high = 0.0, 20.0
  for _ in range(40):
    middle = 0.5 * (low + high)
    if mean_cosine_of(embeddings_for(middle)) < mean_cosine:
      low = middle
    else:
      high = middle
  return embeddings_for(0.5 * (low + high))


# ---------------------------------------------------------------------------
# Labels consistent with the loc arrays of an att_splits.mat.


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


def labels_from_splits(att_splits: Mapping[str, np.ndarray],
                       seed: int = 0,
                       *,
                       unseen_classes: Optional[Sequence[int]] = None,
                       num_unseen: Optional[int] = None,
                       count_spread: Optional[float] = None,
                       source: str = SPLITS_FILE) -> np.ndarray:
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
  preset = match_preset(att_splits)

  rng = _rng(seed, _STREAM_UNSEEN)
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
    val_classes = np.sort(_rng(seed, _STREAM_VAL).choice(seen_classes, size=num_val, replace=False))
    train_classes = np.setdiff1d(seen_classes, val_classes)
    for classes, part in ((train_classes, train), (val_classes, val)):
      cells += [(classes, np.intersect1d(trainval, part), "trainval_loc"),
                (classes, np.intersect1d(test_seen, part), "test_seen_loc")]
  else:
    cells += [(seen_classes, trainval, "trainval_loc"), (seen_classes, test_seen, "test_seen_loc")]
  cells.append((unseen_classes, test_unseen, "test_unseen_loc"))

  if count_spread is None:
    count_spread = preset.count_spread if preset else 0.3
  weights = np.exp(count_spread * _rng(seed, _STREAM_COUNTS).standard_normal(num_classes))
  labels = np.full(num_images, -1, dtype=np.int64)
  rng = _rng(seed, _STREAM_ASSIGN)
  for classes, images, key in cells:
    if images.size < classes.size:
      raise DataError(source, key, f"at least one image for each of its {classes.size} classes",
                      f"{images.size} images")
    counts = _allocate(images.size, weights[classes])
    labels[rng.permutation(images)] = np.repeat(classes, counts)
  return labels.astype(np.int32)


# ---------------------------------------------------------------------------
# Writing dataset directories.


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
  embeddings = make_class_embeddings(shape.num_classes, shape.embedding_dim, seed=seed,
                                     mean_cosine=shape.embedding_mean_cosine,
                                     zero_fraction=shape.embedding_zero_fraction)
  order = _rng(seed, _STREAM_LOCS).permutation(shape.num_images)
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


def _read_splits(path: pathlib.Path) -> dict:
  if not path.is_file():
    raise DataError(path, None, "an att_splits.mat file", "no such file")
  try:
    return scipy.io.loadmat(path)
  except Exception as error:  # scipy raises many types on garbage input.
    raise DataError(path, None, "a MATLAB v5 .mat file",
                    f"unreadable ({type(error).__name__}: {error})") from error


def unseen_from_class_lists(att_splits: Mapping[str, np.ndarray],
                            folder: pathlib.Path) -> Optional[list]:
  """The real unseen class ids, when testclasses.txt and class names allow it.

  Args:
    att_splits: the split variables (their `allclasses_names` is used).
    folder: the folder that may hold testclasses.txt.

  Returns:
    0-based ids of the classes listed in testclasses.txt, or None when the
    list or the names are missing or do not match.
  """
  listing = folder / "testclasses.txt"
  if "allclasses_names" not in att_splits or not listing.is_file():
    return None
  names = [str(np.asarray(cell).reshape(-1)[0]) if np.asarray(cell).size else ""
           for cell in np.asarray(att_splits["allclasses_names"]).reshape(-1)]
  unseen_names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
  if not unseen_names or not set(unseen_names) <= set(names):
    return None
  return [names.index(n) for n in unseen_names]


def _with_companion_validation_locs(att_splits: dict, split_path: pathlib.Path) -> dict:
  """Adds train_loc/val_loc from a companion split file when the file lacks them.

  CUB's att_splits.mat copy has no train_loc/val_loc but its sent_splits.mat
  has them; labels must respect them so that either file validates.

  Args:
    att_splits: the split variables.
    split_path: where they were read from.

  Returns:
    `att_splits`, or a copy with the companion's train_loc and val_loc.
  """
  if "train_loc" in att_splits and "val_loc" in att_splits:
    return att_splits
  test_keys = ("trainval_loc", "test_seen_loc", "test_unseen_loc")
  for companion in sorted(split_path.parent.glob("*_splits.mat")):
    if companion.resolve() == split_path.resolve():
      continue
    try:
      other = scipy.io.loadmat(companion)
    except Exception:  # pylint: disable=broad-except
      continue  # An unreadable companion just lends nothing.
    if "train_loc" in other and "val_loc" in other and all(
        key in other and np.array_equal(np.ravel(other[key]), np.ravel(att_splits[key]))
        for key in test_keys):
      return dict(att_splits, train_loc=other["train_loc"], val_loc=other["val_loc"])
  return att_splits


def write_features_file(out_dir: os.PathLike | str,
                        att_splits: Mapping[str, np.ndarray],
                        *,
                        seed: int = 0,
                        feature_dim: int = 2048,
                        difficulty: Difficulty = DEFAULT_DIFFICULTY,
                        unseen_classes: Optional[Sequence[int]] = None,
                        source: str = SPLITS_FILE) -> pathlib.Path:
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
  labels = labels_from_splits(att_splits, seed, unseen_classes=unseen_classes, source=source)
  embeddings = np.asarray(att_splits["att"], dtype=np.float64).T
  features = make_features(embeddings, labels, feature_dim=feature_dim, seed=seed,
                           difficulty=difficulty)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  path = out_dir / FEATURES_FILE
  scipy.io.savemat(path, {"features": features.T, "labels": (labels + 1.0).reshape(-1, 1)},
                   format="5", do_compression=False, oned_as="column")
  return path


def write_semi_real(att_splits_path: os.PathLike | str,
                    out_dir: os.PathLike | str,
                    *,
                    seed: int = 0,
                    feature_dim: int = 2048,
                    difficulty: Difficulty = DEFAULT_DIFFICULTY) -> pathlib.Path:
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
  att_splits = _read_splits(att_splits_path)
  for key in ("att", "trainval_loc", "test_seen_loc", "test_unseen_loc"):
    if key not in att_splits:
      raise DataError(att_splits_path, key, "a variable of that name", "no such key")
  out_dir = pathlib.Path(out_dir)
  unseen_classes = unseen_from_class_lists(att_splits, att_splits_path.parent)
  path = write_features_file(out_dir, _with_companion_validation_locs(att_splits, att_splits_path),
                             seed=seed, feature_dim=feature_dim, difficulty=difficulty,
                             unseen_classes=unseen_classes, source=str(att_splits_path))
  companions = {att_splits_path}
  for pattern in _COMPANION_GLOBS:
    companions.update(att_splits_path.parent.glob(pattern))
  for companion in sorted(companions):
    target = out_dir / (SPLITS_FILE if companion == att_splits_path else companion.name)
    if companion.resolve() != target.resolve():
      shutil.copyfile(companion, target)
  return path


def write_preset(name: str,
                 out_dir: os.PathLike | str,
                 *,
                 seed: int = 0,
                 feature_dim: int = 2048,
                 difficulty: Difficulty = DEFAULT_DIFFICULTY) -> pathlib.Path:
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
  if name not in PRESETS:
    raise DataError(name, None, f"a preset among {', '.join(PRESETS)}", repr(name))
  att_splits = preset_att_splits(name, seed=seed)
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  scipy.io.savemat(out_dir / SPLITS_FILE, att_splits, format="5", oned_as="column")
  return write_features_file(out_dir, att_splits, seed=seed, feature_dim=feature_dim,
                             difficulty=difficulty, source=str(out_dir / SPLITS_FILE))


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
  labels = labels_from_splits(att_splits, seed, unseen_classes=unseen_classes)
  embeddings = np.asarray(att_splits["att"], dtype=np.float64).T
  features = make_features(embeddings, labels, feature_dim=feature_dim, seed=seed,
                           difficulty=difficulty)
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
