"""Stage 2's final classifiers: SGD on the pooled training set, measured every epoch.

`train_final_classifiers` trains, for G pooled training sets (one per
generator: real seen features plus that generator's synthetic ones) and S
classifier seeds each, G × S classifiers over ALL classes in one jitted
program: a `lax.scan` over epochs, an inner `lax.scan` over shuffled
mini-batches (fixed shapes; the remainder batch padded and masked), the
GZSL metrics of every epoch inside the epoch scan (`scoring.epoch_metrics`),
`jax.vmap` over the S seeds and over the G sets (`seed_axis.over_seeds`: one
set is traced without the outer vmap). SGD with momentum and weight decay
follows torch.optim.SGD, the learning rate decays once per epoch (StepLR).
The reported numbers are those of the LAST epoch (`.last`); the per-epoch
curves are kept (`.curves`), and calibrated stacking is measured at the
final parameters (`scoring.calibration`).

The kinds (`FINAL_CLASSIFIER_KINDS`): "bilinear" (compatibility scores
(x W + b) . a_c) and "softmax" (a linear softmax classifier) are trained with
softmax cross-entropy; "ale" and "devise" are the bilinear model trained with
ALE's weighted approximate ranking loss and DeViSE's hinge rank loss
(`gmn_jax.ranking_losses`), the compatibility baselines of Xian et al.

Nothing here is ever chosen on the data it reports: the evaluation sets
only feed the metrics, and the trained parameters do not depend on them.
"""

import dataclasses
import functools
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import jax
from jax import lax
from jax.experimental import io_callback
import jax.numpy as jnp
import numpy as np
import optax

from gmn_jax import classifiers
from gmn_jax import losses
from gmn_jax import metrics
from gmn_jax import preemption
from gmn_jax import progress
from gmn_jax import ranking_losses
from gmn_jax import scoring
from gmn_jax import seed_axis
from gmn_jax import specs
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import ConfigError, DataError
from gmn_jax.metrics import METRIC_NAMES
from gmn_jax.specs import EvalSpec

CURVE_NAMES = METRIC_NAMES + ("train_loss",)

# The final classifiers (eval.classifier): a model of gmn_jax.models and its
# training loss. The compatibility kinds score a class from its embedding, so
# they also score classes they were never trained on.
FINAL_CLASSIFIER_KINDS = ("bilinear", "softmax", "ale", "devise")
COMPATIBILITY_KINDS = ("bilinear", "ale", "devise")
_RANKING_KINDS = ("ale", "devise")


def model_kind(kind: str) -> str:
  """The `classifiers.get_classifier` kind of a final-classifier kind.

  Args:
    kind: one of `FINAL_CLASSIFIER_KINDS`.

  Returns:
    "bilinear" for "ale" and "devise" (the model they train), else kind.

  Raises:
    ConfigError: for an unknown kind.
  """
  if kind not in FINAL_CLASSIFIER_KINDS:
    raise ConfigError(f"final classifier kind: expected one of {FINAL_CLASSIFIER_KINDS}, "
                      f"found {kind!r}")
  return "bilinear" if kind in _RANKING_KINDS else kind


def per_example_loss(kind: str, logits, labels, hyper):
  """The training loss of each example of a batch.

  Args:
    kind: one of `FINAL_CLASSIFIER_KINDS`.
    logits: (B, C) scores of the trained classes.
    labels: (B,) int indices into the logits' last axis.
    hyper: the traced settings (`specs.EVAL_TRACED_FIELDS`); "devise" reads
      "margin".

  Returns:
    (B,) losses: softmax cross-entropy, or ALE's or DeViSE's ranking loss.
  """
  if kind == "ale":
    return ranking_losses.ale_loss(logits, labels)
  if kind == "devise":
    return ranking_losses.devise_loss(logits, labels, hyper["margin"])
  # One-example means of the shared cross-entropy are per-example losses.
  return jax.vmap(losses.cross_entropy)(logits[:, None, :], labels[:, None])


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
# Results.


@dataclasses.dataclass(frozen=True)
class FinalClassifierResult:
  """The final classifiers of one training set (`train_final_classifiers`).

  Attributes:
    last: {name: (num_seeds,) np.ndarray} at the last epoch (the reference
      protocol): "zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h" (percent; absent when
      no evaluation sets were given) and "train_loss" (the mean training
      loss of the kind over the last epoch's examples). With evaluation sets also calibrated
      stacking: `scoring.ORACLE_CALIBRATION_NAMES` ("ausuc" in [0, 100]; u, s, H and
      gamma at the best-H gamma of these very sets, an oracle) and, when a
      calibration gamma was given, `scoring.CALIBRATION_NAMES`.
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


# --------------------------------------------------------------------------
# The jitted training program.


def _optimizer(hyper, steps_per_epoch):
  return sgd_with_momentum(step_lr(hyper["lr"], hyper["lr_decay"], steps_per_epoch),
                           momentum=hyper["momentum"], weight_decay=hyper["weight_decay"])


def _epoch_of_one_classifier(carry, shuffle_key, features, epoch_index, hyper, labels,
                             class_embeddings, train_columns, eval_data, *, kind, batch_size):
  """One epoch of one classifier: ((params, opt_state), the epoch's record)."""
  _, apply_fn = classifiers.get_classifier(model_kind(kind))
  num_examples = features.shape[0]
  optimizer = _optimizer(hyper, max(1, -(-num_examples // batch_size)))

  def batch_loss(params, x, y, mask):
    logits = apply_fn(params, x, class_embeddings)
    if train_columns is not None:
      logits = logits[:, train_columns]
    # The padded slots of the remainder batch are dropped.
    return losses.masked_mean(per_example_loss(kind, logits, y, hyper), mask)

  def step(carry, batch):
    params, opt_state = carry
    indices, mask = batch
    loss, grads = jax.value_and_grad(batch_loss)(
        params, features[indices], labels[indices], mask)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss * mask.sum()

  indices, mask = epoch_batches(
      jax.random.fold_in(shuffle_key, epoch_index), num_examples, batch_size)
  carry, loss_sums = lax.scan(step, carry, (indices, mask))
  record = {} if eval_data is None else scoring.epoch_metrics(
      apply_fn, carry[0], class_embeddings, eval_data)
  record["train_loss"] = loss_sums.sum() / num_examples
  return carry, record


# The stage-2 reporter: it receives every epoch's report (None: nobody).
_live: Optional[progress.LiveProgress] = None
_aborted = False  # whether the last program was aborted by a stop request


class _StopRequested(Exception):
  """Raised inside the host callback to abort the program on a stop request."""


def _epoch_report(epochs_done, train_loss) -> np.int32:
  """The host side of an epoch's report: progress; aborts on a stop request."""
  global _aborted
  if _live is not None:
    _live.report(int(epochs_done), {"train_loss": float(np.mean(train_loss))})
  if jax.process_count() == 1 and preemption.requested_signal() is not None:
    _aborted = True
    raise _StopRequested()  # XLA ends the program; nothing of it is needed
  return np.int32(0)


@functools.partial(jax.jit, static_argnames=("kind", "epochs", "batch_size"))
def _train_all(init_params, shuffle_keys, hyper, features, labels, class_embeddings,
               train_columns, eval_data, *, kind, epochs, batch_size):
  """Trains G × S classifiers: the epoch loop around the seed axes.

  init_params and shuffle_keys carry leading axes (G, S), features and hyper
  (G,): each generator's own pooled training set, optimiser settings and S
  classifier seeds; labels, class embeddings and evaluation sets are shared,
  as the pooled sets differ only in the synthetic features' values. The G axis is
  `seed_axis.over_seeds` (G = 1 is traced without it), the S axis a vmap.
  Every epoch ends with a report to the host (`_epoch_report`).

  Returns:
    (params (G, S, ...), curves {name: (G, S, epochs)}).
  """
  num_sets = features.shape[0]
  steps_per_epoch = max(1, -(-features.shape[1] // batch_size))
  epoch_of_seeds = jax.vmap(
      functools.partial(_epoch_of_one_classifier, labels=labels,
                        class_embeddings=class_embeddings, train_columns=train_columns,
                        eval_data=eval_data, kind=kind, batch_size=batch_size),
      in_axes=(0, 0, None, None, None))
  epoch_of_all = seed_axis.over_seeds(epoch_of_seeds, num_sets, (0, 0, 0, None, 0))

  def epoch(carry, epoch_index):
    carry, record = epoch_of_all(carry, shuffle_keys, features, epoch_index, hyper)
    io_callback(_epoch_report, jax.ShapeDtypeStruct((), jnp.int32), epoch_index + 1,
                record["train_loss"], ordered=True)
    return carry, record

  opt_states = seed_axis.over_seeds(
      lambda params, h: jax.vmap(_optimizer(h, steps_per_epoch).init)(params),
      num_sets, (0, 0))(init_params, hyper)
  (params, _), curves = lax.scan(epoch, (init_params, opt_states), jnp.arange(epochs))
  return params, {name: jnp.moveaxis(values, 0, -1) for name, values in curves.items()}


# --------------------------------------------------------------------------
# Entry points.


def train_final_classifiers(seed_keys, train_features, train_labels, class_embeddings,
                            eval_sets, spec: Union[EvalSpec, Sequence[EvalSpec]], *,
                            train_classes=None,
                            eval_chunk_size: int = 4096, calibration_gamma=None,
                            live: Optional[progress.LiveProgress] = None
                            ) -> List[FinalClassifierResult]:
  """Trains S final classifiers on each of G pooled training sets, all at once.

  Classifier seed key k is split into (init_key, shuffle_key) =
  jax.random.split(k); the classifier is initialised with init_key and epoch
  e is shuffled with jax.random.fold_in(shuffle_key, e). So a classifier's
  result does not depend on which others run beside it (to float tolerance:
  vmapped products may round differently in the last bits).

  Args:
    seed_keys: (G, S) PRNG keys, set g's S classifier seeds in row g.
    train_features: (G, N, D) float features, one pooled training set (real
      seen + synthetic) per generator.
    train_labels: (N,) int global class ids (rows of class_embeddings),
      shared by the G sets.
    class_embeddings: (C, K) embeddings of ALL classes; logits run over them.
    eval_sets: a `scoring.EvalSets`, a `ZSLDataset` (its test_unseen /
      test_seen sets), or None to train without measuring.
    spec: the final classifiers' settings: one `EvalSpec` for every set, or
      one per set, differing only in `specs.EVAL_TRACED_FIELDS` (the
      optimiser's settings, traced: G settings train as one program).
    train_classes: optional global ids; when given, the training loss only
      sees these logit columns (the reference's seen-only real baseline):
      the softmax and the ranking losses run over these classes only.
      Evaluation always scores all classes.
    eval_chunk_size: the most evaluation rows scored at once.
    calibration_gamma: optional calibrated-stacking constant (a float, or
      one per classifier seed) chosen elsewhere, e.g. on a validation split;
      the results then also hold u, s, H at it (`scoring.CALIBRATION_NAMES`).
    live: optional reporter of the epochs (`progress.LiveProgress`, unit
      "epoch"), told after every epoch from inside the program.

  Returns:
    G `FinalClassifierResult`s with S seeds each, in set order.

  Raises:
    DataError: for inconsistent arrays.
    preemption.Interrupted: when a stop was requested during the training
      (the program is aborted after the current epoch; nothing is kept).
  """
  shape = tuple(jnp.shape(train_features))
  key_shape = tuple(jnp.shape(seed_keys))
  if not jax.dtypes.issubdtype(jnp.asarray(seed_keys).dtype, jax.dtypes.prng_key):
    key_shape = key_shape[:-1]  # raw uint32 keys (jax.random.PRNGKey): the last axis is the key
  if len(shape) != 3 or len(key_shape) != 2 or key_shape[0] != shape[0]:
    raise DataError(scoring.INPUT, "train_features",
                    "a (G, N, D) float array and (G, S) seed keys",
                    f"features of shape {shape}, keys of shape {key_shape}")
  num_sets, num_examples, feature_dim = shape
  per_set = specs.eval_specs_per_set(spec, num_sets)
  spec, hyper = per_set[0], _traced_settings(per_set)
  gammas = scoring.calibration_gammas(calibration_gamma, key_shape[1])
  scoring.check_features(class_embeddings, "class_embeddings")
  num_classes, embedding_dim = jnp.shape(class_embeddings)
  labels, columns = _training_labels(train_labels, num_examples, num_classes, train_classes)
  eval_data = scoring.prepare_eval_data(eval_sets, feature_dim, num_classes, eval_chunk_size)
  # Initialised set by set: the very arrays a one-set call makes.
  inits = [_initial_classifiers(spec.classifier, seed_keys[g], feature_dim, embedding_dim,
                                num_classes) for g in range(num_sets)]
  class_embeddings = jnp.asarray(class_embeddings, jnp.float32)
  global _aborted, _live
  _aborted, _live = False, live
  try:
    params, curves = preemption.interruptible_call(lambda: jax.device_get(_train_all(
        seed_axis.stack([i[0] for i in inits]), jnp.stack([i[1] for i in inits]),
        hyper, jnp.asarray(train_features, jnp.float32), jnp.asarray(labels),
        class_embeddings, columns, eval_data, kind=spec.classifier, epochs=spec.epochs,
        batch_size=spec.batch_size)))
  except Exception:  # pylint: disable=broad-except
    if _aborted:  # XLA reports the callback's exception as its own error
      raise preemption.Interrupted(preemption.requested_signal(),
                                   "during the final classifiers' training") from None
    raise
  finally:
    _live = None
  split = eval_sets.split if isinstance(eval_sets, (scoring.EvalSets, ZSLDataset)) else None
  return [
      _final_result(seed_axis.unstack(params, g), seed_axis.unstack(curves, g),
                    class_embeddings, eval_data, spec.classifier, gammas, split)
      for g in range(num_sets)
  ]


def train_final_classifier(key, train_features, train_labels, class_embeddings, eval_sets,
                           spec: EvalSpec, **kwargs) -> FinalClassifierResult:
  """`train_final_classifiers` for one training set and `spec.num_classifier_seeds` seeds.

  Args:
    key: PRNG key; the seeds' keys are jax.random.split(key, num_seeds).
    train_features: (N, D) float features (real seen + synthetic).
    train_labels: (N,) int global class ids.
    class_embeddings: (C, K) embeddings of all classes.
    eval_sets: as for `train_final_classifiers`.
    spec: the final classifier's settings.
    **kwargs: train_classes, eval_chunk_size, calibration_gamma.

  Returns:
    The `FinalClassifierResult`; `.last` is the last epoch.
  """
  seed_keys = jax.random.split(key, spec.num_classifier_seeds)[None]
  return train_final_classifiers(seed_keys, jnp.asarray(train_features)[None], train_labels,
                                 class_embeddings, eval_sets, spec, **kwargs)[0]


def _training_labels(train_labels, num_examples, num_classes, train_classes):
  """(labels as indices of the trained logit columns, those columns or None)."""
  labels = scoring.as_int_array(train_labels, "train_labels")
  if labels.shape[0] != num_examples:
    raise DataError(scoring.INPUT, "train_labels", f"{num_examples} labels", f"{labels.shape[0]}")
  if num_examples == 0:
    raise DataError(scoring.INPUT, "train_features", "at least one example", "none")
  scoring.check_ids(labels, "train_labels", num_classes)
  if train_classes is None:
    return labels, None
  columns = scoring.as_int_array(train_classes, "train_classes")
  scoring.check_ids(columns, "train_classes", num_classes)
  local = np.full(num_classes, -1, np.int32)
  local[columns] = np.arange(columns.size, dtype=np.int32)
  labels = local[labels]
  if (labels < 0).any():
    raise DataError(scoring.INPUT, "train_labels", "ids among train_classes",
                    "labels of other classes")
  return labels, jnp.asarray(columns)


def _initial_classifiers(kind, seed_keys, feature_dim, embedding_dim, num_classes):
  """(initial parameters, shuffle keys), stacked over the seeds of seed_keys."""
  init_fn, _ = classifiers.get_classifier(model_kind(kind))
  init_keys, shuffle_keys = jax.vmap(jax.random.split, out_axes=1)(seed_keys)
  init_params = jax.vmap(lambda k: init_fn(
      k, feature_dim=feature_dim, embedding_dim=embedding_dim,
      num_classes=num_classes))(init_keys)
  return init_params, shuffle_keys


def _traced_settings(per_set: Sequence[EvalSpec]) -> Dict[str, np.ndarray]:
  """{name: (G,) float32} of `specs.EVAL_TRACED_FIELDS`, one value per set.

  Traced, not static: sets whose settings differ share the compiled program.
  """
  return {name: np.array([getattr(s, name) for s in per_set], np.float32)
          for name in specs.EVAL_TRACED_FIELDS}


def _final_result(params, curves, class_embeddings, eval_data, kind, gammas,
                  split) -> FinalClassifierResult:
  """The `FinalClassifierResult` of trained params and their (S, epochs) curves."""
  curves = {name: np.asarray(values) for name, values in curves.items()}
  last = {name: values[:, -1] for name, values in curves.items()}
  seen_unseen_curves = None
  if eval_data is not None:
    calibration, seen_unseen_curves = scoring.calibration(
        params, class_embeddings, eval_data, model_kind(kind), gammas)
    last.update(calibration)
  return FinalClassifierResult(last=last, curves=curves, params=params, split=split,
                               seen_unseen_curves=seen_unseen_curves)


