"""Downloads the public xlsa17 benchmark archives and extracts the datasets.

The five GBU benchmarks (CUB, SUN, AWA1, AWA2, APY) come in one zip, the
release of Xian et al., "Zero-Shot Learning - The Good, the Bad and the Ugly"
(`xlsa17.zip`, members `xlsa17/data/<DS>/...`). FLO is not in it: its
features and splits in the same format come with the code release of Xian
et al., "Feature Generating Networks for Zero-Shot Learning", CVPR 2018
(`cvpr18xian.zip`, members `cvpr18xian/data/FLO/...`). Both URLs are
overridable.

Guarantees:
* A download goes to `<archive>.part` and is resumed with an HTTP Range
  request after an interruption (also across runs); a server that ignores
  Range makes it restart from zero. Only a verified download (size from the
  server, sha256 when given) is renamed to its final name.
* Only `<DS>/res101.mat`, `<DS>/att_splits.mat` and, when present,
  `<DS>/sent_splits.mat` / `<DS>/binaryAtt_splits.mat` are extracted, each to
  `<out>/<DS>/<file>` (a name this module builds, never one from the
  archive), through a temporary file renamed when its CRC has been checked.
  An archive with an unsafe member name (absolute, `..`, a link) is rejected.
* Existing files are never replaced silently: a dataset directory whose files
  load is skipped, anything else already there is an error unless
  `overwrite=True`.
* Only the standard library talks HTTP (urllib).
"""

import dataclasses
import hashlib
import http.client
import os
import pathlib
import posixpath
import re
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from typing import Callable, Dict, IO, List, Optional, Sequence

from absl import logging

from gmn_jax.errors import DataError
from gmn_jax.errors import GMNError

XLSA17_URL = "https://datasets.d2.mpi-inf.mpg.de/xian/xlsa17.zip"
FLO_URL = "https://datasets.d2.mpi-inf.mpg.de/xian/cvpr18xian.zip"
XLSA17_DATASETS = ("CUB", "SUN", "AWA1", "AWA2", "APY")
DATASETS = XLSA17_DATASETS + ("FLO",)
REQUIRED_FILES = ("res101.mat", "att_splits.mat")
OPTIONAL_FILES = ("sent_splits.mat", "binaryAtt_splits.mat")

_CHUNK_BYTES = 1 << 20
# Called on a dataset directory; returns a summary or raises GMNError.
Validator = Callable[[pathlib.Path], Optional[str]]
_USER_AGENT = "gmn_jax-download/1 (python urllib)"


@dataclasses.dataclass(frozen=True)
class ArchiveSource:
  """Where one archive comes from.

  Attributes:
    url: http(s) URL of the zip.
    sha256: expected hex digest, or None to check the size only.
  """

  url: str
  sha256: Optional[str] = None

  @property
  def filename(self) -> str:
    """The archive's file name, taken from the URL path."""
    name = posixpath.basename(urllib.parse.urlparse(self.url).path)
    return name or "archive.zip"


class _Interrupted(Exception):
  """A transfer stopped early; the .part file keeps what arrived."""


class _Progress:
  """A text progress bar on a TTY, periodic log lines otherwise."""

  def __init__(self, label: str, total: Optional[int], done: int,
               stream: Optional[IO[str]], log_every_s: float = 30.0):
    self._label = label
    self._total = total
    self._done = done
    self._start_done = done
    self._stream = stream
    self._tty = bool(stream is not None and getattr(stream, "isatty", None)
                     and stream.isatty())
    self._log_every_s = log_every_s
    self._start = time.monotonic()
    self._last_draw = float("-inf")

  def update(self, new_bytes: int) -> None:
    self._done += new_bytes
    now = time.monotonic()
    if self._tty and now - self._last_draw >= 0.1:
      self._draw(now, end="")
    elif not self._tty and now - self._last_draw >= self._log_every_s:
      if self._last_draw != float("-inf"):
        logging.info("%s: %s", self._label, self._describe(now))
      self._last_draw = now

  def close(self) -> None:
    if self._tty:
      self._draw(time.monotonic(), end="\n")
    else:
      logging.info("%s: %s", self._label, self._describe(time.monotonic()))

  def _draw(self, now: float, end: str) -> None:
    width = 30
    if self._total:
      filled = int(width * min(self._done / self._total, 1.0))
      bar = "[" + "#" * filled + "." * (width - filled) + "] "
    else:
      bar = ""
    self._stream.write(f"\r{self._label} {bar}{self._describe(now)}{end}")
    self._stream.flush()
    self._last_draw = now

  def _describe(self, now: float) -> str:
    elapsed = max(now - self._start, 1e-9)
    rate = (self._done - self._start_done) / elapsed
    text = f"{self._done / 1e6:.1f}"
    if self._total:
      percent = 100 * self._done / self._total
      text += f"/{self._total / 1e6:.1f} MB {percent:.1f}%"
      if rate > 0:
        text += f" ETA {int((self._total - self._done) / rate)}s"
    else:
      text += " MB"
    return text + f" {rate / 1e6:.1f} MB/s"


def _content_range(header: Optional[str]):
  """Parses 'bytes START-END/TOTAL' (or 'bytes */TOTAL'); TOTAL may be '*'."""
  match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)\s*",
                       header or "")
  if not match:
    return None, None
  start = int(match.group(1)) if match.group(1) is not None else None
  total = int(match.group(3)) if match.group(3) != "*" else None
  return start, total


def _sha256(path: pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(_CHUNK_BYTES), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _transfer(url: str, part: pathlib.Path, timeout: float,
              progress_stream: Optional[IO[str]]) -> Optional[int]:
  """Runs one HTTP request, appending to (or restarting) `part`.

  Returns:
    The full size announced by the server, or None if it gave none.

  Raises:
    _Interrupted: the connection failed or ended before the announced size.
    DataError: a response that retrying will not fix (e.g. HTTP 404).
  """
  offset = part.stat().st_size if part.exists() else 0
  headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
  if offset:
    headers["Range"] = f"bytes={offset}-"
  request = urllib.request.Request(url, headers=headers)
  try:
    response = urllib.request.urlopen(request, timeout=timeout)
  except urllib.error.HTTPError as error:
    error.close()
    if error.code == 416 and offset:
      # Our .part is at least as long as the file: complete, or stale.
      _, total = _content_range(error.headers.get("Content-Range"))
      if total == offset:
        return total
      logging.warning("%s: server refused to resume at byte %d; restarting",
                      url, offset)
      part.unlink()
      raise _Interrupted(f"HTTP 416 at byte {offset}") from error
    if error.code >= 500 or error.code == 429:
      raise _Interrupted(f"HTTP {error.code} {error.reason}") from error
    raise DataError(url, None, "HTTP 200 or 206",
                    f"HTTP {error.code} {error.reason}") from error
  except (OSError, http.client.HTTPException) as error:  # URLError too.
    raise _Interrupted(f"{type(error).__name__}: {error}") from error

  with response:
    status = response.status
    length = response.headers.get("Content-Length")
    length = int(length) if length and length.isdigit() else None
    if status == 206:
      start, total = _content_range(response.headers.get("Content-Range"))
      if start != offset:
        part.unlink(missing_ok=True)
        raise _Interrupted(f"server resumed at byte {start}, not {offset}")
      mode = "ab"
    elif status == 200:
      if offset:
        logging.warning("%s: server ignored the Range request; restarting "
                        "from byte 0", url)
      offset, total, mode = 0, length, "wb"
    else:
      raise DataError(url, None, "HTTP 200 or 206", f"HTTP {status}")
    expected_end = offset + length if length is not None else total
    progress = _Progress(part.name[:-len(".part")], total, offset,
                         progress_stream)
    received = 0
    try:
      with open(part, mode) as f:
        while True:
          # read1 returns what has arrived, so a stall loses nothing.
          chunk = response.read1(_CHUNK_BYTES)
          if not chunk:
            break
          f.write(chunk)
          received += len(chunk)
          progress.update(len(chunk))
    except (OSError, http.client.HTTPException) as error:
      raise _Interrupted(f"{type(error).__name__}: {error}") from error
    finally:
      progress.close()
    # A body cut short without chunked encoding just ends: count the bytes.
    if expected_end is not None and offset + received < expected_end:
      raise _Interrupted(f"connection closed at byte {offset + received} of "
                         f"{expected_end}")
    return total if total is not None else offset + received


def download(source: ArchiveSource, destination, *, timeout: float = 60.0,
             retries: int = 5, retry_wait_s: float = 2.0,
             progress_stream: Optional[IO[str]] = None) -> pathlib.Path:
  """Downloads `source` to `destination`, resuming and verifying it.

  An existing `destination` is trusted (only verified downloads are renamed
  to it) and checked against `source.sha256` when one is given.

  Args:
    source: the archive's URL and optional sha256.
    destination: final path of the file; the transfer uses
      `<destination>.part`.
    timeout: seconds a connect or a read may block.
    retries: how many times to retry (resuming) after a failed attempt before
      giving up; the .part file stays, so a rerun resumes.
    retry_wait_s: pause before the first retry (doubled each time, at most
      30 s).
    progress_stream: where the progress bar goes if it is a TTY (e.g.
      sys.stderr); otherwise, or with None, progress goes to log lines.

  Returns:
    The destination path.

  Raises:
    DataError: HTTP errors, retries exhausted, a size or sha256 mismatch (the
      bad file is deleted).
  """
  destination = pathlib.Path(destination)
  destination.parent.mkdir(parents=True, exist_ok=True)
  if destination.exists():
    _verify_sha256(source, destination, delete=False)
    logging.info("Using the already downloaded %s", destination)
    return destination
  part = destination.with_name(destination.name + ".part")
  failures, wait = 0, retry_wait_s
  while True:
    try:
      total = _transfer(source.url, part, timeout, progress_stream)
      break
    except _Interrupted as error:
      now = part.stat().st_size if part.exists() else 0
      failures += 1
      if failures > retries:
        raise DataError(
            source.url, None, "a complete download",
            f"{error} after {retries} retries; {now} bytes kept in {part}, "
            "rerun to resume") from error
      logging.warning("Download of %s interrupted (%s); resuming at byte %d",
                      source.url, error, now)
      time.sleep(wait)
      wait = min(2 * wait, 30.0)
  size = part.stat().st_size
  if total is not None and size != total:
    part.unlink()
    raise DataError(part, None, f"{total} bytes", f"{size} bytes (deleted)")
  _verify_sha256(source, part, delete=True)
  os.replace(part, destination)
  return destination


def _verify_sha256(source: ArchiveSource, path: pathlib.Path,
                   delete: bool) -> None:
  if not source.sha256:
    return
  found = _sha256(path)
  if found != source.sha256.lower():
    if delete:
      path.unlink()
    raise DataError(path, "sha256", source.sha256.lower(),
                    found + (" (deleted)" if delete else ""))


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
            chunk = src.read(_CHUNK_BYTES)
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
  present = [f for f in REQUIRED_FILES + OPTIONAL_FILES
             if (dataset_dir / f).exists()]
  if not present:
    return "absent"
  overwrite_hint = "(pass --overwrite to replace them)"
  if not all(f in present for f in REQUIRED_FILES):
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
          sources: Optional[Dict[str, ArchiveSource]] = None,
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
    DataError: see `download` and `extract`; files already present that do
      not form a valid dataset (without `overwrite`).
  """
  out_dir = pathlib.Path(out_dir)
  unknown = [name for name in datasets if name not in DATASETS]
  if unknown:
    raise DataError(out_dir, "dataset", f"one of {', '.join(DATASETS)}",
                    ", ".join(unknown))
  sources = {"xlsa17": ArchiveSource(XLSA17_URL), "flo": ArchiveSource(FLO_URL),
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
      path = download(source, out_dir / source.filename, timeout=timeout,
                      retries=retries, retry_wait_s=retry_wait_s,
                      progress_stream=progress_stream)
    try:
      extract(path, out_dir, names)
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
