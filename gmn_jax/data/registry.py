"""One entry point for every dataset: a directory path or a builtin name.

`load_dataset("builtin:digits")` loads the embedded digits dataset (no
download); any other string is an xlsa17 directory.
"""

import importlib
import pathlib
from typing import Callable, Dict

from gmn_jax.data import xlsa17
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import DataError

BUILTIN_PREFIX = "builtin:"


def _load_digits(split: str, feature_norm: str) -> ZSLDataset:
  # Imported lazily: scikit-learn is slow to import and xlsa17 users never need it.
  try:
    digits = importlib.import_module("gmn_jax.data.digits")
  except ModuleNotFoundError as error:
    if error.name != "gmn_jax.data.digits":
      raise
    raise DataError(f"{BUILTIN_PREFIX}digits", None, "the module gmn_jax.data.digits",
                    "it is not installed in this version") from error
  return digits.load_digits(split=split, feature_norm=feature_norm)


_BUILTINS: Dict[str, Callable[[str, str], ZSLDataset]] = {"digits": _load_digits}


def load_dataset(data_dir,
                 *,
                 split: str = "test",
                 embedding: str = "att",
                 feature_norm: str = "none",
                 normalize_embeddings: bool = True,
                 validation_fraction: float = xlsa17.DEFAULT_VALIDATION_FRACTION,
                 seed: int = 0) -> ZSLDataset:
  """Loads a builtin dataset ("builtin:NAME") or an xlsa17 directory.

  Args:
    data_dir: "builtin:digits", or a directory in xlsa17 format.
    split: "test" or "validation".
    embedding: the class-embedding source of an xlsa17 directory; builtin
      datasets have a single source and accept only the default "att".
    feature_norm: feature normalisation, see preprocessing.
    normalize_embeddings: per-class L2 of embeddings (xlsa17 only).
    validation_fraction: share of seen classes held out when a validation
      split has to be synthesised (xlsa17 only).
    seed: seed of the validation split's random choices (xlsa17 only).

  Returns:
    The ZSLDataset.

  Raises:
    DataError: an unknown builtin name, an option the builtin does not take,
      a missing directory, or any invalid file (see xlsa17.load_xlsa17).
  """
  data_dir = str(data_dir)
  if data_dir.startswith(BUILTIN_PREFIX):
    name = data_dir[len(BUILTIN_PREFIX):]
    if name not in _BUILTINS:
      raise DataError(data_dir, None, f"one of {', '.join(BUILTIN_PREFIX + n for n in _BUILTINS)}",
                      repr(data_dir))
    if embedding != "att":
      raise DataError(data_dir, "embedding", "'att' (builtin datasets have one embedding source)",
                      repr(embedding))
    return _BUILTINS[name](split, feature_norm)
  if not pathlib.Path(data_dir).is_dir():
    raise DataError(data_dir, None, "an existing dataset directory (or builtin:digits)",
                    "no such directory")
  return xlsa17.load_xlsa17(data_dir, split=split, embedding=embedding,
                            feature_norm=feature_norm,
                            normalize_embeddings=normalize_embeddings,
                            validation_fraction=validation_fraction, seed=seed)
