"""Multi-kernel maximum mean discrepancy: the GMMN objective of Bucher et al. 2017.

Bucher, Herbin & Jurie, "Generating Visual Representations for Zero-Shot
Classification" (ICCV workshops 2017), train a conditional generator
G(a, z) with no critic: the loss of one step is the square root of the
biased MMD² between a batch of real features of one seen class and as many
fakes of that class, under a sum of Gaussian kernels (their code,
github.com/maximebucher/Generating-Representations-ZSL, gmmn.py; the kernel
and estimator are those of Li et al.'s GMMN code, github.com/yujiali/gmmn).

Kernel convention here: k(a, b) = sum over σ in `bandwidths` of
exp(-||a - b||² / (2 σ²)), σ a standard deviation. Both reference codes
instead write exp(-||a - b||² / (2 s)) and call s "sigma", so their
s = {2, 5, 10, 20, 40, 80} are variances: `BUCHER_BANDWIDTHS` holds their
square roots, the σ that reproduce them under this module's convention.

Estimators, for x (n, D) and y (m, D):
  biased:   mean K(x, x) + mean K(y, y) - 2 mean K(x, y), diagonals included
            (a squared RKHS distance, so >= 0; 0 when x and y are the same
            sample);
  unbiased: the diagonals of K(x, x) and K(y, y) left out of their means
            (may be negative; needs n, m >= 2).

Everything is pure and jittable, works under vmap and grad.
"""

import math

import jax
from jax import lax
import jax.numpy as jnp

from gmn_jax import losses
from gmn_jax.errors import ConfigError

# Bucher et al.'s (and Li et al.'s) kernel variances s, and the standard
# deviations sqrt(s) that give their kernels exp(-d² / (2 s)) here.
BUCHER_KERNEL_VARIANCES = (2.0, 5.0, 10.0, 20.0, 40.0, 80.0)
BUCHER_BANDWIDTHS = tuple(math.sqrt(s) for s in BUCHER_KERNEL_VARIANCES)

REDUCTIONS = ("mean", "sum")


def _check_samples(x, y):
  if jnp.ndim(x) != 2 or jnp.ndim(y) != 2 or jnp.shape(x)[1] != jnp.shape(y)[1]:
    raise ConfigError("mmd samples: expected x (n, D) and y (m, D) with the same D, found "
                      f"shapes {jnp.shape(x)} and {jnp.shape(y)}")


def _squared_distances(a, b):
  """(n, m) ||a_i - b_j||² from norms and products, clipped at 0 (rounding)."""
  products = a @ b.T
  a2 = jnp.sum(jnp.square(a), axis=1)
  b2 = jnp.sum(jnp.square(b), axis=1)
  return jnp.maximum(a2[:, None] + b2[None, :] - 2.0 * products, 0.0)


def _kernel(squared_distances, inverse_two_variances):
  """Sum over bandwidths of exp(-d² / (2 σ²)), elementwise on (n, m) distances."""
  return jnp.sum(jnp.exp(-squared_distances[..., None] * inverse_two_variances), axis=-1)


def mmd_squared(x, y, bandwidths, *, unbiased=False) -> jax.Array:
  """Multi-kernel MMD² between samples x and y (Gaussian kernels, summed).

  k(a, b) = sum_σ exp(-||a - b||² / (2 σ²)). The squared distances come from
  norms and inner products after both samples are shifted by y's mean (a
  shift changes no distance, and the smaller norms cancel less), and are
  clipped at 0; those between a sample and itself are exactly 0. The shift is
  held constant under differentiation, which is exact: the value does not
  depend on it.

  Args:
    x: (n, D) samples.
    y: (m, D) samples.
    bandwidths: the kernels' σ (standard deviations), a sequence or a 1-D
      array (may be traced), all positive.
    unbiased: False for the biased (V-statistic) estimator, True for the
      unbiased one (the diagonals of K(x, x) and K(y, y) left out; needs
      n, m >= 2 and may be negative).

  Returns:
    The scalar MMD², in float32 (float64 for float64 inputs).

  Raises:
    ConfigError: for samples that are not (n, D) and (m, D), for an empty
      bandwidth list, or for fewer than 2 samples with `unbiased`.
  """
  _check_samples(x, y)
  dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)
  bandwidths = jnp.asarray(bandwidths, dtype)
  if bandwidths.ndim != 1 or bandwidths.shape[0] == 0:
    raise ConfigError(f"mmd bandwidths: expected a non-empty 1-D sequence, found shape "
                      f"{bandwidths.shape}")
  n, m = jnp.shape(x)[0], jnp.shape(y)[0]
  if unbiased and min(n, m) < 2:
    raise ConfigError(f"mmd samples: the unbiased estimator needs at least 2 samples on each "
                      f"side, found n={n}, m={m}")
  shift = lax.stop_gradient(jnp.mean(jnp.asarray(y, dtype), axis=0))
  x = jnp.asarray(x, dtype) - shift
  y = jnp.asarray(y, dtype) - shift
  inverse_two_variances = 1.0 / (2.0 * jnp.square(bandwidths))

  def within(a):
    size = a.shape[0]
    off_diagonal = ~jnp.eye(size, dtype=bool)
    # A point's distance to itself is 0; rounding would make it slightly off.
    k = _kernel(jnp.where(off_diagonal, _squared_distances(a, a), 0.0), inverse_two_variances)
    if unbiased:
      return jnp.sum(jnp.where(off_diagonal, k, 0.0)) / (size * (size - 1))
    return jnp.mean(k)

  cross = jnp.mean(_kernel(_squared_distances(x, y), inverse_two_variances))
  return within(x) + within(y) - 2.0 * cross


def _safe_sqrt(value):
  """sqrt(max(value, 0)) with gradient 0, not inf/NaN, where value <= 0."""
  positive = value > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, value, 1.0)), 0.0)


def per_class_mmd(real_batches, fake_batches, bandwidths, *, unbiased=False, take_sqrt=True,
                  reduction="mean") -> jax.Array:
  """The GMMN loss over classes: each class's (root) MMD between its real and fake batch.

  Bucher et al. take one Adam step per class on sqrt(biased MMD²) of that
  class's real batch and as many fakes (the defaults here); with several
  classes in one step, "mean" averages those per-class losses (so the value
  and gradient scale do not depend on the number of classes, and one class
  gives their loss exactly), "sum" adds them as `losses.per_class_gradient_matching`
  does. The square root is taken per class, of MMD² clipped at 0 (an
  unbiased estimate can be negative), with gradient 0 where it is 0.

  Args:
    real_batches: (n, r, D) real features, slice c of class c.
    fake_batches: (n, f, D) generated features of the same classes (f may
      differ from r).
    bandwidths: the Gaussian kernels' σ (`mmd_squared`).
    unbiased: the MMD² estimator (`mmd_squared`).
    take_sqrt: whether each class contributes sqrt(MMD²) (Bucher et al.,
      Li et al.) or MMD² itself.
    reduction: "mean" or "sum" over the n classes.

  Returns:
    The scalar loss.

  Raises:
    ConfigError: for an unknown reduction, batches that are not 3-D or
      disagree on the number of classes, or the reasons `mmd_squared` gives.
  """
  if reduction not in REDUCTIONS:
    raise ConfigError(f"per_class_mmd reduction: expected one of {REDUCTIONS}, "
                      f"found {reduction!r}")
  if jnp.ndim(real_batches) != 3 or jnp.ndim(fake_batches) != 3:
    raise ConfigError("per_class_mmd batches: expected real (n, r, D) and fake (n, f, D), "
                      f"found shapes {jnp.shape(real_batches)} and {jnp.shape(fake_batches)}")

  def one_class(real, fake):
    value = mmd_squared(fake, real, bandwidths, unbiased=unbiased)
    return _safe_sqrt(value) if take_sqrt else value

  total = losses.sum_over_classes(one_class, real_batches, fake_batches, caller="per_class_mmd")
  if reduction == "mean":
    return total / jnp.shape(real_batches)[0]
  return total
