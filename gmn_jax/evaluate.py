"""Stage 2, the reference evaluation protocol: synthesise, train, measure.

1. `synthesize` draws features for unseen classes from a generator (and tops
   seen classes up to `n_synth_seen` samples, see `synthetic_class_counts`).
2. `train_final_classifier` trains one classifier over ALL classes (global
   ids) on real seen training features pooled with the synthetic ones: SGD
   with momentum and weight decay (PyTorch semantics), lr decayed once per
   epoch, shuffled mini-batches. After every epoch it measures ZSL T1 and GZSL
   u, s, H (`gmn_jax.metrics`). The reported numbers are those of the LAST
   epoch (`.last`); the per-epoch curves are kept (`.curves`).
3. `evaluate_generator` chains the two.

Everything of one training runs in one jitted program: a `lax.scan` over
epochs, an inner `lax.scan` over mini-batches, evaluation inside the epoch
scan, and `jax.vmap` over classifier seeds.

Nothing here is ever chosen on the data it reports. The evaluation sets only
feed the metrics (the trained parameters do not depend on them, which the
tests check). With `cfg.selection == "validation"` the caller evaluates each
candidate (e.g. a value of `n_synth_unseen`) on a dataset loaded in split mode
"validation" and picks one with `select_on_validation`, which refuses results
measured on the test split; only then is the chosen candidate run on the test
split. See docs/evaluation.md.
"""

import dataclasses
import functools
import math
import numbers
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax

from gmn_jax import losses
from gmn_jax import metrics
from gmn_jax import models
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import ConfigError, DataError
from gmn_jax.metrics import METRIC_NAMES, gzsl_metrics_from_predictions, predict
# Part of this module's agreed API (docs/evaluation.md); defined in metrics.
from gmn_jax.metrics import gzsl_metrics, per_class_accuracy  # pylint: disable=unused-import

SELECTIONS = ("last", "validation")
CURVE_NAMES = METRIC_NAMES + ("train_loss",)
# Calibrated stacking at the last epoch (docs/evaluation.md). The "oracle_"
# ones choose gamma for the best H on the very split they report (as the
# literature does); the others use a gamma given by the caller (e.g. chosen
# on a validation split) and exist only when one is given.
ORACLE_CALIBRATION_NAMES = ("ausuc", "oracle_calibration_gamma", "oracle_calibrated_gzsl_u",
                            "oracle_calibrated_gzsl_s", "oracle_calibrated_gzsl_h")
CALIBRATION_NAMES = ("calibration_gamma", "calibrated_gzsl_u", "calibrated_gzsl_s",
                     "calibrated_gzsl_h")
_INPUT = "evaluation inputs"  # the "path" of in-memory arrays in errors
# The most bytes of pooled training sets (N x D float32 per generator) that
# `evaluate_generators` holds at once; more generators are split into batches.
# 2 GiB holds five pooled sets of any xlsa17 benchmark (0.15-0.4 GB each).
MAX_POOLED_BYTES = 2 ** 31


# --------------------------------------------------------------------------
# Configuration.


@dataclasses.dataclass(frozen=True)
class ClassifierSettings:
  """The validated final-classifier fields of a config (cfg = config.eval).

  Attributes:
    classifier: "bilinear" or "softmax".
    epochs: passes over the pooled training set.
    batch_size: mini-batch size; the last batch of an epoch is smaller.
    lr: initial learning rate.
    lr_decay: multiplies the learning rate after every epoch.
    weight_decay: L2 coefficient added to the gradient (PyTorch style).
    momentum: heavy-ball momentum (PyTorch style, no dampening).
  """

  classifier: str
  epochs: int
  batch_size: int
  lr: float
  lr_decay: float
  weight_decay: float
  momentum: float


def _field(cfg, name):
  try:
    return getattr(cfg, name)
  except (AttributeError, KeyError):
    raise ConfigError(f"eval.{name}: expected a value, found no such field") from None


def _positive_int(cfg, name):
  value = _field(cfg, name)
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
    raise ConfigError(f"eval.{name}: expected a positive int, found {value!r}")
  return int(value)


def _non_negative_int(cfg, name):
  value = _field(cfg, name)
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
    raise ConfigError(f"eval.{name}: expected a non-negative int, found {value!r}")
  return int(value)


def _real(cfg, name, low, high, what):
  value = _field(cfg, name)
  if (not isinstance(value, numbers.Real) or isinstance(value, bool)
      or not low(value) or not high(value)):
    raise ConfigError(f"eval.{name}: expected {what}, found {value!r}")
  return float(value)


def classifier_settings(cfg) -> ClassifierSettings:
  """Reads and validates the final-classifier fields of a config.

  Args:
    cfg: any attribute object (in practice `config.eval`) with fields
      classifier, epochs, batch_size, lr, lr_decay, weight_decay, momentum,
      and selection.

  Returns:
    The validated `ClassifierSettings`.

  Raises:
    ConfigError: for a missing field or a bad value.
  """
  kind = _field(cfg, "classifier")
  if kind not in models.CLASSIFIER_KINDS:
    raise ConfigError(
        f"eval.classifier: expected one of {models.CLASSIFIER_KINDS}, found {kind!r}")
  selection = _field(cfg, "selection")
  if selection not in SELECTIONS:
    raise ConfigError(f"eval.selection: expected one of {SELECTIONS}, found {selection!r}")
  return ClassifierSettings(
      classifier=kind,
      epochs=_positive_int(cfg, "epochs"),
      batch_size=_positive_int(cfg, "batch_size"),
      lr=_real(cfg, "lr", lambda v: v > 0, math.isfinite, "a positive float"),
      lr_decay=_real(cfg, "lr_decay", lambda v: v > 0, lambda v: v <= 1,
                     "a float in (0, 1]"),
      weight_decay=_real(cfg, "weight_decay", lambda v: v >= 0, math.isfinite,
                         "a non-negative float"),
      momentum=_real(cfg, "momentum", lambda v: v >= 0, lambda v: v < 1,
                     "a float in [0, 1)"),
  )


# --------------------------------------------------------------------------
# Optimiser and batching.


def step_lr(learning_rate, decay, steps_per_epoch: int) -> Callable:
  """PyTorch's StepLR(step_size=1 epoch, gamma=decay) as an optax schedule.

  Args:
    learning_rate: the learning rate of the first epoch.
    decay: the factor applied after every epoch.
    steps_per_epoch: optimiser steps in one epoch.

  Returns:
    `schedule(step) = learning_rate * decay ** (step // steps_per_epoch)`.
  """

  def schedule(step):
    epoch = (jnp.asarray(step) // steps_per_epoch).astype(jnp.float32)
    return learning_rate * jnp.power(jnp.asarray(decay, jnp.float32), epoch)

  return schedule


def sgd_with_momentum(learning_rate, *, momentum,
                      weight_decay) -> optax.GradientTransformation:
  """SGD with momentum and weight decay exactly as torch.optim.SGD does it.

  buf <- momentum * buf + (grad + weight_decay * param);
  param <- param - lr * buf (dampening 0, no Nesterov, decay on every
  parameter including biases, as the reference passes all parameters).

  Args:
    learning_rate: a float or an optax schedule of the step count.
    momentum: the momentum factor.
    weight_decay: the L2 coefficient.

  Returns:
    The optax transformation.
  """
  return optax.chain(
      optax.add_decayed_weights(weight_decay),
      optax.sgd(learning_rate, momentum=momentum),
  )


def epoch_batches(key, num_examples: int, batch_size: int):
  """One epoch of shuffled mini-batches with fixed shapes.

  Every example appears exactly once per epoch. The last batch holds the
  remainder (num_examples mod batch_size examples) and is padded to the full
  size; padded slots point at example 0 and are masked out.

  Args:
    key: PRNG key of this epoch's order.
    num_examples: N.
    batch_size: B.

  Returns:
    (indices, mask): (ceil(N/B), B) int32 example indices and bool validity.
  """
  num_steps = max(1, -(-num_examples // batch_size))
  order = jax.random.permutation(key, num_examples).astype(jnp.int32)
  padding = num_steps * batch_size - num_examples
  indices = jnp.concatenate([order, jnp.zeros((padding,), jnp.int32)])
  mask = jnp.arange(num_steps * batch_size) < num_examples
  return indices.reshape(num_steps, batch_size), mask.reshape(num_steps, batch_size)


# --------------------------------------------------------------------------
# Evaluation sets and results.


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


@dataclasses.dataclass(frozen=True)
class FinalClassifierResult:
  """What `train_final_classifier` returns.

  Attributes:
    last: {name: (num_seeds,) np.ndarray} at the last epoch (the reference
      protocol): "zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h" (percent; absent when
      no evaluation sets were given) and "train_loss" (mean cross-entropy
      over the last epoch's steps). With evaluation sets also calibrated
      stacking: `ORACLE_CALIBRATION_NAMES` ("ausuc" in [0, 100]; u, s, H and
      gamma at the best-H gamma of these very sets, an oracle) and, when a
      calibration gamma was given, `CALIBRATION_NAMES`.
    curves: {name: (num_seeds, epochs) np.ndarray}, the per-epoch metrics
      (`CURVE_NAMES`) after every epoch.
    params: the trained classifier parameters, stacked on a leading seed axis.
    split: the split the metrics were measured on, or None.
    seen_unseen_curves: one `metrics.SeenUnseenCurve` per seed (last epoch),
      or None without evaluation sets.
  """

  last: Dict[str, np.ndarray]
  curves: Dict[str, np.ndarray]
  params: Any
  split: Optional[str] = None
  seen_unseen_curves: Optional[Sequence[metrics.SeenUnseenCurve]] = None

  def summary(self) -> Dict[str, Dict[str, Any]]:
    """Mean, std (ddof 0) and per-seed values of the last-epoch metrics.

    Returns:
      {name: {"mean": float, "std": float, "per_seed": [float, ...]}}, the
      format of results.json.
    """
    return {
        name: {"mean": float(np.mean(values)), "std": float(np.std(values)),
               "per_seed": [float(v) for v in values]}
        for name, values in self.last.items()
    }


def select_on_validation(results: Mapping[Any, FinalClassifierResult],
                         metric: str = "gzsl_h"):
  """Picks the candidate whose last-epoch `metric` (mean over seeds) is best.

  Args:
    results: {candidate: result}, each measured on a validation split.
    metric: the metric to maximise.

  Returns:
    The best candidate (the first one on ties).

  Raises:
    ConfigError: when any result was not measured on split "validation" (a
      choice made on the test split would bias the reported numbers), when
      there are no results or the metric is missing.
  """
  if not results:
    raise ConfigError("selection candidates: expected at least one result, found none")
  best, best_value = None, -math.inf
  for candidate, result in results.items():
    if result.split != "validation":
      raise ConfigError(
          f"selection of {candidate!r}: expected a result measured on split "
          f"'validation', found split {result.split!r}")
    if metric not in result.last:
      raise ConfigError(f"selection metric: expected one of {sorted(result.last)}, "
                        f"found {metric!r}")
    value = float(np.mean(result.last[metric]))
    if value > best_value:
      best, best_value = candidate, value
  return best


# --------------------------------------------------------------------------
# The jitted training program.


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


def _evaluate(apply_fn, params, class_embeddings, eval_data):
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
  _, apply_fn = models.get_classifier(kind)

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


def _calibration_gammas(calibration_gamma, num_seeds: int) -> Optional[np.ndarray]:
  """(num_seeds,) float64 gammas from a float or per-seed values, or None."""
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


def _calibration(params, class_embeddings, eval_data, kind, gammas):
  """(per-seed calibration metrics, per-seed curves) at the final params."""
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


def _train_classifier_seeds(init_params, shuffle_keys, hyper, features, labels,
                            class_embeddings, train_columns, eval_data, *, kind,
                            epochs, batch_size):
  """Trains one classifier per seed (vmapped); returns (params, curves)."""
  _, apply_fn = models.get_classifier(kind)
  num_examples = features.shape[0]
  steps_per_epoch = max(1, -(-num_examples // batch_size))

  def batch_loss(params, x, y, mask):
    logits = apply_fn(params, x, class_embeddings)
    if train_columns is not None:
      logits = logits[:, train_columns]
    # One-example means of the shared cross-entropy are per-example losses;
    # the padded slots of the remainder batch are then dropped.
    per_example = jax.vmap(losses.cross_entropy)(logits[:, None, :], y[:, None])
    per_example = jnp.where(mask, per_example, 0.0)
    return per_example.sum() / jnp.maximum(mask.sum(), 1)

  def one_seed(params, shuffle_key):
    optimizer = sgd_with_momentum(
        step_lr(hyper["lr"], hyper["lr_decay"], steps_per_epoch),
        momentum=hyper["momentum"], weight_decay=hyper["weight_decay"])

    def step(carry, batch):
      params, opt_state = carry
      indices, mask = batch
      loss, grads = jax.value_and_grad(batch_loss)(
          params, features[indices], labels[indices], mask)
      updates, opt_state = optimizer.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss * mask.sum()

    def epoch(carry, epoch_index):
      indices, mask = epoch_batches(
          jax.random.fold_in(shuffle_key, epoch_index), num_examples, batch_size)
      carry, loss_sums = lax.scan(step, carry, (indices, mask))
      record = {} if eval_data is None else _evaluate(
          apply_fn, carry[0], class_embeddings, eval_data)
      record["train_loss"] = loss_sums.sum() / num_examples
      return carry, record

    (params, _), curves = lax.scan(
        epoch, (params, optimizer.init(params)), jnp.arange(epochs))
    return params, curves

  return jax.vmap(one_seed)(init_params, shuffle_keys)


_STATIC_TRAINING_ARGS = ("kind", "epochs", "batch_size")
_train_seeds = jax.jit(_train_classifier_seeds, static_argnames=_STATIC_TRAINING_ARGS)


@functools.partial(jax.jit, static_argnames=_STATIC_TRAINING_ARGS)
def _train_generator_seeds(init_params, shuffle_keys, hyper, features, labels,
                           class_embeddings, train_columns, eval_data, *, kind, epochs,
                           batch_size):
  """`_train_classifier_seeds` vmapped over a leading generator axis.

  init_params, shuffle_keys and features carry a leading axis of G generators
  (each generator's own pooled training set); labels, class embeddings and
  evaluation sets are shared, as the pooled sets differ only in the synthetic
  features' values.
  """

  def one_generator(params, keys, generator_features):
    return _train_classifier_seeds(
        params, keys, hyper, generator_features, labels, class_embeddings, train_columns,
        eval_data, kind=kind, epochs=epochs, batch_size=batch_size)

  return jax.vmap(one_generator)(init_params, shuffle_keys, features)


# --------------------------------------------------------------------------
# Public training entry points.


def _as_int_array(values, name):
  array = np.asarray(values)
  if array.ndim != 1 or (array.size and not np.issubdtype(array.dtype, np.integer)):
    raise DataError(_INPUT, name, "a 1-d array of int class ids",
                    f"shape {array.shape} dtype {array.dtype}")
  return array.astype(np.int32)


def _check_features(features, name, feature_dim=None):
  shape = tuple(jnp.shape(features))
  if len(shape) != 2 or (feature_dim is not None and shape[1] != feature_dim):
    want = "(N, D)" if feature_dim is None else f"(N, {feature_dim})"
    raise DataError(_INPUT, name, f"a {want} float array", f"shape {shape}")


def _check_ids(ids, name, num_classes):
  if ids.size and (ids.min() < 0 or ids.max() >= num_classes):
    raise DataError(_INPUT, name, f"class ids in [0, {num_classes})",
                    f"ids in [{ids.min()}, {ids.max()}]")


def _prepare_eval_data(eval_sets, feature_dim, num_classes, chunk_size):
  if eval_sets is None:
    return None
  if isinstance(eval_sets, ZSLDataset):
    eval_sets = EvalSets.from_dataset(eval_sets)
  data = {}
  for part in ("unseen", "seen"):
    features = getattr(eval_sets, f"{part}_features")
    _check_features(features, f"{part}_features", feature_dim)
    labels = _as_int_array(getattr(eval_sets, f"{part}_labels"), f"{part}_labels")
    if labels.shape[0] != jnp.shape(features)[0]:
      raise DataError(_INPUT, f"{part}_labels", f"{jnp.shape(features)[0]} labels",
                      f"{labels.shape[0]}")
    classes = _as_int_array(getattr(eval_sets, f"{part}_classes"), f"{part}_classes")
    _check_ids(classes, f"{part}_classes", num_classes)
    data[f"{part}_chunks"] = _chunk_rows(jnp.asarray(features, jnp.float32), chunk_size)
    data[f"{part}_labels"] = jnp.asarray(labels)
    data[f"{part}_classes"] = jnp.asarray(classes)
  return data


def train_final_classifier_from_keys(seed_keys, train_features, train_labels,
                                     class_embeddings, eval_sets, cfg, *,
                                     train_classes=None,
                                     eval_chunk_size: int = 4096,
                                     calibration_gamma=None
                                     ) -> FinalClassifierResult:
  """Trains one final classifier per key in `seed_keys`, all at once.

  Seed key k is split into (init_key, shuffle_key) = jax.random.split(k); the
  classifier is initialised with init_key and epoch e is shuffled with
  jax.random.fold_in(shuffle_key, e). So a seed's result does not depend on
  which other seeds run beside it.

  Args:
    seed_keys: (S,) stacked PRNG keys, one per classifier.
    train_features: (N, D) float features (real seen + synthetic).
    train_labels: (N,) int global class ids (rows of class_embeddings).
    class_embeddings: (C, K) embeddings of ALL classes; logits run over them.
    eval_sets: an `EvalSets`, a `ZSLDataset` (its test_unseen / test_seen
      sets), or None to train without measuring.
    cfg: the evaluation config (see `classifier_settings`).
    train_classes: optional global ids; when given, the training loss only
      sees these logit columns (the reference's seen-only real baseline).
      Evaluation always scores all classes.
    eval_chunk_size: the most evaluation rows scored at once.
    calibration_gamma: optional calibrated-stacking constant (a float, or
      one per seed) chosen elsewhere, e.g. on a validation split; the result
      then also holds u, s, H at it (`CALIBRATION_NAMES`).

  Returns:
    A `FinalClassifierResult` with S seeds.

  Raises:
    ConfigError: for a bad config.
    DataError: for inconsistent arrays.
  """
  settings = classifier_settings(cfg)
  gammas = _calibration_gammas(calibration_gamma, len(seed_keys))
  _check_features(train_features, "train_features")
  _check_features(class_embeddings, "class_embeddings")
  num_examples, feature_dim = jnp.shape(train_features)
  num_classes, embedding_dim = jnp.shape(class_embeddings)
  labels, columns = _training_labels(train_labels, num_examples, num_classes, train_classes)
  eval_data = _prepare_eval_data(eval_sets, feature_dim, num_classes, eval_chunk_size)
  init_params, shuffle_keys = _initial_classifiers(
      settings.classifier, seed_keys, feature_dim, embedding_dim, num_classes)
  class_embeddings = jnp.asarray(class_embeddings, jnp.float32)
  params, curves = _train_seeds(
      init_params, shuffle_keys, _hyperparameters(settings),
      jnp.asarray(train_features, jnp.float32), jnp.asarray(labels), class_embeddings,
      columns, eval_data, kind=settings.classifier, epochs=settings.epochs,
      batch_size=settings.batch_size)
  return _final_result(params, jax.device_get(curves), class_embeddings, eval_data,
                       settings.classifier, gammas, _split_of(eval_sets))


def train_final_classifier_group(seed_keys, train_features, train_labels,
                                 class_embeddings, eval_sets, cfg, *,
                                 train_classes=None, eval_chunk_size: int = 4096,
                                 calibration_gamma=None) -> List[FinalClassifierResult]:
  """The final classifiers of G generators' pooled training sets, all at once.

  One jitted program trains G x S classifiers: `jax.vmap` over the G
  training sets around the vmap over the S classifier seeds of
  `train_final_classifier_from_keys`. Generator g's result equals
  `train_final_classifier_from_keys(seed_keys[g], train_features[g], ...)` to
  float tolerance (the vmapped products may round differently in the last
  bits; docs/evaluation.md).

  Args:
    seed_keys: (G, S) PRNG keys, generator g's S classifier seeds in row g
      (used as in `train_final_classifier_from_keys`).
    train_features: (G, N, D) float features, one pooled training set per
      generator.
    train_labels: (N,) int global class ids, shared by the G training sets.
    class_embeddings: (C, K) embeddings of ALL classes.
    eval_sets: an `EvalSets`, a `ZSLDataset`, or None.
    cfg: the evaluation config (see `classifier_settings`).
    train_classes: optional global ids of the logit columns the training loss
      sees (default: all classes).
    eval_chunk_size: the most evaluation rows scored at once.
    calibration_gamma: optional calibrated-stacking constant (a float, or one
      per classifier seed), the same for every generator.

  Returns:
    G `FinalClassifierResult`s with S seeds each, in generator order.

  Raises:
    ConfigError: for a bad config.
    DataError: for inconsistent arrays.
  """
  settings = classifier_settings(cfg)
  shape = tuple(jnp.shape(train_features))
  key_shape = tuple(jnp.shape(seed_keys))
  if len(shape) != 3 or not key_shape or key_shape[0] != shape[0] or len(key_shape) < 2:
    raise DataError(_INPUT, "train_features",
                    "a (G, N, D) float array and (G, S) seed keys",
                    f"features of shape {shape}, keys of shape {key_shape}")
  num_generators, num_examples, feature_dim = shape
  gammas = _calibration_gammas(calibration_gamma, key_shape[1])
  _check_features(class_embeddings, "class_embeddings")
  num_classes, embedding_dim = jnp.shape(class_embeddings)
  labels, columns = _training_labels(train_labels, num_examples, num_classes, train_classes)
  eval_data = _prepare_eval_data(eval_sets, feature_dim, num_classes, eval_chunk_size)
  # Initialised generator by generator: the very arrays a one-generator call makes.
  inits = [_initial_classifiers(settings.classifier, seed_keys[g], feature_dim,
                                embedding_dim, num_classes) for g in range(num_generators)]
  init_params = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[i[0] for i in inits])
  shuffle_keys = jnp.stack([i[1] for i in inits])
  class_embeddings = jnp.asarray(class_embeddings, jnp.float32)
  params, curves = _train_generator_seeds(
      init_params, shuffle_keys, _hyperparameters(settings),
      jnp.asarray(train_features, jnp.float32), jnp.asarray(labels), class_embeddings,
      columns, eval_data, kind=settings.classifier, epochs=settings.epochs,
      batch_size=settings.batch_size)
  curves = jax.device_get(curves)
  split = _split_of(eval_sets)
  return [
      _final_result(jax.tree.map(lambda leaf, g=g: leaf[g], params),
                    {name: values[g] for name, values in curves.items()}, class_embeddings,
                    eval_data, settings.classifier, gammas, split)
      for g in range(num_generators)
  ]


def _training_labels(train_labels, num_examples, num_classes, train_classes):
  """(labels as indices of the trained logit columns, those columns or None)."""
  labels = _as_int_array(train_labels, "train_labels")
  if labels.shape[0] != num_examples:
    raise DataError(_INPUT, "train_labels", f"{num_examples} labels", f"{labels.shape[0]}")
  if num_examples == 0:
    raise DataError(_INPUT, "train_features", "at least one example", "none")
  _check_ids(labels, "train_labels", num_classes)
  if train_classes is None:
    return labels, None
  columns = _as_int_array(train_classes, "train_classes")
  _check_ids(columns, "train_classes", num_classes)
  local = np.full(num_classes, -1, np.int32)
  local[columns] = np.arange(columns.size, dtype=np.int32)
  labels = local[labels]
  if (labels < 0).any():
    raise DataError(_INPUT, "train_labels", "ids among train_classes",
                    "labels of other classes")
  return labels, jnp.asarray(columns)


def _initial_classifiers(kind, seed_keys, feature_dim, embedding_dim, num_classes):
  """(initial parameters, shuffle keys), stacked over the seeds of seed_keys."""
  init_fn, _ = models.get_classifier(kind)
  init_keys, shuffle_keys = jax.vmap(jax.random.split, out_axes=1)(seed_keys)
  init_params = jax.vmap(lambda k: init_fn(
      k, feature_dim=feature_dim, embedding_dim=embedding_dim,
      num_classes=num_classes))(init_keys)
  return init_params, shuffle_keys


def _hyperparameters(settings: ClassifierSettings) -> Dict[str, jnp.ndarray]:
  # Traced, not static: a sweep over them reuses the compiled program.
  return {name: jnp.float32(getattr(settings, name))
          for name in ("lr", "lr_decay", "weight_decay", "momentum")}


def _split_of(eval_sets) -> Optional[str]:
  if isinstance(eval_sets, (EvalSets, ZSLDataset)):
    return eval_sets.split
  return None


def _final_result(params, curves, class_embeddings, eval_data, kind, gammas,
                  split) -> FinalClassifierResult:
  """The `FinalClassifierResult` of trained params and their (S, epochs) curves."""
  curves = {name: np.asarray(values) for name, values in curves.items()}
  last = {name: values[:, -1] for name, values in curves.items()}
  seen_unseen_curves = None
  if eval_data is not None:
    calibration, seen_unseen_curves = _calibration(params, class_embeddings, eval_data,
                                                   kind, gammas)
    last.update(calibration)
  return FinalClassifierResult(last=last, curves=curves, params=params, split=split,
                               seen_unseen_curves=seen_unseen_curves)


def train_final_classifier(key, train_features, train_labels, class_embeddings,
                           eval_sets, cfg, *, num_seeds: Optional[int] = None,
                           train_classes=None, eval_chunk_size: int = 4096,
                           calibration_gamma=None) -> FinalClassifierResult:
  """Trains `num_seeds` final classifiers over all classes and evaluates them.

  The seeds differ in initialisation and shuffling; their keys are
  jax.random.split(key, num_seeds) (see `train_final_classifier_from_keys`).

  Args:
    key: PRNG key.
    train_features: (N, D) float features (real seen + synthetic).
    train_labels: (N,) int global class ids.
    class_embeddings: (C, K) embeddings of all classes.
    eval_sets: an `EvalSets`, a `ZSLDataset`, or None.
    cfg: the evaluation config (classifier, epochs, batch_size, lr, lr_decay,
      weight_decay, momentum, selection; num_classifier_seeds when num_seeds
      is None).
    num_seeds: how many classifiers to train at once.
    train_classes: optional global ids of the logit columns the training loss
      sees (default: all classes).
    eval_chunk_size: the most evaluation rows scored at once.
    calibration_gamma: optional calibrated-stacking constant chosen
      elsewhere (see `train_final_classifier_from_keys`).

  Returns:
    A `FinalClassifierResult`; `.last` is the last epoch.

  Raises:
    ConfigError: for a bad config.
    DataError: for inconsistent arrays.
  """
  if num_seeds is None:
    num_seeds = _positive_int(cfg, "num_classifier_seeds")
  if not isinstance(num_seeds, numbers.Integral) or num_seeds < 1:
    raise ConfigError(f"num_seeds: expected a positive int, found {num_seeds!r}")
  return train_final_classifier_from_keys(
      jax.random.split(key, int(num_seeds)), train_features, train_labels,
      class_embeddings, eval_sets, cfg, train_classes=train_classes,
      eval_chunk_size=eval_chunk_size, calibration_gamma=calibration_gamma)


# --------------------------------------------------------------------------
# Synthesis.


def synthetic_class_counts(dataset: ZSLDataset, n_synth_unseen: int,
                           n_synth_seen: int) -> Dict[int, int]:
  """How many synthetic features each class gets (the reference's rule).

  Every unseen class gets `n_synth_unseen`; every seen class is topped up to
  `n_synth_seen` samples: max(0, n_synth_seen - #real training samples).

  Args:
    dataset: the dataset (its training labels give the real counts).
    n_synth_unseen: synthetic samples per unseen class.
    n_synth_seen: the seen-class target size (0: no synthetic seen samples).

  Returns:
    {global class id: count} for every seen and unseen class (counts may be 0).

  Raises:
    ConfigError: for negative or non-integer counts.
  """
  for name, value in (("n_synth_unseen", n_synth_unseen), ("n_synth_seen", n_synth_seen)):
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 0:
      raise ConfigError(f"eval.{name}: expected a non-negative int, found {value!r}")
  real = np.bincount(np.asarray(dataset.train_labels), minlength=dataset.num_classes)
  counts = {int(c): max(0, int(n_synth_seen) - int(real[c])) for c in dataset.seen_classes}
  counts.update({int(c): int(n_synth_unseen) for c in dataset.unseen_classes})
  return counts


def _all_arrays(tree):
  return all(isinstance(leaf, (jax.Array, np.ndarray)) for leaf in jax.tree.leaves(tree))


def _split_sample_fn(sample_fn):
  """(static function, dynamic arrays) so that parameters are jit arguments.

  A `functools.partial(apply_generator, params)` would otherwise bake the
  generator weights into the compiled program as constants and recompile
  for every new set of weights.
  """
  if (isinstance(sample_fn, functools.partial)
      and _all_arrays((sample_fn.args, sample_fn.keywords))):
    return sample_fn.func, (sample_fn.args, dict(sample_fn.keywords))
  return sample_fn, ((), {})


@functools.partial(jax.jit, static_argnums=0)
def _sample_chunk(func, dynamic, class_embeddings, labels, key):
  args, kwargs = dynamic
  return func(*args, class_embeddings[labels], key, **kwargs)


def synthesize(sample_fn, key, class_ids, class_embeddings, num_per_class, *,
               chunk_size: int = 4096) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Draws synthetic features class by class, in fixed-size chunks.

  All chunks have the same shape, so `sample_fn` is traced once per chunk
  shape (the last chunk is padded, the padding dropped). Chunk i draws with
  jax.random.fold_in(key, i), so the samples depend on chunk_size.

  Args:
    sample_fn: `sample_fn(embeddings (B, K), key) -> (B, D)`, e.g.
      `functools.partial(models.apply_generator, generator_params)` (array
      arguments of a partial are passed to the compiled program, not baked
      into it).
    key: PRNG key.
    class_ids: (n,) global class ids to synthesise.
    class_embeddings: (C, K) embeddings of all classes.
    num_per_class: an int for every class, or (n,) ints aligned with class_ids.
    chunk_size: the most rows generated per call.

  Returns:
    (features (M, D) float32, labels (M,) int32 global ids), grouped by class
    in the order of class_ids, M = total count.

  Raises:
    ConfigError: for bad counts or chunk size.
    DataError: for class ids outside the embedding matrix.
  """
  if not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
    raise ConfigError(f"chunk_size: expected a positive int, found {chunk_size!r}")
  ids = _as_int_array(np.atleast_1d(class_ids), "class_ids")
  class_embeddings = jnp.asarray(class_embeddings, jnp.float32)
  _check_ids(ids, "class_ids", class_embeddings.shape[0])
  counts = np.asarray(num_per_class)
  if counts.ndim > 1 or (counts.ndim == 1 and counts.shape != ids.shape):
    raise ConfigError(f"num_per_class: expected an int or {ids.size} ints, "
                      f"found shape {counts.shape}")
  if counts.size and (not np.issubdtype(counts.dtype, np.integer) or counts.min() < 0):
    raise ConfigError(f"num_per_class: expected non-negative ints, found {counts!r}")
  labels = np.repeat(ids, np.broadcast_to(counts, ids.shape)).astype(np.int32)
  func, dynamic = _split_sample_fn(sample_fn)
  total = labels.size
  if total == 0:
    shape = jax.eval_shape(sample_fn, class_embeddings[:1], key).shape
    return jnp.zeros((0, shape[-1]), jnp.float32), jnp.zeros((0,), jnp.int32)
  chunk = min(int(chunk_size), total)
  num_chunks = -(-total // chunk)
  padded = np.zeros(num_chunks * chunk, np.int32)
  padded[:total] = labels
  pieces = [
      _sample_chunk(func, dynamic, class_embeddings,
                    jnp.asarray(padded[i * chunk:(i + 1) * chunk]),
                    jax.random.fold_in(key, i))
      for i in range(num_chunks)
  ]
  features = jnp.concatenate(pieces)[:total].astype(jnp.float32)
  return features, jnp.asarray(labels)


def evaluate_generator(sample_fn, dataset: ZSLDataset, cfg, key, *,
                       eval_chunk_size: int = 4096,
                       calibration_gamma=None) -> FinalClassifierResult:
  """The reference's stage 2: synthesise, pool with real seen, train, measure.

  Args:
    sample_fn: `sample_fn(embeddings, key) -> features` (see `synthesize`), or
      None for the real-only baseline: the classifier is then trained on real
      seen features alone, a bilinear one with logits over the seen classes
      (as the reference), a softmax one over all classes.
    dataset: the dataset; its test_unseen / test_seen sets are measured. Pass
      a validation-split dataset to compare candidates (`select_on_validation`).
    cfg: the evaluation config (config.eval): classifier fields plus
      n_synth_unseen, n_synth_seen and num_classifier_seeds.
    key: PRNG key (split into synthesis and classifier keys).
    eval_chunk_size: the most evaluation rows scored at once.
    calibration_gamma: optional calibrated-stacking constant chosen on
      other data (e.g. `oracle_calibration_gamma` of a validation-split run);
      adds `CALIBRATION_NAMES` to the result.

  Returns:
    A `FinalClassifierResult` over cfg.num_classifier_seeds seeds.

  Raises:
    ConfigError: for a bad config.
  """
  settings = classifier_settings(cfg)
  num_seeds = _positive_int(cfg, "num_classifier_seeds")
  synth_key, train_key = jax.random.split(key)
  train_classes = None
  if sample_fn is None:
    features = jnp.asarray(dataset.train_features)
    labels = jnp.asarray(dataset.train_labels)
    if settings.classifier == "bilinear":
      train_classes = dataset.seen_classes
  else:
    features, labels = _pooled_training_set(sample_fn, dataset, _synthetic_plan(dataset, cfg),
                                            synth_key)
  return train_final_classifier(
      train_key, features, labels, dataset.class_embeddings,
      EvalSets.from_dataset(dataset), cfg, num_seeds=num_seeds,
      train_classes=train_classes, eval_chunk_size=eval_chunk_size,
      calibration_gamma=calibration_gamma)


def _synthetic_plan(dataset: ZSLDataset, cfg) -> Tuple[np.ndarray, np.ndarray]:
  """(class ids, counts) of the synthetic features, classes with a count > 0."""
  counts = synthetic_class_counts(dataset, _non_negative_int(cfg, "n_synth_unseen"),
                                  _non_negative_int(cfg, "n_synth_seen"))
  ids = [c for c, n in counts.items() if n > 0]
  return np.asarray(ids, np.int32), np.asarray([counts[c] for c in ids], np.int64)


def _pooled_training_set(sample_fn, dataset: ZSLDataset, plan, synth_key):
  """Real seen training features pooled with the generator's synthetic ones."""
  ids, counts = plan
  fake_features, fake_labels = synthesize(sample_fn, synth_key, ids, dataset.class_embeddings,
                                          counts)
  features = jnp.concatenate([jnp.asarray(dataset.train_features), fake_features])
  labels = jnp.concatenate([jnp.asarray(dataset.train_labels), fake_labels])
  return features, labels


def generator_batches(num_generators: int, bytes_per_generator: int,
                      max_pooled_bytes: int = MAX_POOLED_BYTES) -> List[Tuple[int, int]]:
  """How `evaluate_generators` splits G generators to bound memory.

  Consecutive batches of at most max(1, max_pooled_bytes //
  bytes_per_generator) generators, in order; only the last may be smaller.
  A single pooled training set larger than the bound still runs, alone.

  Args:
    num_generators: G.
    bytes_per_generator: the size of one pooled training set (N x D x 4).
    max_pooled_bytes: the most bytes of pooled training sets at once.

  Returns:
    [(start, stop), ...] generator index ranges covering range(G).

  Raises:
    ConfigError: for a non-positive bound.
  """
  if (not isinstance(max_pooled_bytes, numbers.Integral) or isinstance(max_pooled_bytes, bool)
      or max_pooled_bytes < 1):
    raise ConfigError(f"max_pooled_bytes: expected a positive int, found {max_pooled_bytes!r}")
  size = max(1, int(max_pooled_bytes) // max(1, int(bytes_per_generator)))
  return [(start, min(start + size, num_generators))
          for start in range(0, num_generators, size)]


def evaluate_generators(sample_fns: Sequence[Callable], dataset: ZSLDataset, cfg, keys, *,
                        eval_chunk_size: int = 4096, calibration_gamma=None,
                        max_pooled_bytes: int = MAX_POOLED_BYTES
                        ) -> List[FinalClassifierResult]:
  """`evaluate_generator` for G generators, their classifiers trained at once.

  Generator g synthesises its features with its own key (exactly as
  `evaluate_generator(sample_fns[g], dataset, cfg, keys[g])` does: the same
  synthesis and classifier keys), and the G x cfg.num_classifier_seeds final
  classifiers are trained in one jitted program (`train_final_classifier_group`).
  Result g equals that of `evaluate_generator` for generator g alone to float
  tolerance (vmapped products may round differently in the last bits).

  The G pooled training sets (N x D float32 each) live in memory together; when
  they would exceed `max_pooled_bytes`, the generators are evaluated in
  consecutive batches (`generator_batches`), one program per batch.

  Args:
    sample_fns: G sample functions (see `synthesize`), e.g. partials of
      `models.apply_generator` with each generator's parameters. The real-only
      baseline (no generator) has no group form: use `evaluate_generator`.
    dataset: the dataset; its test_unseen / test_seen sets are measured.
    cfg: the evaluation config (config.eval), as for `evaluate_generator`.
    keys: G PRNG keys (a sequence or a stacked array), one per generator.
    eval_chunk_size: the most evaluation rows scored at once.
    calibration_gamma: optional calibrated-stacking constant, the same for
      every generator (see `evaluate_generator`).
    max_pooled_bytes: the most bytes of pooled training sets held at once.

  Returns:
    G `FinalClassifierResult`s over cfg.num_classifier_seeds seeds each, in the
    order of sample_fns.

  Raises:
    ConfigError: for a bad config, no generators, a missing generator or a
      key count that does not match.
  """
  classifier_settings(cfg)
  num_seeds = _positive_int(cfg, "num_classifier_seeds")
  sample_fns = list(sample_fns)
  num_generators = len(sample_fns)
  if num_generators == 0 or any(fn is None for fn in sample_fns):
    raise ConfigError(
        "sample_fns: expected one or more sample functions, found "
        f"{'none' if not sample_fns else 'None among them'} (the real-only baseline is "
        "evaluate_generator(None, ...))")
  if len(keys) != num_generators:
    raise ConfigError(f"keys: expected {num_generators} PRNG keys (one per generator), "
                      f"found {len(keys)}")
  plan = _synthetic_plan(dataset, cfg)
  num_examples = int(np.shape(dataset.train_labels)[0] + plan[1].sum())
  bytes_per_generator = num_examples * int(dataset.feature_dim) * 4
  results = []
  for start, stop in generator_batches(num_generators, bytes_per_generator, max_pooled_bytes):
    features, seed_keys = [], []
    for g in range(start, stop):
      synth_key, train_key = jax.random.split(keys[g])
      pooled, labels = _pooled_training_set(sample_fns[g], dataset, plan, synth_key)
      features.append(pooled)
      seed_keys.append(jax.random.split(train_key, num_seeds))
    features = jnp.stack(features)  # the pieces are freed when the list goes
    results.extend(train_final_classifier_group(
        jnp.stack(seed_keys), features, labels, dataset.class_embeddings,
        EvalSets.from_dataset(dataset), cfg, eval_chunk_size=eval_chunk_size,
        calibration_gamma=calibration_gamma))
  return results
