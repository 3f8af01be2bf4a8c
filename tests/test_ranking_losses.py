"""Tests of gmn_jax.ranking_losses against exact and loop-by-loop references."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import ranking_losses


def brute_force_rank_weight(r):
  """beta_r = l(r) / r with l(r) = 1 + 1/2 + ... + 1/r, in exact fractions."""
  if r == 0:
    return Fraction(0)
  total = Fraction(0)
  for k in range(1, r + 1):
    total += Fraction(1, k)
  return total / r


def numpy_violations(scores, labels, margin):
  """[(c, margin + s_c - s_y)] of every wrong class c of every row, by loops."""
  rows = []
  for row, y in zip(scores, labels):
    rows.append([(c, margin + row[c] - row[y]) for c in range(len(row)) if c != y])
  return rows


def numpy_devise(scores, labels, margin):
  return np.array([sum(max(0.0, v) for _, v in row)
                   for row in numpy_violations(scores, labels, margin)])


def numpy_ale(scores, labels):
  out = []
  for row in numpy_violations(scores, labels, 1.0):
    r = sum(1 for _, v in row if v > 0)
    out.append(float(brute_force_rank_weight(r)) * sum(max(0.0, v) for _, v in row))
  return np.array(out)


def numpy_gradient(scores, labels, margin, weighted):
  """d(sum of losses)/d scores, the rank weight held fixed for ALE."""
  grad = np.zeros_like(scores)
  for i, row in enumerate(numpy_violations(scores, labels, margin)):
    active = [c for c, v in row if v > 0]
    weight = float(brute_force_rank_weight(len(active))) if weighted else 1.0
    for c in active:
      grad[i, c] += weight
      grad[i, labels[i]] -= weight
  return grad


def random_problem(seed, quantised):
  """(8, 6) scores and labels; quantised scores have ties and exact hinges."""
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(8, 6))
  if quantised:  # halves: s_c = s_y and 1 + s_c - s_y = 0 both happen
    scores = np.round(2 * scores) / 2
  labels = rng.integers(0, 6, size=8)
  scores[0, labels[0]] = 10.0  # a row without any violation
  scores[1] = 0.0  # a row of ties: every wrong class violates
  return scores, labels


@pytest.mark.parametrize("num_classes", [1, 2, 3, 7, 50, 200])
def test_ale_rank_weights_match_exact_fractions(num_classes):
  got = ranking_losses.ale_rank_weights(num_classes)
  assert got.shape == (num_classes,)
  want = [float(brute_force_rank_weight(r)) for r in range(num_classes)]
  np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("seed,quantised", [(0, True), (1, True), (2, False)])
def test_losses_match_numpy_loops(seed, quantised):
  scores, labels = random_problem(seed, quantised)
  s, y = jnp.asarray(scores, jnp.float32), jnp.asarray(labels)
  ale = np.asarray(ranking_losses.ale_loss(s, y))
  np.testing.assert_allclose(ale, numpy_ale(scores, labels), rtol=1e-5, atol=1e-6)
  assert ale[0] == 0.0
  # A row of ties: all C - 1 = 5 wrong classes violate by exactly 1.
  np.testing.assert_allclose(ale[1], float(brute_force_rank_weight(5)) * 5, rtol=1e-6)
  devise = jax.jit(ranking_losses.devise_loss)
  for margin in (1.0, 0.3, 2.5):  # a traced margin
    np.testing.assert_allclose(np.asarray(devise(s, y, margin)),
                               numpy_devise(scores, labels, margin), rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ranking_losses.devise_loss(s, y), devise(s, y, 1.0))


@pytest.mark.parametrize("seed", [3, 4])
@pytest.mark.parametrize("kind", ["ale", "devise"])
def test_gradients_match_numpy(seed, kind):
  # Continuous scores: no violation sits on its hinge, so both losses are
  # differentiable (and the ALE rank constant) near them.
  scores, labels = random_problem(seed, quantised=False)
  s, y = jnp.asarray(scores, jnp.float32), jnp.asarray(labels)
  weighted = kind == "ale"
  margin = 1.0 if weighted else 0.7

  def loss(x):
    if weighted:
      return ranking_losses.ale_loss(x, y).sum()
    return ranking_losses.devise_loss(x, y, margin).sum()

  def reference(x):
    return (numpy_ale(x, labels) if weighted else numpy_devise(x, labels, margin)).sum()

  want = numpy_gradient(scores, labels, margin, weighted)
  assert np.abs(want).sum() > 0
  np.testing.assert_allclose(np.asarray(jax.grad(loss)(s)), want, rtol=1e-5, atol=1e-6)
  # The reference gradient itself against central finite differences.
  numeric = np.zeros_like(scores)
  eps = 1e-6
  for index in np.ndindex(scores.shape):
    step = np.zeros_like(scores)
    step[index] = eps
    numeric[index] = (reference(scores + step) - reference(scores - step)) / (2 * eps)
  np.testing.assert_allclose(want, numeric, atol=1e-6)


def test_ale_weight_is_held_constant_in_the_gradient():
  # One example, true class 0: two violations (r = 2, beta = 3/4), so the
  # gradient is beta times that of the summed violations, nothing more.
  scores = jnp.array([[0.0, 0.5, -0.5, -3.0]])
  grad = jax.grad(lambda s: ranking_losses.ale_loss(s, jnp.array([0])).sum())(scores)
  np.testing.assert_allclose(np.asarray(grad), [[-1.5, 0.75, 0.75, 0.0]], rtol=1e-6)


def test_out_of_range_labels_give_nan():
  scores = jnp.zeros((2, 3))
  labels = jnp.array([0, 3])
  for loss in (ranking_losses.ale_loss(scores, labels),
               ranking_losses.devise_loss(scores, labels)):
    assert np.isfinite(loss[0]) and np.isnan(loss[1])
