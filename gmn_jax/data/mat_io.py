"""Reads MATLAB .mat files (v4/v5/v7 and v7.3/HDF5) into numpy arrays.

Every array comes back in MATLAB's own shape (a 2048 x N matrix stays
2048 x N whichever format stored it). Cell arrays of strings, such as
`allclasses_names`, come back as numpy object arrays of Python `str`.
Anything that cannot be read raises `DataError` naming the file, so that a
truncated download or a stray non-mat file gives one clear line.

Only numpy, scipy and h5py are used here: the loaders must not import JAX.
"""

import os
from typing import Any, Dict, Iterable, Optional

import h5py
import numpy as np
import scipy.io
import scipy.sparse

from gmn_jax.errors import DataError

# Groups MATLAB writes into v7.3 files for its own bookkeeping, not variables.
_HDF5_INTERNAL_GROUPS = ("#refs#", "#subsystem#")

_MATLAB_NUMERIC_CLASSES = {
    "double": np.float64,
    "single": np.float32,
    "int8": np.int8,
    "uint8": np.uint8,
    "int16": np.int16,
    "uint16": np.uint16,
    "int32": np.int32,
    "uint32": np.uint32,
    "int64": np.int64,
    "uint64": np.uint64,
    "logical": np.bool_,
}


def load_mat(path: os.PathLike | str,
             keys: Optional[Iterable[str]] = None) -> Dict[str, Any]:
  """Loads the variables of a .mat file, whatever MATLAB version wrote it.

  Args:
    path: the .mat file.
    keys: variable names to read; None reads all of them. Names missing from
      the file are simply absent from the result (the caller decides whether
      that is an error, and names the key when it is).

  Returns:
    A dict from variable name to value: numeric and logical arrays as numpy
    arrays in MATLAB's shape (at least 2-D); char arrays as 1-element `str`
    arrays; cell arrays as object arrays whose elements are converted the
    same way (so a cell of strings is an object array of `str`); structs in
    v7.3 files as nested dicts.

  Raises:
    DataError: the file is missing, truncated, or not a .mat file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise DataError(path, None, "a .mat file", "no such file")
  wanted = None if keys is None else list(keys)
  try:
    is_hdf5 = h5py.is_hdf5(path)
  except OSError as error:
    raise DataError(path, None, "a readable .mat file", f"unreadable file ({error})") from error
  if is_hdf5:
    return _load_hdf5(path, wanted)
  return _load_classic(path, wanted)


def _load_classic(path: str, keys: Optional[list]) -> Dict[str, Any]:
  """Reads a v4/v5/v7 file with scipy."""
  try:
    raw = scipy.io.loadmat(path, variable_names=keys, mat_dtype=False)
  # scipy signals truncation and garbage with many exception types (ValueError,
  # TypeError, OSError, zlib.error, MatReadError...); all mean "unreadable".
  except Exception as error:  # pylint: disable=broad-except
    raise DataError(path, None, "a readable MATLAB .mat file (v4-v7 or v7.3)",
                    f"{type(error).__name__}: {error}") from error
  return {name: _simplify_classic(value)
          for name, value in raw.items() if not name.startswith("__")}


def _simplify_classic(value: Any) -> Any:
  """Turns scipy's representation of one variable into plain numpy."""
  if scipy.sparse.issparse(value):
    return np.asarray(value.toarray())
  if isinstance(value, np.ndarray) and value.dtype == object:
    simplified = np.empty(value.shape, dtype=object)
    for index, element in np.ndenumerate(value):
      simplified[index] = _cell_element(element)
    return simplified
  return value


def _cell_element(element: Any) -> Any:
  """One element of a v5 cell array: a string when it is a char array."""
  if isinstance(element, np.ndarray) and element.dtype.kind == "U":
    return "".join(element.ravel().tolist())
  return _simplify_classic(element)


def _load_hdf5(path: str, keys: Optional[list]) -> Dict[str, Any]:
  """Reads a v7.3 file (HDF5 with MATLAB's column-major layout) with h5py."""
  try:
    with h5py.File(path, "r") as handle:
      names = [name for name in handle.keys() if name not in _HDF5_INTERNAL_GROUPS]
      if keys is not None:
        names = [name for name in names if name in keys]
      return {name: _read_hdf5_node(handle, handle[name]) for name in names}
  except DataError:
    raise
  except Exception as error:  # pylint: disable=broad-except
    raise DataError(path, None, "a readable MATLAB v7.3 (HDF5) .mat file",
                    f"{type(error).__name__}: {error}") from error


def _matlab_class(node: Any) -> str:
  value = node.attrs.get("MATLAB_class", b"")
  return value.decode() if isinstance(value, bytes) else str(value)


def _read_hdf5_node(handle: h5py.File, node: Any) -> Any:
  """Converts one HDF5 dataset or group to its MATLAB value."""
  if isinstance(node, h5py.Group):
    return {name: _read_hdf5_node(handle, node[name]) for name in node.keys()}
  matlab_class = _matlab_class(node)
  data = node[()]
  if node.attrs.get("MATLAB_empty", 0):
    # MATLAB stores an empty array as its (column-major) shape vector.
    shape = tuple(int(n) for n in np.ravel(data)) if np.size(data) > 1 else (0, 0)
    if matlab_class == "char":
      return np.array([""])
    dtype = _MATLAB_NUMERIC_CLASSES.get(matlab_class, np.float64)
    return np.zeros(shape, dtype=dtype)
  # HDF5 is row-major and MATLAB column-major: h5py sees every array with its
  # axes reversed, so reversing them back restores MATLAB's shape.
  data = np.transpose(np.asarray(data))
  if data.dtype == object or h5py.check_dtype(ref=node.dtype) is not None:
    cell = np.empty(data.shape, dtype=object)
    for index, reference in np.ndenumerate(data):
      element = _read_hdf5_node(handle, handle[reference])
      if isinstance(element, np.ndarray) and element.dtype.kind == "U" and element.size == 1:
        element = str(element[0])
      cell[index] = element
    return cell
  if matlab_class == "char":
    # Each column of the (now MATLAB-shaped) uint16 array is one character.
    return np.array(["".join(chr(code) for code in row) for row in np.atleast_2d(data)])
  if matlab_class == "logical":
    return data.astype(np.bool_)
  if data.ndim < 2:
    data = data.reshape((1,) * (2 - data.ndim) + data.shape)
  return data
