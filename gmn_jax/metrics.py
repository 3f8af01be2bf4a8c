"""Zero-shot accuracy metrics of the GBU protocol, as the reference computes them.

All accuracies are per-class mean top-1 accuracies in percent: the top-1
accuracy of each class that occurs in the ground truth, averaged with equal
weight per class. Predictions and labels are global class ids.

- ZSL T1: test_unseen features, argmax over the unseen-class columns only.
- GZSL u: test_unseen features, argmax over all classes.
- GZSL s: test_seen features, argmax over all classes.
- GZSL H: 2us / (u + s), and 0 when u + s == 0.

Ties in the scores go to the lowest column (the first maximum, as
`jnp.argmax`), i.e. the lowest global class id among the candidates.
Everything above the calibration section is jittable and vmappable.

Calibrated stacking (Chao et al., ECCV 2016) subtracts a constant gamma from
the seen-class scores before the GZSL argmax. `calibration_rows` (jittable)
summarises scored rows; `seen_unseen_curve` (numpy) gives the exact curve of
(u, s) over all gammas and its area, AUSUC; `calibrated_gzsl_metrics` gives
u, s, H at one gamma.
"""

import dataclasses
import math
from typing import Any, Dict, NamedTuple, Optional, Tuple

import jax.numpy as jnp
import numpy as np

METRIC_NAMES = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h")


def per_class_accuracy(predictions, labels, classes):
  """Per-class mean top-1 accuracy, in percent.

  Args:
    predictions: (N,) int predicted global class ids.
    labels: (N,) int true global class ids.
    classes: (C',) int global ids of the classes to average over; those that
      do not occur in `labels` are ignored, and examples whose label is not in
      `classes` do not count.

  Returns:
    A float32 scalar in [0, 100]; NaN when no class of `classes` occurs in
    `labels` (an accuracy over nothing is undefined).
  """
  predictions = jnp.asarray(predictions)
  labels = jnp.asarray(labels)
  classes = jnp.asarray(classes)
  # (N, C') membership costs N*C' booleans, small next to the (N, C) scores
  # it is computed from, and avoids assuming anything about the id range.
  member = labels[:, None] == classes[None, :]
  correct = member & (predictions == labels)[:, None]
  counts = member.sum(axis=0)
  hits = correct.sum(axis=0)
  present = counts > 0
  class_accuracy = jnp.where(present, hits / jnp.maximum(counts, 1), 0.0)
  return (100.0 * class_accuracy.sum() / present.sum()).astype(jnp.float32)


def predict(scores, columns: Optional[jnp.ndarray] = None):
  """Top-1 predictions as global class ids.

  Args:
    scores: (N, C) scores over all global classes.
    columns: optional (C',) global ids; when given, the argmax runs over these
      columns only (e.g. the unseen classes for ZSL).

  Returns:
    (N,) int32 global class ids.
  """
  scores = jnp.asarray(scores)
  if columns is None:
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)
  columns = jnp.asarray(columns)
  local = jnp.argmax(scores[..., columns], axis=-1)
  return columns[local].astype(jnp.int32)


def harmonic_mean(u, s):
  """H = 2us / (u + s), and 0 where u + s == 0.

  Args:
    u: unseen accuracy (scalar or array).
    s: seen accuracy, same shape.

  Returns:
    The harmonic mean, same shape.
  """
  u = jnp.asarray(u, jnp.float32)
  s = jnp.asarray(s, jnp.float32)
  total = u + s
  return jnp.where(total == 0, 0.0, 2.0 * u * s / jnp.where(total == 0, 1.0, total))


def gzsl_metrics_from_predictions(zsl_predictions, gzsl_predictions_unseen,
                                  labels_unseen, gzsl_predictions_seen,
                                  labels_seen, seen_classes,
                                  unseen_classes) -> Dict[str, jnp.ndarray]:
  """ZSL and GZSL metrics from predictions that are already made.

  This is the form the final-classifier training uses, since it predicts in
  chunks and never holds all scores at once.

  Args:
    zsl_predictions: (N_u,) test_unseen predictions, argmax over unseen
      classes only.
    gzsl_predictions_unseen: (N_u,) test_unseen predictions over all classes.
    labels_unseen: (N_u,) true ids of test_unseen.
    gzsl_predictions_seen: (N_s,) test_seen predictions over all classes.
    labels_seen: (N_s,) true ids of test_seen.
    seen_classes: (S,) global ids of the seen classes.
    unseen_classes: (U,) global ids of the unseen classes.

  Returns:
    {"zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"} float32 scalars in percent.
  """
  u = per_class_accuracy(gzsl_predictions_unseen, labels_unseen, unseen_classes)
  s = per_class_accuracy(gzsl_predictions_seen, labels_seen, seen_classes)
  return {
      "zsl_t1": per_class_accuracy(zsl_predictions, labels_unseen, unseen_classes),
      "gzsl_u": u,
      "gzsl_s": s,
      "gzsl_h": harmonic_mean(u, s),
  }


def gzsl_metrics(scores_unseen, labels_unseen, scores_seen, labels_seen,
                 seen_classes, unseen_classes) -> Dict[str, jnp.ndarray]:
  """ZSL T1 and GZSL u, s, H from classifier scores.

  Args:
    scores_unseen: (N_u, C) scores of the test_unseen features over ALL
      global classes.
    labels_unseen: (N_u,) true global ids of test_unseen.
    scores_seen: (N_s, C) scores of the test_seen features over all classes.
    labels_seen: (N_s,) true global ids of test_seen.
    seen_classes: (S,) global ids of the seen classes.
    unseen_classes: (U,) global ids of the unseen classes.

  Returns:
    {"zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"} float32 scalars in percent.
  """
  return gzsl_metrics_from_predictions(
      predict(scores_unseen, unseen_classes), predict(scores_unseen),
      labels_unseen, predict(scores_seen), labels_seen, seen_classes,
      unseen_classes)


# --------------------------------------------------------------------------
# Calibrated stacking and the seen-unseen accuracy curve (Chao et al., 2016).
#
# Calibrated stacking predicts argmax_c (score_c - gamma * [c is seen]). Only
# two candidates can win for a row: its best seen class and its best unseen
# class, and the seen one wins exactly when gamma < margin = (best seen
# score) - (best unseen score). So a row is summarised by its margin and by
# whether each candidate is right, and every accuracy is a step function of
# gamma whose steps sit at the rows' margins. The whole curve, and its area,
# follow exactly from the sorted margins; no grid of gamma values is needed.


class CalibrationRows(NamedTuple):
  """What calibrated stacking needs to know about each evaluated row.

  Attributes:
    margin: (N,) best seen-class score minus best unseen-class score.
    seen_correct: (N,) bool, whether the best seen class is the label.
    unseen_correct: (N,) bool, whether the best unseen class is the label.
    tie_to_unseen: (N,) bool, whether the unseen candidate wins when gamma
      equals the margin exactly (its id is the lower one, as `jnp.argmax`
      takes the first maximum).
  """

  margin: Any
  seen_correct: Any
  unseen_correct: Any
  tie_to_unseen: Any


def calibration_rows(scores, labels, seen_classes,
                     unseen_classes) -> CalibrationRows:
  """Summarises scored rows for calibrated stacking (jittable, vmappable).

  Args:
    scores: (N, C) scores over all global classes (e.g. classifier logits).
    labels: (N,) true global class ids.
    seen_classes: (S,) global ids of the seen classes.
    unseen_classes: (U,) global ids of the unseen classes.

  Returns:
    The `CalibrationRows` of the N rows (device arrays).
  """
  scores = jnp.asarray(scores)
  labels = jnp.asarray(labels)
  seen_classes = jnp.asarray(seen_classes)
  unseen_classes = jnp.asarray(unseen_classes)
  best_seen = predict(scores, seen_classes)
  best_unseen = predict(scores, unseen_classes)
  margin = (jnp.max(scores[:, seen_classes], axis=-1)
            - jnp.max(scores[:, unseen_classes], axis=-1))
  return CalibrationRows(margin=margin, seen_correct=best_seen == labels,
                         unseen_correct=best_unseen == labels,
                         tie_to_unseen=best_unseen < best_seen)


def calibrated_predict(scores, seen_classes, gamma):
  """Calibrated stacking: argmax over classes of score - gamma * [seen].

  Args:
    scores: (N, C) scores over all global classes.
    seen_classes: (S,) global ids of the seen classes.
    gamma: the calibration constant subtracted from the seen-class scores
      (0 gives the plain GZSL prediction; larger favours unseen classes).

  Returns:
    (N,) int32 predicted global class ids (ties to the lowest id).
  """
  scores = jnp.asarray(scores)
  is_seen = jnp.zeros(scores.shape[-1], bool).at[jnp.asarray(seen_classes)].set(True)
  return predict(scores - jnp.where(is_seen, jnp.asarray(gamma, scores.dtype), 0))


def _class_weights(labels, classes) -> Tuple[np.ndarray, bool]:
  """Per-row weights 1 / (n_class * #present classes), 0 outside `classes`.

  Summing the weights of the correct rows gives the per-class mean accuracy
  as a fraction (`per_class_accuracy` / 100).

  Returns:
    (weights (N,) float64, whether any class of `classes` is present).
  """
  labels = np.asarray(labels)
  member = np.isin(labels, np.asarray(classes))
  present, inverse, counts = np.unique(labels[member], return_inverse=True,
                                       return_counts=True)
  weights = np.zeros(labels.shape, np.float64)
  if present.size:
    weights[member] = 1.0 / (counts[inverse] * present.size)
  return weights, bool(present.size)


def _host_rows(rows: CalibrationRows) -> CalibrationRows:
  return CalibrationRows(*(np.asarray(x) for x in rows))


def calibrated_gzsl_metrics(unseen_rows: CalibrationRows, labels_unseen,
                            seen_rows: CalibrationRows, labels_seen,
                            seen_classes, unseen_classes,
                            gamma: float) -> Dict[str, float]:
  """GZSL u, s, H of calibrated stacking at one gamma (numpy, exact).

  Equal to `gzsl_metrics` on `calibrated_predict(scores, seen, gamma)`
  predictions, ties included.

  Args:
    unseen_rows: `calibration_rows` of the test_unseen rows.
    labels_unseen: (N_u,) their true global ids.
    seen_rows: `calibration_rows` of the test_seen rows.
    labels_seen: (N_s,) their true global ids.
    seen_classes: (S,) global ids of the seen classes.
    unseen_classes: (U,) global ids of the unseen classes.
    gamma: the calibration constant.

  Returns:
    {"gzsl_u", "gzsl_s", "gzsl_h"} in percent (u or s NaN when no class of
    its kind is present in the labels).
  """
  unseen_rows, seen_rows = _host_rows(unseen_rows), _host_rows(seen_rows)

  def unseen_wins(rows):
    return (rows.margin < gamma) | ((rows.margin == gamma) & rows.tie_to_unseen)

  u_weights, u_present = _class_weights(labels_unseen, unseen_classes)
  s_weights, s_present = _class_weights(labels_seen, seen_classes)
  u = (100.0 * float(np.sum(u_weights * (unseen_rows.unseen_correct
                                         & unseen_wins(unseen_rows))))
       if u_present else math.nan)
  s = (100.0 * float(np.sum(s_weights * (seen_rows.seen_correct
                                         & ~unseen_wins(seen_rows))))
       if s_present else math.nan)
  return {"gzsl_u": u, "gzsl_s": s, "gzsl_h": float(harmonic_mean(u, s))}


@dataclasses.dataclass(frozen=True)
class SeenUnseenCurve:
  """The exact seen-unseen accuracy curve of calibrated stacking.

  As gamma grows from -inf to +inf, the unseen accuracy rises from 0 to the
  ZSL accuracy of the all-class classifier and the seen accuracy falls from
  the seen-only accuracy to 0. Both are constant between consecutive
  `thresholds` (the distinct row margins), so the curve is the K + 1 points
  (unseen[k], seen[k]) of the K + 1 open intervals, in order of gamma.

  Attributes:
    thresholds: (K,) increasing gammas at which a prediction changes.
    unseen: (K + 1,) GZSL u in percent on each interval.
    seen: (K + 1,) GZSL s in percent on each interval.
  """

  thresholds: np.ndarray
  unseen: np.ndarray
  seen: np.ndarray

  @property
  def harmonic(self) -> np.ndarray:
    """(K + 1,) H on each interval."""
    return np.asarray(harmonic_mean(self.unseen, self.seen), np.float64)

  def interval_gamma(self, index: int) -> float:
    """A gamma inside interval `index`: the midpoint, or 1 beyond the ends.

    Args:
      index: the interval, 0 (below every threshold) to K (above all).

    Returns:
      A float gamma whose calibrated predictions are those of the interval.
    """
    t = self.thresholds
    if t.size == 0:
      return 0.0
    if index <= 0:
      return float(t[0]) - 1.0
    if index >= t.size:
      return float(t[-1]) + 1.0
    return 0.5 * (float(t[index - 1]) + float(t[index]))

  def ausuc(self) -> float:
    """The area under the curve (seen over unseen), in percent.

    The points are joined by straight lines (a step that changes both
    accuracies at one threshold is a diagonal segment), the area is taken
    with u and s as fractions and multiplied by 100, so it lies in
    [0, 100]: Chao et al.'s AUSUC times 100.

    Returns:
      The area; NaN when either accuracy is undefined.
    """
    u = self.unseen / 100.0
    s = self.seen / 100.0
    if np.isnan(u).any() or np.isnan(s).any():
      return math.nan
    return float(100.0 * np.sum(np.diff(u) * (s[1:] + s[:-1]) / 2.0))

  def best_harmonic(self) -> Dict[str, float]:
    """The interval of highest H (the first on ties) and its accuracies.

    Choosing gamma this way on the split being reported is an oracle: it
    looks at the test labels (see docs/evaluation.md).

    Returns:
      {"gamma": `interval_gamma` of that interval, "gzsl_u", "gzsl_s",
      "gzsl_h"} (percent).
    """
    harmonic = self.harmonic
    if np.all(np.isnan(harmonic)):
      return {"gamma": math.nan, "gzsl_u": math.nan, "gzsl_s": math.nan,
              "gzsl_h": math.nan}
    index = int(np.nanargmax(harmonic))
    return {"gamma": self.interval_gamma(index),
            "gzsl_u": float(self.unseen[index]),
            "gzsl_s": float(self.seen[index]),
            "gzsl_h": float(harmonic[index])}

  def downsample(self, max_points: int) -> Tuple[np.ndarray, np.ndarray]:
    """At most `max_points` points of the curve, for plots and JSON files.

    Keeps both ends, the point of best H and points evenly spaced in index
    between them.

    Args:
      max_points: the most points kept (at least 2).

    Returns:
      (unseen, seen) float arrays of equal length, in gamma order.
    """
    count = self.unseen.size
    if count <= max_points:
      return self.unseen.copy(), self.seen.copy()
    keep = set(np.linspace(0, count - 1, max(2, max_points - 1)).round().astype(int))
    if not np.all(np.isnan(self.harmonic)):
      keep.add(int(np.nanargmax(self.harmonic)))
    keep = np.array(sorted(keep))
    return self.unseen[keep], self.seen[keep]


def seen_unseen_curve(unseen_rows: CalibrationRows, labels_unseen,
                      seen_rows: CalibrationRows, labels_seen, seen_classes,
                      unseen_classes) -> SeenUnseenCurve:
  """The exact curve of calibrated stacking over all gammas (numpy).

  Cost O(N log N) in the number of rows (one sort of the margins).

  Args:
    unseen_rows: `calibration_rows` of the test_unseen rows.
    labels_unseen: (N_u,) their true global ids.
    seen_rows: `calibration_rows` of the test_seen rows.
    labels_seen: (N_s,) their true global ids.
    seen_classes: (S,) global ids of the seen classes.
    unseen_classes: (U,) global ids of the unseen classes.

  Returns:
    The `SeenUnseenCurve` (its accuracies are NaN when no unseen, or no
    seen, class is present in the labels, or a margin is not finite).
  """
  unseen_rows, seen_rows = _host_rows(unseen_rows), _host_rows(seen_rows)
  u_weights, u_present = _class_weights(labels_unseen, unseen_classes)
  s_weights, s_present = _class_weights(labels_seen, seen_classes)
  margins = np.concatenate([unseen_rows.margin, seen_rows.margin]).astype(np.float64)
  # Crossing a row's margin (gamma increasing) turns it from its seen to its
  # unseen candidate: u gains the row's weight if that one is right, s loses
  # it if the seen one was.
  u_gain = np.concatenate([u_weights * unseen_rows.unseen_correct,
                           np.zeros(seen_rows.margin.shape)])
  s_loss = np.concatenate([np.zeros(unseen_rows.margin.shape),
                           s_weights * seen_rows.seen_correct])
  if not (u_present and s_present and np.all(np.isfinite(margins))):
    nan = np.full(1, math.nan)
    return SeenUnseenCurve(np.zeros(0), nan, nan.copy())
  thresholds, group = np.unique(margins, return_inverse=True)
  # Rows with equal margins cross together: one step per distinct margin.
  u_steps = np.bincount(group, weights=u_gain, minlength=thresholds.size)
  s_steps = np.bincount(group, weights=s_loss, minlength=thresholds.size)
  unseen = 100.0 * np.concatenate([[0.0], np.cumsum(u_steps)])
  seen = 100.0 * (s_loss.sum() - np.concatenate([[0.0], np.cumsum(s_steps)]))
  # Cumulative sums may leave -1e-15 where exactly 0 is meant.
  return SeenUnseenCurve(thresholds, np.clip(unseen, 0.0, 100.0),
                         np.clip(seen, 0.0, 100.0))
