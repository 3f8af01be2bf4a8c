"""Progress: speed, ETA and losses in the log (or on stderr), a bar on a terminal.

Two reporters share the formatting, the output and the bar:

* `ProgressLogger.update(step, scalars)`, called by a loop between its host
  calls, logs one line every `log_every` steps, e.g.

    step 4000/20000 (20.0%) | 812.3 it/s | ETA 20s | d_loss=-1.234 gm=0.0123

  with the speed measured over the steps since the previous line.
* `LiveProgress.report(done, scalars)`, called from INSIDE a long jitted
  computation (stage 1's chunks, stage 2's epochs; a device callback every
  second or so), emits a heartbeat line every `heartbeat_s` seconds, so that
  a user hears from a run however long its host calls are. Its speed is
  measured between reports of the same call, so compilation (before the
  first report) and host work between calls never enter the ETA.

Lines go to the absl log in a binary (absl flags parsed) and to stderr
otherwise, so that a notebook or a script calling the library sees them
too (`emit`). On a terminal both reporters redraw a one-line bar in place.
"""

import collections
import math
import sys
import threading
import time
from typing import Callable, Dict, Optional, TextIO

from absl import flags
from absl import logging
import numpy as np

_BAR_WIDTH = 30
_BAR_MIN_INTERVAL_S = 0.1  # Redraw at most this often.
HEARTBEAT_S = 30.0  # LiveProgress's default period between lines.
_RATE_WINDOW_S = 60.0  # LiveProgress measures its speed over this window.


def _absl_flags_parsed() -> bool:
  return flags.FLAGS.is_parsed()


def emit(line: str) -> None:
  """Writes one progress line: to the absl log in a binary, else to stderr.

  absl's INFO lines are shown only once its flags are parsed (`app.run`);
  a notebook or a script that calls the library would see nothing.

  Args:
    line: the text, without a newline.
  """
  if _absl_flags_parsed():
    logging.info("%s", line)
  else:
    print(line, file=sys.stderr, flush=True)


def format_duration(seconds: float) -> str:
  """'1h02m', '3m07s' or '42s' for a duration; '?' when unknown.

  Args:
    seconds: a non-negative duration (inf or NaN when unknown).

  Returns:
    The compact text.
  """
  if not math.isfinite(seconds) or seconds < 0:
    return "?"
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  if hours:
    return f"{hours}h{minutes:02d}m"
  if minutes:
    return f"{minutes}m{secs:02d}s"
  return f"{secs}s"


def format_scalar(value) -> str:
  """A compact text of a number: ints whole, floats to 4 significant digits.

  Args:
    value: a python, numpy or jax scalar.

  Returns:
    E.g. '12', '0.01235', '-1.235e+05', 'nan'.
  """
  item = np.asarray(value).reshape(()).item() if np.size(value) == 1 else value
  if isinstance(item, bool):
    return str(item)
  if isinstance(item, int):
    return str(item)
  if isinstance(item, float):
    return f"{item:.4g}"
  return str(item)


def format_scalars(scalars: dict) -> str:
  """'name=value' pairs joined by spaces, in the dict's order.

  Args:
    scalars: name -> number.

  Returns:
    The text.
  """
  return " ".join(f"{name}={format_scalar(v)}" for name, v in scalars.items())


class _Bar:
  """A one-line progress bar redrawn in place on a terminal stream."""

  def __init__(self, stream: TextIO):
    self.stream = stream
    isatty = getattr(stream, "isatty", None)
    self.enabled = bool(isatty and isatty())
    self._visible = False
    self._length = 0

  def draw(self, fraction: float, text: str, *, final: bool = False) -> None:
    """Redraws the bar at `fraction` (0..1) followed by `text`."""
    if not self.enabled:
      return
    fraction = min(max(fraction, 0.0), 1.0)
    filled = int(round(fraction * _BAR_WIDTH))
    line = f"\r[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] {100 * fraction:5.1f}% {text}"
    self.stream.write(line + ("\n" if final else ""))
    self.stream.flush()
    self._visible = not final
    self._length = len(line)

  def clear(self) -> None:
    """Blanks the bar so that a line on the same stream starts clean."""
    if self._visible:
      self.stream.write("\r" + " " * (self._length - 1) + "\r")
      self.stream.flush()
      self._visible = False

  def close(self) -> None:
    """Ends the bar's line so that later output starts on a fresh line."""
    if self._visible:
      self.stream.write("\n")
      self.stream.flush()
      self._visible = False


class ProgressLogger:
  """Logs speed, ETA and scalars every `log_every` steps (see module doc)."""

  def __init__(self, total_steps: int, *, log_every: int, writer=None,
               stream: TextIO | None = None, initial_step: int = 0,
               clock: Callable[[], float] = time.monotonic):
    """Starts the clock.

    Args:
      total_steps: the step at which the run ends.
      log_every: log a line when the step reaches a new multiple of this (and
        at the last step).
      writer: optional object with `write_scalars(step, dict)` (a
        MetricWriter); at each log line it receives the scalars and
        "steps_per_sec".
      stream: where the progress bar goes when it is a terminal (default
        sys.stderr, looked up at construction).
      initial_step: the step the run starts (or resumes) from.
      clock: seconds as a float; injectable for tests.
    """
    if log_every < 1:
      raise ValueError(f"log_every must be >= 1, got {log_every}")
    self.total_steps = int(total_steps)
    self.log_every = int(log_every)
    self.writer = writer
    self.stream = sys.stderr if stream is None else stream
    self._clock = clock
    self._last_log_step = int(initial_step)
    self._last_log_time = clock()
    self._last_bar_time = -math.inf
    self._rate = math.nan  # Steps per second over the last interval.
    self._bar = _Bar(self.stream)
    self.draw_bar = self._bar.enabled

  @property
  def steps_per_sec(self) -> float:
    """The speed measured at the last log line (NaN before the first)."""
    return self._rate

  def update(self, step: int, scalars: dict | None = None) -> bool:
    """Records that `step` was reached; logs when a log step was crossed.

    Args:
      step: the current step (monotonically increasing across calls).
      scalars: the latest losses etc. (name -> number) to log.

    Returns:
      Whether a log line was written.
    """
    scalars = scalars or {}
    now = self._clock()
    should_log = (step // self.log_every > self._last_log_step // self.log_every
                  or (step >= self.total_steps > self._last_log_step))
    if should_log:
      elapsed = now - self._last_log_time
      steps = step - self._last_log_step
      self._rate = steps / elapsed if elapsed > 0 else math.inf
      self._bar.clear()
      emit(self.format_line(step, scalars))
      if self.writer is not None:
        self.writer.write_scalars(
            step, {**scalars, "steps_per_sec": self._rate})
      self._last_log_step = step
      self._last_log_time = now
    if self.draw_bar and (should_log or step >= self.total_steps or
                          now - self._last_bar_time >= _BAR_MIN_INTERVAL_S):
      self._draw_bar(step)
      self._last_bar_time = now
    return should_log

  def eta_seconds(self, step: int) -> float:
    """Seconds left at the last measured speed (inf when unknown)."""
    if not self._rate > 0:
      return math.inf
    return max(self.total_steps - step, 0) / self._rate

  def format_line(self, step: int, scalars: dict) -> str:
    """The log line for `step` (see the module docstring).

    Args:
      step: the current step.
      scalars: name -> number.

    Returns:
      The text, without a newline.
    """
    percent = 100.0 * step / self.total_steps if self.total_steps else 100.0
    parts = [f"step {step}/{self.total_steps} ({percent:.1f}%)",
             f"{self._rate:.4g} it/s",
             f"ETA {format_duration(self.eta_seconds(step))}"]
    if scalars:
      parts.append(format_scalars(scalars))
    return " | ".join(parts)

  def _draw_bar(self, step: int) -> None:
    fraction = step / self.total_steps if self.total_steps else 1.0
    rate = "" if math.isnan(self._rate) else f" {self._rate:.4g} it/s"
    self._bar.draw(fraction, f"{step}/{self.total_steps}{rate} "
                   f"ETA {format_duration(self.eta_seconds(step))}",
                   final=step >= self.total_steps)

  def close(self) -> None:
    """Ends the bar's line so that later output starts on a fresh line."""
    self._bar.close()


class LiveProgress:
  """Heartbeats of a long computation, from reports made inside it.

  `report(done, scalars)` is meant to be called from a device callback
  (another thread) every second or so; every `heartbeat_s` seconds, and at
  the first report, it emits one line

    <label>: iteration 1250/20000 (6.2%) | 3.1 it/s | ETA 1h40m | <scalars>

  and on a terminal it redraws a bar at every report. `new_call()` starts a
  new host call: the speed is measured over the reports of the current call
  within the last minute, so that compilation (which precedes a call's first
  report) and the host's work between calls never count. `line(text)` emits
  a line of the loop's own (e.g. the window means at a log step), clearing
  the bar first.
  """

  def __init__(self, label: str, total: int, *, start: int = 0, unit: str = "iteration",
               heartbeat_s: Optional[float] = None, stream: Optional[TextIO] = None,
               clock: Callable[[], float] = time.monotonic):
    """Starts the reporter.

    Args:
      label: what is running, e.g. "seeds 1, 67: stage 1".
      total: the count at which the computation ends.
      start: the count it starts (or resumes) from.
      unit: the name of one step in the lines ("iteration", "epoch").
      heartbeat_s: the most seconds between two lines while reports come
        (None: `HEARTBEAT_S`, read now).
      stream: where the bar goes when it is a terminal (default sys.stderr).
      clock: seconds as a float; injectable for tests.
    """
    self.label, self.total, self.unit = label, int(total), unit
    self.heartbeat_s = float(HEARTBEAT_S if heartbeat_s is None else heartbeat_s)
    self._clock = clock
    self._bar = _Bar(sys.stderr if stream is None else stream)
    self._lock = threading.Lock()
    self._recent = collections.deque()  # (time, done) of this call's reports
    self._last_line = -math.inf
    self.done = int(start)
    self.scalars: Dict[str, float] = {}

  @property
  def rate(self) -> float:
    """Steps per second over the current call's recent reports (NaN: unknown)."""
    if len(self._recent) < 2:
      return math.nan
    (t0, d0), (t1, d1) = self._recent[0], self._recent[-1]
    return (d1 - d0) / (t1 - t0) if t1 > t0 else math.nan

  def eta_seconds(self) -> float:
    """Seconds left at the measured speed (inf when unknown)."""
    rate = self.rate
    return max(self.total - self.done, 0) / rate if rate > 0 else math.inf

  def new_call(self) -> None:
    """Marks the start of a host call: its reports measure the speed anew."""
    with self._lock:
      self._recent.clear()

  def report(self, done: int, scalars: Optional[Dict[str, float]] = None) -> bool:
    """Records progress; emits a heartbeat line when one is due.

    Args:
      done: the count reached.
      scalars: the latest values to show (name -> number).

    Returns:
      Whether a line was emitted.
    """
    with self._lock:
      now = self._clock()
      self.done = int(done)
      self.scalars = dict(scalars or {})
      self._recent.append((now, self.done))
      while len(self._recent) > 2 and now - self._recent[0][0] > _RATE_WINDOW_S:
        self._recent.popleft()
      due = now - self._last_line >= self.heartbeat_s
      if due:
        self._last_line = now
        self._bar.clear()
        emit(self.format_line())
      self._draw()
      return due

  def format_line(self) -> str:
    """The heartbeat line for the latest report."""
    percent = 100.0 * self.done / self.total if self.total else 100.0
    rate = self.rate
    parts = [f"{self.label}: {self.unit} {self.done}/{self.total} ({percent:.1f}%)",
             f"{'?' if math.isnan(rate) else f'{rate:.4g}'} {_rate_unit(self.unit)}",
             f"ETA {format_duration(self.eta_seconds())}"]
    if self.scalars:
      parts.append(format_scalars(self.scalars))
    return " | ".join(parts)

  def line(self, text: str) -> None:
    """Emits a line of the caller's (the bar is cleared first, then redrawn).

    Args:
      text: the line.
    """
    with self._lock:
      self._bar.clear()
      emit(text)
      self._draw()

  def _draw(self) -> None:
    rate = self.rate
    speed = "" if math.isnan(rate) else f" {rate:.4g} {_rate_unit(self.unit)}"
    self._bar.draw(self.done / self.total if self.total else 1.0,
                   f"{self.done}/{self.total}{speed} ETA {format_duration(self.eta_seconds())}")

  def close(self) -> None:
    """Ends the bar's line."""
    with self._lock:
      self._bar.close()


def _rate_unit(unit: str) -> str:
  return "it/s" if unit == "iteration" else f"{unit}s/s"
