"""The device-side reference iterators against a plain Python model of the authors' rules.

The model below re-states the rules of mbsariyildiz/gmn-zsl's `data.Iterator`
(src/data/iterator.py) and of how src/main.py uses it, with lists and
NumPy's RNG. The two RNGs differ, so the tests compare what the rules fix:
the sequence of batch sizes, which items an epoch holds, which classes a
cycle holds, and how each class's own iterator advances.
"""

import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import reference_sampling as rs
from gmn_jax.data import samplers


# --------------------------------------------------------------------------
# The model: the reference's rules on Python lists.


class ModelIterator:
  """`data.Iterator(tensors, batch_size)` with allow_smaller=True, continuous=True."""

  def __init__(self, items, batch_size, rng, weights=None):
    items = list(items)
    self.num_original = len(items)
    # iterator.py:31-34: the list is concatenated with itself until it
    # holds at least one batch.
    while len(items) < batch_size:
      items = items + items
    self.items, self.batch_size, self.rng, self.weights = items, batch_size, rng, weights
    self._new_epoch()

  def _new_epoch(self):
    self.start = 0
    if self.weights is not None:
      # iterator.py:57: as many i.i.d. draws as slots, over the original items.
      p = np.asarray(self.weights, np.float64) / np.sum(self.weights)
      self.order = list(self.rng.choice(self.num_original, size=len(self.items), p=p))
    else:
      self.order = list(self.rng.permutation(len(self.items)))

  def next(self):
    # iterator.py:46-49, 63-73: a new epoch once every slot has been served.
    if self.start >= len(self.items):
      self._new_epoch()
    picked = self.order[self.start:self.start + self.batch_size]
    self.start += self.batch_size
    return [self.items[i] for i in picked]


def _model_sizes(num_items, batch_size, count, weights=None):
  model = ModelIterator(range(num_items), batch_size, np.random.default_rng(0), weights)
  return [len(model.next()) for _ in range(count)]


def _epochs(sequence, sizes, epoch_size):
  """Splits per-draw item lists into epochs of `epoch_size` items (complete epochs only)."""
  epochs, current, filled = [], [], 0
  for items, size in zip(sequence, sizes):
    current.extend(items[:size])
    filled += size
    if filled == epoch_size:
      epochs.append(current)
      current, filled = [], 0
    assert filled < epoch_size
  return epochs


def _valid(items, mask):
  """The batch a padded draw stands for (asserts that its mask is a prefix)."""
  count = int(np.sum(mask))
  np.testing.assert_array_equal(mask, np.arange(len(mask)) < count)
  return list(np.asarray(items)[:count])


# --------------------------------------------------------------------------
# The JAX iterators, one compiled scan per configuration.


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _shuffled_draws(num_items, batch_size, count, key):
  def step(state, t):
    state, items, mask = rs.next_batch(state, jax.random.fold_in(key, t), batch_size)
    return state, (items, mask)
  return lax.scan(step, rs.init_epoch_iterator(num_items, batch_size), jnp.arange(count))[1]


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _critic_draws(class_index, batch_size, count, class_balanced, key):
  state = rs.init_critic_iterator(class_index.members.shape[0], batch_size, class_balanced)

  def step(state, t):
    state, indices, mask = rs.next_critic_batch(state, jax.random.fold_in(key, t), class_index,
                                                batch_size, class_balanced)
    return state, (indices, mask)
  return lax.scan(step, state, jnp.arange(count))[1]


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _gm_draws(class_index, num_classes, batch_size, count, key):
  carry = (rs.init_class_cycle(class_index.num_classes),
           rs.init_class_batches(class_index, batch_size))

  def step(carry, t):
    cycle, batches, classes, indices, mask = rs.next_gm_batches(
        *carry, jax.random.fold_in(key, t), class_index, num_classes, batch_size)
    return (cycle, batches), (classes, indices, mask)
  return lax.scan(step, carry, jnp.arange(count))[1]


def _class_index(counts):
  labels = np.repeat(np.arange(len(counts)), counts)
  # Shuffled, so that example indices are not grouped by class.
  labels = np.random.default_rng(1).permutation(labels)
  return labels, samplers.build_class_index(labels, np.arange(len(counts)))


# --------------------------------------------------------------------------
# Tests.


def test_tiled_size_doubles_until_a_batch_fits():
  cases = {(150, 256): 300, (645, 256): 645, (40, 256): 320, (47, 60): 94, (1, 5): 8,
           (60, 60): 60, (3, 1): 3}
  for (n, b), want in cases.items():
    assert rs.tiled_size(n, b) == want
  counts = np.arange(1, 70)
  np.testing.assert_array_equal(rs.tiled_size(jnp.asarray(counts), 60),
                                [rs.tiled_size(int(n), 60) for n in counts])


@pytest.mark.parametrize("num_items, batch_size", [
    (150, 256),  # CUB labels: 256, 44.
    (645, 256),  # SUN labels: 256, 256, 133.
    (40, 256),   # AWA1 labels: 256, 64.
    (47, 60),    # A CUB class's GM real batches: 60, 34.
    (7, 3), (5, 5), (1, 4)])
def test_shuffled_iterator_matches_the_reference_model(num_items, batch_size):
  size = rs.tiled_size(num_items, batch_size)
  count = 3 * -(-size // batch_size) + 2
  items, masks = jax.device_get(_shuffled_draws(num_items, batch_size, count,
                                                jax.random.key(0)))
  sizes = [int(m.sum()) for m in masks]
  assert sizes == _model_sizes(num_items, batch_size, count)
  batches = [_valid(i, m) for i, m in zip(items, masks)]
  model = ModelIterator(range(num_items), batch_size, np.random.default_rng(0))
  model_batches = [model.next() for _ in range(count)]
  jax_epochs = _epochs(batches, sizes, size)
  model_epochs = _epochs(model_batches, sizes, size)
  assert len(jax_epochs) == len(model_epochs) >= 3
  for jax_epoch, model_epoch in zip(jax_epochs, model_epochs):
    # Every item once per epoch, or 2^k times when the list was tiled.
    assert sorted(jax_epoch) == sorted(model_epoch)
    assert sorted(jax_epoch) == sorted(list(range(num_items)) * (size // num_items))
  # A new epoch is a new order (not a repeat of the first).
  if num_items >= 5:
    assert jax_epochs[0] != jax_epochs[1]


@pytest.mark.parametrize("class_balanced", [True, False])
def test_critic_iterator_matches_the_reference_model(class_balanced):
  counts = [30, 5, 12, 3]  # N = 50, batch 16: 16, 16, 16, 2 per epoch.
  labels, class_index = _class_index(counts)
  count = 4 * 4 * 25
  indices, masks = jax.device_get(_critic_draws(class_index, 16, count, class_balanced,
                                                jax.random.key(3)))
  sizes = [int(m.sum()) for m in masks]
  weights = 1.0 / np.asarray(counts)[labels] if class_balanced else None
  assert sizes == _model_sizes(len(labels), 16, count, weights)
  assert sizes[:8] == [16, 16, 16, 2] * 2
  assert np.all((indices >= 0) & (indices < len(labels)))
  drawn = np.concatenate([_valid(i, m) for i, m in zip(indices, masks)])
  if class_balanced:
    # i.i.d. with p(i) ∝ 1/n_{y_i}: every class about equally often (5000
    # draws, 1250 expected per class, sd about 31).
    per_class = np.bincount(labels[drawn], minlength=len(counts))
    np.testing.assert_allclose(per_class, len(drawn) / len(counts), rtol=0.1)
  else:
    for epoch in np.split(drawn, len(drawn) // len(labels)):
      np.testing.assert_array_equal(np.sort(epoch), np.arange(len(labels)))


@pytest.mark.parametrize("counts, num_classes, batch_size", [
    ([47, 60, 20, 3, 31, 100], 4, 30),  # Tiled small classes; a cycle ends mid-iteration.
    ([20] * 10, 5, 16),                 # SUN-like: 16, 4; the cycle splits evenly.
    ([92, 300, 700], 2, 256),           # AWA1-like: 92 -> 368: 256, 112.
    ([5, 9], 3, 4),                     # More classes per iteration than half the cycle.
])
def test_gm_draws_match_the_reference_model(counts, num_classes, batch_size):
  labels, class_index = _class_index(counts)
  num_seen = len(counts)
  iterations = 6 * num_seen
  classes, indices, masks = jax.device_get(
      _gm_draws(class_index, num_classes, batch_size, iterations, jax.random.key(5)))
  assert classes.shape == (iterations, num_classes)
  assert indices.shape == masks.shape == (iterations, num_classes, batch_size)

  # The class cycle: draws in order, each aligned block of S a permutation.
  sequence = classes.reshape(-1)
  for block in np.split(sequence[:len(sequence) // num_seen * num_seen],
                        len(sequence) // num_seen):
    np.testing.assert_array_equal(np.sort(block), np.arange(num_seen))

  # Each class's own iterator, driven by the same class sequence.
  rng = np.random.default_rng(0)
  models = [ModelIterator(np.flatnonzero(labels == c), batch_size, rng) for c in range(num_seen)]
  per_class_batches = {c: [] for c in range(num_seen)}
  for c, items, mask in zip(sequence, indices.reshape(-1, batch_size),
                            masks.reshape(-1, batch_size)):
    assert int(mask.sum()) == len(models[c].next())
    # Every entry, padding included, is an example of the class.
    np.testing.assert_array_equal(labels[items], c)
    per_class_batches[c].append(_valid(items, mask))
  for c in range(num_seen):
    size = rs.tiled_size(counts[c], batch_size)
    sizes = [len(b) for b in per_class_batches[c]]
    for epoch in _epochs(per_class_batches[c], sizes, size):
      assert sorted(epoch) == sorted(list(np.flatnonzero(labels == c)) * (size // counts[c]))
  # The short batches happen: 30 then 17 for a class of 47.
  if counts[0] == 47:
    sizes = [len(b) for b in per_class_batches[0]]
    assert sizes[:4] == [30, 17, 30, 17]


def test_repeated_mask_counts_fakes_per_valid_real_row():
  mask = jnp.array([[True, True, True], [True, False, False]])
  np.testing.assert_array_equal(rs.repeated_mask(mask, 2),
                                [[True] * 6, [True, True, False, False, False, False]])


# --------------------------------------------------------------------------
# jit, vmap over seeds, lax.scan, and resuming.

N_CRITIC, BATCH, GM_CLASSES, GM_REAL = 3, 8, 3, 5
_COUNTS = [12, 3, 7, 9, 4]


def _sampler_and_index():
  _, class_index = _class_index(_COUNTS)
  sampler = rs.init_reference_sampler(class_index, sum(_COUNTS), len(_COUNTS),
                                      batch_size=BATCH, gm_real_per_class=GM_REAL,
                                      class_balanced=True)
  return sampler, class_index


def _iteration(sampler, class_index, base_key, iteration):
  """One generator iteration's draws, keyed as train_step keys its iterations."""
  key = jax.random.fold_in(base_key, iteration)
  critic_key, label_key, gm_key = jax.random.split(key, 3)

  def critic_step(state, step_key):
    state, indices, mask = rs.next_critic_batch(state, step_key, class_index, BATCH, True)
    return state, (indices, mask)

  critic, critic_draws = lax.scan(critic_step, sampler.critic,
                                  jax.random.split(critic_key, N_CRITIC))
  labels, label_items, label_mask = rs.next_batch(sampler.labels, label_key, BATCH)
  cycle, batches, classes, gm_indices, gm_mask = rs.next_gm_batches(
      sampler.class_cycle, sampler.class_batches, gm_key, class_index, GM_CLASSES, GM_REAL)
  sampler = rs.ReferenceSampler(critic, labels, cycle, batches)
  return sampler, (critic_draws, label_items, label_mask, classes, gm_indices, gm_mask)


@functools.partial(jax.jit, static_argnums=4)
def _run(sampler, class_index, base_key, first_iteration, count):
  def step(sampler, offset):
    return _iteration(sampler, class_index, base_key, first_iteration + offset)
  return lax.scan(step, sampler, jnp.arange(count))


def _assert_trees_equal(got, want):
  got, want = jax.device_get((got, want))
  assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(want)
  for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
    np.testing.assert_array_equal(g, w)


def test_init_under_jit_equals_eager_and_state_is_int32():
  sampler, class_index = _sampler_and_index()
  jitted = jax.jit(lambda index: rs.init_reference_sampler(
      index, sum(_COUNTS), len(_COUNTS), batch_size=BATCH, gm_real_per_class=GM_REAL,
      class_balanced=True))(class_index)
  _assert_trees_equal(jitted, sampler)
  assert all(leaf.dtype == jnp.int32 for leaf in jax.tree_util.tree_leaves(sampler))
  # GM class of 3 examples, real batch 5: tiled to 6 slots.
  np.testing.assert_array_equal(sampler.class_batches.size, [12, 6, 7, 9, 8])


def test_jit_scan_and_vmap_over_seeds_agree():
  sampler, class_index = _sampler_and_index()
  keys = jax.random.split(jax.random.key(11), 3)
  iterations = 8
  # One jitted iteration at a time, seed 0, against the same in one scan.
  one_iteration = jax.jit(_iteration)
  state, stepped = sampler, []
  for t in range(iterations):
    state, draws = one_iteration(state, class_index, keys[0], jnp.int32(t))
    stepped.append(draws)
  stepped = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *stepped)
  final, scanned = _run(sampler, class_index, keys[0], jnp.int32(0), iterations)
  _assert_trees_equal(scanned, stepped)
  _assert_trees_equal(final, state)
  # vmapped over seeds (the state stacked per seed) equals each seed alone.
  stacked = jax.tree_util.tree_map(lambda x: jnp.stack([x] * 3), sampler)
  vmapped = jax.jit(jax.vmap(lambda s, k: _run(s, class_index, k, jnp.int32(0), iterations)))(
      stacked, keys)
  for seed in range(3):
    alone = _run(sampler, class_index, keys[seed], jnp.int32(0), iterations)
    _assert_trees_equal(jax.tree_util.tree_map(lambda x, s=seed: x[s], vmapped), alone)
  # Seeds draw differently; the batch sizes, fixed by the rules, agree.
  label_masks = np.asarray(vmapped[1][2])
  assert not np.array_equal(vmapped[1][3][0], vmapped[1][3][1])
  np.testing.assert_array_equal(label_masks[0], label_masks[1])
  # Labels over 5 classes, batch 8: 5 -> 10 slots: 8, 2, 8, 2, ...
  np.testing.assert_array_equal(label_masks[0].sum(-1), [8, 2] * (iterations // 2))


def test_resuming_from_a_saved_state_continues_identically():
  sampler, class_index = _sampler_and_index()
  key = jax.random.key(12)
  final, draws = _run(sampler, class_index, key, jnp.int32(0), 8)
  middle, first = _run(sampler, class_index, key, jnp.int32(0), 4)
  # A checkpoint round trip: host numpy arrays, back as new device arrays.
  restored = jax.tree_util.tree_map(lambda x: jnp.asarray(np.array(x)), middle)
  resumed_final, rest = _run(restored, class_index, key, jnp.int32(4), 4)
  _assert_trees_equal(jax.tree_util.tree_map(lambda a, b: np.concatenate([a, b]), first, rest),
                      draws)
  _assert_trees_equal(resumed_final, final)
