"""A deliberately plain stage 1, the reference the product's training loop is tested against.

`gmn_jax.stage1.train_generators` runs S seeds as one vmapped program of
chunked `lax.scan`s, with checkpoints, resumption, donated buffers, metric
windows and device meshes. This is none of that: one seed, a Python loop
over the jitted single iteration (`train_step.train_iteration`), from the
seed's initial state. Tests compare the product (S seeds at once, four
devices, two processes, resumed runs) with it.
"""

import functools

import jax
import numpy as np

from gmn_jax import train_state
from gmn_jax import train_step


def plain_stage1(spec, data, hyper, seed: int, num_iterations: int):
  """Trains one seed for `num_iterations` iterations, one jitted call each.

  Args:
    spec: the `TrainSpec`.
    data: the `TrainData`.
    hyper: the `Hyperparameters`.
    seed: the generator seed (its `train_state.seed_keys`).
    num_iterations: how many generator iterations.

  Returns:
    (final state, {name: (num_iterations,) per-iteration metrics}).
  """
  keys = train_state.seed_keys(seed)
  state = train_state.init_train_state(keys.init, spec, data)
  step = jax.jit(functools.partial(train_step.train_iteration, spec))
  rows = []
  for _ in range(num_iterations):
    state, metrics = step(state, data, hyper, keys.train)
    rows.append(jax.device_get(metrics))
  return state, {name: np.array([row[name] for row in rows]) for name in rows[0]}


def assert_trees_close(got, want, **tolerance):
  """Every leaf of `got` is close to the same leaf of `want`.

  Args:
    got: a pytree.
    want: a pytree of the same structure.
    **tolerance: rtol / atol for `np.testing.assert_allclose`.
  """
  got_leaves, want_leaves = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
  assert len(got_leaves) == len(want_leaves)
  for g, w in zip(got_leaves, want_leaves):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), **tolerance)
