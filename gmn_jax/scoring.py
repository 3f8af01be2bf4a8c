"""Scoring a final classifier: the GZSL metrics and calibrated stacking.

`prepare_eval_data` turns the two evaluation sets (`EvalSets`: unseen and
seen held-out features, and the class partition) into device arrays cut in
row chunks; `epoch_metrics` scores them inside the training program after
every epoch (ZSL T1 and GZSL u, s, H, `gmn_jax.metrics`), with memory
O(chunk × classes); `calibration` measures calibrated stacking at the final
parameters: the seen-unseen curve, its AUSUC, the test-split oracle's best
H and, with a gamma chosen elsewhere, the honest calibrated u, s, H.
"""

import dataclasses
import functools
from typing import Any, Optional

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from gmn_jax import classifiers
from gmn_jax import metrics
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import ConfigError, DataError
from gmn_jax.metrics import gzsl_metrics_from_predictions, predict

# Calibrated stacking at the last epoch (docs/evaluation.md). The "oracle_"
# ones choose gamma for the best H on the very split they report (as the
# literature does); the others use a gamma given by the caller (e.g. chosen
# on a validation split) and exist only when one is given.
ORACLE_CALIBRATION_NAMES = ("ausuc", "oracle_calibration_gamma", "oracle_calibrated_gzsl_u",
                            "oracle_calibrated_gzsl_s", "oracle_calibrated_gzsl_h")
CALIBRATION_NAMES = ("calibration_gamma", "calibrated_gzsl_u", "calibrated_gzsl_s",
                     "calibrated_gzsl_h")
INPUT = "evaluation inputs"  # the "path" of in-memory arrays in errors


@dataclasses.dataclass(frozen=True)
class EvalSets:
  """The two evaluation sets and the class partition.

  Attributes:
    unseen_features: (N_u, D) features of unseen classes.
    unseen_labels: (N_u,) their global class ids.
    seen_features: (N_s, D) held-out features of seen classes.
    seen_labels: (N_s,) their global class ids.
    seen_classes: (S,) global ids of the seen classes.
    unseen_classes: (U,) global ids of the unseen classes.
    split: the split these sets come from ("test" or "validation"), or None
      when unknown.
  """

  unseen_features: Any
  unseen_labels: Any
  seen_features: Any
  seen_labels: Any
  seen_classes: Any
  unseen_classes: Any
  split: Optional[str] = None

  @classmethod
  def from_dataset(cls, dataset: ZSLDataset) -> "EvalSets":
    """The test_unseen / test_seen sets of a dataset.

    For a dataset loaded in split mode "validation" these are its held-out
    seen part and its validation classes.

    Args:
      dataset: a `ZSLDataset`.

    Returns:
      The `EvalSets`.
    """
    return cls(dataset.test_unseen_features, dataset.test_unseen_labels,
               dataset.test_seen_features, dataset.test_seen_labels,
               dataset.seen_classes, dataset.unseen_classes, dataset.split)


def as_int_array(values, name):
  """A 1-d int32 array of class ids, or a DataError naming the input.

  Args:
    values: array-like ids.
    name: the input's name, for the error.

  Returns:
    The int32 array.
  """
  array = np.asarray(values)
  if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
    raise DataError(INPUT, name, "a 1-d array of int class ids",
                    f"shape {array.shape} dtype {array.dtype}")
  return array.astype(np.int32)


def check_features(features, name, feature_dim=None):
  """Raises a DataError unless `features` is (N, D) (D = feature_dim if given).

  Args:
    features: the array.
    name: its name, for the error.
    feature_dim: the required D, or None.
  """
  shape = tuple(jnp.shape(features))
  if len(shape) != 2 or (feature_dim is not None and shape[1] != feature_dim):
    want = "(N, D)" if feature_dim is None else f"(N, {feature_dim})"
    raise DataError(INPUT, name, f"a {want} float array", f"shape {shape}")


def check_ids(ids, name, num_classes):
  """Raises a DataError unless every id is in [0, num_classes).

  Args:
    ids: int array.
    name: its name, for the error.
    num_classes: C.
  """
  if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
    raise DataError(INPUT, name, f"class ids in [0, {num_classes})",
                    f"ids in [{ids.min()}, {ids.max()}]")


def prepare_eval_data(eval_sets, feature_dim, num_classes, chunk_size):
  """The evaluation sets as device arrays, their rows cut into chunks.

  Args:
    eval_sets: an `EvalSets`, a `ZSLDataset` (its test sets) or None.
    feature_dim: D.
    num_classes: C, the rows of the class-embedding matrix.
    chunk_size: the most rows scored at once.

  Returns:
    {"unseen_chunks", "unseen_labels", "unseen_classes", "seen_chunks",
    "seen_labels", "seen_classes"}, or None without evaluation sets.

  Raises:
    DataError: for inconsistent arrays.
  """
  if eval_sets is None:
    return None
  if isinstance(eval_sets, ZSLDataset):
    eval_sets = EvalSets.from_dataset(eval_sets)
  data = {}
  for part in ("unseen", "seen"):
    features = getattr(eval_sets, f"{part}_features")
    check_features(features, f"{part}_features", feature_dim)
    labels = as_int_array(getattr(eval_sets, f"{part}_labels"), f"{part}_labels")
    if labels.shape[0] != jnp.shape(features)[0]:
      raise DataError(INPUT, f"{part}_labels", f"{jnp.shape(features)[0]} labels",
                      f"{labels.shape[0]}")
    classes = as_int_array(getattr(eval_sets, f"{part}_classes"), f"{part}_classes")
    check_ids(classes, f"{part}_classes", num_classes)
    data[f"{part}_chunks"] = _chunk_rows(jnp.asarray(features, jnp.float32), chunk_size)
    data[f"{part}_labels"] = jnp.asarray(labels)
    data[f"{part}_classes"] = jnp.asarray(classes)
  return data


def _chunk_rows(features, max_chunk: int):
  """Pads (N, D) to (n, chunk, D) with n * chunk >= N and little padding."""
  num = features.shape[0]
  num_chunks = max(1, -(-num // max_chunk))
  chunk = max(1, -(-num // num_chunks))
  padded = jnp.pad(features, ((0, num_chunks * chunk - num), (0, 0)))
  return padded.reshape(num_chunks, chunk, features.shape[1])


def _predict_in_chunks(apply_fn, params, chunks, num_rows, class_embeddings,
                       zsl_columns=None):
  """Top-1 predictions (over all classes, and over `zsl_columns` if given).

  Scores exist for one chunk at a time, so memory stays O(chunk x C).
  """

  def one_chunk(x):
    scores = apply_fn(params, x, class_embeddings)
    if zsl_columns is None:
      return (predict(scores),)
    return predict(scores), predict(scores, zsl_columns)

  outputs = lax.map(one_chunk, chunks)
  return [out.reshape(-1)[:num_rows] for out in outputs]


def epoch_metrics(apply_fn, params, class_embeddings, eval_data):
  """ZSL T1 and GZSL u, s, H of one classifier (traceable, chunked).

  Args:
    apply_fn: the classifier's apply function.
    params: its parameters.
    class_embeddings: (C, K) embeddings of all classes.
    eval_data: from `prepare_eval_data`.

  Returns:
    {"zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"} in percent.
  """
  unseen = eval_data["unseen_labels"]
  seen = eval_data["seen_labels"]
  gzsl_unseen, zsl = _predict_in_chunks(
      apply_fn, params, eval_data["unseen_chunks"], unseen.shape[0],
      class_embeddings, eval_data["unseen_classes"])
  (gzsl_seen,) = _predict_in_chunks(
      apply_fn, params, eval_data["seen_chunks"], seen.shape[0], class_embeddings)
  return gzsl_metrics_from_predictions(zsl, gzsl_unseen, unseen, gzsl_seen, seen,
                                       eval_data["seen_classes"],
                                       eval_data["unseen_classes"])


@functools.partial(jax.jit, static_argnames=("kind",))
def _calibration_rows_of_seeds(params, class_embeddings, eval_data, *, kind):
  """{"unseen"|"seen": CalibrationRows with a leading seed axis}."""
  _, apply_fn = classifiers.get_classifier(kind)

  def one_seed(seed_params):
    out = {}
    for part in ("unseen", "seen"):
      chunks = eval_data[f"{part}_chunks"]
      labels = eval_data[f"{part}_labels"]
      num_chunks, chunk = chunks.shape[:2]
      padded = jnp.pad(labels, (0, num_chunks * chunk - labels.shape[0]))

      def one_chunk(xy):
        return metrics.calibration_rows(
            apply_fn(seed_params, xy[0], class_embeddings), xy[1],
            eval_data["seen_classes"], eval_data["unseen_classes"])

      rows = lax.map(one_chunk, (chunks, padded.reshape(num_chunks, chunk)))
      out[part] = jax.tree.map(lambda r, n=labels.shape[0]: r.reshape(-1)[:n], rows)
    return out

  return jax.vmap(one_seed)(params)


def calibration_gammas(calibration_gamma, num_seeds: int) -> Optional[np.ndarray]:
  """Per-seed calibration constants.

  Args:
    calibration_gamma: None, a float, or one float per seed.
    num_seeds: S.

  Returns:
    (S,) float64 gammas, or None.

  Raises:
    ConfigError: for a non-finite or ill-shaped gamma.
  """
  if calibration_gamma is None:
    return None
  try:
    gammas = np.broadcast_to(np.asarray(calibration_gamma, np.float64), (num_seeds,))
  except (TypeError, ValueError):
    gammas = None
  if gammas is None or not np.all(np.isfinite(gammas)):
    raise ConfigError(f"calibration_gamma: expected a finite float or {num_seeds} of them, "
                      f"found {calibration_gamma!r}")
  return gammas


def calibration(params, class_embeddings, eval_data, kind, gammas):
  """Calibrated stacking of S trained classifiers.

  Args:
    params: classifier parameters stacked on a leading seed axis.
    class_embeddings: (C, K) embeddings of all classes.
    eval_data: from `prepare_eval_data`.
    kind: the model kind of `classifiers.get_classifier` ("bilinear" or
      "softmax"; a final classifier's is `final_classifier.model_kind`).
    gammas: (S,) gammas chosen elsewhere (`calibration_gammas`), or None.

  Returns:
    ({name: (S,) values} of `ORACLE_CALIBRATION_NAMES`, and of
    `CALIBRATION_NAMES` when gammas are given; one
    `metrics.SeenUnseenCurve` per seed).
  """
  rows = jax.device_get(_calibration_rows_of_seeds(params, class_embeddings, eval_data,
                                                    kind=kind))
  labels = {part: np.asarray(eval_data[f"{part}_labels"]) for part in ("unseen", "seen")}
  seen, unseen = (np.asarray(eval_data[f"{p}_classes"]) for p in ("seen", "unseen"))
  num_seeds = rows["unseen"].margin.shape[0]
  names = ORACLE_CALIBRATION_NAMES + (CALIBRATION_NAMES if gammas is not None else ())
  values = {name: np.zeros(num_seeds, np.float64) for name in names}
  curves = []
  for i in range(num_seeds):
    seed_rows = {part: metrics.CalibrationRows(*(x[i] for x in rows[part]))
                 for part in ("unseen", "seen")}
    args = (seed_rows["unseen"], labels["unseen"], seed_rows["seen"], labels["seen"],
            seen, unseen)
    curve = metrics.seen_unseen_curve(*args)
    curves.append(curve)
    best = curve.best_harmonic()
    values["ausuc"][i] = curve.ausuc()
    values["oracle_calibration_gamma"][i] = best["gamma"]
    for name in ("gzsl_u", "gzsl_s", "gzsl_h"):
      values[f"oracle_calibrated_{name}"][i] = best[name]
    if gammas is not None:
      at_gamma = metrics.calibrated_gzsl_metrics(*args, float(gammas[i]))
      values["calibration_gamma"][i] = gammas[i]
      for name in ("gzsl_u", "gzsl_s", "gzsl_h"):
        values[f"calibrated_{name}"][i] = at_gamma[name]
  return values, tuple(curves)


