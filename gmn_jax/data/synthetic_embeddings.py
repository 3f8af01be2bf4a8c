"""Invented class embeddings for the synthetic presets.

Presets have no real att_splits.mat, so their class embeddings are drawn
here: non-negative, per-class L2-normalised, with correlated attributes and
the real files' share of zeros and mean pairwise cosine between classes
(docs/synthetic_data.md, "Preset embeddings"). Deterministic in the seed;
numpy only.
"""

import numpy as np

from gmn_jax.data import synthetic_streams


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
  rng = synthetic_streams.rng(seed, synthetic_streams.EMBEDDINGS)
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
