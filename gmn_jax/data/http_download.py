"""Resumable, verified HTTP downloads of one file.

Guarantees:
* A download goes to `<destination>.part` and is resumed with an HTTP Range
  request after an interruption (also across runs); a server that ignores
  Range makes it restart from zero. Only a verified download (size from the
  server, sha256 when given) is renamed to its final name.
* A host name that does not resolve (no network, a typo in the URL) fails
  at once with `HostNotFoundError`: retrying cannot fix it.
* Only the standard library talks HTTP (urllib).
"""

import dataclasses
import hashlib
import http.client
import os
import pathlib
import posixpath
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Optional

from absl import logging

from gmn_jax.errors import DataError

# The most one read of a file or a response asks for.
CHUNK_BYTES = 1 << 20
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


class HostNotFoundError(DataError):
  """The URL's host name does not resolve (DNS): offline, or a wrong URL."""

  def __init__(self, url: str, error: socket.gaierror):
    host = urllib.parse.urlparse(url).hostname or url
    detail = error.strerror or str(error)
    super().__init__(url, None, "a host name that resolves",
                     f"no address for {host} ({detail}: offline, or a wrong URL)")


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
    for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
      digest.update(chunk)
  return digest.hexdigest()


def _transfer(url: str, part: pathlib.Path, timeout: float,
              progress_stream: Optional[IO[str]]) -> Optional[int]:
  """Runs one HTTP request, appending to (or restarting) `part`.

  Returns:
    The full size announced by the server, or None if it gave none.

  Raises:
    _Interrupted: the connection failed or ended before the announced size.
    HostNotFoundError: the host name does not resolve.
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
  except urllib.error.URLError as error:
    if isinstance(error.reason, socket.gaierror):
      raise HostNotFoundError(url, error.reason) from error
    raise _Interrupted(f"{type(error).__name__}: {error}") from error
  except (OSError, http.client.HTTPException) as error:
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
          chunk = response.read1(CHUNK_BYTES)
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
    HostNotFoundError: the URL's host does not resolve (not retried).
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
        kept = (f"; {now} bytes kept in {part}, rerun to resume" if part.exists()
                else "; rerun to try again")
        raise DataError(source.url, None, "a complete download",
                        f"{error} after {retries} retries{kept}") from error
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
