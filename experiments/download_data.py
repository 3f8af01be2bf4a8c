r"""Downloads xlsa17 benchmarks, extracts what is needed and validates them.

  python -m experiments.download_data --dataset=CUB|SUN|AWA1|AWA2|APY|FLO|all \
      --out=DIR [--url=URL] [--sha256=HEX] [--flo_url=URL] [--flo_sha256=HEX] \
      [--archive=ZIP] [--overwrite] [--keep_archive]

`--dataset` also takes a comma-separated list. Files land in DIR/<DS>/. An
interrupted download resumes when the command is run again; a host name that
does not resolve (offline) fails at once, pointing to --archive and
make_synthetic. See docs/download.md. Exits 2 with a one-line message on any
error.
"""

import sys
from typing import List, Sequence

from absl import app
from absl import flags

from experiments import cli
from gmn_jax.data import download
from gmn_jax.data import http_download
from gmn_jax.errors import ConfigError
from gmn_jax.errors import GMNError

_DATASET = flags.DEFINE_string(
    "dataset", None,
    f"{' | '.join(download.DATASETS)} | all, or a comma-separated list.")
_OUT = flags.DEFINE_string(
    "out", None, "Root directory; data lands in OUT/<DS>/.")
_URL = flags.DEFINE_string(
    "url", download.XLSA17_URL,
    "URL of the xlsa17 archive (CUB, SUN, AWA1, AWA2, APY).")
_SHA256 = flags.DEFINE_string(
    "sha256", None, "Expected sha256 of the xlsa17 archive (optional).")
_FLO_URL = flags.DEFINE_string(
    "flo_url", download.FLO_URL, "URL of the archive holding FLO.")
_FLO_SHA256 = flags.DEFINE_string(
    "flo_sha256", None, "Expected sha256 of the FLO archive (optional).")
_ARCHIVE = flags.DEFINE_string(
    "archive", None,
    "A zip already on disk to extract from instead of downloading.")
_OVERWRITE = flags.DEFINE_bool(
    "overwrite", False, "Replace dataset files already present in OUT.")
_KEEP_ARCHIVE = flags.DEFINE_bool(
    "keep_archive", False, "Keep the downloaded zip in OUT after extraction.")
_TIMEOUT = flags.DEFINE_float(
    "timeout", 60.0, "Seconds a connection or a read may stall.")
_RETRIES = flags.DEFINE_integer(
    "retries", 5, "Retries (each resuming) after an interruption.")


# Appended to a host-name failure: what to do without a network.
OFFLINE_HINT = ("without a network, fetch the zip on another machine and pass it with "
                "--archive=PATH/xlsa17.zip (FLO: --archive=PATH/cvpr18xian.zip), or build "
                "stand-in data with python -m experiments.make_synthetic "
                "(docs/synthetic_data.md)")


def parse_datasets(value: str) -> List[str]:
  """Turns the --dataset flag into dataset names.

  Args:
    value: "all", one name or a comma-separated list (case-insensitive).

  Returns:
    Dataset names from download.DATASETS, without repeats.

  Raises:
    ConfigError: an empty or unknown name.
  """
  if not value:
    raise ConfigError("--dataset: expected all or names from "
                      f"{', '.join(download.DATASETS)}, found nothing")
  names = [name.strip().upper() for name in value.split(",")]
  if names == ["ALL"]:
    return list(download.DATASETS)
  unknown = [name for name in names if name not in download.DATASETS]
  if unknown:
    raise ConfigError(
        f"--dataset: expected all or names from {', '.join(download.DATASETS)}"
        f", found {value!r}")
  return list(dict.fromkeys(names))


def run(datasets: Sequence[str]) -> None:
  """Runs the download with the flags' settings and prints a report."""
  if not _OUT.value:
    raise ConfigError("--out: expected a directory, found nothing")
  if datasets == ["FLO"] and _URL.value != download.XLSA17_URL:
    raise ConfigError("--url: sets the xlsa17 archive (CUB, SUN, AWA1, AWA2, "
                      "APY); use --flo_url for FLO")
  sources = {
      "xlsa17": http_download.ArchiveSource(_URL.value, _SHA256.value),
      "flo": http_download.ArchiveSource(_FLO_URL.value, _FLO_SHA256.value),
  }
  report = download.fetch(
      datasets, _OUT.value, sources=sources, archive=_ARCHIVE.value,
      overwrite=_OVERWRITE.value, keep_archive=_KEEP_ARCHIVE.value,
      timeout=_TIMEOUT.value, retries=_RETRIES.value,
      progress_stream=sys.stderr)
  for name, outcome in report.items():
    print(f"{name}: {outcome}")


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  try:
    run(parse_datasets(_DATASET.value))
  except http_download.HostNotFoundError as error:
    cli.fail(GMNError(f"{error}; {OFFLINE_HINT}"))
  except GMNError as error:
    cli.fail(error)
  except KeyboardInterrupt:
    print("interrupted; run the same command again to resume the download",
          file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
