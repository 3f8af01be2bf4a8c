"""Safe extraction of a benchmark's dataset files from a zip archive.

Guarantees:
* Only `<DS>/res101.mat`, `<DS>/att_splits.mat` and, when present,
  `<DS>/sent_splits.mat` / `<DS>/binaryAtt_splits.mat` are extracted, each to
  `<out>/<DS>/<file>` (a name this module builds, never one from the
  archive), through a temporary file renamed when its CRC has been checked.
  An archive with an unsafe member name (absolute, `..`, a link) is rejected.
"""

import os
import pathlib
import re
import stat
import zipfile
import zlib
from typing import Dict, List, Sequence

from absl import logging

from gmn_jax.data.http_download import CHUNK_BYTES
from gmn_jax.errors import DataError

# What a dataset directory holds: always, and when the archive has it.
REQUIRED_FILES = ("res101.mat", "att_splits.mat")
OPTIONAL_FILES = ("sent_splits.mat", "binaryAtt_splits.mat")


def _unsafe_member(name: str) -> bool:
  """Whether a member name could escape the extraction directory."""
  if not name or "\x00" in name:
    return True
  normalized = name.replace("\\", "/")
  return (normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized)
          is not None or ".." in normalized.split("/"))


def _is_link(info: zipfile.ZipInfo) -> bool:
  return stat.S_ISLNK(info.external_attr >> 16)


def _plan_extraction(
    archive: pathlib.Path, members: List[zipfile.ZipInfo],
    datasets: Sequence[str]) -> Dict[str, Dict[str, zipfile.ZipInfo]]:
  """Maps each dataset's wanted file names to archive members."""
  for info in members:
    if _unsafe_member(info.filename):
      raise DataError(archive, info.filename,
                      "member names inside the archive", "an unsafe path")
  wanted = REQUIRED_FILES + OPTIONAL_FILES
  plan = {name: {} for name in datasets}
  for info in members:
    parts = info.filename.replace("\\", "/").rstrip("/").split("/")
    # macOS archivers add __MACOSX/ shadow copies; they are never the data.
    if info.is_dir() or len(parts) < 2 or parts[0] == "__MACOSX":
      continue
    name, filename = parts[-2], parts[-1]
    if name not in plan or filename not in wanted:
      continue
    if _is_link(info):
      raise DataError(archive, info.filename, "a regular file", "a link")
    if filename in plan[name]:
      raise DataError(archive, info.filename, f"one {name}/{filename}",
                      f"also {plan[name][filename].filename}")
    plan[name][filename] = info
  for name in datasets:
    for filename in REQUIRED_FILES:
      if filename not in plan[name]:
        raise DataError(archive, f"{name}/{filename}", "a member", "none")
  return plan


def _open_zip(archive: pathlib.Path) -> zipfile.ZipFile:
  try:
    return zipfile.ZipFile(archive)
  except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError) as error:
    raise DataError(archive, None, "a readable zip archive",
                    f"{type(error).__name__}: {error}") from error


def extract(archive, out_dir,
            datasets: Sequence[str]) -> Dict[str, List[pathlib.Path]]:
  """Extracts the needed files of `datasets` from a zip into out_dir/<DS>/.

  Existing files are replaced (the caller decides whether that is allowed).

  Args:
    archive: path of the zip.
    out_dir: root directory; files land in out_dir/<DS>/<file>.
    datasets: dataset names (folder names inside the archive).

  Returns:
    The extracted paths, per dataset.

  Raises:
    DataError: not a zip, an unsafe member name, a required member missing,
      or a corrupt member (CRC or truncated data).
  """
  archive = pathlib.Path(archive)
  out_dir = pathlib.Path(out_dir)
  extracted = {}
  with _open_zip(archive) as zf:
    plan = _plan_extraction(archive, zf.infolist(), datasets)
    for name in datasets:
      target_dir = out_dir / name
      target_dir.mkdir(parents=True, exist_ok=True)
      # All of a dataset's files are renamed into place together, so an
      # interrupted extraction leaves only hidden .part files behind.
      temporaries = {}
      try:
        for filename, info in sorted(plan[name].items()):
          temporaries[filename] = target_dir / f".{filename}.part"
          _extract_member(archive, zf, info, temporaries[filename])
      except BaseException:
        for temporary in temporaries.values():
          temporary.unlink(missing_ok=True)
        raise
      extracted[name] = []
      for filename, temporary in temporaries.items():
        os.replace(temporary, target_dir / filename)
        extracted[name].append(target_dir / filename)
        logging.info("Extracted %s", target_dir / filename)
  return extracted


def _extract_member(archive: pathlib.Path, zf: zipfile.ZipFile,
                    info: zipfile.ZipInfo, target: pathlib.Path) -> None:
  """Copies one member to `target`, checking its CRC (zipfile does)."""
  with open(target, "wb") as dst:
    try:
      with zf.open(info) as src:
        while True:
          try:
            chunk = src.read(CHUNK_BYTES)
          except (zipfile.BadZipFile, EOFError, zlib.error) as error:
            raise DataError(archive, info.filename, "an intact member",
                            f"{type(error).__name__}: {error}") from error
          if not chunk:
            break
          dst.write(chunk)
    except (NotImplementedError, RuntimeError, zipfile.BadZipFile) as error:
      # Unsupported compression, encryption, or a bad local header.
      raise DataError(archive, info.filename, "a readable member",
                      f"{type(error).__name__}: {error}") from error
