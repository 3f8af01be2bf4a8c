"""Tests of calibrated stacking and AUSUC (gmn_jax.metrics) against brute force."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import metrics

SEEN = np.array([0, 2], np.int32)
UNSEEN = np.array([1, 3], np.int32)
# A hand-made case (seen {0, 2} and unseen {1, 3} interleave):
HAND_UNSEEN_SCORES = np.array([
    [3, 1, 0, 0],  # label 1: best seen 0, best unseen 1 (right), margin 2
    [0, 0, 1, 2],  # label 3: best seen 2, best unseen 3 (right), margin -1
    [0, 5, 0, 1],  # label 3: best seen 0 (tie 0/2), best unseen 1 (wrong), -5
], np.float32)
HAND_UNSEEN_LABELS = np.array([1, 3, 3], np.int32)
HAND_SEEN_SCORES = np.array([
    [4, 0, 1, 1],  # label 0: best seen 0 (right), margin 3
    [0, 2, 1, 0],  # label 2: best seen 2 (right), best unseen 1, margin -1
], np.float32)
HAND_SEEN_LABELS = np.array([0, 2], np.int32)


def curve_of(scores_unseen, labels_unseen, scores_seen, labels_seen, seen, unseen):
  return metrics.seen_unseen_curve(
      metrics.calibration_rows(scores_unseen, labels_unseen, seen, unseen),
      labels_unseen,
      metrics.calibration_rows(scores_seen, labels_seen, seen, unseen),
      labels_seen, seen, unseen)


def numpy_accuracy(predictions, labels, classes):
  present = [c for c in np.unique(labels) if c in set(classes.tolist())]
  if not present:
    return float("nan")
  return 100.0 * np.mean([np.mean(predictions[labels == c] == c) for c in present])


def brute_force_points(scores_unseen, labels_unseen, scores_seen, labels_seen,
                       seen, unseen, gammas):
  """(u, s) at every gamma, by the definition: argmax of score - gamma*[seen]."""
  is_seen = np.isin(np.arange(scores_unseen.shape[1]), seen)
  points = []
  for gamma in gammas:
    shift = np.where(is_seen, gamma, 0.0)
    u = numpy_accuracy(np.argmax(scores_unseen - shift, 1), labels_unseen, unseen)
    s = numpy_accuracy(np.argmax(scores_seen - shift, 1), labels_seen, seen)
    points.append((u, s))
  return np.array(points)


def distinct_consecutive(points, atol=1e-9):
  keep = [0] + [i for i in range(1, len(points))
                if not np.allclose(points[i], points[i - 1], atol=atol)]
  return points[keep]


def trapezoid_area(points):
  u, s = points[:, 0] / 100, points[:, 1] / 100
  return 100 * float(np.sum(np.diff(u) * (s[1:] + s[:-1]) / 2))


def test_hand_made_curve_area_and_best_h():
  curve = curve_of(HAND_UNSEEN_SCORES, HAND_UNSEEN_LABELS, HAND_SEEN_SCORES,
                   HAND_SEEN_LABELS, SEEN, UNSEEN)
  # Unseen weights: class 1 has one row (1/2), class 3 two rows (1/4 each);
  # seen rows 1/2 each. Crossing -5 changes nothing (a wrong row); crossing -1
  # gains an unseen row (1/4) and loses a seen one (1/2) together; crossing 2
  # gains 1/2; crossing 3 loses the last seen row.
  np.testing.assert_array_equal(curve.thresholds, [-5, -1, 2, 3])
  np.testing.assert_allclose(curve.unseen, [0, 0, 25, 75, 75])
  np.testing.assert_allclose(curve.seen, [100, 100, 50, 50, 0])
  # Areas (fractions): the diagonal step 0.25 * (1 + 0.5) / 2, then 0.5 * 0.5.
  assert curve.ausuc() == pytest.approx(43.75)
  best = curve.best_harmonic()
  assert best == pytest.approx({"gamma": 2.5, "gzsl_u": 75.0, "gzsl_s": 50.0,
                                "gzsl_h": 60.0})
  assert curve.interval_gamma(0) == -6.0 and curve.interval_gamma(4) == 4.0


@pytest.mark.parametrize("gamma", [-6.0, -5.0, -1.0, 0.0, 2.0, 2.5, 3.0, 7.0])
def test_metrics_at_one_gamma_equal_the_definition_ties_included(gamma):
  # At gamma == -1 two rows tie: the unseen row (label 3) goes to seen class 2
  # (lower id than 3), the seen row (label 2) to unseen class 1 (lower than 2).
  rows_u = metrics.calibration_rows(HAND_UNSEEN_SCORES, HAND_UNSEEN_LABELS, SEEN, UNSEEN)
  rows_s = metrics.calibration_rows(HAND_SEEN_SCORES, HAND_SEEN_LABELS, SEEN, UNSEEN)
  got = metrics.calibrated_gzsl_metrics(rows_u, HAND_UNSEEN_LABELS, rows_s,
                                        HAND_SEEN_LABELS, SEEN, UNSEEN, gamma)
  (u, s), = brute_force_points(HAND_UNSEEN_SCORES, HAND_UNSEEN_LABELS, HAND_SEEN_SCORES,
                                HAND_SEEN_LABELS, SEEN, UNSEEN, [gamma])
  h = 0.0 if u + s == 0 else 2 * u * s / (u + s)
  expected = {"gzsl_u": u, "gzsl_s": s, "gzsl_h": h}
  for name, value in expected.items():
    assert got[name] == pytest.approx(value, abs=1e-4), name
  if gamma == -1.0:
    assert got["gzsl_u"] == 0.0 and got["gzsl_s"] == 50.0


def test_calibrated_predict_matches_subtracting_gamma_from_seen_columns():
  predictions = metrics.calibrated_predict(HAND_SEEN_SCORES, SEEN, -1.0)
  np.testing.assert_array_equal(predictions, [0, 1])  # the tie goes to id 1
  np.testing.assert_array_equal(
      metrics.calibrated_predict(HAND_UNSEEN_SCORES, SEEN, 0.0),
      np.argmax(HAND_UNSEEN_SCORES, axis=1))  # gamma = 0: the plain argmax, [0, 3, 1]
  is_seen = np.isin(np.arange(4), SEEN)
  for gamma in (-2.0, 0.5, 2.0, 4.0):
    np.testing.assert_array_equal(
        metrics.calibrated_predict(HAND_UNSEEN_SCORES, SEEN, gamma),
        np.argmax(HAND_UNSEEN_SCORES - is_seen * gamma, axis=1), err_msg=str(gamma))


def random_problem(rng, num_classes=7, num_unseen_rows=13, num_seen_rows=11,
                   quantum=None):
  seen = np.sort(rng.choice(num_classes, 4, replace=False)).astype(np.int32)
  unseen = np.setdiff1d(np.arange(num_classes), seen).astype(np.int32)
  scores = rng.normal(size=(num_unseen_rows + num_seen_rows, num_classes))
  if quantum is not None:
    scores = np.round(scores / quantum) * quantum  # many exact ties
  scores = scores.astype(np.float32)
  labels_unseen = rng.choice(unseen, num_unseen_rows).astype(np.int32)
  labels_seen = rng.choice(seen, num_seen_rows).astype(np.int32)
  # Make right answers likelier than chance, so the curve is not degenerate.
  scores[np.arange(num_unseen_rows), labels_unseen] += 1.0
  scores[num_unseen_rows + np.arange(num_seen_rows), labels_seen] += 1.0
  return (scores[:num_unseen_rows], labels_unseen, scores[num_unseen_rows:],
          labels_seen, seen, unseen)


@pytest.mark.parametrize("seed", range(6))
def test_exact_curve_equals_a_dense_grid_on_tied_scores(seed):
  # Scores on a lattice of 0.5: every margin is a multiple of 0.5 and many
  # rows share one, so a grid at the odd multiples of 0.25 visits every
  # interval of the exact curve, and the lattice points test the ties.
  problem = random_problem(np.random.default_rng(seed), quantum=0.5)
  curve = curve_of(*problem)
  lo, hi = curve.thresholds[0], curve.thresholds[-1]
  gammas = np.arange(lo - 0.25, hi + 0.5, 0.5)
  grid = brute_force_points(*problem, gammas)
  exact = np.stack([curve.unseen, curve.seen], 1)
  np.testing.assert_allclose(distinct_consecutive(grid), distinct_consecutive(exact),
                             atol=1e-9)
  assert curve.ausuc() == pytest.approx(trapezoid_area(grid), abs=1e-9)
  grid_h = [float(metrics.harmonic_mean(u, s)) for u, s in grid]
  assert curve.best_harmonic()["gzsl_h"] == pytest.approx(max(grid_h), rel=1e-6)
  # At the lattice points themselves (ties), the exact one-gamma metrics
  # equal the definition.
  rows = [metrics.calibration_rows(problem[i], problem[i + 1], problem[4], problem[5])
          for i in (0, 2)]
  for gamma in np.arange(lo, hi + 0.5, 0.5):
    got = metrics.calibrated_gzsl_metrics(rows[0], problem[1], rows[1], problem[3],
                                          problem[4], problem[5], gamma)
    (u, s), = brute_force_points(*problem, [gamma])
    assert (got["gzsl_u"], got["gzsl_s"]) == pytest.approx((u, s), abs=1e-9)


def test_exact_curve_equals_a_dense_grid_on_continuous_scores():
  rng = np.random.default_rng(123)
  problem = random_problem(rng, num_unseen_rows=9, num_seen_rows=8)
  curve = curve_of(*problem)
  step = 2e-4
  # The grid resolves the curve if every gap between margins holds a point.
  assert np.min(np.diff(curve.thresholds)) > 4 * step
  gammas = np.arange(curve.thresholds[0] - 0.1, curve.thresholds[-1] + 0.1, step)
  grid = brute_force_points(*problem, gammas[::7])  # coarse pass, then fill
  # The coarse grid (step 1.4e-3) may miss narrow intervals; the fine one
  # near each threshold may not.
  fine = np.concatenate([np.arange(t - 3 * step, t + 3 * step, step / 2)
                         for t in curve.thresholds])
  all_gammas = np.sort(np.concatenate([gammas[::7], fine]))
  grid = brute_force_points(*problem, all_gammas)
  assert curve.ausuc() == pytest.approx(trapezoid_area(distinct_consecutive(grid)),
                                        abs=1e-9)
  exact = np.stack([curve.unseen, curve.seen], 1)
  np.testing.assert_allclose(distinct_consecutive(grid), distinct_consecutive(exact),
                             atol=1e-9)


def test_curve_ends_and_zero_gamma_are_the_known_accuracies():
  scores_u, labels_u, scores_s, labels_s, seen, unseen = random_problem(
      np.random.default_rng(7), num_unseen_rows=40, num_seen_rows=30)
  curve = curve_of(scores_u, labels_u, scores_s, labels_s, seen, unseen)
  # gamma -> +inf: every row goes to its best unseen class, i.e. ZSL T1.
  zsl_t1 = numpy_accuracy(unseen[np.argmax(scores_u[:, unseen], 1)], labels_u, unseen)
  assert curve.unseen[-1] == pytest.approx(zsl_t1, abs=1e-4)
  assert curve.seen[-1] == 0.0 and curve.unseen[0] == 0.0
  # gamma -> -inf: seen rows are classified among the seen classes only.
  seen_only = numpy_accuracy(seen[np.argmax(scores_s[:, seen], 1)], labels_s, seen)
  assert curve.seen[0] == pytest.approx(seen_only, abs=1e-4)
  # gamma = 0 (no margin is exactly 0 here) is the plain GZSL classifier.
  assert not np.any(curve.thresholds == 0.0)
  plain_u = numpy_accuracy(np.argmax(scores_u, 1), labels_u, unseen)
  plain_s = numpy_accuracy(np.argmax(scores_s, 1), labels_s, seen)
  index = int(np.searchsorted(curve.thresholds, 0.0))
  assert curve.unseen[index] == pytest.approx(plain_u, abs=1e-4)
  assert curve.seen[index] == pytest.approx(plain_s, abs=1e-4)
  assert np.all(np.diff(curve.unseen) >= 0) and np.all(np.diff(curve.seen) <= 0)
  plain_h = 2 * plain_u * plain_s / (plain_u + plain_s)
  assert curve.best_harmonic()["gzsl_h"] >= plain_h - 1e-4


def test_a_perfect_separation_has_area_100_and_chance_has_less():
  # Every candidate right and every seen row's margin above every unseen
  # row's: some gamma classifies everything right, and the area is the square.
  scores_u = np.array([[0, 5, 0, 1], [0, 1, 0, 6]], np.float32)
  scores_s = np.array([[9, 0, 1, 0], [0, 0, 7, 1]], np.float32)
  curve = curve_of(scores_u, np.array([1, 3]), scores_s, np.array([0, 2]), SEEN, UNSEEN)
  assert curve.ausuc() == pytest.approx(100.0)
  assert curve.best_harmonic()["gzsl_h"] == pytest.approx(100.0)
  # Swapping the labels within each kind makes every candidate wrong: area 0.
  curve = curve_of(scores_u, np.array([3, 1]), scores_s, np.array([2, 0]), SEEN, UNSEEN)
  assert curve.ausuc() == 0.0


def test_rows_are_jittable_and_vmappable_over_seeds():
  rng = np.random.default_rng(3)
  scores = rng.normal(size=(3, 10, 4)).astype(np.float32)
  labels = rng.integers(0, 4, size=10).astype(np.int32)
  batched = jax.jit(jax.vmap(metrics.calibration_rows, in_axes=(0, None, None, None)))(
      scores, labels, SEEN, UNSEEN)
  for i in range(3):
    single = metrics.calibration_rows(scores[i], labels, SEEN, UNSEEN)
    for got, want in zip(batched, single):
      np.testing.assert_array_equal(np.asarray(got)[i], np.asarray(want))
  np.testing.assert_allclose(
      batched.margin[0],
      scores[0][:, SEEN].max(1) - scores[0][:, UNSEEN].max(1), rtol=1e-6)


def test_undefined_accuracies_give_nan():
  rows = metrics.calibration_rows(HAND_SEEN_SCORES, HAND_SEEN_LABELS, SEEN, UNSEEN)
  # "Unseen" rows whose labels are not unseen classes: u is undefined.
  curve = metrics.seen_unseen_curve(rows, HAND_SEEN_LABELS, rows, HAND_SEEN_LABELS,
                                    SEEN, UNSEEN)
  assert np.isnan(curve.ausuc()) and np.isnan(curve.best_harmonic()["gzsl_h"])
  got = metrics.calibrated_gzsl_metrics(rows, HAND_SEEN_LABELS, rows, HAND_SEEN_LABELS,
                                        SEEN, UNSEEN, 0.0)
  assert np.isnan(got["gzsl_u"]) and got["gzsl_s"] == 50.0
  bad = rows._replace(margin=jnp.array([np.nan, 1.0]))
  curve = metrics.seen_unseen_curve(
      metrics.calibration_rows(HAND_UNSEEN_SCORES, HAND_UNSEEN_LABELS, SEEN, UNSEEN),
      HAND_UNSEEN_LABELS, bad, HAND_SEEN_LABELS, SEEN, UNSEEN)
  assert np.isnan(curve.ausuc())


def test_downsample_keeps_ends_best_point_and_order():
  problem = random_problem(np.random.default_rng(11), num_unseen_rows=300,
                           num_seen_rows=200)
  curve = curve_of(*problem)
  assert curve.unseen.size > 400
  unseen, seen = curve.downsample(50)
  assert 2 <= unseen.size <= 50 and unseen.size == seen.size
  assert (unseen[0], seen[0]) == (curve.unseen[0], curve.seen[0])
  assert (unseen[-1], seen[-1]) == (curve.unseen[-1], curve.seen[-1])
  best = curve.best_harmonic()
  assert any(u == best["gzsl_u"] and s == best["gzsl_s"] for u, s in zip(unseen, seen))
  assert np.all(np.diff(unseen) >= 0) and np.all(np.diff(seen) <= 0)
  small_u, small_s = curve_of(HAND_UNSEEN_SCORES, HAND_UNSEEN_LABELS, HAND_SEEN_SCORES,
                              HAND_SEEN_LABELS, SEEN, UNSEEN).downsample(50)
  np.testing.assert_allclose(small_u, [0, 0, 25, 75, 75])
