"""Ranking losses of compatibility classifiers: ALE and DeViSE.

Both take the (B, C) compatibility scores s of a batch and its (B,) labels y
and return (B,) per-example losses; both penalise every wrong class c that
is not beaten by the true class by a margin.

* `devise_loss` (Frome et al., NeurIPS 2013): the hinge rank loss
  sum_{c != y} max(0, margin - s_y + s_c).
* `ale_loss` (Akata et al., CVPR 2013 / TPAMI 2016, as in Xian et al.'s GBU
  benchmark): the weighted approximate ranking loss beta_r sum_{c != y} v_c
  with violations v_c = max(0, 1 + s_c - s_y), r the number of positive
  violations (the rank of the true class, approximately) and
  beta_r = l(r) / r, l(r) = sum_{k=1..r} 1/k. The weight puts more of the
  loss on examples whose true class is ranked near the top (a small r), the
  precision at the top of the ranking that matters for top-1 accuracy.

All functions are pure and jittable. A label outside [0, C) makes the loss
NaN (as `losses.cross_entropy` does) rather than silently wrong.
"""

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np


def ale_rank_weights(num_classes: int) -> np.ndarray:
  """ALE's rank weights beta_r = l(r) / r for r = 0, ..., num_classes - 1.

  Args:
    num_classes: C; an example violates the margin of at most C - 1 classes.

  Returns:
    (C,) float64 weights; beta_0 = 0 (no violation, no loss; l(0) = 0).
  """
  ranks = np.arange(1, num_classes, dtype=np.float64)
  return np.concatenate([[0.0], np.cumsum(1.0 / ranks) / ranks])


def _true_scores(scores, labels):
  """(B, 1) scores of the true classes; NaN for a label outside [0, C)."""
  return jnp.take_along_axis(scores, labels[:, None].astype(jnp.int32), axis=-1,
                             mode="fill", fill_value=jnp.nan)


def _wrong_class_violations(scores, labels, margin):
  """(B, C) max(0, margin + s_c - s_y) for c != y, and 0 in the true column."""
  is_true = jnp.arange(scores.shape[-1]) == labels[:, None]
  return jnp.where(is_true, 0.0, jax.nn.relu(margin + scores - _true_scores(scores, labels)))


def ale_loss(scores, labels):
  """ALE's weighted approximate ranking loss, one value per example.

  The rank weight beta_r depends on the scores only through the integer r,
  so it is piecewise constant and its gradient is zero wherever it exists;
  it is also held constant explicitly (stop_gradient), as the SGD algorithms
  of ALE do: the gradient is beta_r times that of the summed violations.

  Args:
    scores: (B, C) compatibility scores.
    labels: (B,) int true classes, indices into the scores' last axis.

  Returns:
    (B,) losses beta_r * sum_{c != y} max(0, 1 + s_c - s_y).
  """
  violations = _wrong_class_violations(scores, labels, 1.0)
  rank = jnp.sum(violations > 0, axis=-1)
  weights = jnp.asarray(ale_rank_weights(scores.shape[-1]), scores.dtype)
  return lax.stop_gradient(weights[rank]) * violations.sum(axis=-1)


def devise_loss(scores, labels, margin=1.0):
  """DeViSE's hinge rank loss, one value per example.

  Args:
    scores: (B, C) compatibility scores.
    labels: (B,) int true classes, indices into the scores' last axis.
    margin: the hinge margin (a float or a traced scalar).

  Returns:
    (B,) losses sum_{c != y} max(0, margin - s_y + s_c).
  """
  return _wrong_class_violations(scores, labels, margin).sum(axis=-1)
