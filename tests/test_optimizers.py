"""gmn_jax.optimizers: Adam without its first moment (β1 = 0) and with bfloat16 moments."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest

from gmn_jax import optimizers


def _params_and_grads(steps=6):
  keys = jax.random.split(jax.random.key(0), steps + 1)
  params = {"w": jax.random.normal(keys[0], (7, 5)), "b": jnp.zeros((5,))}
  grads = [jax.tree_util.tree_map(lambda p, k=k: jax.random.normal(k, p.shape) * 3.0, params)
           for k in keys[1:]]
  return params, grads


def _run(optimizer, params, grads, state=None):
  state = optimizer.init(params) if state is None else state
  update = jax.jit(optimizer.update)
  for g in grads:
    updates, state = update(g, state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_without_the_first_moment_it_is_optax_adam_with_b1_zero_bit_for_bit():
  params, grads = _params_and_grads()
  # Traced settings, as the training step passes them.
  lr, b1, b2 = jnp.float32(1e-2), jnp.float32(0.0), jnp.float32(0.9)
  want, want_state = _run(optax.adam(lr, b1=b1, b2=b2), params, grads)
  lean = optimizers.adam(lr, b1, b2, first_moment=False)
  got, got_state = _run(lean, params, grads, state=optimizers.init_state(params))
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(got_state[0].nu["w"], want_state[0].nu["w"])
  assert int(got_state[0].count) == len(grads)
  # The stored first moment is left as it was: never read, never written.
  np.testing.assert_array_equal(got_state[0].mu["w"], 0.0)
  # optax's state structure: the checkpoints of either form restore into the other.
  assert (jax.tree_util.tree_structure(got_state)
          == jax.tree_util.tree_structure(want_state))


def test_the_defaults_are_optax_adam():
  params, grads = _params_and_grads(3)
  want, _ = _run(optax.adam(1e-3, b1=0.5, b2=0.99), params, grads)
  got, _ = _run(optimizers.adam(1e-3, 0.5, 0.99), params, grads,
                state=optimizers.init_state(params))
  for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("first_moment, b1", [(True, 0.5), (False, 0.0)])
def test_bfloat16_moments_follow_a_numpy_adam_that_rounds_its_moments(first_moment, b1):
  params, grads = _params_and_grads()
  lr, b2, eps = 1e-2, 0.9, 1e-8
  optimizer = optimizers.adam(lr, b1, b2, first_moment=first_moment, moment_dtype="bfloat16")
  got, state = _run(optimizer, params, grads,
                    state=optimizers.init_state(params, "bfloat16"))
  assert state[0].nu["w"].dtype == jnp.bfloat16 and state[0].mu["w"].dtype == jnp.bfloat16

  def bf16(x):
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float64)

  for name in ("w", "b"):
    p = np.asarray(params[name], np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
      g = np.asarray(g[name], np.float64)
      m_new = b1 * m + (1 - b1) * g
      v_new = b2 * v + (1 - b2) * g * g
      p = p - lr * (m_new / (1 - b1 ** t)) / (np.sqrt(v_new / (1 - b2 ** t)) + eps)
      m, v = (bf16(m_new) if first_moment else m), bf16(v_new)
    np.testing.assert_allclose(got[name], p, rtol=1e-5, atol=1e-6)
