"""Downloads the public xlsa17 benchmark archives and extracts the datasets.

The five GBU benchmarks (CUB, SUN, AWA1, AWA2, APY) come in one zip, the
release of Xian et al., "Zero-Shot Learning - The Good, the Bad and the Ugly"
(`xlsa17.zip`, members `xlsa17/data/<DS>/...`). FLO is not in it: its
features and splits in the same format come with the code release of Xian
et al., "Feature Generating Networks for Zero-Shot Learning", CVPR 2018
(`cvpr18xian.zip`, members `cvpr18xian/data/FLO/...`). Both URLs are
overridable.

Downloading is `http_download`'s, extracting `zip_extraction`'s; each
module's docstring states its guarantees.

Guarantees:
* Existing files are never replaced silently: a dataset directory whose files
  load is skipped, anything else already there is an error unless
  `overwrite=True`.
"""

import pathlib
from typing import Callable, Dict, IO, Optional, Sequence

from absl import logging

from gmn_jax.data import http_download
from gmn_jax.data import zip_extraction
from gmn_jax.errors import DataError
from gmn_jax.errors import GMNError

XLSA17_URL = "https://datasets.d2.mpi-inf.mpg.de/xian/xlsa17.zip"
FLO_URL = "https://datasets.d2.mpi-inf.mpg.de/xian/cvpr18xian.zip"
XLSA17_DATASETS = ("CUB", "SUN", "AWA1", "AWA2", "APY")
DATASETS = XLSA17_DATASETS + ("FLO",)

# Called on a dataset directory; returns a summary or raises GMNError.
Validator = Callable[[pathlib.Path], Optional[str]]


def validate_with_loader(dataset_dir) -> Optional[str]:
  """Loads a dataset directory with the xlsa17 loader to validate it.

  Args:
    dataset_dir: a directory holding res101.mat and att_splits.mat.

  Returns:
    A one-line summary, or None when the loader module is not available
    (validation skipped).

  Raises:
    GMNError: the loader's error for an invalid directory.
  """
  try:
    from gmn_jax.data import xlsa17  # pylint: disable=g-import-not-at-top
  except ModuleNotFoundError as error:
    if error.name != "gmn_jax.data.xlsa17":
      raise
    logging.warning("gmn_jax.data.xlsa17 is not available; not validating %s",
                    dataset_dir)
    return None
  dataset = xlsa17.load_xlsa17(dataset_dir)
  return (f"{dataset.seen_classes.size} seen / {dataset.unseen_classes.size} "
          f"unseen classes, feature dim {dataset.feature_dim}, "
          f"embedding dim {dataset.embedding_dim}")


def _existing_state(dataset_dir: pathlib.Path,
                    validate: Validator) -> str:
  """Returns 'absent' or 'valid'; raises if the folder holds anything else."""
  present = [f for f in (zip_extraction.REQUIRED_FILES
                         + zip_extraction.OPTIONAL_FILES)
             if (dataset_dir / f).exists()]
  if not present:
    return "absent"
  overwrite_hint = "(pass --overwrite to replace them)"
  if not all(f in present for f in zip_extraction.REQUIRED_FILES):
    raise DataError(dataset_dir, None,
                    "no dataset files or a complete, valid set "
                    + overwrite_hint,
                    f"only {', '.join(present)}")
  try:
    validate(dataset_dir)
  except GMNError as error:
    raise DataError(dataset_dir, None, f"a valid dataset {overwrite_hint}",
                    f"an invalid one ({error})") from error
  return "valid"


def fetch(datasets: Sequence[str], out_dir, *,
          sources: Optional[Dict[str, http_download.ArchiveSource]] = None,
          archive=None, overwrite: bool = False, keep_archive: bool = False,
          validate: Validator = validate_with_loader,
          timeout: float = 60.0, retries: int = 5, retry_wait_s: float = 2.0,
          progress_stream: Optional[IO[str]] = None) -> Dict[str, str]:
  """Downloads, extracts and validates datasets into out_dir/<DS>/.

  Args:
    datasets: names from DATASETS.
    out_dir: root directory.
    sources: archive per group: keys "xlsa17" (CUB, SUN, AWA1, AWA2, APY) and
      "flo" (FLO); missing keys take the public defaults.
    archive: a local zip to extract from instead of downloading (never
      deleted); it must hold every requested dataset.
    overwrite: replace dataset files already in out_dir.
    keep_archive: keep downloaded archives (out_dir/<name>.zip) after
      extraction; they are deleted otherwise.
    validate: called on each dataset directory; raises GMNError if invalid.
    timeout: seconds a connect or a read may block.
    retries: retries (each resuming) after a failed attempt, per archive.
    retry_wait_s: first pause between attempts.
    progress_stream: where the progress bar goes if it is a TTY (e.g.
      sys.stderr); otherwise, or with None, progress goes to log lines.

  Returns:
    What happened to each dataset: "skipped (already present)" or
    "extracted", followed by the validation summary when there is one.

  Raises:
    DataError: see `http_download.download` and `zip_extraction.extract`;
      files already present that do not form a valid dataset (without
      `overwrite`).
  """
  out_dir = pathlib.Path(out_dir)
  unknown = [name for name in datasets if name not in DATASETS]
  if unknown:
    raise DataError(out_dir, "dataset", f"one of {', '.join(DATASETS)}",
                    ", ".join(unknown))
  sources = {"xlsa17": http_download.ArchiveSource(XLSA17_URL),
             "flo": http_download.ArchiveSource(FLO_URL),
             **(sources or {})}
  report = {}
  needed = []
  for name in dict.fromkeys(datasets):
    if not overwrite and _existing_state(out_dir / name, validate) == "valid":
      report[name] = "skipped (already present)"
      logging.info("%s: %s already holds a valid dataset; skipped (pass "
                   "--overwrite to replace it)", name, out_dir / name)
    else:
      needed.append(name)
  if archive is not None:
    groups = [(None, needed)] if needed else []
  else:
    groups = [(sources["xlsa17"], [n for n in needed if n != "FLO"]),
              (sources["flo"], [n for n in needed if n == "FLO"])]
  for source, names in groups:
    if not names:
      continue
    if source is None:
      path = pathlib.Path(archive)
      if not path.is_file():
        raise DataError(path, None, "an existing zip archive", "no such file")
    else:
      path = http_download.download(
          source, out_dir / source.filename, timeout=timeout,
          retries=retries, retry_wait_s=retry_wait_s,
          progress_stream=progress_stream)
    try:
      zip_extraction.extract(path, out_dir, names)
    except DataError:
      if source is not None:
        # A corrupt download must not be reused by the next run.
        path.unlink(missing_ok=True)
      raise
    if source is not None and not keep_archive:
      path.unlink()
    for name in names:
      summary = validate(out_dir / name)
      report[name] = "extracted" + (f"; {summary}" if summary else "")
  return report
