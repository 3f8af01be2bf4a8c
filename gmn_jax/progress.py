"""Training progress: speed, ETA and losses in the log, a bar on a terminal.

`ProgressLogger.update(step, scalars)` is called after every host call of the
training loop (each of which runs many iterations). Every `log_every` steps it
logs one line through absl logging, e.g.

  step 4000/20000 (20.0%) | 812.3 it/s | ETA 20s | d_loss=-1.234 gm=0.0123

with the speed measured over the steps since the previous log line (so the
first line, which includes compilation, does not skew the later ones). When
the stream is a terminal it also redraws a one-line progress bar in place.
"""

import math
import sys
import time
from typing import Callable, TextIO

from absl import logging
import numpy as np

_BAR_WIDTH = 30
_BAR_MIN_INTERVAL_S = 0.1  # Redraw at most this often.


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
    self._bar_visible = False
    self._bar_length = 0
    self._rate = math.nan  # Steps per second over the last interval.
    isatty = getattr(self.stream, "isatty", None)
    self.draw_bar = bool(isatty and isatty())

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
      self._clear_bar()
      logging.info("%s", self.format_line(step, scalars))
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
    fraction = min(max(step / self.total_steps, 0.0), 1.0) if (
        self.total_steps) else 1.0
    filled = int(round(fraction * _BAR_WIDTH))
    rate = "" if math.isnan(self._rate) else f" {self._rate:.4g} it/s"
    text = (f"\r[{'#' * filled}{'.' * (_BAR_WIDTH - filled)}] "
            f"{100 * fraction:5.1f}% {step}/{self.total_steps}{rate} "
            f"ETA {format_duration(self.eta_seconds(step))}")
    done = step >= self.total_steps
    self.stream.write(text + ("\n" if done else ""))
    self.stream.flush()
    self._bar_visible = not done
    self._bar_length = len(text)

  def _clear_bar(self) -> None:
    """Blanks the bar so that a log line on the same stream starts clean."""
    if self._bar_visible:
      self.stream.write("\r" + " " * (self._bar_length - 1) + "\r")
      self.stream.flush()
      self._bar_visible = False

  def close(self) -> None:
    """Ends the bar's line so that later output starts on a fresh line."""
    if self._bar_visible:
      self.stream.write("\n")
      self.stream.flush()
      self._bar_visible = False
