"""The synthetic feature generator: image features as a function of class embeddings.

Each class c has an embedding a_c. A fixed random nonlinear map turns it into
a latent class code m_c; to it are added an unpredictable class-specific
part, one of several class-dependent mode offsets, a shared low-rank nuisance
("pose/background") and heteroscedastic noise, giving a latent vector l. The
feature vector is a ReLU of a random projection of l plus per-feature noise,
scaled so that the features look like ResNet-101 pool5 activations:
non-negative, mean about 0.45, about 40% exact zeros and a long tail.

`Difficulty` holds the generator's parameters; its defaults are the ones
calibrated against the linear baseline (docs/synthetic_data.md gives the
process as equations and the calibration). Deterministic in the seed; numpy
only (no JAX).
"""

import dataclasses

import numpy as np
import scipy.special

from gmn_jax.data import synthetic_streams

# Rows of features generated at once; fixed so that the output does not depend
# on memory limits (every block draws from its own seeded stream).
_BLOCK_ROWS = 2048


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
    rng = synthetic_streams.rng(seed, synthetic_streams.FEATURE_MAP)
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
  rng = synthetic_streams.rng(seed, synthetic_streams.CLASSES)
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
    rng = synthetic_streams.rng(seed, synthetic_streams.SAMPLES, block)
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
