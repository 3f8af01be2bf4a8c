r"""Dataset condensation by gradient matching on scikit-learn's digits.

  python -m experiments.examples.condensation [--ipc=1,5,10] [--steps=500] \
      [--seed=0] [--num_eval=10] [--num_sets=3] [--init=real|noise] \
      [--out_dir=DIR]

A second use of `gmn_jax.losses.gradient_matching`, outside GMN: learn `ipc`
synthetic 8x8 images per digit such that, for randomly drawn classifiers θ,
the gradient of the classification loss on a class's synthetic images points
where the gradient on that class's real images points (the idea of Zhao,
Mopuri and Bilen, "Dataset Condensation with Gradient Matching", ICLR 2021).
A classifier trained on the few synthetic images alone should then get
closer to one trained on all the real data than a classifier trained on the
same number of randomly chosen real images does.

The algorithm, all inside one jitted `lax.scan` (`default_config` gives the
schedule per ipc):

  for each outer step:
    draw M classifiers θ_1..θ_M from their initialisation
    repeat match_steps times:
      L = Σ_c gradient_matching(loss_fn, θ, real batch of class c,
                                synthetic images of class c)
      update the synthetic images with Adam on ∇L
      train every θ_m for theta_steps SGD steps on the synthetic set

Evaluation trains fresh classifiers (an MLP of the same shape) from several
seeds on (a) the condensed sets, (b) random real subsets with the same number
of images per class, one per draw, (c) the per-class k-means centroids (a
strong non-learned baseline of the same size; the class means at ipc=1) and
(d) all training images, and reports their test accuracy. The split is a
fixed stratified 70/30 split of the 1,797 images (seed 0) whatever --seed is.
"""

import dataclasses
import functools
import os
import time
from typing import Any, NamedTuple, Sequence

from absl import app
from absl import flags
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import optax
import sklearn.cluster
import sklearn.datasets
import sklearn.model_selection

from experiments import cli
from gmn_jax.errors import ConfigError
from gmn_jax.errors import GMNError
from gmn_jax.losses import cross_entropy
from gmn_jax.losses import gradient_matching

NUM_CLASSES = 10
IMAGE_SIDE = 8
PIXELS = IMAGE_SIDE * IMAGE_SIDE
SPLIT_SEED = 0
TEST_FRACTION = 0.3
INITIALIZATIONS = ("real", "noise")


# --------------------------------------------------------------------------
# Data.


class DigitsSplit(NamedTuple):
  """The fixed train/test split, pixels standardised with train statistics.

  Attributes:
    train_x: (N_train, 64) float32 standardised pixels.
    train_y: (N_train,) int32 digit labels.
    test_x: (N_test, 64) float32.
    test_y: (N_test,) int32.
    pixel_mean: the scalar subtracted from raw [0, 1] pixels.
    pixel_std: the scalar they were then divided by.
  """

  train_x: np.ndarray
  train_y: np.ndarray
  test_x: np.ndarray
  test_y: np.ndarray
  pixel_mean: float
  pixel_std: float


def load_digits_split(test_fraction=TEST_FRACTION, seed=SPLIT_SEED) -> DigitsSplit:
  """Loads scikit-learn's digits and splits them, stratified by class.

  Pixels are scaled from 0..16 to [0, 1], then standardised with one mean and
  one standard deviation over all training pixels (a per-pixel statistic
  would divide by zero on the always-blank border pixels).

  Args:
    test_fraction: the share of each class held out for testing.
    seed: the split's random state.

  Returns:
    A `DigitsSplit`.
  """
  images, labels = sklearn.datasets.load_digits(return_X_y=True)
  images = images.astype(np.float32) / 16.0
  train_x, test_x, train_y, test_y = sklearn.model_selection.train_test_split(
      images, labels.astype(np.int32), test_size=test_fraction, stratify=labels,
      random_state=seed)
  mean, std = float(train_x.mean()), float(train_x.std())
  return DigitsSplit((train_x - mean) / std, train_y, (test_x - mean) / std, test_y, mean, std)


def class_pools(x, y, num_classes=NUM_CLASSES):
  """Groups examples by class into one zero-padded array, for on-device sampling.

  Args:
    x: (N, D) examples.
    y: (N,) int labels in [0, num_classes).
    num_classes: C.

  Returns:
    (pools, counts): pools (C, N_max, D) with class c's examples first in
    row c, counts (C,) int32 the number of real rows of each class.

  Raises:
    ConfigError: when a class has no example.
  """
  x, y = np.asarray(x), np.asarray(y)
  counts = np.bincount(y, minlength=num_classes).astype(np.int32)
  if counts.size != num_classes or not counts.all():
    raise ConfigError(f"condensation training labels: expected every class 0..{num_classes - 1} "
                      f"at least once, found counts {counts.tolist()}")
  pools = np.zeros((num_classes, counts.max(), x.shape[1]), np.float32)
  for c in range(num_classes):
    pools[c, :counts[c]] = x[y == c]
  return pools, counts


def sample_class_batches(key, pools, counts, batch_size):
  """Draws one batch per class, uniformly with replacement from its pool.

  Args:
    key: PRNG key.
    pools: (C, N_max, D) from `class_pools`.
    counts: (C,) the valid rows of each pool.
    batch_size: B, examples per class (static).

  Returns:
    (C, B, D) real examples; row c holds class c only.
  """
  uniform = jax.random.uniform(key, (pools.shape[0], batch_size))
  index = jnp.minimum((uniform * counts[:, None]).astype(jnp.int32), counts[:, None] - 1)
  return jnp.take_along_axis(pools, index[..., None], axis=1)


# --------------------------------------------------------------------------
# The classifier: a plain-pytree MLP (hidden_dims=() makes it linear softmax).


def init_mlp(key, hidden_dims=(128,), in_dim=PIXELS, num_classes=NUM_CLASSES):
  """He-normal weights, zero biases.

  Args:
    key: PRNG key.
    hidden_dims: widths of the ReLU hidden layers; () gives a linear softmax
      classifier.
    in_dim: input width D.
    num_classes: output width C.

  Returns:
    A list of {"kernel": (in, out), "bias": (out,)} dicts, input layer first.
  """
  widths = (in_dim, *hidden_dims, num_classes)
  keys = jax.random.split(key, len(widths) - 1)
  return [{"kernel": jax.random.normal(k, (n_in, n_out)) * jnp.sqrt(2.0 / n_in),
           "bias": jnp.zeros((n_out,))}
          for k, n_in, n_out in zip(keys, widths[:-1], widths[1:])]


def apply_mlp(params, x):
  """Logits of the MLP.

  Args:
    params: from `init_mlp`.
    x: (B, D) inputs.

  Returns:
    (B, C) logits.
  """
  for layer in params[:-1]:
    x = jax.nn.relu(x @ layer["kernel"] + layer["bias"])
  return x @ params[-1]["kernel"] + params[-1]["bias"]


def classification_loss(params, batch):
  """The loss whose gradients are matched: mean cross-entropy over 10 digits.

  Args:
    params: from `init_mlp`.
    batch: (x (B, D), y (B,) int labels).

  Returns:
    The scalar mean cross-entropy.
  """
  x, y = batch
  return cross_entropy(apply_mlp(params, x), y)


def accuracy(params, x, y):
  """Top-1 accuracy of one classifier.

  Args:
    params: from `init_mlp` (vmap this function for stacked classifiers).
    x: (N, D) inputs.
    y: (N,) int labels.

  Returns:
    The scalar share of argmax predictions equal to y.
  """
  return jnp.mean(jnp.argmax(apply_mlp(params, x), axis=-1) == y)


# --------------------------------------------------------------------------
# Condensation.


@dataclasses.dataclass(frozen=True)
class CondensationConfig:
  """Hyperparameters of `condense`.

  Attributes:
    ipc: synthetic images per class.
    outer_steps: number of fresh draws of the M classifiers.
    match_steps: image updates per draw; the classifiers are trained on the
      synthetic set between them.
    theta_steps: SGD steps on the synthetic set per image update.
    num_thetas: M, classifiers drawn (and averaged over) per outer step.
    real_batch: real images per class per image update.
    image_lr: Adam learning rate of the synthetic images.
    theta_lr: SGD learning rate of the classifiers between image updates.
    hidden_dims: the classifier's hidden widths (() = linear softmax).
    granularity: `gradient_matching`'s cosine granularity.
    init: "real" (random real images of the class) or "noise" (N(0, 1)).
  """

  ipc: int = 10
  outer_steps: int = 50
  match_steps: int = 10
  theta_steps: int = 20
  num_thetas: int = 4
  real_batch: int = 64
  image_lr: float = 0.05
  theta_lr: float = 0.05
  hidden_dims: tuple = (128,)
  granularity: str = "row"
  init: str = "real"

  def validate(self) -> "CondensationConfig":
    """Checks every field.

    Returns:
      self, so that calls chain.

    Raises:
      ConfigError: naming the first bad field, its expected and found value.
    """
    for name in ("ipc", "outer_steps", "match_steps", "num_thetas", "real_batch"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"condensation {name}: expected a positive integer, found {value!r}")
    if not isinstance(self.theta_steps, (int, np.integer)) or self.theta_steps < 0:
      raise ConfigError("condensation theta_steps: expected a non-negative integer, "
                        f"found {self.theta_steps!r}")
    for name in ("image_lr", "theta_lr"):
      value = getattr(self, name)
      if not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"condensation {name}: expected a positive float, found {value!r}")
    if any(not isinstance(w, (int, np.integer)) or w < 1 for w in self.hidden_dims):
      raise ConfigError("condensation hidden_dims: expected positive integer widths, "
                        f"found {self.hidden_dims!r}")
    if self.init not in INITIALIZATIONS:
      raise ConfigError(
          f"condensation init: expected one of {INITIALIZATIONS}, found {self.init!r}")
    return self


def default_config(ipc, image_updates=500, **overrides) -> CondensationConfig:
  """The schedule used for the measured table, by images per class.

  At ipc=1 every image update gets fresh classifiers (match_steps=1,
  theta_steps=0): training θ on one image per class fits it within a few
  steps, after which its synthetic gradient says little, and runs with
  training were measured to be less stable (test accuracy 81-91% over six
  seeds instead of 89-90%). Above ipc=1 the classifiers walk a trajectory:
  10 image updates per draw with 20 SGD steps on the synthetic set after
  each, which gained 1-2 points over fresh draws at ipc=5 and 10.

  Args:
    ipc: images per class.
    image_updates: total synthetic-image updates (outer_steps * match_steps,
      rounded down to whole outer steps, at least one).
    **overrides: any other `CondensationConfig` field.

  Returns:
    The validated config.

  Raises:
    ConfigError: for a bad field.
  """
  if not isinstance(image_updates, (int, np.integer)) or image_updates < 1:
    raise ConfigError("condensation image_updates: expected a positive integer, "
                      f"found {image_updates!r}")
  match_steps, theta_steps = (1, 0) if ipc == 1 else (10, 20)
  fields = dict(ipc=ipc, match_steps=match_steps, theta_steps=theta_steps,
                outer_steps=max(1, image_updates // match_steps))
  fields.update(overrides)
  return CondensationConfig(**fields).validate()


def condensation_loss(thetas, real_images, synthetic_images, granularity="row"):
  """Σ_c gradient_matching between class c's real and synthetic images.

  Args:
    thetas: `init_mlp` parameters with a leading axis of M samples.
    real_images: (C, B, D), row c a batch of class c.
    synthetic_images: (C, ipc, D), row c the synthetic images of class c.
    granularity: passed to `gradient_matching`.

  Returns:
    The scalar sum over the C classes of the mean over θ of the cosine
    distance between the real and the synthetic gradient.
  """

  def one_class(real, synthetic, label):
    real_batch = (real, jnp.full(real.shape[:1], label))
    synthetic_batch = (synthetic, jnp.full(synthetic.shape[:1], label))
    return gradient_matching(classification_loss, thetas, real_batch, synthetic_batch,
                             granularity=granularity)

  labels = jnp.arange(real_images.shape[0])
  return jnp.sum(jax.vmap(one_class)(real_images, synthetic_images, labels))


def _check_ipc(ipc, counts):
  if ipc > np.min(counts):
    raise ConfigError(f"condensation ipc: expected at most {np.min(counts)} (the smallest class), "
                      f"found {ipc}")


def initial_images(key, pools, counts, ipc, init="real"):
  """The synthetic images before condensation.

  Args:
    key: PRNG key.
    pools: (C, N_max, D) from `class_pools`.
    counts: (C,) valid rows per class (each at least ipc for init="real").
    ipc: images per class.
    init: "real" (distinct random real images of the class) or "noise".

  Returns:
    (C, ipc, D) float32 images.

  Raises:
    ConfigError: for an unknown init, or a class with fewer than ipc images.
  """
  if init == "noise":
    return jax.random.normal(key, (pools.shape[0], ipc, pools.shape[2]))
  if init != "real":
    raise ConfigError(f"condensation init: expected one of {INITIALIZATIONS}, found {init!r}")
  counts = np.asarray(counts)
  _check_ipc(ipc, counts)
  # The first ipc rows of a random order of each class's valid rows: one
  # program for all classes, whatever their sizes.
  scores = jax.random.uniform(key, pools.shape[:2])
  scores = jnp.where(jnp.arange(pools.shape[1]) < jnp.asarray(counts)[:, None], scores, 2.0)
  index = jnp.argsort(scores, axis=1)[:, :ipc]
  return jnp.take_along_axis(jnp.asarray(pools), index[..., None], axis=1)


def _sgd_on(params, x, y, steps, lr):
  """`steps` full-batch plain SGD steps of `classification_loss`."""
  grad_fn = jax.grad(classification_loss)

  def step(params, _):
    grads = grad_fn(params, (x, y))
    return jax.tree_util.tree_map(lambda p, g: p - lr * g, params, grads), None

  return lax.scan(step, params, None, length=steps)[0]


class CondensationResult(NamedTuple):
  """What `condense` returns.

  Attributes:
    images: (C * ipc, D) the condensed images, class-major.
    labels: (C * ipc,) int32 their labels.
    loss_history: (outer_steps,) the matching loss averaged over each outer
      step's image updates.
  """

  images: jnp.ndarray
  labels: jnp.ndarray
  loss_history: jnp.ndarray


def condense(key, train_x, train_y, config: CondensationConfig,
             initial=None) -> CondensationResult:
  """Learns config.ipc synthetic images per class by gradient matching.

  Args:
    key: PRNG key.
    train_x: (N, D) real training examples.
    train_y: (N,) int labels, every class 0..C-1 present.
    config: the hyperparameters.
    initial: optional (C, ipc, D) starting images; by default they are drawn
      by `initial_images` as config.init says.

  Returns:
    A `CondensationResult`.

  Raises:
    ConfigError: for a bad config or a class with fewer than ipc images.
  """
  config.validate()
  pools, counts = class_pools(train_x, train_y)
  num_classes = pools.shape[0]
  k_init, k_run = jax.random.split(key)
  if initial is None:
    images = initial_images(k_init, pools, counts, config.ipc, config.init)
  else:
    images = jnp.asarray(initial, jnp.float32)
    expected = (num_classes, config.ipc, pools.shape[2])
    if images.shape != expected:
      raise ConfigError(f"condensation initial: expected images of shape {expected}, "
                        f"found {images.shape}")
  run = _condensation_program(config, num_classes)
  images, history = run(k_run, images, jnp.asarray(pools), jnp.asarray(counts))
  labels = jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), config.ipc)
  return CondensationResult(images.reshape(-1, images.shape[-1]), labels, history)


@functools.lru_cache(maxsize=8)
def _condensation_program(config, num_classes):
  """The jitted scan over outer steps for one config (cached: one compile each)."""
  optimizer = optax.adam(config.image_lr)
  synthetic_labels = jnp.repeat(jnp.arange(num_classes), config.ipc)
  loss_and_grad = jax.value_and_grad(condensation_loss, argnums=2)

  def init_thetas(key):
    return jax.vmap(lambda k: init_mlp(k, config.hidden_dims, num_classes=num_classes))(
        jax.random.split(key, config.num_thetas))

  def match_step(pools, counts, carry, key):
    images, opt_state, thetas = carry
    real = sample_class_batches(key, pools, counts, config.real_batch)
    loss, grads = loss_and_grad(thetas, real, images, config.granularity)
    updates, opt_state = optimizer.update(grads, opt_state, images)
    images = optax.apply_updates(images, updates)
    if config.theta_steps:
      flat = images.reshape(-1, images.shape[-1])
      thetas = jax.vmap(lambda t: _sgd_on(t, flat, synthetic_labels, config.theta_steps,
                                          config.theta_lr))(thetas)
    return (images, opt_state, thetas), loss

  def outer_step(pools, counts, carry, key):
    images, opt_state = carry
    k_theta, k_match = jax.random.split(key)
    (images, opt_state, _), losses = lax.scan(
        lambda c, k: match_step(pools, counts, c, k),
        (images, opt_state, init_thetas(k_theta)),
        jax.random.split(k_match, config.match_steps))
    return (images, opt_state), jnp.mean(losses)

  @jax.jit
  def run(key, images, pools, counts):
    (images, _), history = lax.scan(
        lambda c, k: outer_step(pools, counts, c, k), (images, optimizer.init(images)),
        jax.random.split(key, config.outer_steps))
    return images, history

  return run


# --------------------------------------------------------------------------
# Evaluation.


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """How the evaluation classifiers are trained.

  Attributes:
    steps: Adam steps.
    learning_rate: Adam learning rate.
    weight_decay: decoupled weight decay (AdamW).
    batch_size: minibatch size; sets no larger than it train full-batch.
    hidden_dims: the classifier's hidden widths.
  """

  steps: int = 300
  learning_rate: float = 1e-2
  weight_decay: float = 5e-4
  batch_size: int = 256
  hidden_dims: tuple = (128,)


def train_classifier(key, x, y, config: EvalConfig):
  """Trains one fresh classifier with AdamW.

  Args:
    key: PRNG key (initialisation and minibatch draws).
    x: (N, D) training inputs.
    y: (N,) int labels.
    config: the training schedule.

  Returns:
    The trained `init_mlp` parameters.
  """
  k_init, k_batches = jax.random.split(key)
  params = init_mlp(k_init, config.hidden_dims, x.shape[-1])
  optimizer = optax.adamw(config.learning_rate, weight_decay=config.weight_decay)
  grad_fn = jax.grad(classification_loss)
  full_batch = x.shape[0] <= config.batch_size

  def step(carry, key):
    params, opt_state = carry
    if full_batch:
      batch = (x, y)
    else:
      index = jax.random.randint(key, (config.batch_size,), 0, x.shape[0])
      batch = (x[index], y[index])
    updates, opt_state = optimizer.update(grad_fn(params, batch), opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  (params, _), _ = lax.scan(step, (params, optimizer.init(params)),
                            jax.random.split(k_batches, config.steps))
  return params


def random_real_subsets(key, train_y, ipc, num_draws, num_classes=NUM_CLASSES):
  """Indices of random class-balanced real subsets.

  Args:
    key: PRNG key.
    train_y: (N,) int labels.
    ipc: images per class in each subset.
    num_draws: how many independent subsets.
    num_classes: C.

  Returns:
    (num_draws, C * ipc) int indices into the training set, class-major;
    each row holds ipc distinct images of every class.
  """
  train_y = np.asarray(train_y)
  rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
  rows = []
  for _ in range(num_draws):
    rows.append(np.concatenate([rng.choice(np.flatnonzero(train_y == c), ipc, replace=False)
                                for c in range(num_classes)]))
  return np.stack(rows)


def class_kmeans_centroids(train_x, train_y, ipc, seed=0, num_classes=NUM_CLASSES):
  """A non-learned baseline of the same size: k-means centroids of each class.

  At ipc=1 these are the class mean images.

  Args:
    train_x: (N, D) training examples.
    train_y: (N,) int labels.
    ipc: centroids per class (at most the smallest class's size).
    seed: k-means' random state.
    num_classes: C.

  Returns:
    (x (C * ipc, D) float32, y (C * ipc,) int32), class-major.
  """
  train_x, train_y = np.asarray(train_x), np.asarray(train_y)
  centroids = [sklearn.cluster.KMeans(ipc, n_init=10, random_state=seed)
               .fit(train_x[train_y == c]).cluster_centers_ for c in range(num_classes)]
  return (np.concatenate(centroids).astype(np.float32),
          np.repeat(np.arange(num_classes, dtype=np.int32), ipc))


@functools.lru_cache(maxsize=8)
def _training_program(config):
  """`train_classifier` vmapped over (key, set) and jitted, cached per config."""
  return jax.jit(jax.vmap(lambda k, x, y: train_classifier(k, x, y, config)))


@jax.jit
def _stacked_accuracy(params, x, y):
  return jax.vmap(accuracy, in_axes=(0, None, None))(params, x, y)


def evaluate_sets(key, sets_x, sets_y, test_x, test_y, config: EvalConfig):
  """Test accuracy of classifiers trained on each of several training sets.

  Args:
    key: PRNG key.
    sets_x: (S, N, D) S training sets of the same size (one classifier each).
    sets_y: (S, N) their labels.
    test_x: (N_test, D).
    test_y: (N_test,).
    config: the training schedule.

  Returns:
    (S,) numpy test accuracies.
  """
  keys = jax.random.split(key, sets_x.shape[0])
  params = _training_program(config)(keys, jnp.asarray(sets_x), jnp.asarray(sets_y))
  return np.asarray(_stacked_accuracy(params, jnp.asarray(test_x), jnp.asarray(test_y)))


class Row(NamedTuple):
  """One line of the results table.

  Attributes:
    method: "full data", "random real", "k-means" or "condensed".
    ipc: images per class (None for the full data).
    accuracies: per-classifier test accuracies in [0, 1].
  """

  method: str
  ipc: Any
  accuracies: np.ndarray


def format_table(rows: Sequence[Row]) -> str:
  """Formats results as a fixed-width text table.

  Args:
    rows: the results.

  Returns:
    A header, a rule and one line per row: method, ipc, test accuracy in
    percent as mean ± std (population std over the row's classifiers) and
    the number of classifiers.
  """
  lines = [f"{'method':<12} {'ipc':>5} {'test accuracy (%)':>18} {'n':>4}", "-" * 42]
  for row in rows:
    acc = 100.0 * np.asarray(row.accuracies, np.float64)
    ipc = "all" if row.ipc is None else str(row.ipc)
    lines.append(f"{row.method:<12} {ipc:>5} {f'{acc.mean():.1f} ± {acc.std():.1f}':>18} "
                 f"{acc.size:>4}")
  return "\n".join(lines)


def run_comparison(key, data: DigitsSplit, ipcs, eval_config: EvalConfig,
                   make_config=default_config, num_eval=10, num_sets=3):
  """Condenses at each ipc and compares with random real subsets and full data.

  Every row has num_eval classifiers, so its std covers the same sources of
  variation: for "random real" num_eval independent subset draws with one
  classifier each; for "condensed" num_sets independent condensations (seeds)
  whose classifiers take turns (classifier i trains on set i mod num_sets,
  each from its own initialisation); for "full data" and "k-means" (the
  per-class k-means centroids, `class_kmeans_centroids`) num_eval seeds.

  Args:
    key: PRNG key.
    data: the split.
    ipcs: images-per-class values.
    eval_config: how evaluation classifiers are trained.
    make_config: `make_config(ipc) -> CondensationConfig` for each ipc.
    num_eval: classifiers per row.
    num_sets: independent condensed sets per ipc (at most num_eval).

  Returns:
    (rows, condensed) with rows a list of `Row` (full data first, then random
    real, k-means and condensed for each ipc) and condensed a dict ipc -> the
    `CondensationResult` of the first set.

  Raises:
    ConfigError: for num_sets outside [1, num_eval], an ipc above the
      smallest class's size or a bad config.
  """
  if not 1 <= num_sets <= num_eval:
    raise ConfigError(f"condensation num_sets: expected 1..num_eval={num_eval}, found {num_sets}")
  for ipc in ipcs:
    _check_ipc(ipc, np.bincount(data.train_y))
  k_full, k_ipcs = jax.random.split(key)
  full = evaluate_sets(k_full, np.broadcast_to(data.train_x, (num_eval, *data.train_x.shape)),
                       np.broadcast_to(data.train_y, (num_eval, data.train_y.size)),
                       data.test_x, data.test_y, eval_config)
  rows, condensed = [Row("full data", None, full)], {}
  for ipc, k_ipc in zip(ipcs, jax.random.split(k_ipcs, len(ipcs))):
    k_subsets, k_random_eval, k_kmeans, k_condense, k_condensed_eval = jax.random.split(k_ipc, 5)
    index = random_real_subsets(k_subsets, data.train_y, ipc, num_eval)
    rows.append(Row("random real", ipc, evaluate_sets(
        k_random_eval, data.train_x[index], data.train_y[index], data.test_x, data.test_y,
        eval_config)))
    centroids, centroid_labels = class_kmeans_centroids(data.train_x, data.train_y, ipc)
    rows.append(Row("k-means", ipc, evaluate_sets(
        k_kmeans, np.broadcast_to(centroids, (num_eval, *centroids.shape)),
        np.broadcast_to(centroid_labels, (num_eval, centroid_labels.size)), data.test_x,
        data.test_y, eval_config)))
    config = make_config(ipc)
    results = [condense(k, data.train_x, data.train_y, config)
               for k in jax.random.split(k_condense, num_sets)]
    condensed[ipc] = results[0]
    turns = np.arange(num_eval) % num_sets
    rows.append(Row("condensed", ipc, evaluate_sets(
        k_condensed_eval, jnp.stack([results[i].images for i in turns]),
        jnp.stack([results[i].labels for i in turns]), data.test_x, data.test_y, eval_config)))
  return rows, condensed


def save_image_grid(path, images, ipc, pixel_mean, pixel_std):
  """Writes the condensed images as a PNG grid, one row per class.

  Args:
    path: the PNG file to write.
    images: (C * ipc, 64) standardised images, class-major.
    ipc: images per class.
    pixel_mean: `DigitsSplit.pixel_mean`, to undo the standardisation.
    pixel_std: `DigitsSplit.pixel_std`.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  pixels = np.asarray(images) * pixel_std + pixel_mean
  num_classes = pixels.shape[0] // ipc
  fig, axes = plt.subplots(num_classes, ipc, figsize=(0.8 * ipc + 0.4, 0.8 * num_classes),
                           squeeze=False)
  for i, ax in enumerate(axes.ravel()):
    ax.imshow(pixels[i].reshape(IMAGE_SIDE, IMAGE_SIDE), cmap="gray_r", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])
  for c in range(num_classes):
    axes[c, 0].set_ylabel(str(c), rotation=0, labelpad=8)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


# --------------------------------------------------------------------------
# The binary.

_IPC = None
_STEPS = None
_SEED = None
_NUM_EVAL = None
_NUM_SETS = None
_INIT = None
_OUT_DIR = None


def define_flags() -> None:
  """Defines the command-line flags.

  Called only when the module runs as a program, so that importing it (as
  the tests do, several binaries into one process) defines no absl flags
  and two binaries' flags of the same name never collide.
  """
  global _IPC, _STEPS, _SEED, _NUM_EVAL, _NUM_SETS, _INIT, _OUT_DIR
  _IPC = flags.DEFINE_list("ipc", ["1", "5", "10"], "Synthetic images per class, comma-separated.")
  _STEPS = flags.DEFINE_integer("steps", 500, "Synthetic-image updates per condensation.")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of condensation and evaluation (not of the split).")
  _NUM_EVAL = flags.DEFINE_integer("num_eval", 10, "Evaluation classifiers per table row.")
  _NUM_SETS = flags.DEFINE_integer("num_sets", 3, "Independent condensed sets per ipc.")
  _INIT = flags.DEFINE_string("init", CondensationConfig.init,
                              "Starting images: real (random real images) | noise (N(0, 1)).")
  _OUT_DIR = flags.DEFINE_string("out_dir", None, "If set, write condensed_ipc{N}.png grids here.")


def _parse_ipcs(values):
  try:
    ipcs = [int(v) for v in values]
  except ValueError:
    ipcs = []
  if not ipcs or min(ipcs) < 1:
    raise ConfigError(f"--ipc: expected comma-separated positive integers, found {values!r}")
  return ipcs


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  start = time.time()
  try:
    ipcs = _parse_ipcs(_IPC.value)
    if _NUM_EVAL.value < 1:
      raise ConfigError(f"--num_eval: expected a positive integer, found {_NUM_EVAL.value}")
    if not 1 <= _NUM_SETS.value <= _NUM_EVAL.value:
      raise ConfigError(f"--num_sets: expected 1..--num_eval={_NUM_EVAL.value}, "
                        f"found {_NUM_SETS.value}")
    if _STEPS.value < 1:
      raise ConfigError(f"--steps: expected a positive integer, found {_STEPS.value}")
    make_config = functools.partial(default_config, image_updates=_STEPS.value,
                                    init=_INIT.value)
    for ipc in ipcs:
      make_config(ipc)  # bad flags fail here, before minutes of work
    data = load_digits_split()
    rows, condensed = run_comparison(jax.random.key(_SEED.value), data, ipcs, EvalConfig(),
                                     make_config, _NUM_EVAL.value, _NUM_SETS.value)
  except GMNError as error:
    cli.fail(error)
  print(format_table(rows))
  print(f"({time.time() - start:.0f} s on {jax.devices()[0].platform})")
  if _OUT_DIR.value:
    os.makedirs(_OUT_DIR.value, exist_ok=True)
    for ipc, result in condensed.items():
      save_image_grid(os.path.join(_OUT_DIR.value, f"condensed_ipc{ipc}.png"), result.images,
                      ipc, data.pixel_mean, data.pixel_std)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
