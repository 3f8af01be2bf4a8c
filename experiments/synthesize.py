r"""Writes synthetic features from a trained run's generator, for any classes.

  python -m experiments.synthesize --workdir=W [--seed=S] --data_dir=DIR \
      [--classes=unseen|seen|all] --out=FILE.npz|FILE.mat [--num_per_class=N]
  python -m experiments.synthesize --workdir=W [--seed=S] --embeddings=FILE \
      [--l2_normalize] --out=FILE.npz|FILE.mat [--num_per_class=N]

The generator is seed S's (default: the run's first seed) from the newest
checkpoint in W (`gmn_jax.trained_generator`); a run whose stage 1 has not
finished is refused unless --allow_unfinished.

Classes: --data_dir takes an xlsa17 directory (or builtin:digits) and
embeds its classes as the run did (config.embedding, config.split): its
unseen classes by default, --classes=seen or all for the others. Labels are
the directory's class ids. --embeddings takes a file of C class embeddings:
.npy (C, K), .npz with `embeddings` (C, K) and optional `names` (C,), or
.csv / .txt with one class per row; labels are row numbers. --l2_normalize
scales each row to unit norm, as the xlsa17 and digits loaders do.

Output: FILE.npz holds features (N, D) float32, labels (N,) int32 (0-based),
class_ids (the classes generated), class_embeddings (all C rows),
class_names (when known) and the provenance (workdir, seed, iteration,
feature_norm, key_seed); FILE.mat is xlsa17-style like res101.mat:
features D x N float32, labels N x 1 (1-based, double). An existing --out
is never replaced unless --overwrite. Prints one line per file written; bad
input prints one line to stderr and exits with status 2. See
docs/generators.md.
"""

import os
from typing import Optional, Sequence, Tuple

from absl import app
from absl import flags
import numpy as np
import scipy.io

from experiments import cli
from gmn_jax import trained_generator
from gmn_jax.data import preprocessing
from gmn_jax.data import registry
from gmn_jax.errors import ConfigError
from gmn_jax.errors import DataError
from gmn_jax.errors import GMNError

CLASS_CHOICES = ("unseen", "seen", "all")
EMBEDDING_FORMATS = (".npy", ".npz", ".csv", ".txt")
OUTPUT_FORMATS = (".npz", ".mat")

_WORKDIR = None
_SEED = None
_NUM_PER_CLASS = None
_DATA_DIR = None
_CLASSES = None
_EMBEDDINGS = None
_L2_NORMALIZE = None
_OUT = None
_OVERWRITE = None
_KEY_SEED = None
_ALLOW_UNFINISHED = None


def define_flags() -> None:
  """Defines the command-line flags.

  Called only when the module runs as a program, so that importing it (as
  the tests do, several binaries into one process) defines no absl flags
  and two binaries' flags of the same name never collide.
  """
  # pylint: disable=global-statement
  global _WORKDIR, _SEED, _NUM_PER_CLASS, _DATA_DIR, _CLASSES, _EMBEDDINGS, _L2_NORMALIZE
  global _OUT, _OVERWRITE, _KEY_SEED, _ALLOW_UNFINISHED
  # pylint: enable=global-statement
  _WORKDIR = flags.DEFINE_string("workdir", None, "The --workdir of a training run.")
  _SEED = flags.DEFINE_integer("seed", None, "The generator seed (default: the run's first).")
  _NUM_PER_CLASS = flags.DEFINE_integer(
      "num_per_class", None, "Features per class (default: the run's eval.n_synth_unseen).")
  _DATA_DIR = flags.DEFINE_string(
      "data_dir", None, "An xlsa17 directory (or builtin:digits) whose classes to generate, "
      "embedded as the run's config says.")
  _CLASSES = flags.DEFINE_enum("classes", None, CLASS_CHOICES,
                               "With --data_dir: which classes (default: unseen).")
  _EMBEDDINGS = flags.DEFINE_string(
      "embeddings", None, "A file of C class embeddings: .npy (C, K), .npz with 'embeddings' "
      "(and optional 'names'), or .csv / .txt with one class per row.")
  _L2_NORMALIZE = flags.DEFINE_bool(
      "l2_normalize", False, "With --embeddings: scale each row to unit L2 norm first (as the "
      "xlsa17 and digits loaders do for the embeddings a run trains on).")
  _OUT = flags.DEFINE_string("out", None, "The file to write: FILE.npz or FILE.mat.")
  _OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing --out.")
  _KEY_SEED = flags.DEFINE_integer("key_seed", 0, "Seed of the generator's noise.")
  _ALLOW_UNFINISHED = flags.DEFINE_bool(
      "allow_unfinished", False, "Sample from a generator whose stage 1 has not finished (the "
      "newest checkpoint of a run still training or stopped).")


def read_embeddings(path) -> Tuple[np.ndarray, Optional[Tuple[str, ...]]]:
  """Reads a file of class embeddings.

  Args:
    path: .npy holding (C, K); .npz with `embeddings` (C, K) and optional
      `names` (C,); .csv (comma-separated) or .txt (whitespace- or
      comma-separated) with one class per row ('#' starts a comment).

  Returns:
    (embeddings (C, K) float32, class names or None).

  Raises:
    ConfigError: an unknown file extension.
    DataError: a missing or unreadable file, or contents that are not C >= 1
      rows of K finite numbers.
  """
  path = os.fspath(path)
  extension = os.path.splitext(path)[1].lower()
  if extension not in EMBEDDING_FORMATS:
    raise ConfigError(f"--embeddings: expected a {', '.join(EMBEDDING_FORMATS)} file, "
                      f"found {path}")
  if not os.path.isfile(path):
    raise DataError(path, None, "a file of class embeddings", "no such file")
  key, names = None, None
  try:
    if extension == ".npy":
      embeddings = np.load(path, allow_pickle=False)
    elif extension == ".npz":
      with np.load(path, allow_pickle=False) as archive:
        if "embeddings" not in archive.files:
          raise DataError(path, "embeddings", "a (C, K) array of class embeddings",
                          f"no such key (keys: {', '.join(archive.files) or 'none'})")
        key = "embeddings"
        embeddings = archive["embeddings"]
        if "names" in archive.files:
          names = archive["names"]
    else:
      with open(path, encoding="utf-8") as f:
        text = f.read()
      delimiter = "," if extension == ".csv" or "," in text else None
      embeddings = np.loadtxt(path, delimiter=delimiter, ndmin=2, dtype=np.float64)
  except DataError:
    raise
  except (OSError, ValueError, UnicodeDecodeError) as error:
    raise DataError(path, key, "a readable file of class embeddings",
                    f"{type(error).__name__}: {' '.join(str(error).split())}") from error
  if (embeddings.ndim != 2 or 0 in embeddings.shape
      or not np.issubdtype(embeddings.dtype, np.number)):
    raise DataError(path, key, "a (C, K) array of numbers, one row per class (C, K >= 1)",
                    f"{embeddings.dtype} of shape {embeddings.shape}")
  if not np.all(np.isfinite(embeddings)):
    raise DataError(path, key, "finite numbers", "NaN or infinite values")
  if names is not None:
    if names.ndim != 1 or names.shape[0] != embeddings.shape[0]:
      raise DataError(path, "names", f"{embeddings.shape[0]} class names (one per row)",
                      f"shape {names.shape}")
    names = tuple(str(n) for n in names)
  return embeddings.astype(np.float32), names


def classes_of_data_dir(generator: trained_generator.TrainedGenerator, data_dir: str,
                        classes: str):
  """(embeddings, class ids, names) of an xlsa17 directory, embedded as the run's were."""
  config = generator.config
  dataset = registry.load_dataset(data_dir, split=config.split, embedding=config.embedding,
                                  feature_norm=config.feature_norm)
  if dataset.embedding_dim != generator.embedding_dim:
    raise DataError(data_dir, f"embedding={config.embedding}",
                    f"{generator.embedding_dim}-d class embeddings (the width the run's "
                    "generator takes)", f"{dataset.embedding_dim}-d ones")
  ids = {"unseen": dataset.unseen_classes, "seen": dataset.seen_classes,
         "all": np.arange(dataset.num_classes)}[classes]
  return (np.asarray(dataset.class_embeddings, np.float32), np.asarray(ids, np.int32),
          dataset.class_names)


def write_npz(path: str, **arrays) -> None:
  """np.savez, atomically (a temporary file, then a rename)."""
  tmp = f"{path}.tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def write_mat(path: str, features: np.ndarray, labels: np.ndarray) -> None:
  """An xlsa17-style res101.mat, atomically: features D x N float32, labels N x 1 1-based.

  The layout and options are those of `gmn_jax.data.synthetic_writer`'s
  res101.mat (MATLAB v5, uncompressed, labels as doubles).
  """
  tmp = f"{path}.tmp.mat"
  scipy.io.savemat(tmp, {"features": np.asarray(features, np.float32).T,
                         "labels": (np.asarray(labels, np.float64) + 1.0).reshape(-1, 1)},
                   format="5", do_compression=False, oned_as="column")
  os.replace(tmp, path)


def synthesize_to_file(workdir, out, *, seed: Optional[int] = None,
                       num_per_class: Optional[int] = None, data_dir: Optional[str] = None,
                       classes: Optional[str] = None, embeddings: Optional[str] = None,
                       l2_normalize: bool = False, key_seed: int = 0, overwrite: bool = False,
                       allow_unfinished: bool = False) -> str:
  """Checks the options, generates the features and writes --out.

  Args:
    workdir: the training run's directory.
    out: the .npz or .mat file to write.
    seed: the generator seed (None: the run's first).
    num_per_class: features per class (None: the run's eval.n_synth_unseen).
    data_dir: an xlsa17 directory or builtin name (exclusive with embeddings).
    classes: with data_dir, "unseen" (None), "seen" or "all".
    embeddings: a file of class embeddings (see `read_embeddings`).
    l2_normalize: with embeddings, scale each row to unit norm first.
    key_seed: the seed of the noise's PRNG key.
    overwrite: whether an existing `out` may be replaced.
    allow_unfinished: accept a generator whose stage 1 has not finished.

  Returns:
    The line to print (what was written, with counts).

  Raises:
    ConfigError: bad options (flag combinations, an existing --out, ...),
      or a bad run config.
    DataError: the workdir, its checkpoint, the data directory or the
      embeddings file is missing or invalid.
  """
  if not workdir:
    raise ConfigError("--workdir: expected the workdir of a training run, found nothing")
  if not out:
    raise ConfigError("--out: expected a .npz or .mat file to write, found nothing")
  out = os.fspath(out)
  extension = os.path.splitext(out)[1].lower()
  if extension not in OUTPUT_FORMATS:
    raise ConfigError(f"--out: expected a file ending in .npz or .mat, found {out}")
  if os.path.exists(out) and not overwrite:
    raise ConfigError(f"--out: expected a file that does not exist yet (or --overwrite), "
                      f"found {out}")
  if (data_dir is None) == (embeddings is None):
    raise ConfigError("--data_dir/--embeddings: expected exactly one source of classes, "
                      f"found {'both' if data_dir is not None else 'neither'}")
  if classes is not None and data_dir is None:
    raise ConfigError(f"--classes: expected only with --data_dir, found --classes={classes} "
                      "with --embeddings (which generates every row)")
  if l2_normalize and embeddings is None:
    raise ConfigError("--l2_normalize: expected only with --embeddings (--data_dir embeds "
                      "classes as the run did)")
  classes = classes or "unseen"
  if classes not in CLASS_CHOICES:
    raise ConfigError(f"--classes: expected one of {', '.join(CLASS_CHOICES)}, "
                      f"found {classes!r}")
  if num_per_class is not None and num_per_class < 1:
    raise ConfigError(f"--num_per_class: expected a positive integer, found {num_per_class}")
  if embeddings is not None:
    class_embeddings, names = read_embeddings(embeddings)  # Before the slower restore.
  generator = trained_generator.load_generator(workdir, seed, allow_unfinished=allow_unfinished)
  if embeddings is not None:
    if class_embeddings.shape[1] != generator.embedding_dim:
      raise DataError(embeddings, None,
                      f"{generator.embedding_dim} numbers per class (the width of the run's "
                      "class embeddings)",
                      f"{class_embeddings.shape[1]} ({class_embeddings.shape[0]} rows)")
    if l2_normalize:
      class_embeddings = preprocessing.l2_normalize_rows(class_embeddings).astype(np.float32)
    class_ids = np.arange(class_embeddings.shape[0], dtype=np.int32)
  else:
    class_embeddings, class_ids, names = classes_of_data_dir(generator, data_dir, classes)
  if num_per_class is None:
    num_per_class = int(generator.config.eval.n_synth_unseen)
  features, labels = generator.sample(class_embeddings, num_per_class, key_seed,
                                      class_ids=class_ids)
  directory = os.path.dirname(os.path.abspath(out))
  os.makedirs(directory, exist_ok=True)
  if extension == ".npz":
    extra = {} if names is None else {"class_names": np.asarray(names, dtype=str)}
    write_npz(out, features=features, labels=labels, class_ids=class_ids,
              class_embeddings=class_embeddings, **extra,
              workdir=np.asarray(os.path.abspath(os.fspath(workdir))),
              seed=np.int64(generator.seed), iteration=np.int64(generator.iteration),
              feature_norm=np.asarray(generator.config.feature_norm),
              key_seed=np.int64(key_seed))
  else:
    write_mat(out, features, labels)
  stage = ("" if generator.finished else
           f" of {generator.num_iterations} (stage 1 unfinished)")
  return (f"wrote {out}: {features.shape[0]} features ({generator.feature_dim}-d) of "
          f"{class_ids.size} classes, {num_per_class} per class, from seed {generator.seed}'s "
          f"generator at iteration {generator.iteration}{stage}")


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  cli.quiet_checkpoint_logs()
  try:
    line = synthesize_to_file(
        _WORKDIR.value, _OUT.value, seed=_SEED.value, num_per_class=_NUM_PER_CLASS.value,
        data_dir=_DATA_DIR.value, classes=_CLASSES.value, embeddings=_EMBEDDINGS.value,
        l2_normalize=_L2_NORMALIZE.value, key_seed=_KEY_SEED.value,
        overwrite=_OVERWRITE.value, allow_unfinished=_ALLOW_UNFINISHED.value)
  except GMNError as error:
    cli.fail(error)
  print(line)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
