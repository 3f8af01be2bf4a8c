"""Tests of the dataset condensation example (experiments/examples/condensation.py)."""

from absl import flags
from absl.testing import flagsaver
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.examples import condensation


def _linear_thetas(seed, count, in_dim, num_classes):
  """count linear softmax classifiers (init_mlp's layout) on a leading axis."""
  rng = np.random.default_rng(seed)
  return [{"kernel": rng.normal(size=(count, in_dim, num_classes)).astype(np.float32),
           "bias": rng.normal(size=(count, num_classes)).astype(np.float32)}]


@pytest.fixture(scope="module")
def data():
  return condensation.load_digits()


def _numpy_logits(params, x):
  h = np.asarray(x, np.float64)
  for i, layer in enumerate(params):
    h = h @ np.asarray(layer["kernel"], np.float64) + np.asarray(layer["bias"], np.float64)
    if i < len(params) - 1:
      h = np.maximum(h, 0.0)
  return h


def _cosine(a, b, axis=None):
  return (a * b).sum(axis) / (np.linalg.norm(a, axis=axis) * np.linalg.norm(b, axis=axis))


def _reference_linear_loss(thetas, real, synthetic):
  """condensation_loss of linear softmax classifiers, from closed-form gradients.

  For logits x W + b and mean cross-entropy over a batch of class c, the
  gradients are x^T (p - e_c) / B and the mean of p - e_c; "row" granularity
  takes one cosine per column of W (averaged) plus one for b.
  """
  kernels = np.asarray(thetas[0]["kernel"], np.float64)
  biases = np.asarray(thetas[0]["bias"], np.float64)
  total = 0.0
  for kernel, bias in zip(kernels, biases):
    for c in range(real.shape[0]):
      def grads(x, c=c, kernel=kernel, bias=bias):
        logits = x @ kernel + bias
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        p[:, c] -= 1.0
        return x.T @ p / len(x), p.mean(0)
      (real_w, real_b), (fake_w, fake_b) = grads(real[c]), grads(synthetic[c])
      total += (1.0 - _cosine(real_w, fake_w, axis=0).mean()) + (1.0 - _cosine(real_b, fake_b))
  return total / len(kernels)


def test_split_is_stratified_standardised_and_fixed(data):
  train_x, train_y, test_x, test_y = data
  assert train_x.shape == (1257, 64) and test_x.shape == (540, 64)
  total = np.bincount(train_y) + np.bincount(test_y)
  np.testing.assert_allclose(np.bincount(test_y), 0.3 * total, atol=1.0)
  assert abs(train_x.mean()) < 1e-5 and abs(train_x.std() - 1.0) < 1e-5
  np.testing.assert_array_equal(condensation.load_digits()[2], test_x)


def test_mlp_matches_numpy():
  params = condensation.init_mlp(jax.random.key(0), (16, 8), in_dim=5, num_classes=4)
  x = np.random.default_rng(1).normal(size=(200, 5)).astype(np.float32)
  np.testing.assert_allclose(condensation.apply_mlp(params, x), _numpy_logits(params, x),
                             rtol=1e-5, atol=1e-5)


def test_condensation_loss_matches_closed_form_gradients():
  thetas = _linear_thetas(0, 2, 6, 3)
  rng = np.random.default_rng(1)
  real = rng.normal(size=(3, 7, 6))
  synthetic = rng.normal(size=(3, 2, 6))
  got = jax.jit(condensation.condensation_loss)(thetas, jnp.asarray(real, jnp.float32),
                                                jnp.asarray(synthetic, jnp.float32))
  expected = _reference_linear_loss(thetas, real, synthetic)
  assert 0.5 < expected < 5.5  # Far from 0 (identical gradients) and from 6 (opposed).
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_pixel_gradient_matches_finite_differences():
  # Linear classifiers keep the loss smooth (ReLU switches would make it jump).
  thetas = _linear_thetas(0, 2, 6, 3)
  rng = np.random.default_rng(2)
  real = jnp.asarray(rng.normal(size=(3, 7, 6)), jnp.float32)
  synthetic = jnp.asarray(rng.normal(size=(3, 2, 6)), jnp.float32)
  loss = jax.jit(lambda s: condensation.condensation_loss(thetas, real, s))
  grads = jax.jit(jax.grad(loss))(synthetic)
  # Every synthetic image is pulled, through the second-order path (the only one).
  assert (np.abs(np.asarray(grads)).sum(-1) > 1e-4).all()
  for seed in range(3):
    direction = jnp.asarray(np.random.default_rng(10 + seed).normal(size=synthetic.shape),
                            jnp.float32)
    numeric = (loss(synthetic + 1e-2 * direction) - loss(synthetic - 1e-2 * direction)) / 2e-2
    np.testing.assert_allclose(jnp.vdot(grads, direction), numeric, rtol=1e-2)


def test_subsets_and_pools_hold_the_right_classes(data):
  train_x, train_y = data[:2]
  index = condensation.random_subsets(np.random.default_rng(0), train_y, 5, 3)
  assert index.shape == (3, 50) and not np.array_equal(index[0], index[1])
  for row in index:
    assert len(set(row.tolist())) == 50
    np.testing.assert_array_equal(train_y[row], np.repeat(np.arange(10), 5))
  pools, counts = condensation.class_pools(train_x, train_y)
  np.testing.assert_array_equal(counts, np.bincount(train_y))
  for c in (0, 9):
    np.testing.assert_array_equal(pools[c, :counts[c]], train_x[train_y == c])


def test_a_tiny_condensation_reduces_the_matching_loss_on_unseen_classifiers(data):
  train_x, train_y = data[:2]
  pools, counts = condensation.class_pools(train_x, train_y)
  index = condensation.random_subsets(np.random.default_rng(0), train_y, 1, 2)
  start = train_x[index].reshape(2, 10, 1, 64)
  # Linear classifiers: the quickest program to compile, and the closed form judges.
  config = condensation.Schedule(outer_steps=30, match_steps=2, theta_steps=1, num_thetas=2,
                                 real_batch=16, hidden_dims=())
  images, history = condensation.condense(jax.random.split(jax.random.key(1), 2), start,
                                          pools, counts, config)
  assert images.shape == start.shape and history.shape == (2, 30)
  # Judged on classifiers and real images the run never saw.
  thetas = _linear_thetas(100, 16, 64, 10)
  real = np.stack([train_x[train_y == c][:100] for c in range(10)]).astype(np.float64)
  for before, after in zip(start, np.asarray(images, np.float64)):
    assert (_reference_linear_loss(thetas, real, after)
            < 0.5 * _reference_linear_loss(thetas, real, before))


def test_evaluate_scores_the_trained_classifier_on_the_test_set(data):
  train_x, train_y, test_x, test_y = data
  keys = jax.random.split(jax.random.key(0), 2)
  index = condensation.random_subsets(np.random.default_rng(0), train_y, 20, 2)
  untrained = condensation.evaluate(keys, train_x[index], train_y[index], test_x, test_y,
                                    steps=0)
  for key, accuracy in zip(keys, untrained):
    params = condensation.init_mlp(jax.random.split(key)[0])
    expected = np.mean(_numpy_logits(params, test_x).argmax(-1) == test_y)
    assert float(accuracy) == pytest.approx(expected, abs=1.5 / test_y.size)
  trained = condensation.evaluate(keys, train_x[index], train_y[index], test_x, test_y,
                                  steps=60)
  assert (np.asarray(trained) > 0.8).all() and (np.asarray(untrained) < 0.4).all()


def test_format_table():
  lines = condensation.format_table([("full data", "all", np.array([0.98, 0.96])),
                                     ("random real", 1, np.array([0.5, 0.7, 0.6]))]).splitlines()
  assert lines[1].split() == ["full", "data", "all", "97.0", "±", "1.0", "2"]
  assert lines[2].split() == ["random", "real", "1", "60.0", "±", "8.2", "3"]  # population std
  assert len({len(line) for line in lines}) == 1


@pytest.fixture
def binary_flags():
  """The binary's flags (defined only when it runs as a program), for one test."""
  before = set(flags.FLAGS)
  condensation.define_flags()
  flags.FLAGS.mark_as_parsed()
  yield
  for name in set(flags.FLAGS) - before:
    delattr(flags.FLAGS, name)


@pytest.mark.parametrize("flag_values, message", [
    (dict(ipc=["0"]), "--ipc: expected comma-separated positive integers, found ['0']"),
    (dict(ipc=["1", "two"]), "--ipc: expected comma-separated positive integers, "
     "found ['1', 'two']"),
    (dict(ipc=["500"]), "--ipc: expected at most 122 (the smallest class), found 500"),
    (dict(steps=0), "--steps: expected a positive integer, found 0"),
    (dict(num_sets=-1), "--num_sets: expected a positive integer, found -1"),
])
def test_bad_flags_print_one_line_and_exit_2(binary_flags, capsys, flag_values, message):
  del binary_flags  # Used for its side effect.
  with flagsaver.flagsaver(**flag_values):
    with pytest.raises(SystemExit) as exit_info:
      condensation.main(["condensation"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "error: " + message + "\n"
