"""Tests for gmn_jax.data.mat_io: MATLAB v5 and v7.3 files read the same way."""

import h5py
import numpy as np
import pytest
import scipy.io

from gmn_jax.data import mat_io
from gmn_jax.errors import DataError

_MATLAB_CLASSES = {
    np.dtype(np.float64): "double", np.dtype(np.float32): "single",
    np.dtype(np.uint16): "uint16", np.dtype(np.int32): "int32", np.dtype(np.uint8): "uint8",
}


def _write_char(group, name, text):
  # MATLAB stores a 1 x L char array as uint16 codes; HDF5 sees it as L x 1.
  codes = np.array([[ord(ch)] for ch in text], dtype=np.uint16).reshape(len(text), 1)
  dataset = group.create_dataset(name, data=codes)
  dataset.attrs["MATLAB_class"] = np.bytes_("char")
  return dataset


def write_v73(path, variables, userblock=True):
  """Writes `variables` the way MATLAB's `save -v7.3` lays them out.

  Numeric arrays are stored with their axes reversed (MATLAB is
  column-major), lists of strings become C x 1 cell arrays whose elements are
  object references into "#refs#", and MATLAB's 512-byte text header goes
  into the HDF5 userblock.
  """
  with h5py.File(path, "w", userblock_size=512 if userblock else 0) as handle:
    refs = handle.create_group("#refs#")
    for name, value in variables.items():
      if isinstance(value, str):
        _write_char(handle, name, value)
      elif isinstance(value, list):
        references = [_write_char(refs, f"{name}_{i}", text).ref for i, text in enumerate(value)]
        # A C x 1 cell is stored as 1 x C in HDF5.
        cell = np.array(references, dtype=h5py.ref_dtype).reshape(1, len(value))
        dataset = handle.create_dataset(name, data=cell)
        dataset.attrs["MATLAB_class"] = np.bytes_("cell")
      elif value.dtype == np.bool_:
        dataset = handle.create_dataset(name, data=value.astype(np.uint8).T)
        dataset.attrs["MATLAB_class"] = np.bytes_("logical")
      else:
        dataset = handle.create_dataset(name, data=np.asarray(value).T)
        dataset.attrs["MATLAB_class"] = np.bytes_(_MATLAB_CLASSES[value.dtype])
  if userblock:
    text = (b"MATLAB 7.3 MAT-file, Platform: GLNXA64, "
            b"Created on: Mon Jan  1 00:00:00 2018 HDF5 schema 1.00 .")
    with open(path, "r+b") as handle:
      handle.write(text.ljust(116, b" ") + b"\0" * 8 + b"\x00\x02" + b"IM")


@pytest.fixture(name="variables")
def fixture_variables():
  rng = np.random.default_rng(0)
  return {
      "features": rng.random((7, 5)).astype(np.float32),  # D x N, D != N
      "labels": np.arange(1, 6, dtype=np.float64).reshape(5, 1),
      "trainval_loc": np.array([[3], [1], [2]], dtype=np.uint16),
      "att": rng.random((4, 3)),
  }


def test_v5_keeps_matlab_shapes_and_dtypes(tmp_path, variables):
  path = tmp_path / "v5.mat"
  scipy.io.savemat(path, variables)
  loaded = mat_io.load_mat(path)
  assert set(loaded) == set(variables)
  for name, value in variables.items():
    assert loaded[name].shape == value.shape, name
    assert loaded[name].dtype == value.dtype, name
    np.testing.assert_array_equal(loaded[name], value)


def test_v5_cell_of_strings_becomes_object_array_of_str(tmp_path):
  names = np.empty((3, 1), dtype=object)
  names[:, 0] = ["002.Laysan_Albatross", "cat", ""]
  path = tmp_path / "names.mat"
  scipy.io.savemat(path, {"allclasses_names": names})
  loaded = mat_io.load_mat(path)["allclasses_names"]
  assert loaded.shape == (3, 1) and loaded.dtype == object
  assert loaded.ravel().tolist() == ["002.Laysan_Albatross", "cat", ""]


@pytest.mark.parametrize("userblock", [True, False], ids=["matlab_userblock", "plain_hdf5"])
def test_v73_is_transposed_back_to_matlab_shapes(tmp_path, variables, userblock):
  path = tmp_path / "v73.mat"
  write_v73(path, variables, userblock=userblock)
  with h5py.File(path, "r") as handle:  # The file really holds reversed axes.
    assert handle["features"].shape == (5, 7)
  if userblock:
    assert path.read_bytes()[:19] == b"MATLAB 7.3 MAT-file"
  loaded = mat_io.load_mat(path)
  assert set(loaded) == set(variables)  # "#refs#" is not a variable.
  for name, value in variables.items():
    assert loaded[name].shape == value.shape, name
    assert loaded[name].dtype == value.dtype, name
    np.testing.assert_array_equal(loaded[name], value)


def test_v73_cells_chars_and_logicals(tmp_path):
  path = tmp_path / "v73.mat"
  write_v73(path, {"allclasses_names": ["antelope", "grizzly+bear"], "title": "AWA",
                   "mask": np.array([[True, False, True]])})
  loaded = mat_io.load_mat(path)
  assert loaded["allclasses_names"].shape == (2, 1)
  assert loaded["allclasses_names"].ravel().tolist() == ["antelope", "grizzly+bear"]
  assert loaded["title"].tolist() == ["AWA"]
  assert loaded["mask"].dtype == np.bool_
  np.testing.assert_array_equal(loaded["mask"], [[True, False, True]])


def test_v73_empty_array(tmp_path):
  path = tmp_path / "empty.mat"
  with h5py.File(path, "w") as handle:
    # MATLAB writes zeros(0, 3) as its shape vector with a MATLAB_empty flag.
    dataset = handle.create_dataset("val_loc", data=np.array([0, 3], dtype=np.uint64))
    dataset.attrs["MATLAB_class"] = np.bytes_("double")
    dataset.attrs["MATLAB_empty"] = np.uint8(1)
  loaded = mat_io.load_mat(path)["val_loc"]
  assert loaded.size == 0 and loaded.shape == (0, 3)


@pytest.mark.parametrize("writer", ["v5", "v73"])
def test_keys_restricts_what_is_read(tmp_path, variables, writer):
  path = tmp_path / "file.mat"
  if writer == "v5":
    scipy.io.savemat(path, variables)
  else:
    write_v73(path, variables)
  loaded = mat_io.load_mat(path, keys=["labels", "no_such_key"])
  assert list(loaded) == ["labels"]


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match="nothere.mat.*no such file"):
    mat_io.load_mat(tmp_path / "nothere.mat")


@pytest.mark.parametrize("writer", ["v5", "v73"])
def test_truncated_file(tmp_path, writer):
  path = tmp_path / "res101.mat"
  big = {"features": np.random.default_rng(0).random((64, 500))}
  if writer == "v5":
    scipy.io.savemat(path, big)
  else:
    write_v73(path, big)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  with pytest.raises(DataError) as excinfo:
    mat_io.load_mat(path)
  assert "res101.mat" in str(excinfo.value)
  assert excinfo.value.path == str(path)


@pytest.mark.parametrize("content", [b"", b"this is not a mat file\n" * 20],
                         ids=["empty", "text"])
def test_not_a_mat_file(tmp_path, content):
  path = tmp_path / "att_splits.mat"
  path.write_bytes(content)
  with pytest.raises(DataError, match="att_splits.mat: expected a readable"):
    mat_io.load_mat(path)
