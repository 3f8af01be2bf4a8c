"""Tests for the dataset condensation example (experiments/examples/condensation.py)."""

import functools

from absl import flags
from absl.testing import flagsaver
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.examples import condensation
from gmn_jax.errors import ConfigError
from gmn_jax.losses import gradient_matching

# Small enough to compile and run in seconds on a loaded 2-core machine.
_TINY = condensation.CondensationConfig(
    ipc=1, outer_steps=30, match_steps=2, theta_steps=1, num_thetas=2, real_batch=16,
    hidden_dims=(32,))


@functools.partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _stacked_mlps(key, count, hidden_dims, in_dim=64, num_classes=10):
  """count MLPs on a leading axis; jitted, since eager vmapped init is slow."""
  return jax.vmap(lambda k: condensation.init_mlp(k, hidden_dims, in_dim, num_classes))(
      jax.random.split(key, count))


@pytest.fixture(scope="module")
def data():
  return condensation.load_digits_split()


def _numpy_logits(params, x):
  h = np.asarray(x, np.float64)
  for i, layer in enumerate(params):
    h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
    if i < len(params) - 1:
      h = np.maximum(h, 0.0)
  return h


# --------------------------------------------------------------------------
# Data.


def test_split_is_stratified_standardised_and_fixed(data):
  assert data.train_x.shape == (1257, 64) and data.test_x.shape == (540, 64)
  train_counts = np.bincount(data.train_y, minlength=10)
  test_counts = np.bincount(data.test_y, minlength=10)
  # Stratified: every class keeps its share of the 1,797 images to within one.
  total = train_counts + test_counts
  np.testing.assert_allclose(test_counts, 0.3 * total, atol=1.0)
  assert abs(data.train_x.mean()) < 1e-5 and abs(data.train_x.std() - 1.0) < 1e-5
  raw_pixels = data.train_x * data.pixel_std + data.pixel_mean
  assert raw_pixels.min() > -1e-5 and raw_pixels.max() < 1 + 1e-5
  again = condensation.load_digits_split()
  np.testing.assert_array_equal(again.test_y, data.test_y)
  np.testing.assert_array_equal(again.test_x, data.test_x)


def test_class_batches_come_from_their_own_class_only():
  rng = np.random.default_rng(0)
  y = np.array([0] * 3 + [1] * 7 + [2] * 5, np.int32)
  x = rng.normal(size=(y.size, 4)).astype(np.float32)
  pools, counts = condensation.class_pools(x, y, num_classes=3)
  np.testing.assert_array_equal(counts, [3, 7, 5])
  batches = np.asarray(condensation.sample_class_batches(
      jax.random.key(0), jnp.asarray(pools), jnp.asarray(counts), 50))
  assert batches.shape == (3, 50, 4)
  for c in range(3):
    members = x[y == c]
    matches = (batches[c][:, None, :] == members[None]).all(-1)
    assert matches.any(1).all(), f"class {c} batch holds a padding row or another class's row"
    # 50 draws with replacement from at most 7 rows reach every row.
    assert matches.any(0).all()


def test_class_pools_reject_a_missing_class():
  with pytest.raises(ConfigError, match=r"expected every class 0..2 at least once, "
                     r"found counts \[2, 0, 1\]"):
    condensation.class_pools(np.zeros((3, 2)), np.array([0, 0, 2]), num_classes=3)


def test_random_real_subsets_are_class_balanced_and_distinct(data):
  index = condensation.random_real_subsets(jax.random.key(0), data.train_y, 5, 4)
  assert index.shape == (4, 50)
  for row in index:
    assert len(set(row.tolist())) == 50
    np.testing.assert_array_equal(data.train_y[row], np.repeat(np.arange(10), 5))
  assert not np.array_equal(index[0], index[1])


def test_kmeans_centroids_are_class_means_at_ipc_1_and_lloyd_fixed_points(data):
  x, y = condensation.class_kmeans_centroids(data.train_x, data.train_y, 1)
  np.testing.assert_array_equal(y, np.arange(10))
  means = np.stack([data.train_x[data.train_y == c].mean(0) for c in range(10)])
  np.testing.assert_allclose(x, means, atol=1e-5)
  x, y = condensation.class_kmeans_centroids(data.train_x, data.train_y, 3)
  np.testing.assert_array_equal(y, np.repeat(np.arange(10), 3))
  for c in range(10):
    members = data.train_x[data.train_y == c]
    centroids = x[y == c]
    nearest = ((members[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    for j in range(3):
      np.testing.assert_allclose(centroids[j], members[nearest == j].mean(0), atol=1e-4)


# --------------------------------------------------------------------------
# Classifier and evaluation helpers.


def test_mlp_and_accuracy_match_numpy():
  params = condensation.init_mlp(jax.random.key(0), (16, 8), in_dim=5, num_classes=4)
  x = np.random.default_rng(1).normal(size=(200, 5)).astype(np.float32)
  logits = _numpy_logits(params, x)
  np.testing.assert_allclose(condensation.apply_mlp(params, x), logits, rtol=1e-5, atol=1e-5)
  y = np.random.default_rng(2).integers(0, 4, size=200)
  # About a quarter right by chance, not 0 or 1, so the comparison can fail.
  expected = np.mean(logits.argmax(-1) == y)
  assert 0.1 < expected < 0.9
  assert float(condensation.accuracy(params, x, y)) == pytest.approx(expected, abs=1e-7)


def test_stacked_accuracy_is_per_classifier():
  stacked = _stacked_mlps(jax.random.key(3), 3, (8,), 5, 3)
  x = np.random.default_rng(4).normal(size=(90, 5)).astype(np.float32)
  y = np.random.default_rng(5).integers(0, 3, size=90)
  got = np.asarray(condensation._stacked_accuracy(stacked, x, y))
  expected = [np.mean(_numpy_logits(jax.tree_util.tree_map(lambda p, i=i: p[i], stacked), x)
                      .argmax(-1) == y) for i in range(3)]
  np.testing.assert_allclose(got, expected, atol=1e-7)


def test_evaluate_sets_trains_classifiers_that_generalise(data):
  config = condensation.EvalConfig(steps=60, hidden_dims=(32,))
  index = condensation.random_real_subsets(jax.random.key(0), data.train_y, 20, 2)
  acc = condensation.evaluate_sets(jax.random.key(1), data.train_x[index], data.train_y[index],
                                   data.test_x, data.test_y, config)
  assert acc.shape == (2,)
  assert (acc > 0.8).all(), acc  # 200 real images; chance is 0.1


def test_format_table():
  rows = [condensation.Row("full data", None, np.array([0.98, 0.96])),
          condensation.Row("random real", 1, np.array([0.5, 0.7, 0.6])),
          condensation.Row("condensed", 10, np.array([0.9]))]
  lines = condensation.format_table(rows).splitlines()
  assert lines[0].split() == ["method", "ipc", "test", "accuracy", "(%)", "n"]
  assert set(lines[1]) == {"-"}
  assert lines[2].split() == ["full", "data", "all", "97.0", "±", "1.0", "2"]
  # Population std of 50, 60, 70 is 8.16.
  assert lines[3].split() == ["random", "real", "1", "60.0", "±", "8.2", "3"]
  assert lines[4].split() == ["condensed", "10", "90.0", "±", "0.0", "1"]
  assert len({len(line) for line in lines}) == 1  # columns line up


# --------------------------------------------------------------------------
# Condensation.


_loss = jax.jit(condensation.condensation_loss)


def test_condensation_loss_is_the_per_class_sum_of_gradient_matching():
  thetas = _stacked_mlps(jax.random.key(0), 2, (8,), 6, 3)
  rng = np.random.default_rng(1)
  real = rng.normal(size=(3, 7, 6)).astype(np.float32)
  synthetic = rng.normal(size=(3, 2, 6)).astype(np.float32)

  @jax.jit
  def loop_over_classes(thetas, real, synthetic):
    return sum(gradient_matching(condensation.classification_loss, thetas,
                                 (real[c], jnp.full(7, c)), (synthetic[c], jnp.full(2, c)))
               for c in range(3))

  np.testing.assert_allclose(_loss(thetas, real, synthetic),
                             loop_over_classes(thetas, real, synthetic), rtol=1e-5)


def test_synthetic_images_get_a_nonzero_gradient_that_matches_finite_differences():
  # A linear softmax classifier keeps the loss smooth: with ReLU units the
  # synthetic gradient, and so the loss, jumps where a unit switches.
  thetas = _stacked_mlps(jax.random.key(0), 2, (), 6, 3)
  rng = np.random.default_rng(2)
  real = jnp.asarray(rng.normal(size=(3, 7, 6)), jnp.float32)
  synthetic = jnp.asarray(rng.normal(size=(3, 2, 6)), jnp.float32)
  loss = jax.jit(lambda s: condensation.condensation_loss(thetas, real, s))
  grads = jax.jit(jax.grad(loss))(synthetic)
  assert np.isfinite(grads).all()
  # Every synthetic image of every class is pulled, through the second-order
  # path of gradient_matching (the only path from the images to the loss).
  assert (np.abs(np.asarray(grads)).sum(-1) > 1e-4).all()
  for seed in range(3):
    direction = jnp.asarray(np.random.default_rng(10 + seed).normal(size=synthetic.shape),
                            jnp.float32)
    step = 1e-2
    numeric = (loss(synthetic + step * direction)
               - loss(synthetic - step * direction)) / (2 * step)
    np.testing.assert_allclose(jnp.vdot(grads, direction), numeric, rtol=1e-2)


def test_a_tiny_condensation_run_reduces_the_matching_loss(data):
  pools, counts = condensation.class_pools(data.train_x, data.train_y)
  initial = condensation.initial_images(jax.random.key(0), pools, counts, ipc=1)
  # Judge on classifiers and real batches the run never saw.
  eval_thetas = _stacked_mlps(jax.random.key(100), 16, _TINY.hidden_dims)
  real = condensation.sample_class_batches(jax.random.key(101), jnp.asarray(pools),
                                           jnp.asarray(counts), 128)
  before = float(_loss(eval_thetas, real, initial))
  result = condensation.condense(jax.random.key(1), data.train_x, data.train_y, _TINY,
                                 initial=initial)
  assert result.images.shape == (10, 64)
  np.testing.assert_array_equal(result.labels, np.arange(10))
  assert result.loss_history.shape == (_TINY.outer_steps,)
  after = float(_loss(eval_thetas, real, result.images[:, None, :]))
  assert after < 0.9 * before, (before, after)


def test_initial_real_images_are_distinct_images_of_their_class(data):
  pools, counts = condensation.class_pools(data.train_x, data.train_y)
  images = np.asarray(condensation.initial_images(jax.random.key(0), pools, counts, ipc=3))
  assert images.shape == (10, 3, 64)
  for c in range(10):
    members = data.train_x[data.train_y == c]
    rows = [np.flatnonzero((members == image).all(-1)) for image in images[c]]
    assert all(r.size == 1 for r in rows)
    assert len({int(r[0]) for r in rows}) == 3


@pytest.mark.parametrize("field, value, message", [
    ("ipc", 0, "condensation ipc: expected a positive integer, found 0"),
    ("theta_steps", -1, "condensation theta_steps: expected a non-negative integer, found -1"),
    ("image_lr", 0.0, "condensation image_lr: expected a positive float, found 0.0"),
    ("hidden_dims", (0,), "condensation hidden_dims: expected positive integer widths"),
    ("init", "zeros", "condensation init: expected one of ('real', 'noise'), found 'zeros'"),
])
def test_bad_config_raises_config_error(field, value, message):
  config = condensation.CondensationConfig(**{field: value})
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
    config.validate()


def test_default_config_schedules_by_ipc():
  one = condensation.default_config(1)
  assert (one.outer_steps, one.match_steps, one.theta_steps) == (500, 1, 0)
  ten = condensation.default_config(10, image_updates=95, init="noise")
  assert (ten.ipc, ten.outer_steps, ten.match_steps, ten.theta_steps) == (10, 9, 10, 20)
  assert ten.init == "noise"
  assert condensation.default_config(5, image_updates=3).outer_steps == 1
  with pytest.raises(ConfigError, match="image_updates: expected a positive integer, found 0"):
    condensation.default_config(5, image_updates=0)
  with pytest.raises(ConfigError, match="init: expected one of"):
    condensation.default_config(5, init="zeros")


def test_ipc_larger_than_the_smallest_class_is_rejected(data):
  pools, counts = condensation.class_pools(data.train_x, data.train_y)
  with pytest.raises(ConfigError, match=r"condensation ipc: expected at most 1\d\d"):
    condensation.initial_images(jax.random.key(0), pools, counts, ipc=1000)


@pytest.mark.parametrize("ipcs, num_sets, message", [
    ([1, 500], 1, r"condensation ipc: expected at most 1\d\d \(the smallest class\), found 500"),
    ([1], 11, r"condensation num_sets: expected 1..num_eval=10, found 11"),
])
def test_run_comparison_rejects_bad_sizes_before_any_work(data, ipcs, num_sets, message):
  with pytest.raises(ConfigError, match=message):
    condensation.run_comparison(jax.random.key(0), data, ipcs, condensation.EvalConfig(),
                                num_eval=10, num_sets=num_sets)


@pytest.fixture
def binary_flags():
  """The binary's flags, defined for one test and removed afterwards.

  The binary defines its flags only when run as a program (so that test
  modules importing several binaries never collide); this test calls its
  main in-process, so it defines them here and cleans up.
  """
  before = set(flags.FLAGS)
  condensation.define_flags()
  yield
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)


@pytest.mark.parametrize("flag_values, message", [
    (dict(ipc=["0"]), "--ipc: expected comma-separated positive integers, found ['0']"),
    (dict(ipc=["two"]), "--ipc: expected comma-separated positive integers, found ['two']"),
    (dict(steps=0), "--steps: expected a positive integer, found 0"),
    (dict(num_sets=11), "--num_sets: expected 1..--num_eval=10, found 11"),
    (dict(init="zeros"),
     "condensation init: expected one of ('real', 'noise'), found 'zeros'"),
])
def test_binary_prints_one_line_and_exits_2_on_bad_flags(binary_flags, capsys, flag_values,
                                                          message):
  del binary_flags  # Used for its side effect.
  flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(**flag_values):
    with pytest.raises(SystemExit) as exit_info:
      condensation.main(["condensation"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "error: " + message + "\n"
