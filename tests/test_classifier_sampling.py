"""Tests of gmn_jax.classifier_sampling: random_init and trajectory θ samplers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import classifier_sampling
from gmn_jax import classifiers

D, K, C = 6, 4, 5


def _sampler(kind, **kwargs):
  init_fn, apply_fn = classifiers.get_classifier("bilinear")
  settings = dict(num_samples=1, feature_dim=D, embedding_dim=K, num_classes=C)
  settings.update(kwargs)
  return classifier_sampling.ThetaSampler(kind=kind, init_fn=init_fn, apply_fn=apply_fn,
                                          **settings)


def _numpy_bilinear_grads(kernel, bias, x, y, embeddings):
  """Closed-form gradient of the mean CE of logits (x W + b) A^T (float64)."""
  logits = (x @ kernel + bias) @ embeddings.T
  logits = logits - logits.max(axis=1, keepdims=True)
  p = np.exp(logits)
  p /= p.sum(axis=1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  d_projected = (p / len(y)) @ embeddings  # (B, K)
  return x.T @ d_projected, d_projected.sum(axis=0)


def test_random_init_statistics_match_the_classifier_init():
  sampler = _sampler("random_init", num_samples=400)
  thetas, state = sampler.sample(sampler.init(jax.random.key(0)), jax.random.key(1), 0)
  assert state == {}
  kernels = np.asarray(thetas["kernel"])
  assert kernels.shape == (400, D, K)
  np.testing.assert_array_equal(np.asarray(thetas["bias"]), 0.0)
  # N(0, 0.02^2): 9600 draws, so the sample std is within ~1.5% of 0.02.
  assert abs(kernels.std() - 0.02) < 0.001  # docs/configuration.md: N(0, 0.02²)
  assert abs(kernels.mean()) < 0.001
  # The M samples are independent draws, not copies.
  flat = kernels.reshape(400, -1)
  correlation = np.corrcoef(flat[:50])
  assert np.abs(correlation[np.triu_indices(50, 1)]).max() < 0.8


def test_random_init_is_a_function_of_the_key_only():
  sampler = _sampler("random_init", num_samples=3)
  a, _ = sampler.sample({}, jax.random.key(5), 0)
  b, _ = sampler.sample({}, jax.random.key(5), 17)
  c, _ = sampler.sample({}, jax.random.key(6), 0)
  np.testing.assert_array_equal(a["kernel"], b["kernel"])
  assert not np.allclose(a["kernel"], c["kernel"])


def test_sgd_momentum_step_matches_pytorch_rule_by_hand():
  params = {"w": jnp.array([1.0, -2.0])}
  momentum = {"w": jnp.array([0.5, 0.0])}
  grads = {"w": jnp.array([0.1, 0.3])}
  new_params, new_momentum = classifier_sampling.sgd_momentum_step(
      params, momentum, grads, lr=0.1, momentum_decay=0.9, weight_decay=0.01)
  # m = 0.9 m + g + wd p; p = p - lr m.
  expected_m = np.array([0.9 * 0.5 + 0.1 + 0.01, 0.3 - 0.02])
  np.testing.assert_allclose(new_momentum["w"], expected_m, rtol=1e-6)
  np.testing.assert_allclose(new_params["w"], np.array([1.0, -2.0]) - 0.1 * expected_m,
                             rtol=1e-6)


@pytest.mark.parametrize("num_samples", [1, 2])
def test_trajectory_equals_hand_written_sgd_loop_and_resets(num_samples):
  reset_every, iterations, batch = 3, 7, 8
  lr, mom, wd = 0.5, 0.9, 0.01
  sampler = _sampler("trajectory", num_samples=num_samples, reset_every=reset_every, lr=lr,
                     momentum=mom, weight_decay=wd)
  rng = np.random.default_rng(0)
  embeddings = rng.normal(size=(C, K)).astype(np.float32)
  features = rng.normal(size=(iterations, num_samples, batch, D)).astype(np.float32)
  labels = rng.integers(0, C, size=(iterations, num_samples, batch)).astype(np.int32)
  keys = [jax.random.key(100 + t) for t in range(iterations)]

  sample = jax.jit(sampler.sample)
  step = jax.jit(sampler.step)
  state = sampler.init(jax.random.key(0))
  used = []
  for t in range(iterations):
    thetas, state = sample(state, keys[t], jnp.int32(t))
    used.append(jax.tree_util.tree_map(np.asarray, thetas))
    state = step(state, features[t], labels[t], embeddings)

  # The reference loop, in float64 numpy with closed-form gradients.
  for m in range(num_samples):
    kernel = bias = buf_kernel = buf_bias = None
    for t in range(iterations):
      if t % reset_every == 0:
        fresh = classifier_sampling.random_init(
            keys[t], sampler.init_fn, num_samples, feature_dim=D, embedding_dim=K,
            num_classes=C)
        kernel = np.asarray(fresh["kernel"][m], np.float64)
        bias = np.asarray(fresh["bias"][m], np.float64)
        buf_kernel, buf_bias = np.zeros_like(kernel), np.zeros_like(bias)
      np.testing.assert_allclose(used[t]["kernel"][m], kernel, rtol=1e-4, atol=1e-6)
      np.testing.assert_allclose(used[t]["bias"][m], bias, rtol=1e-4, atol=1e-6)
      g_kernel, g_bias = _numpy_bilinear_grads(kernel, bias, features[t, m].astype(np.float64),
                                               labels[t, m], embeddings.astype(np.float64))
      buf_kernel = mom * buf_kernel + g_kernel + wd * kernel
      buf_bias = mom * buf_bias + g_bias + wd * bias
      kernel, bias = kernel - lr * buf_kernel, bias - lr * buf_bias
  # θ really moved within a cycle and jumped back at the resets.
  assert not np.allclose(used[1]["kernel"], used[0]["kernel"])
  assert not np.allclose(used[3]["kernel"], used[2]["kernel"])


def test_trajectory_with_reset_every_one_is_a_fresh_draw_each_iteration():
  sampler = _sampler("trajectory", reset_every=1, lr=1.0)
  random = _sampler("random_init")
  rng = np.random.default_rng(1)
  state = sampler.init(jax.random.key(0))
  for t in range(3):
    key = jax.random.key(t)
    thetas, state = sampler.sample(state, key, jnp.int32(t))
    expected, _ = random.sample({}, key, t)
    np.testing.assert_array_equal(thetas["kernel"], expected["kernel"])
    state = sampler.step(state, rng.normal(size=(1, 4, D)).astype(np.float32),
                         rng.integers(0, C, size=(1, 4)).astype(np.int32),
                         np.eye(C, K, dtype=np.float32))


def test_random_init_step_is_the_identity():
  sampler = _sampler("random_init")
  assert not sampler.needs_real_batches
  assert sampler.step({}, None, None, None) == {}


def _primitives(jaxpr, inside_cond=False):
  """{(primitive name, whether it sits inside a lax.cond branch)} of a jaxpr."""
  found = set()
  for eqn in jaxpr.eqns:
    found.add((eqn.primitive.name, inside_cond))
    for param in eqn.params.values():
      for sub in (param if isinstance(param, (list, tuple)) else [param]):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found |= _primitives(inner, inside_cond or eqn.primitive.name == "cond")
  return found


def test_trajectory_draws_a_fresh_theta_only_inside_the_restart_branch():
  # The draw (random bits for the normal kernel) sits in a lax.cond taken only
  # at restarts, not outside it where every iteration would pay for it; also
  # under vmap over seeds that share the iteration counter.
  sampler = _sampler("trajectory", reset_every=3)
  state = sampler.init(jax.random.key(0))

  def sample(state, key, iteration):
    return sampler.sample(state, key, iteration)

  for fn, args in ((sample, (state, jax.random.key(1), jnp.int32(4))),
                   (jax.vmap(sample, in_axes=(0, 0, None)),
                    (jax.tree_util.tree_map(lambda x: jnp.stack([x, x]), state),
                     jax.random.split(jax.random.key(1), 2), jnp.int32(4)))):
    found = _primitives(jax.make_jaxpr(fn)(*args).jaxpr)
    assert ("cond", False) in found
    assert ("random_bits", True) in found and ("random_bits", False) not in found
  # A random_init sampler has no branch: it draws every iteration, as it must.
  found = _primitives(jax.make_jaxpr(
      lambda key: _sampler("random_init").sample({}, key, 0))(jax.random.key(1)).jaxpr)
  assert ("random_bits", False) in found and ("cond", False) not in found
