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
Everything here is jittable and vmappable.
"""

from typing import Dict, Optional

import jax.numpy as jnp

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
