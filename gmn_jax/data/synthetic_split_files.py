"""Reading a real split folder: att_splits.mat and the files that travel with it.

A semi-real dataset keeps a real folder's split file and its companions
(sent_splits.mat, binaryAtt_splits.mat, the class lists); this module reads
what the generator needs from them (the split variables, the real unseen
classes, validation locs borrowed from a companion) and copies them into the
new dataset directory.
"""

import os
import pathlib
import shutil
from typing import Mapping, Optional

import numpy as np
import scipy.io

from gmn_jax.errors import DataError

SPLITS_FILE = "att_splits.mat"
# Side files of a real dataset folder that travel with att_splits.mat.
_COMPANION_GLOBS = ("*_splits.mat", "*classes*.txt")


def read_splits(path: os.PathLike | str) -> dict:
  """The variables of a split file.

  Args:
    path: an att_splits.mat (or any MATLAB v5 split file).

  Returns:
    Its variables, as scipy.io.loadmat gives them.

  Raises:
    DataError: the file is missing or unreadable.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise DataError(path, None, "an att_splits.mat file", "no such file")
  try:
    return scipy.io.loadmat(path)
  except Exception as error:  # scipy raises many types on garbage input.
    raise DataError(path, None, "a MATLAB v5 .mat file",
                    f"unreadable ({type(error).__name__}: {error})") from error


def unseen_from_class_lists(att_splits: Mapping[str, np.ndarray],
                            folder: pathlib.Path) -> Optional[list]:
  """The real unseen class ids, when testclasses.txt and class names allow it.

  Args:
    att_splits: the split variables (their `allclasses_names` is used).
    folder: the folder that may hold testclasses.txt.

  Returns:
    0-based ids of the classes listed in testclasses.txt, or None when the
    list or the names are missing or do not match.
  """
  listing = folder / "testclasses.txt"
  if "allclasses_names" not in att_splits or not listing.is_file():
    return None
  names = [str(np.asarray(cell).reshape(-1)[0]) if np.asarray(cell).size else ""
           for cell in np.asarray(att_splits["allclasses_names"]).reshape(-1)]
  unseen_names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
  if not unseen_names or not set(unseen_names) <= set(names):
    return None
  return [names.index(n) for n in unseen_names]


def with_companion_validation_locs(att_splits: dict, split_path: pathlib.Path) -> dict:
  """Adds train_loc/val_loc from a companion split file when the file lacks them.

  CUB's att_splits.mat copy has no train_loc/val_loc but its sent_splits.mat
  has them; labels must respect them so that either file validates.

  Args:
    att_splits: the split variables.
    split_path: where they were read from.

  Returns:
    `att_splits`, or a copy with the companion's train_loc and val_loc.
  """
  if "train_loc" in att_splits and "val_loc" in att_splits:
    return att_splits
  test_keys = ("trainval_loc", "test_seen_loc", "test_unseen_loc")
  for companion in sorted(split_path.parent.glob("*_splits.mat")):
    if companion.resolve() == split_path.resolve():
      continue
    try:
      other = scipy.io.loadmat(companion)
    except Exception:  # pylint: disable=broad-except
      continue  # An unreadable companion just lends nothing.
    if "train_loc" in other and "val_loc" in other and all(
        key in other and np.array_equal(np.ravel(other[key]), np.ravel(att_splits[key]))
        for key in test_keys):
      return dict(att_splits, train_loc=other["train_loc"], val_loc=other["val_loc"])
  return att_splits


def copy_split_files(att_splits_path: pathlib.Path, out_dir: pathlib.Path) -> None:
  """Copies a split file, as att_splits.mat, and its companions into out_dir.

  Companions are the files beside it that match `_COMPANION_GLOBS`. A file
  that already is its target (out_dir is the source folder) is left alone.

  Args:
    att_splits_path: the split file.
    out_dir: an existing directory.
  """
  companions = {att_splits_path}
  for pattern in _COMPANION_GLOBS:
    companions.update(att_splits_path.parent.glob(pattern))
  for companion in sorted(companions):
    target = out_dir / (SPLITS_FILE if companion == att_splits_path else companion.name)
    if companion.resolve() != target.resolve():
      shutil.copyfile(companion, target)
