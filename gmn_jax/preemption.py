"""Graceful stops on SIGTERM / SIGINT: checkpoint at the next chunk boundary.

A preempted Cloud TPU VM, a Slurm time limit or Ctrl-C sends SIGTERM or
SIGINT. Inside `StopOnSignal()` such a signal only records a request; the
training loop asks `should_stop()` between its jitted calls (each of which
runs `iterations_per_call` iterations), saves a checkpoint there and raises
`Interrupted`. Binaries turn that into the exit status 128 + signal number
(143 for SIGTERM, 130 for SIGINT, the shell's convention), and rerunning the
same command resumes from the checkpoint.

A second SIGINT while a stop is pending restores Python's default handling
(KeyboardInterrupt at once), so an impatient Ctrl-C Ctrl-C still stops a
run that is busy in a long call. Handlers are installed only in the main
thread (Python allows no other); elsewhere only `request_stop` stops a run.

In a multi-host run every process must stop at the same chunk, or the
collective checkpoint save would wait forever: `should_stop()` then takes the
logical OR of the requests of all processes (one tiny all-gather per chunk).
"""

import signal
import threading
from typing import Optional

from absl import logging
import jax
import numpy as np

SIGNALS = (signal.SIGTERM, signal.SIGINT)

# The signal number received inside the innermost active `StopOnSignal`, or
# None. Module-level, as signal handlers are.
_requested: Optional[int] = None
_active = 0


class Interrupted(Exception):
  """The run stopped on a signal after saving a resumable checkpoint.

  Attributes:
    signum: the signal number (signal.SIGTERM or signal.SIGINT).
    exit_code: the conventional exit status, 128 + signum.
  """

  def __init__(self, signum: int, where: str):
    self.signum = int(signum)
    self.exit_code = 128 + self.signum
    super().__init__(
        f"stopped by {signal.Signals(self.signum).name} {where}; rerun the same "
        "command (same --workdir) to resume")


def _handle(signum, frame):  # pylint: disable=unused-argument
  global _requested
  if _requested is not None and signum == signal.SIGINT:
    raise KeyboardInterrupt  # The second Ctrl-C: stop now.
  _requested = signum
  logging.warning("received %s: stopping at the next chunk boundary after a checkpoint%s",
                  signal.Signals(signum).name,
                  " (press Ctrl-C again to stop at once)" if signum == signal.SIGINT else "")


class StopOnSignal:
  """Context manager: SIGTERM / SIGINT request a stop instead of killing.

  Nested uses share one request; the outermost restores the previous
  handlers on exit.

  Example:
    with preemption.StopOnSignal():
      for chunk in chunks:
        state = run(state, chunk)
        if preemption.should_stop():
          save(state)
          raise preemption.Interrupted(preemption.requested_signal(), "at ...")
  """

  def __init__(self):
    self._counted = False
    self._previous = None

  def __enter__(self) -> "StopOnSignal":
    global _active, _requested
    if _active == 0:
      _requested = None
      # Python accepts handlers only in the main thread; elsewhere signals
      # keep their default effect and only `request_stop` asks for a stop.
      if threading.current_thread() is threading.main_thread():
        self._previous = {s: signal.signal(s, _handle) for s in SIGNALS}
    _active += 1
    self._counted = True
    return self

  def __exit__(self, *exc_info) -> None:
    global _active, _requested
    if not self._counted:
      return
    self._counted = False
    _active -= 1
    if _active == 0:
      if self._previous is not None:
        for s, handler in self._previous.items():
          signal.signal(s, handler)
        self._previous = None
      _requested = None


def requested_signal() -> Optional[int]:
  """The signal number that requested a stop in this process, or None."""
  return _requested


def should_stop() -> bool:
  """Whether any process of the run received a stop signal.

  Returns:
    True when a stop is requested here or (multi-host) on any process. All
    processes must call this at the same points of the loop.
  """
  if jax.process_count() == 1:
    return _requested is not None
  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils
  flags = multihost_utils.process_allgather(np.int32(_requested or 0))
  found = int(np.max(flags))
  if found and _requested is None:
    _adopt(found)
  return bool(found)


def _adopt(signum: int) -> None:
  """Records a stop that another process received."""
  global _requested
  _requested = signum


def request_stop(signum: int = signal.SIGTERM) -> None:
  """Requests a stop as if `signum` had arrived (for tests and callers).

  Args:
    signum: the signal to pretend.
  """
  _adopt(signum)
