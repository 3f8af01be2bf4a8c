"""Exact gradient matching for classifiers that see features only through a kernel.

When a classifier's logits depend on the features X (n, D) only through the
projection H = X @ W of a kernel W (D, O), as the bilinear and softmax
classifiers do, the kernel's gradient is g = Xᵀ dH with dH = dLoss/dH (n, O).
The cosine between a real and a fake kernel gradient then needs no D × O
matrix at all: per output index j,

    <g_r[:, j], g_s[:, j]> = dH_r[:, j]ᵀ (X_r X_sᵀ) dH_s[:, j]
    |g_s[:, j]|²           = dH_s[:, j]ᵀ (X_s X_sᵀ) dH_s[:, j]

(likewise |g_r[:, j]|²), from the examples' Gram matrices (n_r × n_s etc.).
Summing these over j gives the "tensor" and "global" terms. The other
parameters (a bias) are small; their gradients are taken directly.

This computes exactly what `losses.gradient_matching` computes with the
classifier loss `head_loss_fn(theta, X @ theta["kernel"], targets)`, with the
same cosine rule and zero-safe norms, but the per-class work drops from
thin D × O products contracted over the n examples (and their second-order
counterparts) to n × n' Gram matrices and n × O products.

Padded batches: with per-row weights w (a mask), the head loss is a weighted
mean, so dH of a row of weight 0 is exactly 0 and that row drops out of every
quadratic form above; a padded batch thus gives exactly (to rounding) the
loss of its valid rows.
"""

from collections.abc import Mapping
from typing import Callable

import jax
from jax import lax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gmn_jax import losses
from gmn_jax.errors import ConfigError

# How L_GM is computed in training (config field gm.implementation).
IMPLEMENTATIONS = ("gram", "autodiff")
KERNEL = "kernel"


def _check_thetas(thetas):
  if not isinstance(thetas, Mapping) or KERNEL not in thetas:
    found = sorted(thetas) if isinstance(thetas, Mapping) else type(thetas).__name__
    raise ConfigError("linear_head_gradient_matching thetas: expected a mapping with a "
                      f"{KERNEL!r} leaf, found {found}")
  if jnp.ndim(thetas[KERNEL]) != 3:
    raise ConfigError("linear_head_gradient_matching thetas: expected the kernel to have shape "
                      f"(M, D, O), found {jnp.shape(thetas[KERNEL])}")
  losses.sample_count(thetas)


def _check_batch(name, batch, feature_dim, mask):
  if not isinstance(batch, (tuple, list)) or len(batch) != 2:
    raise ConfigError(f"linear_head_gradient_matching {name}: expected a pair (features, "
                      f"targets), found {type(batch).__name__}")
  shape = jnp.shape(batch[0])
  if len(shape) != 2 or shape[1] != feature_dim:
    raise ConfigError(f"linear_head_gradient_matching {name}: expected features of shape "
                      f"(n, {feature_dim}), found {shape}")
  if mask is not None and jnp.shape(mask) != shape[:1]:
    raise ConfigError(f"linear_head_gradient_matching {name} mask: expected shape "
                      f"{shape[:1]}, found {jnp.shape(mask)}")


def _unsharded(features):
  """An array, gathered onto every device if an Explicit mesh axis splits it.

  A Gram matrix of rows split along one mesh axis would need that axis on
  both of its own axes, which Explicit sharding forbids. On Auto axes (what
  training uses) and without a mesh the type carries no sharding and XLA
  chooses the layout, so nothing is done.
  """
  spec = jax.typeof(features).sharding.spec
  if all(axis is None for axis in spec):
    return features
  return jax.sharding.reshard(features, P(*(None,) * jnp.ndim(features)))


def _split_kernel(theta):
  return theta[KERNEL], {name: leaf for name, leaf in theta.items() if name != KERNEL}


def _quadratic_forms(left, gram, right):
  """Per column j: left[:, j]ᵀ gram right[:, j]."""
  return jnp.sum(left * (gram @ right), axis=0)


def _distance(kernel_terms, real_rest_grads, fake_rest_grads, granularity, eps):
  """`losses.gradient_distance` with the kernel leaf given by its per-column terms."""
  cosine = losses.cosine_from_terms
  kernel_totals = tuple(jnp.sum(term) for term in kernel_terms)
  if granularity == "global":
    rest_terms = [losses.leaf_cosine_terms(r, s, None) for r, s in zip(
        jax.tree_util.tree_leaves(real_rest_grads), jax.tree_util.tree_leaves(fake_rest_grads))]
    dot, real_squares, fake_squares = (sum(parts) for parts in zip(kernel_totals, *rest_terms))
    return 1.0 - cosine(dot, real_squares, fake_squares, eps)
  if granularity == "row":
    kernel_distance = 1.0 - jnp.mean(cosine(*kernel_terms, eps))
  else:
    kernel_distance = 1.0 - cosine(*kernel_totals, eps)
  return kernel_distance + losses.gradient_distance(real_rest_grads, fake_rest_grads,
                                                    granularity, eps)


def linear_head_gradient_matching(head_loss_fn: Callable, thetas, real_batch, fake_batch, *,
                                  granularity="row", eps=1e-8, real_mask=None, fake_mask=None):
  """`losses.gradient_matching` for a loss that sees the features through a kernel.

  For a classifier loss of the form
  `loss_fn(theta, (x, t)) = head_loss_fn(theta, x @ theta["kernel"], t)`,
  returns exactly `losses.gradient_matching(loss_fn, thetas, real_batch,
  fake_batch, granularity=..., eps=...)` (same distances, same torch cosine
  rule, same zero-safe norms, g_r cut from differentiation), computed from
  the batches' Gram matrices instead of D × O kernel gradients (see the
  module docstring). Differentiable w.r.t. the fake features (and what
  produced them) and the thetas; works under jit, vmap, grad and with
  sharded batches.

  Args:
    head_loss_fn: `head_loss_fn(theta, projected, targets) -> scalar`, where
      projected = features @ theta["kernel"] is (n, O). theta is passed
      without its kernel, so the head cannot read the features any other way.
    thetas: a mapping with a "kernel" leaf (M, D, O) and any other leaves,
      all with a leading axis of M sampled parameter sets.
    real_batch: (features (n_r, D), targets) with targets any pytree
      head_loss_fn accepts (e.g. (n_r,) labels).
    fake_batch: (features (n_s, D), targets).
    granularity: "row", "tensor" or "global" (see `losses.gradient_matching`);
      the kernel's rows are its last axis, one cosine per output j.
    eps: lower bound on each gradient norm in the cosine's denominator.
    real_mask: optional (n_r,) bool or float row weights of a padded real
      batch. When given, the head loss on it is called as
      `head_loss_fn(theta, projected, targets, real_mask)` and must return the
      masked mean of its per-example losses (e.g. `losses.cross_entropy(...,
      mask=mask)`); padded rows must hold finite features.
    fake_mask: the same for the fake batch ((n_s,)).

  Returns:
    The scalar mean of the distance over the M samples.

  Raises:
    ConfigError: for an unknown granularity, a non-positive eps, thetas
      without a (M, D, O) kernel or a common leading axis, batches that are
      not (features (n, D), targets) pairs, or a mask not shaped (n,).
  """
  losses.check_gradient_matching_settings(granularity, eps)
  _check_thetas(thetas)
  feature_dim = jnp.shape(thetas[KERNEL])[1]
  _check_batch("real_batch", real_batch, feature_dim, real_mask)
  _check_batch("fake_batch", fake_batch, feature_dim, fake_mask)
  # Without a mask the head gets exactly the three arguments it always got.
  real_args = () if real_mask is None else (_unsharded(lax.stop_gradient(real_mask)),)
  fake_args = () if fake_mask is None else (_unsharded(fake_mask),)
  real_features, real_targets = jax.tree_util.tree_map(
      _unsharded, lax.stop_gradient(tuple(real_batch)))
  fake_features, fake_targets = jax.tree_util.tree_map(_unsharded, tuple(fake_batch))
  # Shared by every theta: the only products whose depth is D.
  real_gram = real_features @ real_features.T
  cross_gram = real_features @ fake_features.T
  fake_gram = fake_features @ fake_features.T
  head_grads = jax.grad(head_loss_fn, argnums=(0, 1))

  def distance_at(theta):
    kernel, rest = _split_kernel(theta)
    constant_kernel, constant_rest = lax.stop_gradient((kernel, rest))
    real_rest_grads, real_dh = lax.stop_gradient(
        head_grads(constant_rest, real_features @ constant_kernel, real_targets, *real_args))
    fake_rest_grads, fake_dh = head_grads(rest, fake_features @ kernel, fake_targets,
                                          *fake_args)
    kernel_terms = (_quadratic_forms(real_dh, cross_gram, fake_dh),
                    _quadratic_forms(real_dh, real_gram, real_dh),
                    _quadratic_forms(fake_dh, fake_gram, fake_dh))
    return _distance(kernel_terms, real_rest_grads, fake_rest_grads, granularity, eps)

  return jnp.mean(jax.vmap(distance_at)(thetas))


def per_class_linear_head_gradient_matching(head_loss_fn: Callable, thetas, real_batches,
                                            fake_batches, *, real_mask=None, fake_mask=None,
                                            **kwargs):
  """Sum over classes of `linear_head_gradient_matching` (cf. `losses.per_class_gradient_matching`).

  Args:
    head_loss_fn: `head_loss_fn(theta_without_kernel, projected, targets) -> scalar`.
    thetas: a mapping with a "kernel" leaf (M, D, O), every leaf with a
      leading axis of M samples, shared by every class.
    real_batches: (features (n_classes, n_r, D), targets with a leading class
      axis); slice c is class c's real batch.
    fake_batches: the same for the fake batches (n_s may differ from n_r).
    real_mask: optional (n_classes, n_r) row masks or weights of padded real
      batches (row c for class c; see `linear_head_gradient_matching`).
    fake_mask: the same for the fake batches, (n_classes, n_s).
    **kwargs: granularity and eps.

  Returns:
    The scalar sum over classes.

  Raises:
    ConfigError: when the batches disagree on the number of classes, or for
      the reasons `linear_head_gradient_matching` gives.
  """
  def one_class(real, fake):
    (real_batch, one_real_mask), (fake_batch, one_fake_mask) = real, fake
    return linear_head_gradient_matching(head_loss_fn, thetas, real_batch, fake_batch,
                                         real_mask=one_real_mask, fake_mask=one_fake_mask,
                                         **kwargs)

  # A None mask is an empty pytree: vmap passes it through as None.
  return losses.sum_over_classes(
      one_class, (tuple(real_batches), real_mask), (tuple(fake_batches), fake_mask),
      caller="per_class_linear_head_gradient_matching")
