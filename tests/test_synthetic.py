"""Tests of the synthetic / semi-real data generator (gmn_jax.data.synthetic*)."""

import itertools
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import scipy.special

from experiments import make_synthetic
from gmn_jax import baseline
from gmn_jax.data import synthetic
from gmn_jax.data import synthetic_features
from gmn_jax.data import synthetic_labels
from gmn_jax.data import synthetic_presets
from gmn_jax.data import synthetic_split_files
from gmn_jax.data import synthetic_writer
from gmn_jax.data import xlsa17
from gmn_jax.errors import ConfigError
from gmn_jax.errors import DataError

_TEST_KEYS = ("trainval_loc", "test_seen_loc", "test_unseen_loc")


def _locs(att_splits, key):
  return np.asarray(att_splits[key]).reshape(-1).astype(np.int64) - 1


def _check_labels_agree(att_splits, labels):
  """Asserts every constraint the loc arrays put on the labels."""
  trainval, test_seen, test_unseen = (labels[_locs(att_splits, k)] for k in _TEST_KEYS)
  seen, unseen = set(trainval), set(test_unseen)
  assert seen == set(test_seen), "every seen class in both trainval and test_seen"
  assert not seen & unseen
  assert seen | unseen == set(range(att_splits["att"].shape[1]))
  if "train_loc" in att_splits and "val_loc" in att_splits:
    train_classes = set(labels[_locs(att_splits, "train_loc")])
    val_classes = set(labels[_locs(att_splits, "val_loc")])
    assert not train_classes & val_classes and train_classes | val_classes == seen
    for classes, key in ((train_classes, "train_loc"), (val_classes, "val_loc")):
      part = set(_locs(att_splits, key).tolist())
      for split in ("trainval_loc", "test_seen_loc"):
        in_part = [i for i in _locs(att_splits, split) if i in part]
        assert set(labels[in_part]) == classes, (key, split)
  return trainval, test_seen, test_unseen


def test_allocate_is_exact_proportional_and_positive():
  rng = np.random.default_rng(0)
  for total, size in [(100, 7), (20, 20), (7057, 150), (1000, 3)]:
    weights = np.exp(rng.standard_normal(size))
    counts = synthetic_labels._allocate(total, weights)
    assert counts.sum() == total and counts.min() >= 1
    exact = 1 + (total - size) * weights / weights.sum()
    assert np.all(np.abs(counts - exact) < 1)


@pytest.mark.parametrize("name", list(synthetic_presets.PRESETS))
def test_preset_labels_agree_with_loc_arrays(name):
  shape = synthetic_presets.PRESETS[name]
  att_splits = synthetic_presets.preset_att_splits(name, seed=3)
  labels = synthetic_labels.labels_from_splits(att_splits, seed=3)
  assert labels.dtype == np.int32 and labels.size == shape.num_images
  trainval, test_seen, test_unseen = _check_labels_agree(att_splits, labels)
  assert len(set(test_unseen)) == shape.num_unseen
  assert len(set(labels[_locs(att_splits, "val_loc")])) == shape.num_val_classes
  totals = np.bincount(labels, minlength=shape.num_classes)
  if shape.count_spread == 0:
    assert totals.min() == totals.max()  # SUN: 20 images per class.
  elif shape.count_spread >= 0.6:
    assert totals.max() > 3 * totals.min()  # AWA, APY: very uneven classes.
  # Seen classes keep about the split's overall trainval share.
  share = np.bincount(trainval, minlength=shape.num_classes) / np.maximum(totals, 1)
  seen = np.unique(trainval)
  assert np.all(np.abs(share[seen] - trainval.size / (trainval.size + test_seen.size)) < 0.25)


def test_real_files_labels(xlsa17_dir):
  for name in synthetic_presets.PRESETS:
    path = xlsa17_dir / name / "att_splits.mat"
    att_splits = synthetic_split_files.with_companion_validation_locs(scipy.io.loadmat(path), path)
    unseen = synthetic_split_files.unseen_from_class_lists(att_splits, path.parent)
    labels = synthetic_labels.labels_from_splits(att_splits, seed=0, unseen_classes=unseen)
    _check_labels_agree(att_splits, labels)
    unseen_found = np.unique(labels[_locs(att_splits, "test_unseen_loc")])
    assert unseen_found.size == synthetic_presets.PRESETS[name].num_unseen
    if unseen is not None:
      np.testing.assert_array_equal(np.unique(labels[_locs(att_splits, "test_unseen_loc")]),
                                    sorted(unseen))
  # CUB's att_splits lacks train/val locs: they were borrowed from sent_splits.
  cub = xlsa17_dir / "CUB" / "att_splits.mat"
  borrowed = synthetic_split_files.with_companion_validation_locs(scipy.io.loadmat(cub), cub)
  assert "val_loc" in borrowed


def _tiny_splits():
  att = np.abs(np.random.default_rng(0).standard_normal((5, 4)))
  column = lambda values: np.array(values, dtype=np.uint16).reshape(-1, 1)
  return {"att": att, "trainval_loc": column([1, 2, 3, 4, 5, 6]),
          "test_seen_loc": column([7, 8, 9]), "test_unseen_loc": column([10, 11, 12])}


@pytest.mark.parametrize("change,key", [
    (lambda s: s.pop("att"), "att"),
    (lambda s: s.pop("test_seen_loc"), "test_seen_loc"),
    (lambda s: s.update(trainval_loc=s["trainval_loc"] - 1), "trainval_loc"),
    (lambda s: s.update(test_seen_loc=np.array([[6], [7], [8]])),
     "trainval_loc/test_seen_loc/test_unseen_loc"),
    (lambda s: s.update(test_unseen_loc=np.array([[10], [10], [12]])), "test_unseen_loc"),
    (lambda s: s.update(test_seen_loc=np.array([[7.5], [8], [9]])), "test_seen_loc"),
])
def test_labels_reject_bad_splits(change, key):
  splits = _tiny_splits()
  change(splits)
  with pytest.raises(DataError) as error:
    synthetic_labels.labels_from_splits(splits, source="splits.mat")
  assert f"splits.mat [{key}]" in str(error.value)


def test_labels_need_an_image_per_class_and_split():
  splits = _tiny_splits()
  splits["att"] = np.ones((5, 6))
  with pytest.raises(DataError, match=r"s.mat \[test_seen_loc\]"):
    # 3 images for 5 classes.
    synthetic_labels.labels_from_splits(splits, unseen_classes=[0], source="s.mat")
  labels = synthetic_labels.labels_from_splits(splits, unseen_classes=[0, 1, 2])
  _check_labels_agree(splits, labels)


def _features(seed=0, dim=256, difficulty=synthetic_features.DEFAULT_DIFFICULTY):
  att_splits = synthetic_presets.preset_att_splits("AWA1", seed=0)
  labels = synthetic_labels.labels_from_splits(att_splits, seed=0)[:3000]
  return synthetic_features.make_features(att_splits["att"].T, labels, feature_dim=dim,
                                          seed=seed, difficulty=difficulty), labels


def test_features_look_like_pool5():
  features, _ = _features()
  assert features.dtype == np.float32 and features.shape == (3000, 256)
  assert np.all(np.isfinite(features)) and features.min() >= 0
  # As documented: mean about 0.45, about 40% exact zeros, a long tail.
  assert 0.38 < features.mean() < 0.52
  assert 0.33 < np.mean(features == 0) < 0.47
  assert np.mean(features < 0.1) > 0.45
  assert features.max() > 15 * features.mean()
  # Some features fire rarely, some often (per-feature sparsity varies).
  active = np.mean(features > 0, axis=0)
  assert active.min() < 0.3 and active.max() > 0.85


def test_features_deterministic_and_seed_dependent():
  first, labels = _features(seed=5, dim=64)
  second, _ = _features(seed=5, dim=64)
  other, _ = _features(seed=6, dim=64)
  np.testing.assert_array_equal(first, second)
  assert np.mean(first != other) > 0.3
  # The class structure differs too, not only the noise.
  mean_a = np.stack([first[labels == c].mean(0) for c in np.unique(labels)])
  mean_b = np.stack([other[labels == c].mean(0) for c in np.unique(labels)])
  assert np.abs(mean_a - mean_b).mean() > 0.2 * mean_a.mean()


def test_noise_free_features_match_the_documented_equations():
  quiet = synthetic_features.Difficulty(unexplained_class_fraction=0.0, modes_per_class=1,
                                        mode_scale=0.0, nuisance_scale=0.0, noise_scale=0.0,
                                        noise_spread=0.0, feature_noise=0.0, embedding_gain=1.5)
  rng = np.random.default_rng(1)
  embeddings = np.abs(rng.standard_normal((6, 10)))
  labels = np.array([0, 1, 2, 3, 4, 5, 5, 0])
  features = synthetic_features.make_features(embeddings, labels, feature_dim=32, seed=2,
                                              difficulty=quiet)
  fmap = synthetic_features._FeatureMap(10, 32, quiet, 2)
  # m_c = standardise(tanh(kappa * G^T (a_c - mean a) / spread + beta)).
  centred = embeddings - embeddings.mean(axis=0)
  centred /= np.sqrt(np.mean(np.sum(centred**2, axis=1)))
  codes = np.tanh(1.5 * centred @ fmap.embedding_projection + fmap.embedding_bias)
  codes = (codes - codes.mean(0)) / codes.std(0)
  # x = s * relu(g * P^T l + b), with l = m_c (unit latent variance).
  expected = fmap.out_scale * np.maximum(fmap.gain * (codes @ fmap.projection) + fmap.bias, 0)
  np.testing.assert_allclose(features, expected[labels], rtol=1e-4, atol=1e-5)
  # Every feature's expected value is as designed: E[relu(N(b, sd^2))] * s.
  sd = np.sqrt(fmap.gain**2 + quiet.feature_noise**2)
  t = fmap.bias / sd
  mean = fmap.out_scale * sd * (t * scipy.special.ndtr(t) + np.exp(-t**2 / 2) / np.sqrt(2 * np.pi))
  assert abs(mean.mean() - quiet.feature_mean) < 1e-9


def test_make_features_rejects_bad_labels():
  with pytest.raises(ValueError, match="labels"):
    synthetic_features.make_features(np.ones((3, 2)), np.array([0, 3]), feature_dim=4)


def test_baseline_lands_in_the_calibrated_band():
  # FLO's shape (the smallest training set) with 512 features and a shorter
  # schedule, for speed: lower numbers than the 2048-d table, same picture.
  dataset = synthetic.synthetic_dataset(synthetic_presets.preset_att_splits("FLO"), feature_dim=512)
  result = baseline.run_baseline(dataset, steps=150, learning_rate=2e-3)
  assert 35 < result.zsl_t1 < 75
  assert 3 < result.gzsl_unseen < result.gzsl_seen - 20
  assert 40 < result.gzsl_seen < 95
  # The naive generator is trivially easy: unseen classes are as easy as seen.
  naive = synthetic.synthetic_dataset(synthetic_presets.preset_att_splits("FLO"), feature_dim=512,
                                      difficulty=synthetic_features.NAIVE_DIFFICULTY)
  naive_result = baseline.run_baseline(naive, steps=50, learning_rate=2e-3)
  assert naive_result.zsl_t1 > 85 and naive_result.gzsl_h > result.gzsl_h + 40


def test_preset_shapes_match_the_real_files(xlsa17_dir):
  for name, shape in synthetic_presets.PRESETS.items():
    real = scipy.io.loadmat(xlsa17_dir / name / "att_splits.mat")
    assert real["att"].shape == (shape.embedding_dim, shape.num_classes)
    sizes = [real[k].size for k in _TEST_KEYS]
    assert sizes == [shape.trainval, shape.test_seen, shape.test_unseen]
    assert synthetic_presets.match_preset(real) is shape
    listing = xlsa17_dir / name / "testclasses.txt"
    if listing.is_file():
      assert len(listing.read_text().split()) == shape.num_unseen
    real = synthetic_split_files.with_companion_validation_locs(
        real, xlsa17_dir / name / "att_splits.mat")
    if "val_loc" in real:
      val = set(real["val_loc"].ravel())
      assert sum(i in val for i in real["trainval_loc"].ravel()) == shape.val_trainval
      assert sum(i in val for i in real["test_seen_loc"].ravel()) == shape.val_test_seen
      assert (real["train_loc"].size, real["val_loc"].size) == (shape.train, shape.val)


@pytest.mark.parametrize("name", ["CUB", "APY", "FLO"])
def test_preset_split_file_format_and_embeddings(name):
  shape = synthetic_presets.PRESETS[name]
  splits = synthetic_presets.preset_att_splits(name)
  for key in _TEST_KEYS + ("train_loc", "val_loc"):
    assert splits[key].dtype == np.uint16 and splits[key].shape[1] == 1 and splits[key].min() >= 1
  all_test = np.sort(np.concatenate([splits[k].ravel() for k in _TEST_KEYS]))
  np.testing.assert_array_equal(all_test, np.arange(1, shape.num_images + 1))
  train_val = np.concatenate([splits["train_loc"], splits["val_loc"]]).ravel()
  seen = np.concatenate([splits["trainval_loc"], splits["test_seen_loc"]]).ravel()
  np.testing.assert_array_equal(np.sort(train_val), np.sort(seen))
  att = splits["att"]
  assert att.shape == (shape.embedding_dim, shape.num_classes) and att.min() >= 0
  np.testing.assert_allclose(np.linalg.norm(att, axis=0), 1.0)
  cosine = att.T @ att
  mean_cosine = (cosine.sum() - shape.num_classes) / (shape.num_classes * (shape.num_classes - 1))
  assert abs(mean_cosine - shape.embedding_mean_cosine) < 0.02
  assert abs(np.mean(att == 0) - shape.embedding_zero_fraction) < 0.05
  pairs = itertools.combinations(range(shape.num_classes), 2)
  assert min(np.abs(att[:, i] - att[:, j]).sum() for i, j in pairs) > 1e-3
  # Attributes are correlated (low-rank structure): far more than after
  # shuffling each attribute independently across classes.
  def mean_abs_correlation(matrix):
    matrix = matrix[matrix.std(axis=1) > 0]
    return np.abs(np.corrcoef(matrix)[np.triu_indices(matrix.shape[0], 1)]).mean()
  rng = np.random.default_rng(0)
  shuffled = np.stack([rng.permutation(row) for row in att])
  assert mean_abs_correlation(att) > 1.3 * mean_abs_correlation(shuffled)


def test_preset_round_trip_through_load_xlsa17(tmp_path):
  path = synthetic_writer.write_preset("APY", tmp_path, seed=1, feature_dim=8)
  mat = scipy.io.loadmat(path)
  assert mat["features"].shape == (8, 15339) and mat["features"].dtype == np.float32
  assert mat["labels"].shape == (15339, 1) and mat["labels"].min() == 1
  loaded = xlsa17.load_xlsa17(tmp_path)
  expected = synthetic.synthetic_dataset(synthetic_presets.preset_att_splits("APY", seed=1),
                                         seed=1, feature_dim=8)
  for field in ("train_features", "train_labels", "test_seen_features", "test_seen_labels",
                "test_unseen_features", "test_unseen_labels", "seen_classes", "unseen_classes"):
    np.testing.assert_array_equal(getattr(loaded, field), getattr(expected, field), err_msg=field)
  np.testing.assert_allclose(loaded.class_embeddings, expected.class_embeddings, rtol=1e-6)
  validation = xlsa17.load_xlsa17(tmp_path, split="validation")
  assert validation.unseen_classes.size == synthetic_presets.PRESETS["APY"].num_val_classes


@pytest.mark.parametrize("name", list(synthetic_presets.PRESETS))
def test_every_real_split_file_gives_a_loadable_directory(xlsa17_dir, tmp_path, name):
  synthetic_writer.write_semi_real(xlsa17_dir / name / "att_splits.mat", tmp_path, feature_dim=2)
  for split in ("test", "validation"):
    dataset = xlsa17.load_xlsa17(tmp_path, split=split)
    assert dataset.feature_dim == 2 and dataset.train_features.min() >= 0
  test = xlsa17.load_xlsa17(tmp_path)
  shape = synthetic_presets.PRESETS[name]
  assert (test.seen_classes.size, test.unseen_classes.size) == (shape.num_seen, shape.num_unseen)
  assert test.test_unseen_labels.size == shape.test_unseen


def test_semi_real_round_trip_with_sentences(xlsa17_dir, tmp_path):
  synthetic_writer.write_semi_real(xlsa17_dir / "CUB" / "att_splits.mat", tmp_path, feature_dim=4)
  assert (tmp_path / "sent_splits.mat").is_file() and (tmp_path / "testclasses.txt").is_file()
  for embedding in ("att", "sent"):
    for split in ("test", "validation"):
      dataset = xlsa17.load_xlsa17(tmp_path, split=split, embedding=embedding)
      assert dataset.feature_dim == 4
  test = xlsa17.load_xlsa17(tmp_path)
  unseen_names = set((xlsa17_dir / "CUB" / "testclasses.txt").read_text().split())
  assert {test.class_names[c] for c in test.unseen_classes} == unseen_names


def test_make_synthetic_checks_its_options(tmp_path):
  with pytest.raises(ConfigError, match="exactly one"):
    make_synthetic.make(None, None, tmp_path)
  with pytest.raises(ConfigError, match="preset"):
    make_synthetic.make(None, "MNIST", tmp_path)
  with pytest.raises(DataError, match="no such file"):
    make_synthetic.make(str(tmp_path / "missing.mat"), None, tmp_path)
  (tmp_path / "garbage.mat").write_bytes(b"not a mat file")
  with pytest.raises(DataError, match="garbage.mat"):
    make_synthetic.make(str(tmp_path / "garbage.mat"), None, tmp_path / "out")
  splits = _tiny_splits()  # 4 classes, 12 images
  scipy.io.savemat(tmp_path / "att_splits.mat", splits)
  out = tmp_path / "out"

  def written(feature_dim):
    """Asserts what a successful call wrote: (D, 12) features, labels of the splits."""
    assert path == out / "res101.mat"
    res101 = scipy.io.loadmat(path)
    assert res101["features"].shape == (feature_dim, 12)
    assert res101["features"].dtype == np.float32
    assert res101["labels"].shape == (12, 1)
    _check_labels_agree(splits, res101["labels"].reshape(-1).astype(np.int64) - 1)
    np.testing.assert_array_equal(scipy.io.loadmat(out / "att_splits.mat")["att"], splits["att"])
    return res101["features"]

  path = make_synthetic.make(str(tmp_path / "att_splits.mat"), None, out, feature_dim=3)
  first = written(3)
  with pytest.raises(ConfigError, match="overwrite"):
    make_synthetic.make(str(tmp_path / "att_splits.mat"), None, out, feature_dim=2)
  np.testing.assert_array_equal(written(3), first)  # the refused call left the file alone
  path = make_synthetic.make(str(tmp_path / "att_splits.mat"), None, out, feature_dim=2,
                             overwrite=True)
  written(2)


def test_make_synthetic_binary_prints_one_line_and_exits_2(tmp_path):
  run = subprocess.run([sys.executable, "-m", "experiments.make_synthetic",
                        f"--att_splits={tmp_path / 'nope.mat'}", f"--out_dir={tmp_path}"],
                       capture_output=True, text=True, timeout=120, check=False)
  assert run.returncode == 2
  expected = f"error: {tmp_path / 'nope.mat'}: expected an att_splits.mat file, found no such file"
  assert run.stderr.strip().splitlines() == [expected]
