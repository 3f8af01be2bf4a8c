"""A linear compatibility baseline trained on seen classes only.

It measures how hard a dataset is: the bilinear score f(x, a_c) = (x W + b) a_c
(the reference code's compatibility classifier) is
trained with softmax cross-entropy over the seen classes (full-batch AdamW,
small decoupled weight decay) and evaluated with the GBU protocol. The
synthetic generator's difficulty is calibrated against it
(docs/synthetic_data.md). Nothing here generates features, so the baseline
is as good a yardstick on real data as on synthetic data.

Metrics are those of `gmn_jax.metrics`, the ones every GMN run reports:
per-class mean top-1 accuracies in percent, ZSL T1 (test_unseen, argmax over
unseen classes), GZSL u (test_unseen, argmax over all classes, averaged over
the unseen classes), GZSL s (test_seen, argmax over all classes, averaged
over the seen classes) and H = 2us / (u + s).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gmn_jax import metrics
from gmn_jax.data.dataset import ZSLDataset

# Fixed once, before calibrating the generator, so that the calibration has a
# fixed yardstick: enough full-batch steps to fit the seen training set.
DEFAULT_STEPS = 300
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_WEIGHT_DECAY = 1e-4


class BaselineResult(NamedTuple):
  """GBU metrics of one trained baseline, in percent.

  Attributes:
    zsl_t1: ZSL per-class mean top-1 accuracy on test_unseen.
    gzsl_unseen: GZSL u.
    gzsl_seen: GZSL s.
    gzsl_h: harmonic mean of u and s.
    train_accuracy: per-class mean accuracy on the training set (over seen
      classes), to tell underfitting from a hard test set.
  """

  zsl_t1: float
  gzsl_unseen: float
  gzsl_seen: float
  gzsl_h: float
  train_accuracy: float


def compatibility_scores(features, weights, bias, embeddings):
  """(x W + b) a_c for every row x of `features` and row a_c of `embeddings`.

  The product is taken in the cheaper order (through K or through C).

  Args:
    features: (N, D).
    weights: (D, K).
    bias: (K,).
    embeddings: (C, K).

  Returns:
    (N, C) scores.
  """
  if embeddings.shape[1] <= embeddings.shape[0]:
    return (features @ weights + bias) @ embeddings.T
  return features @ (weights @ embeddings.T) + embeddings @ bias


class BilinearParams(NamedTuple):
  """Parameters of the compatibility (x W + b) a_c.

  Attributes:
    weights: (D, K) W.
    bias: (K,) b.
  """

  weights: np.ndarray
  bias: np.ndarray


@functools.partial(jax.jit, static_argnames=("steps", "learning_rate", "weight_decay"))
def _fit(features, labels, embeddings, *, steps, learning_rate, weight_decay):
  optimizer = optax.adamw(learning_rate, weight_decay=weight_decay)
  params = BilinearParams(jnp.zeros((features.shape[1], embeddings.shape[1]), jnp.float32),
                          jnp.zeros((embeddings.shape[1],), jnp.float32))

  def loss_fn(p):
    logits = compatibility_scores(features, p.weights, p.bias, embeddings)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  def step(carry, _):
    p, opt_state = carry
    updates, opt_state = optimizer.update(jax.grad(loss_fn)(p), opt_state, p)
    return (optax.apply_updates(p, updates), opt_state), None

  (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), None, length=steps)
  return params


def train_bilinear(features: np.ndarray,
                   labels: np.ndarray,
                   class_embeddings: np.ndarray,
                   *,
                   steps: int = DEFAULT_STEPS,
                   learning_rate: float = DEFAULT_LEARNING_RATE,
                   weight_decay: float = DEFAULT_WEIGHT_DECAY) -> BilinearParams:
  """Fits (W, b) by full-batch AdamW on softmax cross-entropy.

  Args:
    features: (N, D) training features.
    labels: (N,) indices into the rows of `class_embeddings` (0..C-1).
    class_embeddings: (C, K) embeddings of the training classes.
    steps: optimisation steps (each over the whole training set).
    learning_rate: AdamW step size.
    weight_decay: AdamW decoupled weight decay (applied to W and b).

  Returns:
    The fitted float32 BilinearParams, trained from zero (no seed needed).
  """
  params = _fit(jnp.asarray(features, jnp.float32), jnp.asarray(labels, jnp.int32),
                jnp.asarray(class_embeddings, jnp.float32), steps=int(steps),
                learning_rate=float(learning_rate), weight_decay=float(weight_decay))
  return BilinearParams(*(np.asarray(p) for p in params))


def predict(params: BilinearParams, features: np.ndarray, class_embeddings: np.ndarray,
            classes: np.ndarray) -> np.ndarray:
  """The highest-scoring class among `classes` for every feature row.

  Args:
    params: the bilinear parameters.
    features: (N, D).
    class_embeddings: (C, K) embeddings of all classes.
    classes: the candidate global class ids.

  Returns:
    (N,) predicted global class ids.
  """
  classes = np.asarray(classes)
  scores = compatibility_scores(jnp.asarray(features, jnp.float32), jnp.asarray(params.weights),
                                jnp.asarray(params.bias),
                                jnp.asarray(np.asarray(class_embeddings)[classes], jnp.float32))
  return classes[np.asarray(jnp.argmax(scores, axis=1))]


def evaluate_bilinear(params: BilinearParams, dataset: ZSLDataset) -> BaselineResult:
  """GBU metrics of a bilinear model on a dataset's test splits.

  Args:
    params: the bilinear parameters.
    dataset: the dataset (its class_embeddings are used as they are).

  Returns:
    The BaselineResult.
  """
  embeddings = np.asarray(dataset.class_embeddings)
  all_classes = np.arange(dataset.num_classes)
  gbu = metrics.gzsl_metrics_from_predictions(
      predict(params, dataset.test_unseen_features, embeddings, dataset.unseen_classes),
      predict(params, dataset.test_unseen_features, embeddings, all_classes),
      dataset.test_unseen_labels,
      predict(params, dataset.test_seen_features, embeddings, all_classes),
      dataset.test_seen_labels, dataset.seen_classes, dataset.unseen_classes)
  train = metrics.per_class_accuracy(
      predict(params, dataset.train_features, embeddings, dataset.seen_classes),
      dataset.train_labels, dataset.seen_classes)
  return BaselineResult(zsl_t1=float(gbu["zsl_t1"]), gzsl_unseen=float(gbu["gzsl_u"]),
                        gzsl_seen=float(gbu["gzsl_s"]), gzsl_h=float(gbu["gzsl_h"]),
                        train_accuracy=float(train))


def run_baseline(dataset: ZSLDataset,
                 *,
                 steps: int = DEFAULT_STEPS,
                 learning_rate: float = DEFAULT_LEARNING_RATE,
                 weight_decay: float = DEFAULT_WEIGHT_DECAY) -> BaselineResult:
  """Trains the bilinear baseline on the seen training set and evaluates it.

  Args:
    dataset: the dataset; only train_features/train_labels and the seen
      classes' embeddings are used for training.
    steps: optimisation steps.
    learning_rate: AdamW step size.
    weight_decay: AdamW decoupled weight decay.

  Returns:
    The BaselineResult.
  """
  seen = np.asarray(dataset.seen_classes)
  local_labels = np.searchsorted(seen, dataset.train_labels)
  params = train_bilinear(dataset.train_features, local_labels,
                          np.asarray(dataset.class_embeddings)[seen], steps=steps,
                          learning_rate=learning_rate, weight_decay=weight_decay)
  return evaluate_bilinear(params, dataset)
