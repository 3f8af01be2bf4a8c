"""Losses: cross-entropy, WGAN-GP, L_CLS and the gradient matching loss.

All functions are pure and jittable. `gradient_matching` is the drop-in: it
needs nothing from the rest of the package except `ConfigError` and works with
any classifier loss written in JAX.

Batch means take an optional `mask`: (B,) bool (or non-negative float
weights) over the rows, for batches padded to a fixed size (the reference's
short epoch-remainder batches, `gmn_jax.reference_sampling`). A masked mean
is sum(w * value) / sum(w), so a padded batch gives the loss of its valid rows
alone; padded rows must still hold finite values (e.g. any real example).
`mask=None` runs exactly the unmasked code.
"""

import numbers

import jax
from jax import lax
import jax.numpy as jnp

from gmn_jax.errors import ConfigError

GRANULARITIES = ("row", "tensor", "global")


# --------------------------------------------------------------------------
# Masked means.


def masked_mean(values, mask=None):
  """The mean of `values` over the rows that `mask` keeps.

  Args:
    values: (B,) per-row values.
    mask: None (the plain mean), or (B,) bool or non-negative float weights
      w; the result is sum(w * values) / sum(w), and 0 when sum(w) is 0.
      Rows of weight 0 do not reach the value even when they are NaN.

  Returns:
    The scalar (weighted) mean.
  """
  if mask is None:
    return jnp.mean(values)
  weights = jnp.asarray(mask).astype(values.dtype)
  # A select rather than a product alone, so that padding never leaks NaN.
  weighted = jnp.where(weights != 0, values * weights, 0.0)
  total = jnp.sum(weights)
  return jnp.sum(weighted) / jnp.where(total != 0, total, 1.0)


# --------------------------------------------------------------------------
# Classification.


def cross_entropy(logits, labels, mask=None):
  """Mean softmax cross-entropy.

  Args:
    logits: (B, C) scores.
    labels: (B,) int class indices into the logits' last axis. An index
      outside [0, C) makes the result NaN rather than silently wrong.
    mask: optional (B,) bool or float row weights (see `masked_mean`); None
      is the plain mean.

  Returns:
    The scalar mean over the batch (its valid rows) of
    -log softmax(logits)[label].
  """
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(
      log_probs, labels[..., None].astype(jnp.int32), axis=-1, mode="fill",
      fill_value=jnp.nan)
  if mask is None:
    return -jnp.mean(picked)
  return -masked_mean(picked[..., 0], mask)


def classifier_loss(apply_fn, params, features, labels, class_embeddings, mask=None):
  """Mean cross-entropy of a classifier from `classifiers.get_classifier`.

  Args:
    apply_fn: `apply_fn(params, features, class_embeddings) -> (B, C)` logits.
    params: the classifier parameters.
    features: (B, D).
    labels: (B,) int indices into the rows of class_embeddings.
    class_embeddings: (C, K), the classes the logits run over.
    mask: optional (B,) row mask or weights (see `masked_mean`).

  Returns:
    The scalar mean cross-entropy.
  """
  return cross_entropy(apply_fn(params, features, class_embeddings), labels, mask)


def frozen_classifier_loss(apply_fn, classifier_params, features, labels, class_embeddings,
                           mask=None):
  """L_CLS: cross-entropy of a pretrained classifier that is not trained.

  The classifier parameters and class embeddings are held constant, so the
  gradient flows only into `features` (and whatever produced them).

  Args:
    apply_fn: `apply_fn(params, features, class_embeddings) -> (B, C)` logits.
    classifier_params: the frozen classifier's parameters.
    features: (B, D) generated features.
    labels: (B,) int indices into the rows of class_embeddings.
    class_embeddings: (C, K).
    mask: optional (B,) row mask or weights (see `masked_mean`).

  Returns:
    The scalar mean cross-entropy.
  """
  frozen = lax.stop_gradient(classifier_params)
  return classifier_loss(apply_fn, frozen, features, labels,
                         lax.stop_gradient(class_embeddings), mask)


# --------------------------------------------------------------------------
# WGAN-GP.


def safe_sqrt(squares):
  """sqrt with gradient 0 instead of inf/NaN at 0 (the double-where trick)."""
  positive = squares > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, squares, 1.0)), 0.0)


def _safe_norm(x, axis=None):
  """Euclidean norm whose gradient at the zero vector is 0 instead of NaN."""
  return safe_sqrt(jnp.sum(jnp.square(x), axis=axis))


def interpolation_weights(key, real) -> jax.Array:
  """The penalty's (B, 1) interpolation weights e_i ~ U[0, 1], one per row of `real`."""
  return jax.random.uniform(key, (real.shape[0], 1), real.dtype)


def gradient_penalty(critic_fn, critic_params, real, fake, embeddings, key, mask=None):
  """WGAN-GP penalty mean_i (||grad_x D(x_i, a_i)|| - 1)^2 on interpolates.

  x_i = e_i real_i + (1 - e_i) fake_i with one e_i ~ U[0, 1] per example; the
  condition a_i is held fixed (only the features are interpolated and
  differentiated). The critic has no cross-example terms, so the gradient of
  the summed scores gives every example's own input gradient. Whatever
  precision the critic computes in, the interpolates, their gradient (the
  transpose of the critic's input cast) and the penalty are float32.

  Args:
    critic_fn: `critic_fn(params, features, embeddings) -> (B,)` scores, e.g.
      a `models.Critic`'s apply.
    critic_params: the critic's parameters.
    real: (B, D) real features.
    fake: (B, D) generated features.
    embeddings: (B, K) class embeddings, or None for an unconditional critic.
    key: PRNG key for the interpolation weights (one per row of the padded
      batch, so row i's weight does not depend on the padding).
    mask: optional (B,) row mask or weights (see `masked_mean`).

  Returns:
    The scalar penalty (not yet multiplied by its weight).
  """
  weights = interpolation_weights(key, real)
  interpolates = weights * real + (1.0 - weights) * fake

  def total_score(features):
    return jnp.sum(critic_fn(critic_params, features, embeddings))

  input_grads = jax.grad(total_score)(interpolates)
  return masked_mean(jnp.square(_safe_norm(input_grads, axis=1) - 1.0), mask)


def critic_loss(critic_fn, critic_params, real, fake, embeddings, key, *, gp_weight=10.0,
                mask=None):
  """WGAN-GP critic loss mean D(fake) - mean D(real) + gp_weight * penalty.

  Args:
    critic_fn: `critic_fn(params, features, embeddings) -> (B,)` scores.
    critic_params: the critic's parameters.
    real: (B, D) real features.
    fake: (B, D) generated features (stop their gradient at the call site when
      only the critic is being trained).
    embeddings: (B, K) class embeddings of both batches, or None for an
      unconditional critic.
    key: PRNG key for the penalty's interpolation weights.
    gp_weight: lambda, the penalty weight.
    mask: optional (B,) row mask or weights shared by the real and fake
      batches (see `masked_mean`); every mean runs over the valid rows.

  Returns:
    (loss, aux) with aux = {"wasserstein": mean D(real) - mean D(fake),
    "gradient_penalty": the unweighted penalty}.
  """
  wasserstein = (masked_mean(critic_fn(critic_params, real, embeddings), mask)
                 - masked_mean(critic_fn(critic_params, fake, embeddings), mask))
  penalty = gradient_penalty(critic_fn, critic_params, real, fake, embeddings, key, mask)
  loss = -wasserstein + gp_weight * penalty
  return loss, {"wasserstein": wasserstein, "gradient_penalty": penalty}


def generator_adversarial_loss(critic_fn, critic_params, fake, embeddings, mask=None):
  """The generator's WGAN loss -mean D(fake).

  Args:
    critic_fn: `critic_fn(params, features, embeddings) -> (B,)` scores.
    critic_params: the critic's parameters.
    fake: (B, D) generated features.
    embeddings: (B, K) class embeddings, or None for an unconditional critic.
    mask: optional (B,) row mask or weights (see `masked_mean`).

  Returns:
    The scalar loss.
  """
  return -masked_mean(critic_fn(critic_params, fake, embeddings), mask)


# --------------------------------------------------------------------------
# Gradient matching.


def cosine_from_terms(dot, real_squares, fake_squares, eps):
  """dot / (max(|r|, eps) max(|s|, eps)), torch's cosine_similarity rule.

  The norms use a zero-safe square root, so the value and its gradient stay
  finite when a vector is exactly zero (a squared norm that rounding made
  slightly negative counts as zero).

  Args:
    dot: <r, s>, any shape.
    real_squares: |r|^2, broadcastable with dot.
    fake_squares: |s|^2, broadcastable with dot.
    eps: the positive lower bound on each norm.

  Returns:
    The cosine(s), shaped like dot.
  """
  real_norm = jnp.maximum(safe_sqrt(real_squares), eps)
  fake_norm = jnp.maximum(safe_sqrt(fake_squares), eps)
  return dot / (real_norm * fake_norm)


def leaf_cosine_terms(real, fake, axes):
  """The three sums a cosine needs: (<r, s>, |r|^2, |s|^2) over `axes`.

  Args:
    real: an array.
    fake: an array of the same shape.
    axes: the axes to sum over (None: all).

  Returns:
    (dot, real_squares, fake_squares), each shaped like the remaining axes.
  """
  return (jnp.sum(real * fake, axis=axes), jnp.sum(jnp.square(real), axis=axes),
          jnp.sum(jnp.square(fake), axis=axes))


def gradient_distance(real_grads, fake_grads, granularity, eps):
  """Cosine distance between two gradient pytrees of the same structure.

  Args:
    real_grads: the real gradient pytree.
    fake_grads: the fake gradient pytree.
    granularity: "row", "tensor" or "global" (see `gradient_matching`).
    eps: the cosine's lower bound on each norm.

  Returns:
    The scalar distance.
  """
  real_leaves = jax.tree_util.tree_leaves(real_grads)
  fake_leaves = jax.tree_util.tree_leaves(fake_grads)
  if granularity == "global":
    terms = [leaf_cosine_terms(r, s, None) for r, s in zip(real_leaves, fake_leaves)]
    dot, real_squares, fake_squares = (sum(parts) for parts in zip(*terms))
    return 1.0 - cosine_from_terms(dot, real_squares, fake_squares, eps)
  distance = 0.0
  for real, fake in zip(real_leaves, fake_leaves):
    if granularity == "row" and real.ndim >= 2:
      # One cosine per index of the last (output) axis, over all other axes.
      axes = tuple(range(real.ndim - 1))
      distance += 1.0 - jnp.mean(cosine_from_terms(*leaf_cosine_terms(real, fake, axes), eps))
    else:
      distance += 1.0 - cosine_from_terms(*leaf_cosine_terms(real, fake, None), eps)
  return distance


def check_gradient_matching_settings(granularity, eps):
  """Checks the granularity and eps of a gradient matching loss.

  Args:
    granularity: expected one of GRANULARITIES.
    eps: expected a positive real number.

  Raises:
    ConfigError: naming the bad setting, expected vs found.
  """
  if granularity not in GRANULARITIES:
    raise ConfigError(
        f"gradient_matching granularity: expected one of {GRANULARITIES}, found {granularity!r}")
  if not isinstance(eps, numbers.Real) or not eps > 0:
    raise ConfigError(f"gradient_matching eps: expected a positive float, found {eps!r}")


def sample_count(thetas):
  """M, the common leading axis of a pytree of sampled parameter sets.

  Args:
    thetas: a pytree whose array leaves all carry a leading axis of M.

  Returns:
    M.

  Raises:
    ConfigError: when there is no leaf or the leading axes differ.
  """
  leaves = jax.tree_util.tree_leaves(thetas)
  if not leaves:
    raise ConfigError("gradient_matching thetas: expected a pytree with at least one "
                      "array leaf, found none")
  leading = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None for leaf in leaves}
  if len(leading) != 1 or None in leading:
    raise ConfigError("gradient_matching thetas: expected every leaf to have the same "
                      "leading axis of M sampled parameter sets, found leading sizes "
                      f"{sorted(str(n) for n in leading)}")
  return leading.pop()


def gradient_matching(loss_fn, thetas, real_batch, fake_batch, *, granularity="row", eps=1e-8,
                      real_mask=None, fake_mask=None):
  """Gradient matching loss: E_theta[cosine distance(g_real(theta), g_fake(theta))].

  For each sampled classifier theta, g_r = grad_theta loss_fn(theta,
  real_batch) and g_s = grad_theta loss_fn(theta, fake_batch). g_r is a
  constant: its inputs and its value are cut from differentiation, so no
  second-order graph is built for it. The distance between g_r and g_s is

  * "tensor": sum over leaves P of 1 - cos(g_r[P], g_s[P]);
  * "row" (default): as "tensor", except that a leaf with two or more axes
    contributes 1 - mean_j cos(g_r[..., j], g_s[..., j]), one cosine per index
    j of its last axis taken over all other axes. For a Flax kernel (in, out)
    that is one cosine per output unit, the same as the reference code's
    per-row cosine of PyTorch (out, in) weights;
  * "global": 1 - cos(g_r, g_s) with all leaves flattened into one vector (the
    paper's formula).

  with cos(r, s) = <r, s> / (max(|r|, eps) * max(|s|, eps)), the rule of
  torch.nn.functional.cosine_similarity. A gradient that is exactly zero thus
  has cosine 0 with anything (distance 1 for its tensor or row), and the value
  and its gradient stay finite (norms use a zero-safe square root). eps must
  be positive; keep it far below the typical gradient norm.

  The loss is differentiable w.r.t. fake_batch and anything loss_fn closes
  over, works under jit, vmap and grad, and with batches sharded across
  devices (the batch sums inside loss_fn become all-reduces).

  Example (a generator, a bilinear classifier, M = 4 sampled theta):

  >>> import jax, jax.numpy as jnp
  >>> from gmn_jax import classifiers, models
  >>> from gmn_jax.losses import classifier_loss, gradient_matching
  >>> k_gen, k_clf, k_real, k_noise = jax.random.split(jax.random.key(0), 4)
  >>> attributes = jax.random.uniform(k_real, (3, 5))     # 3 classes, K = 5
  >>> module = models.Generator("latent_noise", embedding_dim=5, feature_dim=8,
  ...                           noise_dim=4, hidden_dims=(16,))
  >>> generator = models.init_generator(module, k_gen)
  >>> init_clf, apply_clf = classifiers.get_classifier("bilinear")
  >>> thetas = jax.vmap(lambda k: init_clf(
  ...     k, feature_dim=8, embedding_dim=5, num_classes=3))(
  ...     jax.random.split(k_clf, 4))
  >>> def loss_fn(theta, batch):
  ...   features, labels = batch
  ...   return classifier_loss(apply_clf, theta, features, labels, attributes)
  >>> labels = jnp.zeros(6, jnp.int32)                   # six of class 0
  >>> real = (jax.random.uniform(k_real, (6, 8)), labels)
  >>> def gm_of_generator(params):
  ...   fake = (models.generate(module, params, attributes[labels], k_noise),
  ...           labels)
  ...   return gradient_matching(loss_fn, thetas, real, fake)
  >>> value, grads = jax.jit(jax.value_and_grad(gm_of_generator))(generator)
  >>> bool(0.0 <= value <= 4.0), grads["mu"]["kernel"].shape
  (True, (5, 4))

  Args:
    loss_fn: `loss_fn(theta, batch) -> scalar`, any differentiable classifier
      loss.
    thetas: a parameter pytree for loss_fn whose leaves all carry a leading
      axis of M sampled parameter sets.
    real_batch: a pytree loss_fn accepts as its batch (e.g. (features, labels)).
    fake_batch: a pytree loss_fn accepts, typically generated features.
    granularity: "row", "tensor" or "global" (see above).
    eps: lower bound on each gradient norm in the cosine's denominator.
    real_mask: optional (n_r,) bool or float row weights of a padded real
      batch. When given, loss_fn is called on that batch as
      `loss_fn(theta, real_batch, real_mask)` and must return the masked mean
      of its per-example losses (e.g. `classifier_loss(..., mask=mask)`), so
      that the gradient is that of the valid rows alone.
    fake_mask: the same for the fake batch ((n_s,)).

  Returns:
    The scalar mean of the distance over the M samples.

  Raises:
    ConfigError: for an unknown granularity, a non-positive eps or thetas
      without a common leading axis.
  """
  check_gradient_matching_settings(granularity, eps)
  sample_count(thetas)
  loss_grad = jax.grad(loss_fn)
  constant_real_batch = lax.stop_gradient(real_batch)
  # Without a mask loss_fn gets exactly the two arguments it always got.
  real_args = () if real_mask is None else (lax.stop_gradient(real_mask),)
  fake_args = () if fake_mask is None else (fake_mask,)

  def distance_at(theta):
    # Cutting the inputs gives them symbolic-zero tangents, so autodiff does
    # not trace a second-order graph for g_r; the outer stop_gradient also cuts
    # whatever loss_fn closes over.
    real_grads = lax.stop_gradient(
        loss_grad(lax.stop_gradient(theta), constant_real_batch, *real_args))
    fake_grads = loss_grad(theta, fake_batch, *fake_args)
    return gradient_distance(real_grads, fake_grads, granularity, eps)

  return jnp.mean(jax.vmap(distance_at)(thetas))


def per_class_gradient_matching(loss_fn, thetas, real_batches, fake_batches, *, real_mask=None,
                                fake_mask=None, **kwargs):
  """Sum over classes of `gradient_matching`, one (real, fake) pair per class.

  As in the reference, each class c contributes the GM loss between a real
  batch of class c and a fake batch of class c, with loss_fn's logits over all
  seen classes (loss_fn and the batches' labels decide that), and the terms
  are summed, not averaged. The same thetas are used for every class.

  Args:
    loss_fn: `loss_fn(theta, batch) -> scalar`.
    thetas: parameter pytree with a leading axis of M samples.
    real_batches: pytree whose leaves have a leading class axis (n_classes,
      ...); slice c is class c's real batch.
    fake_batches: the same for the fake batches (their batch size may differ
      from the real one).
    real_mask: optional (n_classes, n_r) row masks of padded real batches
      (row c for class c; see `gradient_matching`), e.g. the reference's
      short per-class batches from `reference_sampling.next_gm_batches`.
    fake_mask: the same for the fake batches, (n_classes, n_s).
    **kwargs: granularity and eps, passed to `gradient_matching`.

  Returns:
    The scalar sum over classes.

  Raises:
    ConfigError: when the batches disagree on the number of classes, or for
      the reasons `gradient_matching` gives.
  """
  def one_class(real, fake):
    (real_batch, one_real_mask), (fake_batch, one_fake_mask) = real, fake
    return gradient_matching(loss_fn, thetas, real_batch, fake_batch, real_mask=one_real_mask,
                             fake_mask=one_fake_mask, **kwargs)

  # A None mask is an empty pytree: vmap passes it through as None.
  return sum_over_classes(one_class, (real_batches, real_mask), (fake_batches, fake_mask),
                          caller="per_class_gradient_matching")


def sum_over_classes(one_class_fn, real_batches, fake_batches, *, caller):
  """Sum over classes of one_class_fn(real_c, fake_c), vmapped over the class axis.

  Args:
    one_class_fn: `one_class_fn(real_batch, fake_batch) -> scalar` for one class.
    real_batches: pytree whose leaves have a leading class axis.
    fake_batches: the same for the fake batches.
    caller: the public function's name, for the error message.

  Returns:
    The scalar sum over classes.

  Raises:
    ConfigError: when the leaves disagree on the number of classes.
  """
  class_counts = {jnp.shape(leaf)[0] if jnp.ndim(leaf) else None
                  for leaf in jax.tree_util.tree_leaves((real_batches, fake_batches))}
  if len(class_counts) != 1 or None in class_counts:
    raise ConfigError(f"{caller} batches: expected every leaf to have the same leading "
                      f"class axis, found leading sizes {sorted(str(n) for n in class_counts)}")
  return jnp.sum(jax.vmap(one_class_fn)(real_batches, fake_batches))
