"""Graceful stops on SIGTERM / SIGINT: a checkpoint within seconds, then exit.

A preempted Cloud TPU VM, a Slurm time limit or Ctrl-C sends SIGTERM or
SIGINT. Inside `StopOnSignal()` such a signal only records a request. The
jitted stage-1 calls report to the host about every second (`stage1`) and
end early when a request is pending; stage 2 aborts its program the same
way. The loop then saves a checkpoint and raises `Interrupted`. Binaries
turn that into the exit status 128 + signal number (143 for SIGTERM, 130 for
SIGINT, the shell's convention), and rerunning the same command resumes.

Python runs a signal handler only when its main thread executes Python
code, not while it is blocked inside a JAX call; `interruptible_call` runs
the long calls on a worker thread and waits in short steps, so a request is
recorded at once.

A second SIGINT while a stop is pending raises KeyboardInterrupt at once;
the binaries then exit at once with one line (status 130): every file of a
workdir is written atomically, so it still resumes. Handlers are installed
only in the main thread (Python allows no other); elsewhere only
`request_stop` stops a run.

In a multi-host run every process must stop at the same chunk, or the
collective checkpoint save would wait forever: `should_stop()` then takes the
logical OR of the requests of all processes (one tiny all-gather per chunk).
"""

import concurrent.futures
import signal
import threading
from typing import Any, Callable, Optional

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
    where: where the run stopped.
    unfinished: the runs a rerun still has to run, by name ("seed 3"), or
      None when not given.
  """

  def __init__(self, signum: int, where: str, unfinished=None):
    self.signum = int(signum)
    self.exit_code = 128 + self.signum
    self.where = where
    self.unfinished = None if unfinished is None else [str(name) for name in unfinished]
    left = "" if not self.unfinished else f"; still to run: {'; '.join(self.unfinished)}"
    super().__init__(
        f"stopped by {signal.Signals(self.signum).name} {where}{left}; rerun the same "
        "command (same --workdir) to resume")

  def with_unfinished(self, names) -> "Interrupted":
    """The same stop, naming the runs a rerun still has to run.

    Args:
      names: those runs' names ("seed 3", or a sweep's "gm.weight=10, seed 3"),
        in run order.

    Returns:
      A new `Interrupted`.
    """
    return Interrupted(self.signum, self.where, names)


_CALLS = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gmn_jax_call")


def interruptible_call(fn: Callable[[], Any], poll_s: float = 0.02) -> Any:
  """`fn()` on a worker thread while the main thread waits in Python.

  Python runs signal handlers only in the main thread and only between
  bytecodes; a jitted call can block its thread in C++ for its whole run
  (XLA:CPU runs a program with host callbacks synchronously). Waiting here
  in short steps lets the handler record a stop request at once, which the
  running program's next report then sees. fn's exception is raised here.

  Args:
    fn: the call, e.g. a jitted program followed by `jax.device_get`. Thread-
      local JAX contexts (a mesh) must be entered inside it.
    poll_s: seconds between checks.

  Returns:
    What fn returns.
  """
  if threading.current_thread() is not threading.main_thread():
    return fn()
  future = _CALLS.submit(fn)
  while True:
    try:
      return future.result(timeout=poll_s)
    except concurrent.futures.TimeoutError:
      continue


def _handle(signum, frame):  # pylint: disable=unused-argument
  global _requested
  if _requested is not None and signum == signal.SIGINT:
    raise KeyboardInterrupt  # The second Ctrl-C: stop now.
  _requested = signum
  logging.warning("received %s: stopping within seconds, after a checkpoint%s",
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
