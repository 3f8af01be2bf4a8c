r"""Loads and validates a dataset directory and prints a summary.

  python -m experiments.check_data --data_dir=DIR \
      [--embedding=att|sent|binary|att+sent] [--split=test|validation] \
      [--feature_norm=none|l2|minmax|standardize]

Exits 0 and prints the summary when the directory is valid; otherwise prints
the one-line error to stderr and exits 2. Never imports JAX.
"""

from typing import Sequence

from absl import app
from absl import flags
import numpy as np

from experiments import cli
from gmn_jax.data import registry
from gmn_jax.data import xlsa17
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import ConfigError
from gmn_jax.errors import GMNError

_DATA_DIR = None
_EMBEDDING = None
_SPLIT = None
_FEATURE_NORM = None
_VALIDATION_FRACTION = None
_SEED = None


def define_flags() -> None:
  """Defines the command-line flags.

  Called only when the module runs as a program, so that importing it (as
  the tests do, several binaries into one process) defines no absl flags
  and two binaries' flags of the same name never collide.
  """
  global _DATA_DIR, _EMBEDDING, _SPLIT, _FEATURE_NORM, _VALIDATION_FRACTION, _SEED
  _DATA_DIR = flags.DEFINE_string(
      "data_dir", None, "xlsa17 directory (res101.mat + att_splits.mat) or builtin:digits.")
  # Plain strings, not enums, so that a bad name gets the library's one-line
  # DataError and exit status 2 like every other bad input.
  _EMBEDDING = flags.DEFINE_string("embedding", "att", "att | sent | binary | att+sent")
  _SPLIT = flags.DEFINE_string("split", "test", "test | validation")
  _FEATURE_NORM = flags.DEFINE_string("feature_norm", "none", "none | l2 | minmax | standardize")
  _VALIDATION_FRACTION = flags.DEFINE_float(
      "validation_fraction", xlsa17.DEFAULT_VALIDATION_FRACTION,
      "Share of seen classes held out when a validation split must be synthesised.")
  _SEED = flags.DEFINE_integer("seed", 0, "Seed of the validation split's random choices.")


def _count_range(labels: np.ndarray) -> str:
  counts = np.unique(labels, return_counts=True)[1]
  return f"{counts.size} classes, {counts.min()}-{counts.max()} per class"


def summarize(dataset: ZSLDataset) -> str:
  """Formats the summary that check_data prints.

  Args:
    dataset: a loaded dataset.

  Returns:
    A multi-line human-readable summary.
  """
  parts = {"train": dataset.train_labels, "test_seen": dataset.test_seen_labels,
           "test_unseen": dataset.test_unseen_labels}
  total = sum(labels.size for labels in parts.values())
  lines = [
      f"dataset       {dataset.name} (split mode {dataset.split})",
      f"examples      N={total} in the three splits, feature dim D={dataset.feature_dim}, "
      f"feature normalisation {dataset.feature_normalization}",
      f"embeddings    source {dataset.embedding_source}, dim K={dataset.embedding_dim}, "
      f"{dataset.num_classes} classes",
      f"classes       {dataset.seen_classes.size} seen, {dataset.unseen_classes.size} unseen, "
      f"names {'yes' if dataset.class_names else 'none'}",
  ]
  for name, labels in parts.items():
    lines.append(f"{name:<13} {labels.size} examples, {_count_range(labels)}")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  try:
    if not _DATA_DIR.value:
      raise ConfigError("--data_dir: expected a dataset directory or builtin:digits, found nothing")
    dataset = registry.load_dataset(
        _DATA_DIR.value, split=_SPLIT.value, embedding=_EMBEDDING.value,
        feature_norm=_FEATURE_NORM.value, validation_fraction=_VALIDATION_FRACTION.value,
        seed=_SEED.value)
  except GMNError as error:
    cli.fail(error)
  print(summarize(dataset))


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
