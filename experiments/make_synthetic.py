r"""Writes a synthetic res101.mat: semi-real (for a real split file) or a preset.

  python -m experiments.make_synthetic --att_splits=FILE --out_dir=DIR \
      [--seed=S] [--feature_dim=2048] [--overwrite]
  python -m experiments.make_synthetic --preset=CUB|SUN|AWA1|AWA2|APY|FLO \
      --out_dir=DIR [--seed=S] [--feature_dim=2048] [--overwrite]

With --att_splits, the split file (and sent_splits.mat, binaryAtt_splits.mat
and class lists beside it) is copied into DIR next to the new res101.mat.
With --preset, DIR gets a synthetic att_splits.mat as well. Bad input prints
one line to stderr and exits 2. See docs/synthetic_data.md.
"""

import pathlib
import time
from typing import Sequence

from absl import app
from absl import flags

from experiments import cli
from gmn_jax.data import synthetic_presets
from gmn_jax.data import synthetic_writer
from gmn_jax.errors import ConfigError
from gmn_jax.errors import GMNError

_ATT_SPLITS = None
_PRESET = None
_OUT_DIR = None
_SEED = None
_FEATURE_DIM = None
_OVERWRITE = None


def define_flags() -> None:
  """Defines the command-line flags.

  Called only when the module runs as a program, so that importing it (as
  the tests do, several binaries into one process) defines no absl flags
  and two binaries' flags of the same name never collide.
  """
  global _ATT_SPLITS, _PRESET, _OUT_DIR, _SEED, _FEATURE_DIM, _OVERWRITE
  _ATT_SPLITS = flags.DEFINE_string(
      "att_splits", None, "A real att_splits.mat to build a semi-real dataset for.")
  _PRESET = flags.DEFINE_string(
      "preset", None, f"One of {', '.join(synthetic_presets.PRESETS)}: no input file needed.")
  _OUT_DIR = flags.DEFINE_string("out_dir", None, "Directory to write (created if missing).")
  _SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
  _FEATURE_DIM = flags.DEFINE_integer("feature_dim", 2048, "Feature dimension D.")
  _OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing res101.mat.")


def make(att_splits, preset, out_dir, *, seed=0, feature_dim=2048, overwrite=False) -> pathlib.Path:
  """Checks the options and writes the dataset directory.

  Args:
    att_splits: path of a split file, or None.
    preset: a preset name, or None (exactly one of the two is given).
    out_dir: the directory to write.
    seed: random seed.
    feature_dim: D.
    overwrite: whether an existing res101.mat may be replaced.

  Returns:
    The path of the written res101.mat.

  Raises:
    ConfigError: bad flag combination or values, or an existing res101.mat
      without overwrite.
    DataError: missing or invalid split file.
  """
  if (att_splits is None) == (preset is None):
    raise ConfigError("--att_splits/--preset: expected exactly one of them, "
                      f"found {'both' if att_splits else 'neither'}")
  if not out_dir:
    raise ConfigError("--out_dir: expected a directory, found nothing")
  if feature_dim < 1:
    raise ConfigError(f"--feature_dim: expected a positive integer, found {feature_dim}")
  if preset is not None and preset not in synthetic_presets.PRESETS:
    raise ConfigError(f"--preset: expected one of {', '.join(synthetic_presets.PRESETS)}, "
                      f"found {preset!r}")
  target = pathlib.Path(out_dir) / synthetic_writer.FEATURES_FILE
  if target.exists() and not overwrite:
    raise ConfigError(f"--out_dir: expected no {synthetic_writer.FEATURES_FILE} there "
                      f"(or --overwrite), found {target}")
  if preset is not None:
    return synthetic_writer.write_preset(preset, out_dir, seed=seed, feature_dim=feature_dim)
  return synthetic_writer.write_semi_real(att_splits, out_dir, seed=seed, feature_dim=feature_dim)


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  start = time.time()
  try:
    path = make(_ATT_SPLITS.value, _PRESET.value, _OUT_DIR.value, seed=_SEED.value,
                feature_dim=_FEATURE_DIM.value, overwrite=_OVERWRITE.value)
  except GMNError as error:
    cli.fail(error)
  print(f"wrote {path} ({time.time() - start:.1f} s)")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
