"""The multi-kernel MMD of gmn_jax.mmd against loops, closed forms and training."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gmn_jax import mmd
from gmn_jax.errors import ConfigError

BANDWIDTHS = (0.5, 1.0, 3.0)


def _x64():
  """Context manager enabling float64 (restored on exit, so nothing leaks)."""
  if hasattr(jax, "enable_x64"):
    return jax.enable_x64(True)
  from jax.experimental import enable_x64  # pylint: disable=g-import-not-at-top
  return enable_x64()


def _loop_mmd_squared(x, y, bandwidths, unbiased):
  """MMD² with explicit loops over sample pairs (float64 numpy)."""
  def k(a, b):
    d2 = float(np.sum((a - b) ** 2))
    return sum(math.exp(-d2 / (2.0 * s * s)) for s in bandwidths)

  def mean_within(s):
    total, count = 0.0, 0
    for i in range(len(s)):
      for j in range(len(s)):
        if unbiased and i == j:
          continue
        total += k(s[i], s[j])
        count += 1
    return total / count

  cross = 0.0
  for i in range(len(x)):
    for j in range(len(y)):
      cross += k(x[i], y[j])
  return mean_within(x) + mean_within(y) - 2.0 * cross / (len(x) * len(y))


def _samples(seed, n=5, m=7, d=3, offset=0.7):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, d)), rng.normal(size=(m, d)) + offset)


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_squared_matches_a_double_loop(unbiased):
  x, y = _samples(0)
  want = _loop_mmd_squared(x, y, BANDWIDTHS, unbiased)
  with _x64():
    got = mmd.mmd_squared(jnp.asarray(x), jnp.asarray(y), BANDWIDTHS, unbiased=unbiased)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-10)
  # float32, jitted, bandwidths as a traced array.
  fn = jax.jit(lambda a, b, s: mmd.mmd_squared(a, b, s, unbiased=unbiased))
  got32 = fn(x.astype(np.float32), y.astype(np.float32), np.asarray(BANDWIDTHS, np.float32))
  assert got32.dtype == jnp.float32
  np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-6)


def test_bucher_bandwidths_reproduce_their_kernel():
  # Their code: exp(-d² / (2 s)) with s the listed "sigma"; ours uses σ = sqrt(s).
  x, y = _samples(1, d=40, offset=0.2)
  x, y = 3.0 * x, 3.0 * y  # distances of the order of their bandwidths
  def their_kernel(a, b):
    d2 = np.sum((a[:, None] - b[None]) ** 2, axis=-1)
    return sum(np.exp(-d2 / (2.0 * s)) for s in mmd.BUCHER_KERNEL_VARIANCES)
  # Their loss: s^T K s with s = (1/n, ..., -1/m, ...) over concat[x, y].
  z = np.concatenate([x, y])
  s = np.concatenate([np.full(len(x), 1.0 / len(x)), np.full(len(y), -1.0 / len(y))])
  want = s @ their_kernel(z, z) @ s
  with _x64():
    got = mmd.mmd_squared(jnp.asarray(x), jnp.asarray(y), mmd.BUCHER_BANDWIDTHS)
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_biased_mmd_of_a_sample_with_itself_is_zero():
  x, _ = _samples(2, n=9, d=16)
  x = (x + 50).astype(np.float32)  # far from the origin: float32 norms of ~40,000
  np.testing.assert_allclose(mmd.mmd_squared(x, x, BANDWIDTHS), 0.0, atol=1e-5)
  # The unbiased estimate of the same is not 0 but negative here.
  assert mmd.mmd_squared(x, x, BANDWIDTHS, unbiased=True) < 0


def test_float32_is_accurate_far_from_the_origin():
  # Without the shift by y's mean, ||a||² + ||b||² - 2ab loses ~3 digits
  # here (0.7396 instead of 0.7417).
  rng = np.random.default_rng(9)
  x, y = rng.normal(size=(9, 16)) + 50, rng.normal(size=(7, 16)) + 50.3
  want = _loop_mmd_squared(x, y, BANDWIDTHS, False)
  got = mmd.mmd_squared(x.astype(np.float32), y.astype(np.float32), BANDWIDTHS)
  np.testing.assert_allclose(got, want, rtol=2e-5)


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("d", [0.0, 0.3, 1.0, 2.5])
def test_point_masses_closed_form(d, unbiased):
  sigma = 1.3
  x = np.tile(np.array([[1.0, -2.0, 0.5]]), (3, 1))
  y = np.tile(np.array([[1.0, -2.0 + d, 0.5]]), (4, 1))
  want = 2.0 - 2.0 * math.exp(-d * d / (2 * sigma * sigma))
  got = mmd.mmd_squared(x.astype(np.float32), y.astype(np.float32), (sigma,), unbiased=unbiased)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # Several kernels add up.
  got = mmd.mmd_squared(x, y, (sigma, 2 * sigma), unbiased=unbiased)
  want2 = want + 2.0 - 2.0 * math.exp(-d * d / (8 * sigma * sigma))
  np.testing.assert_allclose(got, want2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("unbiased", [False, True])
def test_gradient_matches_finite_differences(unbiased):
  x, y = _samples(3)
  with _x64():
    def f(a, b):
      return mmd.mmd_squared(a, b, BANDWIDTHS, unbiased=unbiased)
    gx, gy = jax.grad(f, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(y))
    rng = np.random.default_rng(4)
    eps = 1e-6
    for _ in range(4):
      dx, dy = rng.normal(size=x.shape), rng.normal(size=y.shape)
      numeric = (f(x + eps * dx, y + eps * dy) - f(x - eps * dx, y - eps * dy)) / (2 * eps)
      analytic = np.sum(gx * dx) + np.sum(gy * dy)
      np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-9)


def test_per_class_mmd_sums_or_averages_root_mmd():
  rng = np.random.default_rng(5)
  real = rng.normal(size=(4, 6, 3)).astype(np.float32)
  fake = (rng.normal(size=(4, 9, 3)) + 0.5).astype(np.float32)
  per_class = np.array([_loop_mmd_squared(fake[c], real[c], BANDWIDTHS, False)
                        for c in range(4)])
  np.testing.assert_allclose(mmd.per_class_mmd(real, fake, BANDWIDTHS),
                             np.mean(np.sqrt(per_class)), rtol=1e-5)
  np.testing.assert_allclose(mmd.per_class_mmd(real, fake, BANDWIDTHS, reduction="sum"),
                             np.sum(np.sqrt(per_class)), rtol=1e-5)
  np.testing.assert_allclose(mmd.per_class_mmd(real, fake, BANDWIDTHS, take_sqrt=False),
                             np.mean(per_class), rtol=1e-5)
  unbiased = np.array([_loop_mmd_squared(fake[c], real[c], BANDWIDTHS, True) for c in range(4)])
  np.testing.assert_allclose(
      mmd.per_class_mmd(real, fake, BANDWIDTHS, unbiased=True, take_sqrt=False),
      np.mean(unbiased), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      mmd.per_class_mmd(real, fake, BANDWIDTHS, unbiased=True),
      np.mean(np.sqrt(np.maximum(unbiased, 0.0))), rtol=1e-4, atol=1e-6)


def test_root_has_a_finite_gradient_at_zero():
  rng = np.random.default_rng(6)
  real = rng.normal(size=(2, 5, 3)).astype(np.float32)
  grad_fn = jax.jit(jax.grad(lambda f, u: mmd.per_class_mmd(real, f, BANDWIDTHS, unbiased=u)),
                    static_argnums=1)
  for unbiased in (False, True):
    assert np.all(np.isfinite(grad_fn(real.copy(), unbiased)))


def test_vmap_over_a_seed_axis_equals_a_loop():
  rng = np.random.default_rng(7)
  real = rng.normal(size=(3, 4, 6, 5)).astype(np.float32)   # (seeds, n, r, D)
  fake = rng.normal(size=(3, 4, 8, 5)).astype(np.float32)
  value_and_grad = jax.value_and_grad(lambda f, r: mmd.per_class_mmd(r, f, BANDWIDTHS))
  values, grads = jax.jit(jax.vmap(value_and_grad))(fake, real)
  one_seed = jax.jit(value_and_grad)
  for s in range(3):
    value, grad = one_seed(fake[s], real[s])
    np.testing.assert_allclose(values[s], value, rtol=1e-6)
    np.testing.assert_allclose(grads[s], grad, rtol=1e-5, atol=1e-7)


def test_minimising_it_moves_the_fake_mean_onto_the_real_one():
  # Real: 2 classes of 200 points around different means; fake: standard
  # normal draws plus a learnt per-class shift starting at 0. Minimising the
  # GMMN loss must carry each shift to (real mean - fake sample mean).
  rng = np.random.default_rng(8)
  means = np.array([[3.0, -2.0, 1.0], [-1.0, 2.5, 0.0]])
  real = (rng.normal(size=(2, 200, 3)) + means[:, None]).astype(np.float32)
  base = rng.normal(size=(2, 200, 3)).astype(np.float32)
  target = real.mean(axis=1) - base.mean(axis=1)
  optimiser = optax.adam(0.05)
  shift = jnp.zeros((2, 3))
  state = optimiser.init(shift)

  @jax.jit
  def step(shift, state):
    loss, grad = jax.value_and_grad(
        lambda s: mmd.per_class_mmd(real, base + s[:, None], mmd.BUCHER_BANDWIDTHS))(shift)
    updates, state = optimiser.update(grad, state)
    return optax.apply_updates(shift, updates), state, loss

  first = None
  for _ in range(300):
    shift, state, loss = step(shift, state)
    first = loss if first is None else first
  assert loss < 0.2 * first
  # The MMD minimiser is off the mean difference by sampling noise, ~0.04 here.
  np.testing.assert_allclose(shift, target, atol=0.15)
  assert np.max(np.abs(shift - target)) < 0.05 * np.max(np.abs(target))


def test_bad_inputs_raise():
  x = np.zeros((3, 2), np.float32)
  with pytest.raises(ConfigError, match="same D"):
    mmd.mmd_squared(x, np.zeros((3, 4)), BANDWIDTHS)
  with pytest.raises(ConfigError, match="bandwidths"):
    mmd.mmd_squared(x, x, ())
  with pytest.raises(ConfigError, match="at least 2"):
    mmd.mmd_squared(x[:1], x, BANDWIDTHS, unbiased=True)
  with pytest.raises(ConfigError, match="reduction"):
    mmd.per_class_mmd(x[None], x[None], BANDWIDTHS, reduction="max")
  with pytest.raises(ConfigError, match="class axis"):
    mmd.per_class_mmd(np.zeros((2, 3, 2)), np.zeros((3, 3, 2)), BANDWIDTHS)
  with pytest.raises(ConfigError, match="expected real"):
    mmd.per_class_mmd(x, x, BANDWIDTHS)
