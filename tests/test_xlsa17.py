"""Tests for the xlsa17 loader: accepted variants, every validation error, real files."""

import importlib.util
import logging
import pathlib
import shutil

import h5py
import numpy as np
import pytest
import scipy.io

from gmn_jax.data import registry
from gmn_jax.data import xlsa17
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.data.xlsa17 import load_xlsa17
from gmn_jax.errors import DataError

# A small consistent dataset: 8 classes of 10 examples; classes 0-5 seen (7
# trainval + 3 test_seen each), 6-7 unseen; validation mode trains on 0-3 and
# holds out 4-5.
D, K, C, PER_CLASS, TRAINVAL_PER_CLASS = 16, 5, 8, 10, 7
N = C * PER_CLASS
UNSEEN, TRAIN_CLASSES, VAL_CLASSES = (6, 7), (0, 1, 2, 3), (4, 5)


def _loc(indices):
  return (np.sort(np.asarray(indices)) + 1).astype(np.uint16).reshape(-1, 1)


def make_arrays(seed=0):
  """Returns (res101 variables, att_splits variables) of a valid dataset."""
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.repeat(np.arange(C), PER_CLASS))  # 0-based, shuffled order
  features = rng.random((D, N))
  features[0] = np.arange(N)  # Row 0 tells which example a feature vector is.
  trainval, test_seen, test_unseen, train, val = [], [], [], [], []
  for class_id in range(C):
    members = np.flatnonzero(labels == class_id)
    if class_id in UNSEEN:
      test_unseen += members.tolist()
      continue
    trainval += members[:TRAINVAL_PER_CLASS].tolist()
    test_seen += members[TRAINVAL_PER_CLASS:].tolist()
    (train if class_id in TRAIN_CLASSES else val).extend(members.tolist())
  names = np.empty((C, 1), dtype=object)
  names[:, 0] = [f"{i + 1:03d}.class_{i}" for i in range(C)]
  res = {"features": features, "labels": (labels + 1).astype(np.float64).reshape(-1, 1)}
  splits = {"att": rng.random((K, C)) + 0.1, "allclasses_names": names,
            "trainval_loc": _loc(trainval), "test_seen_loc": _loc(test_seen),
            "test_unseen_loc": _loc(test_unseen), "train_loc": _loc(train), "val_loc": _loc(val)}
  return res, splits


def write_dir(path, res, splits, split_file="att_splits.mat"):
  path.mkdir(parents=True, exist_ok=True)
  if res is not None:
    scipy.io.savemat(path / "res101.mat", res)
  if splits is not None:
    scipy.io.savemat(path / split_file, splits)
  return path


@pytest.fixture(name="arrays")
def fixture_arrays():
  return make_arrays()


@pytest.fixture(name="good_dir")
def fixture_good_dir(tmp_path, arrays):
  return write_dir(tmp_path / "TOY", *arrays)


def _example_ids(features):
  return features[:, 0].astype(int)


# ---------------------------------------------------------------- valid data


def test_test_mode_contents(good_dir, arrays):
  res, splits = arrays
  labels = res["labels"].ravel().astype(int) - 1
  ds = load_xlsa17(good_dir)
  assert isinstance(ds, ZSLDataset) and ds.name == "TOY" and ds.split == "test"
  for part, key in [("train", "trainval_loc"), ("test_seen", "test_seen_loc"),
                    ("test_unseen", "test_unseen_loc")]:
    expected_ids = splits[key].ravel().astype(int) - 1
    np.testing.assert_array_equal(_example_ids(getattr(ds, f"{part}_features")), expected_ids)
    np.testing.assert_array_equal(getattr(ds, f"{part}_labels"), labels[expected_ids])
    assert getattr(ds, f"{part}_features").dtype == np.float32
    assert getattr(ds, f"{part}_labels").dtype == np.int32
  fourth_example = splits["trainval_loc"][3, 0] - 1
  np.testing.assert_array_equal(ds.train_features[3],
                                res["features"][:, fourth_example].astype(np.float32))
  np.testing.assert_array_equal(ds.seen_classes, np.arange(6))
  np.testing.assert_array_equal(ds.unseen_classes, UNSEEN)
  assert ds.class_names[0] == "001.class_0" and len(ds.class_names) == C
  assert ds.feature_dim == D and ds.embedding_dim == K and ds.num_classes == C


def test_embeddings_are_per_class_l2_normalised(good_dir, arrays):
  att = arrays[1]["att"]
  ds = load_xlsa17(good_dir)
  np.testing.assert_allclose(ds.class_embeddings, (att / np.linalg.norm(att, axis=0)).T, rtol=1e-6)
  raw = load_xlsa17(good_dir, normalize_embeddings=False)
  np.testing.assert_allclose(raw.class_embeddings, att.T, rtol=1e-6)


def _equal_datasets(first, second):
  for name in ("train", "test_seen", "test_unseen"):
    for field in (f"{name}_features", f"{name}_labels"):
      np.testing.assert_array_equal(getattr(first, field), getattr(second, field))
  np.testing.assert_array_equal(first.class_embeddings, second.class_embeddings)


@pytest.mark.parametrize("variant", [
    "features_n_by_d", "features_float32", "labels_row", "labels_int32", "labels_uint8",
    "labels_flat", "loc_row", "loc_float", "loc_int64", "loc_flat", "att_float32", "v73_res101",
])
def test_accepted_variants_give_the_same_dataset(tmp_path, arrays, variant):
  res, splits = arrays
  res, splits = dict(res), dict(splits)
  reference = load_xlsa17(write_dir(tmp_path / "reference", res, splits))
  loc_keys = [key for key in splits if key.endswith("_loc")]
  if variant == "features_n_by_d":
    res["features"] = res["features"].T
  elif variant == "features_float32":
    res["features"] = res["features"].astype(np.float32)
  elif variant == "labels_row":
    res["labels"] = res["labels"].T
  elif variant.startswith("labels_"):
    dtype = {"labels_int32": np.int32, "labels_uint8": np.uint8, "labels_flat": np.float64}[variant]
    res["labels"] = res["labels"].ravel().astype(dtype)
  elif variant == "att_float32":
    splits["att"] = splits["att"].astype(np.float32)
  elif variant.startswith("loc_"):
    for key in loc_keys:
      splits[key] = {"loc_row": splits[key].T, "loc_float": splits[key].astype(np.float64),
                     "loc_int64": splits[key].astype(np.int64),
                     "loc_flat": splits[key].ravel()}[variant]
  directory = write_dir(tmp_path / "variant", None if variant == "v73_res101" else res, splits)
  if variant == "v73_res101":
    # MATLAB -v7.3 layout: axes reversed in the HDF5 file, 512-byte userblock.
    with h5py.File(directory / "res101.mat", "w", userblock_size=512) as handle:
      for key in ("features", "labels"):
        dataset = handle.create_dataset(key, data=res[key].T)
        dataset.attrs["MATLAB_class"] = np.bytes_("double")
  variant_ds = load_xlsa17(directory)
  if variant == "att_float32":
    np.testing.assert_allclose(variant_ds.class_embeddings, reference.class_embeddings, rtol=1e-6)
    variant_ds = variant_ds.replace(class_embeddings=reference.class_embeddings)
  _equal_datasets(reference, variant_ds)


def test_square_features_follow_the_xlsa17_layout(tmp_path, arrays):
  res, splits = arrays
  square = np.random.default_rng(3).random((N, N))
  square[0] = np.arange(N)  # as D x N: column i is example i
  ds = load_xlsa17(write_dir(tmp_path / "sq", {**res, "features": square}, splits))
  np.testing.assert_array_equal(_example_ids(ds.train_features), splits["trainval_loc"].ravel() - 1)


def test_no_class_names_gives_none(tmp_path, arrays):
  res, splits = arrays
  splits = {k: v for k, v in splits.items() if k != "allclasses_names"}
  assert load_xlsa17(write_dir(tmp_path / "flo", res, splits)).class_names is None


def test_sent_and_binary_sources(tmp_path, arrays):
  res, splits = arrays
  rng = np.random.default_rng(5)
  sentences = rng.normal(size=(12, C)) * 20
  binary = (rng.random((K, C)) > 0.5).astype(np.uint8)
  binary[0] = 1  # no all-zero class
  directory = write_dir(tmp_path / "cub", res, splits)
  write_dir(directory, None, {**splits, "att": sentences}, "sent_splits.mat")
  write_dir(directory, None, {**splits, "att": binary}, "binaryAtt_splits.mat")
  sent = load_xlsa17(directory, embedding="sent")
  assert sent.embedding_source == "sent"
  np.testing.assert_allclose(sent.class_embeddings,
                             (sentences / np.linalg.norm(sentences, axis=0)).T, rtol=1e-5)
  binary_ds = load_xlsa17(directory, embedding="binary")
  np.testing.assert_allclose(binary_ds.class_embeddings,
                             (binary / np.linalg.norm(binary, axis=0)).T, rtol=1e-6)


def test_att_plus_sent_follows_the_reference_scaling(tmp_path, arrays):
  res, splits = arrays
  sentences = np.random.default_rng(6).normal(size=(12, C)) * 20
  directory = write_dir(tmp_path / "cub", res, splits)
  write_dir(directory, None, {"att": sentences}, "sent_splits.mat")
  ds = load_xlsa17(directory, embedding="att+sent")
  att = splits["att"]
  # Independent loop: attribute block unit-norm per class, sentence block
  # divided by the Frobenius norm of the whole sentence matrix.
  frobenius = np.sqrt(sum(value ** 2 for value in sentences.ravel()))
  for class_id in range(C):
    expected = np.concatenate([att[:, class_id] / np.linalg.norm(att[:, class_id]),
                               sentences[:, class_id] / frobenius])
    np.testing.assert_allclose(ds.class_embeddings[class_id], expected, rtol=1e-5)
  assert ds.embedding_dim == K + 12 and ds.embedding_source == "att+sent"
  assert not np.allclose(np.linalg.norm(ds.class_embeddings, axis=1), 1.0)  # not renormalised


def test_validation_mode_with_train_and_val_loc(good_dir, arrays):
  res, splits = arrays
  labels = res["labels"].ravel().astype(int) - 1
  ds = load_xlsa17(good_dir, split="validation", seed=3)
  np.testing.assert_array_equal(ds.seen_classes, TRAIN_CLASSES)
  np.testing.assert_array_equal(ds.unseen_classes, VAL_CLASSES)
  train_ids, held_ids = _example_ids(ds.train_features), _example_ids(ds.test_seen_features)
  assert not set(train_ids) & set(held_ids)
  assert sorted(np.concatenate([train_ids, held_ids])) == sorted(splits["train_loc"].ravel() - 1)
  np.testing.assert_array_equal(_example_ids(ds.test_unseen_features),
                                splits["val_loc"].ravel() - 1)
  # 80/20 per class: 10 examples -> 8 train, 2 held out.
  np.testing.assert_array_equal(np.bincount(labels[held_ids], minlength=C)[:4], [2, 2, 2, 2])
  np.testing.assert_array_equal(ds.train_labels, labels[train_ids])
  again = load_xlsa17(good_dir, split="validation", seed=3)
  _equal_datasets(ds, again)
  other = load_xlsa17(good_dir, split="validation", seed=4)
  assert not np.array_equal(_example_ids(other.test_seen_features), held_ids)


def test_validation_mode_synthesised_without_train_and_val_loc(tmp_path, arrays, caplog):
  res, splits = arrays
  splits = {k: v for k, v in splits.items() if k not in ("train_loc", "val_loc")}
  directory = write_dir(tmp_path / "apy", res, splits)
  labels = res["labels"].ravel().astype(int) - 1
  with caplog.at_level(logging.WARNING):
    ds = load_xlsa17(directory, split="validation", seed=0)
  assert "synthesised a class-disjoint validation split" in caplog.text
  assert "2 of 6 seen classes" in caplog.text  # round(6 / 3)
  assert ds.unseen_classes.size == 2 and ds.seen_classes.size == 4
  assert set(ds.unseen_classes) | set(ds.seen_classes) == set(range(6))
  all_ids = np.concatenate([_example_ids(getattr(ds, f"{p}_features"))
                            for p in ("train", "test_seen", "test_unseen")])
  pool = np.concatenate([splits["trainval_loc"], splits["test_seen_loc"]]).ravel() - 1
  assert sorted(all_ids) == sorted(pool)
  assert set(labels[_example_ids(ds.test_unseen_features)]) == set(ds.unseen_classes)
  _equal_datasets(ds, load_xlsa17(directory, split="validation", seed=0))
  half = load_xlsa17(directory, split="validation", validation_fraction=0.5)
  assert half.unseen_classes.size == 3


def test_feature_norm_is_fitted_on_train_only(good_dir, arrays):
  raw = load_xlsa17(good_dir)
  ds = load_xlsa17(good_dir, feature_norm="standardize")
  mean = raw.train_features.astype(np.float64).mean(0)
  std = raw.train_features.astype(np.float64).std(0)
  np.testing.assert_allclose(ds.test_unseen_features, (raw.test_unseen_features - mean) / std,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(ds.train_features.mean(0), 0, atol=1e-5)
  assert ds.feature_normalization == "standardize"


# ------------------------------------------------------- validation errors


def expect_error(data_dir, file, key, found_pattern, **kwargs):
  """Loads `data_dir`, expecting a DataError about `file` [`key`]."""
  with pytest.raises(DataError) as excinfo:
    load_xlsa17(data_dir, **kwargs)
  error = excinfo.value
  message = str(error)
  assert pathlib.Path(error.path).name == file, message
  assert error.key == key, message
  assert file in message and (key is None or f"[{key}]" in message), message
  assert "expected" in message and "found" in message, message
  assert found_pattern in message, message
  assert "\n" not in message


def _broken(tmp_path, arrays, res_changes=None, split_changes=None, drop_res=(), drop_split=()):
  res, splits = arrays
  res = {k: v for k, v in {**res, **(res_changes or {})}.items() if k not in drop_res}
  splits = {k: v for k, v in {**splits, **(split_changes or {})}.items() if k not in drop_split}
  return write_dir(tmp_path / "broken", res, splits)


def test_error_missing_directory(tmp_path):
  expect_error(tmp_path / "nowhere", "nowhere", None, "no such directory")


def test_error_missing_feature_file(tmp_path, arrays):
  expect_error(write_dir(tmp_path / "d", None, arrays[1]), "res101.mat", None, "no such file")


def test_error_missing_split_file(tmp_path, arrays):
  expect_error(write_dir(tmp_path / "d", arrays[0], None), "att_splits.mat", None, "no such file")


def test_error_missing_sentence_file(good_dir):
  expect_error(good_dir, "sent_splits.mat", None, "no such file", embedding="sent")


def test_error_missing_key_features(tmp_path, arrays):
  expect_error(_broken(tmp_path, arrays, drop_res=["features"]), "res101.mat", "features",
               "no such key")


def test_error_missing_key_loc(tmp_path, arrays):
  expect_error(_broken(tmp_path, arrays, drop_split=["test_unseen_loc"]), "att_splits.mat",
               "test_unseen_loc", "no such key")


def test_error_validation_mode_needs_both_train_and_val_loc(tmp_path, arrays):
  expect_error(_broken(tmp_path, arrays, drop_split=["val_loc"]), "att_splits.mat", "val_loc",
               "no such key", split="validation")


def test_error_truncated_feature_file(good_dir):
  path = good_dir / "res101.mat"
  path.write_bytes(path.read_bytes()[:3000])
  expect_error(good_dir, "res101.mat", None, "found")


def test_error_split_file_is_not_a_mat_file(good_dir):
  (good_dir / "att_splits.mat").write_text("<html>404 Not Found</html>\n" * 10)
  expect_error(good_dir, "att_splits.mat", None, "expected a readable")


def test_error_non_numeric_labels(tmp_path, arrays):
  expect_error(_broken(tmp_path, arrays, {"labels": "one two three"}), "res101.mat", "labels",
               "non-numeric")


def test_error_non_numeric_embeddings(tmp_path, arrays):
  cell = np.empty((K, C), dtype=object)
  cell[:] = "x"
  expect_error(_broken(tmp_path, arrays, split_changes={"att": cell}), "att_splits.mat", "att",
               "non-numeric")


def test_error_features_count_differs_from_labels(tmp_path, arrays):
  res = arrays[0]
  expect_error(_broken(tmp_path, arrays, {"features": res["features"][:, :-1]}), "res101.mat",
               "features", f"shape ({D}, {N - 1})")


def test_error_features_not_a_matrix(tmp_path, arrays):
  expect_error(_broken(tmp_path, arrays, {"features": np.zeros((2, 2, N))}), "res101.mat",
               "features", "shape (2, 2, 80)")


def test_error_label_beyond_embedding_columns(tmp_path, arrays):
  labels = arrays[0]["labels"].copy()
  labels[5] = C + 1
  expect_error(_broken(tmp_path, arrays, {"labels": labels}), "res101.mat", "labels",
               f"expected class ids in 1..{C}")


def test_error_zero_based_labels(tmp_path, arrays):
  expect_error(_broken(tmp_path, arrays, {"labels": arrays[0]["labels"] - 1}), "res101.mat",
               "labels", "1-based")


def test_error_non_integer_labels(tmp_path, arrays):
  labels = arrays[0]["labels"].copy()
  labels[2] = 2.5
  expect_error(_broken(tmp_path, arrays, {"labels": labels}), "res101.mat", "labels", "2.5")


def test_error_loc_out_of_range(tmp_path, arrays):
  loc = arrays[1]["test_seen_loc"].astype(np.int64)
  loc[0] = N + 7
  expect_error(_broken(tmp_path, arrays, split_changes={"test_seen_loc": loc}), "att_splits.mat",
               "test_seen_loc", f"{N + 7}")


def test_error_zero_based_loc(tmp_path, arrays):
  zero_based = arrays[1]["trainval_loc"] - 1
  expect_error(_broken(tmp_path, arrays, split_changes={"trainval_loc": zero_based}),
               "att_splits.mat", "trainval_loc", "zero-based")


def test_error_non_integer_loc(tmp_path, arrays):
  loc = arrays[1]["test_seen_loc"].astype(np.float64)
  loc[1] += 0.5
  expect_error(_broken(tmp_path, arrays, split_changes={"test_seen_loc": loc}), "att_splits.mat",
               "test_seen_loc", "whole numbers")


def test_error_loc_not_a_vector(tmp_path, arrays):
  loc = arrays[1]["test_unseen_loc"].reshape(4, 5)
  expect_error(_broken(tmp_path, arrays, split_changes={"test_unseen_loc": loc}), "att_splits.mat",
               "test_unseen_loc", "shape (4, 5)")


def test_error_duplicated_loc(tmp_path, arrays):
  loc = arrays[1]["test_unseen_loc"].copy()
  loc[1] = loc[0]
  expect_error(_broken(tmp_path, arrays, split_changes={"test_unseen_loc": loc}), "att_splits.mat",
               "test_unseen_loc", "repeated")


def test_error_overlapping_loc_arrays(tmp_path, arrays):
  splits = arrays[1]
  test_seen = np.concatenate([splits["test_seen_loc"], splits["trainval_loc"][:1]])
  expect_error(_broken(tmp_path, arrays, split_changes={"test_seen_loc": test_seen}),
               "att_splits.mat", "test_seen_loc", "1 shared")


def test_error_class_both_seen_and_unseen(tmp_path, arrays):
  res, splits = arrays
  labels = res["labels"].copy()
  labels[splits["test_unseen_loc"][0, 0] - 1] = 1  # an unseen example of seen class 1
  expect_error(_broken(tmp_path, arrays, {"labels": labels}), "att_splits.mat", "test_unseen_loc",
               "both seen and unseen: 1 (001.class_0)")


def test_error_seen_class_absent_from_test_seen(tmp_path, arrays):
  res, splits = arrays
  labels = res["labels"].ravel()
  test_seen = splits["test_seen_loc"]
  keep = labels[test_seen.ravel() - 1] != 3  # drop class 3's (1-based) test examples
  expect_error(_broken(tmp_path, arrays, split_changes={"test_seen_loc": test_seen[keep]}),
               "att_splits.mat", "test_seen_loc", "none of seen class(es) 3 (003.class_2)")


def test_error_seen_class_absent_from_trainval(tmp_path, arrays):
  res, splits = arrays
  labels = res["labels"].ravel()
  trainval = splits["trainval_loc"]
  keep = labels[trainval.ravel() - 1] != 2
  expect_error(_broken(tmp_path, arrays, split_changes={"trainval_loc": trainval[keep]}),
               "att_splits.mat", "trainval_loc", "none of seen class(es) 2 (002.class_1)")


def test_error_validation_classes_overlap_train_classes(tmp_path, arrays):
  res, splits = arrays
  labels = res["labels"].copy()
  labels[splits["val_loc"][0, 0] - 1] = 1
  expect_error(_broken(tmp_path, arrays, {"labels": labels}), "att_splits.mat", "val_loc",
               "class(es) in both: 1", split="validation")


def test_error_nan_in_features(tmp_path, arrays):
  features = arrays[0]["features"].copy()
  features[3, 10] = np.nan
  expect_error(_broken(tmp_path, arrays, {"features": features}), "res101.mat", "features",
               "NaN/Inf in 1 example(s): 11")


def test_error_inf_in_embeddings(tmp_path, arrays):
  att = arrays[1]["att"].copy()
  att[2, 4] = np.inf
  expect_error(_broken(tmp_path, arrays, split_changes={"att": att}), "att_splits.mat", "att",
               "class column 5")


def test_error_all_zero_embedding_column(tmp_path, arrays):
  att = arrays[1]["att"].copy()
  att[:, 6] = 0
  expect_error(_broken(tmp_path, arrays, split_changes={"att": att}), "att_splits.mat", "att",
               "all-zero class column(s): 7")


def test_error_empty_split(tmp_path, arrays):
  empty = np.zeros((0, 1), dtype=np.uint16)
  expect_error(_broken(tmp_path, arrays, split_changes={"test_unseen_loc": empty}),
               "att_splits.mat", "test_unseen_loc", "empty split")


def test_error_class_names_count(tmp_path, arrays):
  names = arrays[1]["allclasses_names"][:-1]
  expect_error(_broken(tmp_path, arrays, split_changes={"allclasses_names": names}),
               "att_splits.mat", "allclasses_names", f"expected {C} names")


def test_error_sentence_file_class_count(good_dir):
  write_dir(good_dir, None, {"att": np.ones((12, C + 1))}, "sent_splits.mat")
  expect_error(good_dir, "sent_splits.mat", "att", f"expected {C} class columns",
               embedding="att+sent")


@pytest.mark.parametrize("option, value", [
    ("split", "val"), ("embedding", "word2vec"), ("feature_norm", "unit-gaussian"),
    ("validation_fraction", 1.0),
])
def test_error_bad_option(good_dir, option, value):
  expect_error(good_dir, "TOY", option, repr(value), **{option: value})


# ----------------------------------------------------------------- registry


def test_registry_loads_a_directory(good_dir):
  _equal_datasets(registry.load_dataset(str(good_dir)), load_xlsa17(good_dir))


def test_registry_missing_directory(tmp_path):
  with pytest.raises(DataError, match="nowhere: expected an existing dataset directory"):
    registry.load_dataset(tmp_path / "nowhere")


def test_registry_unknown_builtin():
  with pytest.raises(DataError, match="builtin:mnist: expected one of builtin:digits"):
    registry.load_dataset("builtin:mnist")


def test_registry_builtin_digits():
  if importlib.util.find_spec("gmn_jax.data.digits") is None:
    with pytest.raises(DataError, match="builtin:digits: expected the module gmn_jax.data.digits"):
      registry.load_dataset("builtin:digits")
    return
  ds = registry.load_dataset("builtin:digits", feature_norm="l2")
  assert isinstance(ds, ZSLDataset) and ds.feature_normalization == "l2"
  assert not set(ds.seen_classes) & set(ds.unseen_classes)
  with pytest.raises(DataError, match=r"builtin:digits \[embedding\]"):
    registry.load_dataset("builtin:digits", embedding="sent")


# ------------------------------------------------- real xlsa17 split files

# (folder, embedding, seen, unseen, (trainval, test_seen, test_unseen),
#  validation-mode (seen, unseen) classes): counts from the xlsa17 README.
_REAL = [
    ("APY", "att", 20, 12, (5932, 1483, 7924), (13, 7)),  # synthesised: round(20 / 3) held out
    ("AWA1", "att", 40, 10, (19832, 4958, 5685), (27, 13)),
    ("AWA2", "att", 40, 10, (23527, 5882, 7913), (27, 13)),
    ("AWA2", "binary", 40, 10, (23527, 5882, 7913), (27, 13)),
    ("CUB", "att", 150, 50, (7057, 1764, 2967), (100, 50)),  # synthesised: 50 held out
    ("CUB", "sent", 150, 50, (7057, 1764, 2967), (100, 50)),
    ("CUB", "att+sent", 150, 50, (7057, 1764, 2967), (100, 50)),
    ("FLO", "att", 82, 20, (5631, 1403, 1155), (62, 20)),
    ("SUN", "att", 645, 72, (10320, 2580, 1440), (580, 65)),
]
# The class-embedding dimension of each row: the rows of the "att" matrix in
# the real files (att+sent concatenates CUB's attributes and sentences).
_REAL_EMBEDDING_DIM = {
    ("APY", "att"): 64, ("AWA1", "att"): 85, ("AWA2", "att"): 85, ("AWA2", "binary"): 85,
    ("CUB", "att"): 312, ("CUB", "sent"): 1024, ("CUB", "att+sent"): 312 + 1024,
    ("FLO", "att"): 1024, ("SUN", "att"): 102,
}


def _assign_cyclically(labels, indices, classes, rng):
  """Gives every class at least one of `indices` (needs len >= classes)."""
  assert len(indices) >= len(classes)
  order = rng.permutation(indices)
  labels[order] = np.asarray(classes)[np.arange(len(order)) % len(classes)]


def fake_res101_for(split_files, seen, unseen, validation_unseen, directory, dim=8, seed=0):
  """Writes a res101.mat whose labels agree with real loc arrays.

  The labels come from the file with the most loc arrays (sent_splits.mat has
  train_loc / val_loc for CUB, att_splits.mat does not): test_unseen examples
  get unseen classes, trainval / test_seen ones seen classes, and where
  train_loc / val_loc exist, val_loc examples get validation classes.
  """
  splits = max((scipy.io.loadmat(path) for path in split_files), key=len)
  rng = np.random.default_rng(seed)
  num_classes = splits["att"].shape[1]
  locs = {key: value.ravel().astype(np.int64) - 1
          for key, value in splits.items() if key.endswith("_loc")}
  num_examples = 1 + max(int(loc.max()) for loc in locs.values())
  classes = rng.permutation(num_classes)
  assert len(classes) == seen + unseen
  unseen_classes, seen_classes = classes[:unseen], classes[unseen:]
  labels = np.full(num_examples, -1)
  _assign_cyclically(labels, locs["test_unseen_loc"], unseen_classes, rng)
  for key in ("trainval_loc", "test_seen_loc"):
    if "val_loc" in locs:
      val_classes = seen_classes[:validation_unseen]
      in_val = np.isin(locs[key], locs["val_loc"])
      _assign_cyclically(labels, locs[key][in_val], val_classes, rng)
      _assign_cyclically(labels, locs[key][~in_val], seen_classes[validation_unseen:], rng)
    else:
      _assign_cyclically(labels, locs[key], seen_classes, rng)
  assert (labels >= 0).all()
  features = rng.random((dim, num_examples)).astype(np.float32)
  scipy.io.savemat(directory / "res101.mat",
                   {"features": features, "labels": (labels + 1).reshape(-1, 1)})
  return num_examples


@pytest.mark.parametrize("folder, embedding, seen, unseen, sizes, validation", _REAL,
                         ids=[f"{row[0]}-{row[1]}" for row in _REAL])
def test_real_split_files_with_fake_features(xlsa17_dir, tmp_path, folder, embedding, seen, unseen,
                                             sizes, validation):
  source = xlsa17_dir / folder
  directory = tmp_path / folder
  directory.mkdir()
  needed = {"att": ["att_splits.mat"], "sent": ["sent_splits.mat"],
            "binary": ["binaryAtt_splits.mat"], "att+sent": ["att_splits.mat", "sent_splits.mat"]}
  for name in needed[embedding]:
    shutil.copy(source / name, directory / name)
  label_files = [source / name for name in ("att_splits.mat", "sent_splits.mat")
                 if (source / name).exists()]
  num_examples = fake_res101_for(label_files, seen, unseen, validation[1], directory)
  assert num_examples == sum(sizes)  # the loc arrays cover every image

  ds = load_xlsa17(directory, embedding=embedding)
  assert (ds.seen_classes.size, ds.unseen_classes.size) == (seen, unseen)
  assert (ds.train_labels.size, ds.test_seen_labels.size, ds.test_unseen_labels.size) == sizes
  assert ds.embedding_dim == _REAL_EMBEDDING_DIM[folder, embedding] and ds.feature_dim == 8
  assert ds.class_embeddings.shape == (seen + unseen, _REAL_EMBEDDING_DIM[folder, embedding])
  assert (ds.class_names is None) == (folder == "FLO")
  if embedding != "att+sent":
    np.testing.assert_allclose(np.linalg.norm(ds.class_embeddings, axis=1), 1.0, rtol=1e-5)

  val = load_xlsa17(directory, embedding=embedding, split="validation")
  assert (val.seen_classes.size, val.unseen_classes.size) == validation
  assert not set(val.seen_classes) & set(val.unseen_classes)
  assert set(val.seen_classes) | set(val.unseen_classes) <= set(ds.seen_classes)
  validation_total = (val.train_labels.size + val.test_seen_labels.size
                      + val.test_unseen_labels.size)
  assert validation_total == sizes[0] + sizes[1]
