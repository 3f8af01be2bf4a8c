"""Tests of the on-device samplers: distributions, shapes, tracing, sharding.

The statistical tests use fixed seeds and enough draws that a correct sampler
passes with a wide margin (p-value thresholds of 1e-4 or less), while the
plausible mistakes (sampling by data frequency, a biased within-class pick,
duplicates when sampling without replacement) fail by orders of magnitude.
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from scipy import stats

from gmn_jax.data import samplers
from gmn_jax.errors import DataError

# Very unequal class sizes, shuffled so that classes are interleaved.
CLASS_SIZES = {2: 1, 5: 4, 6: 30, 7: 20, 9: 300, 11: 1200}
P_MIN = 1e-4


def _labels(seed=0):
  labels = np.concatenate([np.full(n, c) for c, n in CLASS_SIZES.items()])
  return np.random.default_rng(seed).permutation(labels).astype(np.int32)


def _per_class_counts(drawn_labels):
  return np.array([np.count_nonzero(drawn_labels == c) for c in CLASS_SIZES])


def _assert_fits(observed, expected_probability):
  """Chi-square goodness of fit of counts to probabilities (p > P_MIN)."""
  observed = np.asarray(observed, np.float64)
  expected = observed.sum() * np.asarray(expected_probability, np.float64)
  _, p_value = stats.chisquare(observed, expected)
  assert p_value > P_MIN, (p_value, observed[:10], expected[:10])


def test_build_class_index_groups_examples():
  labels = _labels()
  index = samplers.build_class_index(labels, num_classes_total=13)
  np.testing.assert_array_equal(index.classes, sorted(CLASS_SIZES))
  np.testing.assert_array_equal(index.counts,
                                [CLASS_SIZES[c] for c in sorted(CLASS_SIZES)])
  assert index.max_count == 1200
  assert index.row_of_class.shape == (13,)
  for row, c in enumerate(index.classes):
    assert index.row_of_class[c] == row
    start = index.starts[row]
    members = index.members[start:start + index.counts[row]]
    np.testing.assert_array_equal(members, np.flatnonzero(labels == c))
  assert np.count_nonzero(index.row_of_class >= 0) == len(CLASS_SIZES)


def test_build_class_index_subset_of_classes():
  labels = _labels()
  index = samplers.build_class_index(labels, classes=[9, 2])
  np.testing.assert_array_equal(index.classes, [2, 9])
  assert index.members.shape == (301,)
  assert set(labels[index.members]) == {2, 9}
  assert index.max_count == 300


@pytest.mark.parametrize("labels, classes, fragment", [
    (np.zeros((3, 2), np.int32), None, "1-D integer"),
    (np.array([0.0, 1.0]), None, "1-D integer"),
    (np.array([0, 1, 1]), [0, 1, 2], "at least one example"),
    (np.array([0, 1, 1]), [1, 1], "distinct class ids"),
    (np.array([0, 1, 1]), [-1, 0], "non-negative"),
])
def test_build_class_index_rejects_bad_input(labels, classes, fragment):
  with pytest.raises(DataError, match=fragment):
    samplers.build_class_index(labels, classes)


def test_build_class_index_rejects_class_beyond_table():
  with pytest.raises(DataError, match="class ids below 3"):
    samplers.build_class_index(np.array([0, 5]), num_classes_total=3)


def test_class_balanced_matches_reference_weights():
  """Each example is drawn with probability (1/n_{y_i}) / sum_j (1/n_{y_j})."""
  labels = _labels()
  index = samplers.build_class_index(labels)
  draws = jax.jit(samplers.class_balanced_indices, static_argnums=2)(
      jax.random.key(0), index, 400_000)
  assert draws.shape == (400_000,) and draws.dtype == jnp.int32
  draws = np.asarray(draws)
  # The reference's weights, computed independently with numpy.
  class_sizes = np.array([CLASS_SIZES[c] for c in labels])
  weights = 1.0 / class_sizes
  _assert_fits(np.bincount(draws, minlength=labels.size),
               weights / weights.sum())
  # Each class gets ~1/C of the draws, although sizes differ by 1200x.
  per_class = _per_class_counts(labels[draws])
  _assert_fits(per_class, np.full(len(CLASS_SIZES), 1 / len(CLASS_SIZES)))


def test_class_balanced_is_not_data_frequency():
  """The same test rejects a sampler that draws by data frequency."""
  labels = _labels()
  draws = samplers.uniform_indices(jax.random.key(1), labels.size, 50_000)
  per_class = _per_class_counts(labels[np.asarray(draws)])
  expected = per_class.sum() / len(CLASS_SIZES)
  _, p_value = stats.chisquare(per_class, np.full(len(CLASS_SIZES), expected))
  assert p_value < 1e-100


def test_uniform_indices_distribution():
  draws = np.asarray(samplers.uniform_indices(jax.random.key(2), 37, 100_000))
  assert draws.min() >= 0 and draws.max() < 37
  _assert_fits(np.bincount(draws, minlength=37), np.full(37, 1 / 37))


def test_uniform_class_labels_distribution():
  classes = np.array([3, 7, 11, 42], np.int32)
  draws = samplers.uniform_class_labels(jax.random.key(3), classes, 40_000)
  assert draws.shape == (40_000,) and draws.dtype == jnp.int32
  draws = np.asarray(draws)
  assert set(np.unique(draws)) == set(classes)
  _assert_fits([np.count_nonzero(draws == c) for c in classes],
               np.full(4, 0.25))


def test_distinct_classes_are_distinct_and_uniform():
  classes = np.arange(10, 20, dtype=np.int32)
  draw = jax.jit(jax.vmap(samplers.distinct_classes, (0, None, None)),
                 static_argnums=2)
  keys = jax.random.split(jax.random.key(4), 5000)
  picks = np.asarray(draw(keys, classes, 3))
  assert picks.shape == (5000, 3)
  assert all(len(set(row)) == 3 for row in picks)
  _assert_fits(np.bincount(picks.ravel() - 10, minlength=10), np.full(10, 0.1))


def _per_class_draws(index, class_ids, batch_size, repeats, seed=5):
  draw = jax.jit(jax.vmap(samplers.per_class_batch, (0, None, None, None)),
                 static_argnums=3)
  keys = jax.random.split(jax.random.key(seed), repeats)
  return np.asarray(draw(keys, index, jnp.asarray(class_ids), batch_size))


# One compiled draw serves the per-class tests: classes larger than the
# batch (6, 9, and 6 again), smaller (5, 2) and exactly its size (7). The
# largest class is left out of the index, which keeps max_count small.
PER_CLASS_IDS = (6, 9, 6, 5, 2, 7)
PER_CLASS_BATCH = 20
PER_CLASS_REPEATS = 3000


@pytest.fixture(scope="module")
def per_class_draws():
  index = samplers.build_class_index(_labels(), classes=[2, 5, 6, 7, 9])
  draws = _per_class_draws(index, PER_CLASS_IDS, PER_CLASS_BATCH,
                           PER_CLASS_REPEATS)
  assert draws.dtype == np.int32
  assert draws.shape == (PER_CLASS_REPEATS, len(PER_CLASS_IDS),
                         PER_CLASS_BATCH)
  labels = _labels()
  for j, c in enumerate(PER_CLASS_IDS):
    assert np.all(labels[draws[:, j]] == c)
  return draws


def _has_duplicates(rows):
  return np.any(np.diff(np.sort(rows, axis=1), axis=1) == 0, axis=1)


def test_per_class_batch_without_replacement(per_class_draws):
  labels, draws = _labels(), per_class_draws
  repeats, batch_size = PER_CLASS_REPEATS, PER_CLASS_BATCH
  for j in (0, 1, 2):
    assert not np.any(_has_duplicates(draws[:, j]))
  # The two requests for class 6 are independent draws, not copies.
  assert np.mean(np.all(draws[:, 0] == draws[:, 2], axis=1)) < 0.01
  # Every member is included with probability batch/count; the first slot is
  # uniform over members (so the order within a batch is random too).
  for j, c in enumerate([6, 9]):
    members = np.flatnonzero(labels == c)
    first = np.searchsorted(members, draws[:, j, 0])
    _assert_fits(np.bincount(first, minlength=members.size),
                 np.full(members.size, 1 / members.size))
    inclusions = np.bincount(np.searchsorted(members, draws[:, j].ravel()),
                             minlength=members.size)
    p = batch_size / members.size
    sigma = np.sqrt(repeats * p * (1 - p))
    assert np.max(np.abs(inclusions - repeats * p)) < 5 * sigma


def test_per_class_batch_with_replacement_for_small_classes(per_class_draws):
  labels, draws = _labels(), per_class_draws
  np.testing.assert_array_equal(draws[:, 4], np.flatnonzero(labels == 2)[0])
  small = draws[:, 3]
  members = np.flatnonzero(labels == 5)
  positions = np.searchsorted(members, small.ravel())
  _assert_fits(np.bincount(positions, minlength=4), np.full(4, 0.25))
  # Repeats within one batch are as likely as under independent draws: the
  # number of distinct members per batch follows the occupancy distribution.
  # (mean 3.987, standard error 0.002 here; cycling through the members, as
  # tiling does, would give exactly 4).
  distinct = np.array([len(set(row)) for row in small])
  expected_distinct = 4 * (1 - (3 / 4) ** PER_CLASS_BATCH)
  assert abs(distinct.mean() - expected_distinct) < 0.006
  first = np.searchsorted(members, small[:, 0])
  _assert_fits(np.bincount(first, minlength=4), np.full(4, 0.25))


def test_per_class_batch_exact_size_class_is_a_permutation(per_class_draws):
  members = np.flatnonzero(_labels() == 7)
  assert members.size == PER_CLASS_BATCH
  for row in per_class_draws[:, 5]:
    np.testing.assert_array_equal(np.sort(row), members)


def test_per_class_batch_larger_than_every_class():
  labels = np.repeat(np.arange(3), [3, 5, 2]).astype(np.int32)
  index = samplers.build_class_index(labels)
  draws = _per_class_draws(index, [0, 1, 2], 8, 200)
  for j in range(3):
    assert np.all(labels[draws[:, j]] == j)
    assert len(np.unique(draws[:, j])) == [3, 5, 2][j]


def test_epoch_batches_cover_each_example_once():
  batches = samplers.epoch_batches(jax.random.key(7), 10, 4)
  assert batches.indices.shape == (3, 4) and batches.mask.shape == (3, 4)
  assert batches.indices.dtype == jnp.int32 and batches.mask.dtype == jnp.bool_
  indices, mask = np.asarray(batches.indices), np.asarray(batches.mask)
  np.testing.assert_array_equal(np.sort(indices[mask]), np.arange(10))
  np.testing.assert_array_equal(mask.ravel(), np.arange(12) < 10)
  assert np.all(indices[~mask] == 0)


def test_epoch_batches_drop_remainder():
  batches = samplers.epoch_batches(jax.random.key(8), 10, 4,
                                   drop_remainder=True)
  indices = np.asarray(batches.indices)
  assert indices.shape == (2, 4) and np.all(np.asarray(batches.mask))
  assert len(set(indices.ravel())) == 8 and indices.max() < 10


def test_epoch_batches_order_is_uniform():
  draw = jax.jit(jax.vmap(
      lambda key: samplers.epoch_batches(key, 9, 4).indices[0, 0]))
  first = np.asarray(draw(jax.random.split(jax.random.key(9), 18_000)))
  _assert_fits(np.bincount(first, minlength=9), np.full(9, 1 / 9))


def test_samplers_trace_once():
  labels = _labels()
  index = jax.device_put(samplers.build_class_index(labels))
  other = jax.device_put(samplers.build_class_index(np.roll(labels, 3)))

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(key, class_index):
    keys = jax.random.split(key, 5)
    classes = samplers.distinct_classes(keys[0], class_index.classes, 3)
    return (samplers.class_balanced_indices(keys[1], class_index, 16),
            samplers.uniform_class_labels(keys[2], class_index.classes, 16),
            samplers.per_class_batch(keys[3], class_index, classes, 8),
            samplers.epoch_batches(keys[4], 64, 16).indices)

  for seed, class_index in enumerate([index, other, index]):
    step(jax.random.key(seed), class_index)
  chex.clear_trace_counter()


def _sharded_setup():
  labels = np.resize(_labels(), 1532)  # Divisible by the 4 devices.
  features = np.random.default_rng(0).normal(size=(labels.size, 6))
  return samplers.build_class_index(labels), features.astype(np.float32)


def _draw_indices(key, class_index):
  first, second = jax.random.split(key)
  return (samplers.class_balanced_indices(first, class_index, 32),
          samplers.per_class_batch(second, class_index, jnp.array([6, 11]), 12))


def test_samplers_on_sharded_inputs_auto_mesh():
  """With Auto axes everything, the index included, may be sharded."""
  mesh = jax.make_mesh((4,), ("data",), axis_types=(AxisType.Auto,))
  index, features = _sharded_setup()

  def gather(key, class_index, features):
    return tuple(features[i] for i in _draw_indices(key, class_index))

  expected = jax.jit(gather)(jax.random.key(10), index, features)
  sharded = NamedSharding(mesh, P("data"))
  sharded_features = jax.device_put(features, sharded)
  sharded_index = dataclasses.replace(
      jax.device_put(index, NamedSharding(mesh, P())),
      members=jax.device_put(index.members, sharded))
  assert len(sharded_index.members.sharding.device_set) == 4
  actual = jax.jit(gather)(jax.random.key(10), sharded_index, sharded_features)
  for a, e in zip(actual, expected):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(e))


def test_samplers_on_sharded_inputs_explicit_mesh():
  """With Explicit axes (make_mesh's default) the index must be replicated.

  The features stay sharded on 'data'; the gather then names its output
  sharding, here sharding the batch axis.
  """
  mesh = jax.make_mesh((4,), ("data",))
  index, features = _sharded_setup()
  expected = [features[np.asarray(i)]
              for i in jax.jit(_draw_indices)(jax.random.key(11), index)]

  def gather(key, class_index, features):
    balanced, per_class = _draw_indices(key, class_index)
    batch_sharded = NamedSharding(mesh, P("data"))
    return (features.at[balanced].get(out_sharding=batch_sharded),
            features.at[per_class].get(out_sharding=NamedSharding(mesh, P())))

  actual = jax.jit(gather)(jax.random.key(11),
                           jax.device_put(index, NamedSharding(mesh, P())),
                           jax.device_put(features,
                                          NamedSharding(mesh, P("data"))))
  assert actual[0].sharding.spec[0] == "data"
  for a, e in zip(actual, expected):
    np.testing.assert_array_equal(np.asarray(a), e)
