"""Run outputs: metrics.jsonl, TensorBoard scalars and atomically written JSON.

A run's scalars go to two places through one `MetricWriter`: one JSON line per
`write_scalars` call in `workdir/metrics.jsonl` (easy to read back with
`read_jsonl`) and TensorBoard event files under `workdir/tensorboard`
(tensorboardX, no TensorFlow). Only process 0 writes.

Resuming: a run restored from the checkpoint of step T reopens its writer with
`resume_step=T`, which drops the lines a killed run wrote after T (and the
partial line a `kill -9` may have cut) and tells TensorBoard to discard its
events after T, so the resumed run's metrics equal an uninterrupted run's.
Event files of earlier writers that hold no scalar at a step <= T (everything
in them is discarded) are deleted, so `resume_step=-1` (rewrite from scratch,
what a finished run's outputs are written with) replaces the previous event
file instead of adding one: rerunning a finished run leaves one file, not one
more per rerun.
"""

import glob
import json
import math
import os
import struct
import tempfile
import time
from typing import Any, Iterable

import jax
import numpy as np

from gmn_jax import errors
from gmn_jax.progress import ProgressLogger  # pylint: disable=unused-import

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
# Scalars that measure wall-clock speed rather than the computation: they are
# the only fields in which a resumed run's metrics.jsonl differs from an
# uninterrupted run's.
WALL_CLOCK_KEYS = frozenset({"steps_per_sec"})


def write_json_atomic(path, obj: Any, *, indent: int | None = 2) -> None:
  """Writes `obj` as JSON so that `path` is always either old or new, whole.

  The text goes to a temporary file in the same directory, is flushed and
  fsynced, and then renamed over `path` (atomic on POSIX); a crash at any
  moment leaves either the previous file or the new one, never a partial file.

  Args:
    path: the destination file; its directory must exist.
    obj: a JSON-serialisable object (NaN and infinities are written as
      Python's json module does).
    indent: passed to json.dump.
  """
  path = os.fspath(path)
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp_path = tempfile.mkstemp(
      dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      json.dump(obj, f, indent=indent, sort_keys=True)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise
  _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
  """Makes a rename durable (a no-op where directories cannot be opened)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def _parse_lines(path: str) -> tuple[list[dict], bool]:
  """Parses a JSON-lines file; returns (records, whether it ends cleanly).

  A last line without its newline that does not parse is what a process
  killed mid-write leaves: it is dropped. Any other bad line is an error.
  "Ends cleanly" means empty or ending with a newline, so that appending
  starts a new line.
  """
  with open(path, "rb") as f:
    data = f.read()
  records = []
  lines = data.split(b"\n")
  for number, line in enumerate(lines, start=1):
    is_last = number == len(lines)
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      if is_last:
        break  # Truncated by a kill mid-write.
      raise errors.DataError(path, f"line {number}", "a JSON object",
                             "unparseable text") from e
    if not isinstance(record, dict):
      raise errors.DataError(path, f"line {number}", "a JSON object",
                             type(record).__name__)
    records.append(record)
  return records, (not data or data.endswith(b"\n"))


def read_json(path) -> Any:
  """Reads a JSON file such as results.json or config.json.

  Args:
    path: the file.

  Returns:
    The decoded JSON value.

  Raises:
    DataError: when the file is missing, unreadable or not valid JSON.
  """
  path = os.fspath(path)
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError) as error:
    raise errors.DataError(path, None, "a readable JSON file", type(error).__name__) from error


def read_jsonl(path) -> list[dict]:
  """Reads a JSON-lines file such as metrics.jsonl.

  Args:
    path: the file.

  Returns:
    One dict per line, in file order; a truncated last line (a process killed
    while writing it) is ignored.

  Raises:
    DataError: when the file is missing or a line other than the last is not
      a JSON object.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise errors.DataError(path, None, "a JSON-lines file", "no such file")
  return _parse_lines(path)[0]


def truncate_jsonl_after(path, step: int) -> int:
  """Drops the lines whose "step" exceeds `step` (and any truncated last line).

  Used when a run resumes from the checkpoint of `step`: the lines a killed
  run wrote after that checkpoint are written again by the resumed run, so
  each step appears once. The file is rewritten atomically.

  Args:
    path: a JSON-lines file (nothing happens when it does not exist).
    step: the restored checkpoint's step.

  Returns:
    The number of complete lines dropped.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    return 0
  records, ends_cleanly = _parse_lines(path)
  kept = [r for r in records if r.get("step", -math.inf) <= step]
  if len(kept) == len(records) and ends_cleanly:
    return 0
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp_path = tempfile.mkstemp(
      dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      for record in kept:
        f.write(json.dumps(record) + "\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise
  _fsync_directory(directory)
  return len(records) - len(kept)


EVENT_FILE_PATTERN = "events.out.tfevents.*"


def event_files(directory) -> list[str]:
  """The TensorBoard event files directly in `directory`, in name order.

  Args:
    directory: a TensorBoard log directory (e.g. `W/tensorboard`); a missing
      one has none.

  Returns:
    Their paths, sorted (the order TensorBoard reads them in).
  """
  return sorted(glob.glob(os.path.join(glob.escape(os.fspath(directory)), EVENT_FILE_PATTERN)))


def _scalar_steps(path: str) -> list[int]:
  """The steps of the summary events of one event file (TFRecord framing).

  A record cut short (a writer killed mid-write) ends the file; the
  checksums are not verified.
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  steps, offset = [], 0
  while offset + 12 <= len(data):
    (length,) = struct.unpack("<Q", data[offset:offset + 8])
    end = offset + 12 + length
    if end + 4 > len(data):
      break
    event = event_pb2.Event()
    try:
      event.ParseFromString(data[offset + 12:end])
    except Exception:  # pylint: disable=broad-except  # a damaged record
      break
    if event.HasField("summary") and event.summary.value:
      steps.append(int(event.step))
    offset = end + 4
  return steps


def remove_superseded_event_files(directory, resume_step: int) -> list[str]:
  """Deletes the event files whose every scalar has a step after `resume_step`.

  Such a file shows nothing once a writer resumes from `resume_step` (its
  purge hides steps > resume_step), so deleting it changes no curve but
  keeps reruns from piling up files: with `resume_step=-1` every earlier
  file goes. Files with any scalar at a step <= resume_step are kept.

  Args:
    directory: a TensorBoard log directory (nothing happens when missing).
    resume_step: the step the new writer resumes from.

  Returns:
    The deleted paths.
  """
  removed = []
  for path in event_files(directory):
    if all(step > resume_step for step in _scalar_steps(path)):
      os.remove(path)
      removed.append(path)
  return removed


def _to_python_scalar(name: str, value) -> int | float:
  """A JSON number from a python, numpy or jax scalar (or size-1 array)."""
  array = np.asarray(value)
  is_number = (np.issubdtype(array.dtype, np.number)
               or array.dtype == np.bool_)
  if array.size != 1 or not is_number:
    raise TypeError(f"scalar {name!r} must be a single number, got "
                    f"{array.dtype}{array.shape}")
  item = array.reshape(()).item()
  return int(item) if isinstance(item, (bool, int)) else float(item)


class MetricWriter:
  """Appends scalars to workdir/metrics.jsonl and TensorBoard event files.

  Each `write_scalars(step, scalars)` call is one JSON line
  `{"step": step, name: value, ...}`, flushed right away so that a killed run
  loses at most the line being written. TensorBoard files are created on the
  first write (tensorboardX is imported only then).
  """

  def __init__(self, workdir, *, enabled: bool | None = None,
               resume_step: int | None = None):
    """Opens the writer (appending to an existing metrics.jsonl).

    Args:
      workdir: the run's directory (created if absent).
      enabled: whether this process writes; by default only process 0 does.
      resume_step: when resuming from the checkpoint of this step: drop the
        metrics.jsonl lines after it and purge TensorBoard events after it
        (deleting the event files that hold nothing else; -1: start afresh,
        replacing every earlier event file).
    """
    self.workdir = os.fspath(workdir)
    self.enabled = (jax.process_index() == 0) if enabled is None else enabled
    self.metrics_path = os.path.join(self.workdir, METRICS_FILE)
    self.tensorboard_dir = os.path.join(self.workdir, TENSORBOARD_DIR)
    self._resume_step = resume_step
    self._file = None
    self._summary_writer = None
    self._closed = False
    if not self.enabled:
      return
    os.makedirs(self.workdir, exist_ok=True)
    if resume_step is not None:
      truncate_jsonl_after(self.metrics_path, resume_step)
      remove_superseded_event_files(self.tensorboard_dir, resume_step)
    elif os.path.isfile(self.metrics_path):
      # Only cut a partial last line, so that appended lines stay parseable.
      truncate_jsonl_after(self.metrics_path, math.inf)
    self._file = open(self.metrics_path, "a", encoding="utf-8")

  def _tensorboard(self):
    """The SummaryWriter, created on first use."""
    if self._summary_writer is None:
      import tensorboardX  # pylint: disable=g-import-not-at-top
      purge = None if self._resume_step is None else self._resume_step + 1
      # tensorboardX names files by the second and host alone, so a writer
      # opened within the same second (a quick resume) would overwrite the
      # previous file; TensorBoard reads files in name order, hence the
      # zero-padded nanoseconds.
      suffix = f".{time.time_ns():020d}.{os.getpid()}"
      self._summary_writer = tensorboardX.SummaryWriter(
          logdir=self.tensorboard_dir, purge_step=purge,
          filename_suffix=suffix)
    return self._summary_writer

  def write_scalars(self, step: int, scalars: dict) -> None:
    """Writes one JSON line and one TensorBoard point per scalar.

    Args:
      step: the global step (generator iteration, epoch, ...).
      scalars: name -> number (python, numpy or jax scalar, or size-1 array).
        Names may contain "/" to group TensorBoard plots ("eval/gzsl_h").

    Raises:
      TypeError: for a value that is not a single number.
      ValueError: for a scalar named "step", or after `close`.
    """
    if self._closed:
      raise ValueError(f"MetricWriter for {self.workdir} is closed")
    if not self.enabled:
      return
    if "step" in scalars:
      raise ValueError("'step' is reserved for the step number")
    values = {name: _to_python_scalar(name, v) for name, v in scalars.items()}
    self._file.write(json.dumps({"step": int(step), **values}) + "\n")
    self._file.flush()
    writer = self._tensorboard()
    for name, value in values.items():
      writer.add_scalar(name, value, global_step=int(step))

  def flush(self) -> None:
    """Pushes buffered TensorBoard events to disk (JSON lines already are)."""
    if self._file is not None:
      self._file.flush()
    if self._summary_writer is not None:
      self._summary_writer.flush()

  def close(self) -> None:
    """Flushes and closes the files; later writes are errors."""
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._summary_writer is not None:
      self._summary_writer.close()
      self._summary_writer = None
    self._closed = True

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def drop_wall_clock(records: Iterable[dict]) -> list[dict]:
  """The records without `WALL_CLOCK_KEYS`: what a resumed run reproduces.

  Args:
    records: dicts as returned by `read_jsonl`.

  Returns:
    Copies without the wall-clock fields (records left empty but for "step"
    are dropped).
  """
  out = []
  for record in records:
    kept = {k: v for k, v in record.items() if k not in WALL_CLOCK_KEYS}
    if set(kept) - {"step"}:
      out.append(kept)
  return out
