r"""Prints the seen-only linear baseline's GBU numbers on synthetic data.

  python -m experiments.synthetic_baseline --preset=CUB|SUN|AWA1|AWA2|APY|FLO|all \
      [--att_splits=FILE] [--feature_dim=2048] [--seed=0] \
      [--difficulty=calibrated|naive]
  python -m experiments.synthetic_baseline --real_dir=DIR   # semi-real, all six
  python -m experiments.synthetic_baseline --preset=digits  # the embedded digits

--preset alone uses the preset's synthetic embeddings and splits; with
--att_splits the features are generated for that real split file (semi-real);
--real_dir=DIR runs the semi-real benchmark for each DIR/<DS>/att_splits.mat.
The data are built in memory (nothing is written). This is how the table in
docs/synthetic_data.md was made.
"""

import pathlib
import time
from typing import Sequence

from absl import app
from absl import flags

from experiments import cli
from gmn_jax import baseline
from gmn_jax.data import synthetic
from gmn_jax.data import synthetic_features
from gmn_jax.data import synthetic_presets
from gmn_jax.data import synthetic_split_files
from gmn_jax.errors import ConfigError
from gmn_jax.errors import GMNError

_PRESET = None
_ATT_SPLITS = None
_REAL_DIR = None
_FEATURE_DIM = None
_SEED = None
_DIFFICULTY = None


def define_flags() -> None:
  """Defines the command-line flags.

  Called only when the module runs as a program, so that importing it (as
  the tests do, several binaries into one process) defines no absl flags.
  """
  # pylint: disable=global-statement
  global _PRESET, _ATT_SPLITS, _REAL_DIR, _FEATURE_DIM, _SEED, _DIFFICULTY
  # pylint: enable=global-statement
  _PRESET = flags.DEFINE_string("preset", None, "A preset name, 'all', or 'digits'.")
  _ATT_SPLITS = flags.DEFINE_string("att_splits", None, "A real att_splits.mat (semi-real).")
  _REAL_DIR = flags.DEFINE_string(
      "real_dir", None, "Folder of <DS>/att_splits.mat (semi-real, all six).")
  _FEATURE_DIM = flags.DEFINE_integer("feature_dim", 2048, "Feature dimension D.")
  _SEED = flags.DEFINE_integer("seed", 0, "Generator seed.")
  _DIFFICULTY = flags.DEFINE_string("difficulty", "calibrated", "calibrated | naive")


HEADER = f"{'dataset':<16}{'T1':>6}{'u':>6}{'s':>6}{'H':>6}{'train':>7}{'seconds':>9}"


def _jobs(preset, att_splits, real_dir):
  """(label, zero-argument dataset builder) pairs for the requested runs."""
  if sum(x is not None for x in (preset, att_splits, real_dir)) == 0:
    raise ConfigError("--preset/--att_splits/--real_dir: expected at least one, found none")
  if real_dir is not None:
    for name in synthetic_presets.PRESETS:
      path = pathlib.Path(real_dir) / name / synthetic_split_files.SPLITS_FILE
      if path.is_file():
        yield f"{name} semi-real", (lambda p=path, n=name: _semi_real(p, n))
    return
  if att_splits is not None:
    name = preset or "file"
    yield f"{name} semi-real", lambda: _semi_real(pathlib.Path(att_splits), name)
    return
  if preset == "digits":
    from gmn_jax.data import digits  # pylint: disable=g-import-not-at-top
    yield "digits", digits.load_digits
    return
  names = list(synthetic_presets.PRESETS) if preset == "all" else [preset]
  for name in names:
    if name not in synthetic_presets.PRESETS:
      raise ConfigError(f"--preset: expected one of {', '.join(synthetic_presets.PRESETS)}, "
                        f"all or digits, found {name!r}")
    yield f"{name} preset", (lambda n=name: synthetic.synthetic_dataset(
        synthetic_presets.preset_att_splits(n, seed=_SEED.value), name=n, seed=_SEED.value,
        feature_dim=_FEATURE_DIM.value, difficulty=_difficulty()))


def _difficulty():
  if _DIFFICULTY.value not in synthetic_features.DIFFICULTIES:
    raise ConfigError("--difficulty: expected one of "
                      f"{', '.join(synthetic_features.DIFFICULTIES)}, found {_DIFFICULTY.value!r}")
  return synthetic_features.DIFFICULTIES[_DIFFICULTY.value]


def _semi_real(path: pathlib.Path, name: str):
  att_splits = synthetic_split_files.read_splits(path)
  return synthetic.synthetic_dataset(
      att_splits, name=name, seed=_SEED.value, feature_dim=_FEATURE_DIM.value,
      difficulty=_difficulty(),
      unseen_classes=synthetic_split_files.unseen_from_class_lists(att_splits, path.parent))


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  try:
    _difficulty()  # Checks the flag before any work.
    jobs = list(_jobs(_PRESET.value, _ATT_SPLITS.value, _REAL_DIR.value))
    print(HEADER, flush=True)
    for label, build in jobs:
      start = time.time()
      result = baseline.run_baseline(build())
      print(f"{label:<16}{result.zsl_t1:6.1f}{result.gzsl_unseen:6.1f}{result.gzsl_seen:6.1f}"
            f"{result.gzsl_h:6.1f}{result.train_accuracy:7.1f}{time.time() - start:9.1f}",
            flush=True)
  except GMNError as error:
    cli.fail(error)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
