"""Profiler traces and HLO dumps of the stage-1 programs the benchmark times.

Each measured setting ("point") gets its own folder, named by `point_name`,
under the directories that --profile_dir and --dump_hlo_dir give.
"""

import os
from typing import Any, Callable, Dict, List, Optional

import jax

from experiments.benchmarking import measure

# What jax.profiler writes under its log directory (plugins/profile/<time>/):
# the XSpace protobuf that XProf / TensorBoard read and, from it, a Chrome
# trace-event JSON that Perfetto and `experiments/benchmarking/probe_summary.py`
# read.
TRACE_FILE_SUFFIXES = (".xplane.pb", ".trace.json.gz")


def point_name(row: Optional[str], value: Any = None) -> str:
  """The directory name of one measured setting: "main" or "<row>_<value>".

  Args:
    row: a scaling row's name, or None for the main setting.
    value: the row's value at this point.

  Returns:
    E.g. "main" or "seeds_2".
  """
  return "main" if row is None else f"{row}_{value}"


def trace_files(directory: str) -> List[str]:
  """The profiler's trace files anywhere under a directory.

  Args:
    directory: a `jax.profiler.trace` log directory.

  Returns:
    Their paths, sorted (empty when there are none).
  """
  found = []
  for root, _, names in os.walk(directory):
    found += [os.path.join(root, n) for n in names if n.endswith(TRACE_FILE_SUFFIXES)]
  return sorted(found)


def profile_call(fn: Callable[[], Any], directory: str) -> Dict[str, Any]:
  """Calls fn() once inside `jax.profiler.trace(directory)`.

  The profiler's start and its export of the trace are outside the timed
  span, which covers fn() and waiting for its result.

  Args:
    fn: the call to profile (e.g. one stage-1 chunk).
    directory: the trace's log directory (created if missing).

  Returns:
    {"dir", "files" (`trace_files`), "seconds", "cpu_seconds"}, or {"dir",
    "error"} when the profiler could not trace (then fn may not have run).
  """
  os.makedirs(directory, exist_ok=True)
  try:
    with jax.profiler.trace(directory):
      _, wall, cpu = measure.timed(fn)
  except (RuntimeError, ImportError) as error:
    # A profile is a diagnostic: losing it must not lose the timings.
    return {"dir": directory, "error": f"{type(error).__name__}: {error}"}
  return {"dir": directory, "files": trace_files(directory), "seconds": wall,
          "cpu_seconds": cpu}


def hlo_dump_options(directory: str) -> Dict[str, Any]:
  """XLA options that dump one compilation's HLO as text into a directory.

  Passed to `Lowered.compile(compiler_options=...)`, they apply to that
  program alone, unlike XLA_FLAGS, which must be set before JAX starts its
  backend and then dumps every program.

  Args:
    directory: where XLA writes module_<n>.<name>.*.txt.

  Returns:
    The compiler options.
  """
  return {"xla_dump_to": directory, "xla_dump_hlo_as_text": True}


def dumped_hlo_files(directory: str) -> List[str]:
  """The optimised-HLO text files of the modules dumped into a directory.

  Args:
    directory: an `hlo_dump_options` directory.

  Returns:
    Their paths, sorted (empty when nothing was dumped, e.g. a program that
    came from the persistent compilation cache).
  """
  if not os.path.isdir(directory):
    return []
  return sorted(os.path.join(directory, n) for n in os.listdir(directory)
                if n.endswith("after_optimizations.txt"))
