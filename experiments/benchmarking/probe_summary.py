r"""Summary of a `gpu_parallel_seeds_probe.sh` output folder.

  python -m experiments.benchmarking.probe_summary OUT_DIR

Reads what the probe left in OUT_DIR and prints, plain text:

* timings: for each way the benchmark ran (`<way>.json`, or the progress
  lines of `<way>.log` when the run was cut short before writing its JSON),
  ms per iteration and host CPU ms per iteration per number of parallel
  seeds S, and the ratio to S = 1;
* optimised HLO (`hlo/<point>/*after_optimizations.txt`): per module, how
  many computations XLA outlined as command buffers, how many of the
  program's fusions, custom calls, loops and conditionals those command
  buffers reach (directly or through called computations) and, as the raw
  numbers, the occurrences of "command_buffer" and of "call(";
* profiler traces (`traces/<point>/**/*.trace.json.gz`): per point, events
  per iteration on the host (kernel launches, graph launches,
  synchronisations, copies, command-buffer notes) and on the device
  (kernels, their summed busy time over the traced span), and the most
  frequent host and device event names.

The folder may also be the probe's packed $OUT (probe_results.tar.gz,
probe_hlo.tar.gz, trace_<point>.json.gz), as it comes back from a device
machine. Needs no JAX and no accelerator, so it can be summarised anywhere.
"""

import collections
import gzip
import json
import os
import re
import shutil
import sys
import tarfile
import tempfile
from typing import Any, Dict, Iterable, List, Optional, Sequence

# The probe's ways, in the order it runs them (each is <way>.json / .log).
WAYS = ("default", "no_command_buffers", "profiled")

# XLA:GPU's command-buffer scheduling pass outlines the instructions it puts
# into one command buffer (CUDA graph) into a computation of this name.
COMMAND_BUFFER_NAME = "command_buffer"
# Opcodes whose coverage by command buffers is reported.
COUNTED_OPCODES = ("fusion", "custom-call", "while", "conditional", "call")

# Host-side trace events, by what they say about launching work.
HOST_EVENT_KINDS = (
    ("kernel_launches", re.compile(r"LaunchKernel")),
    ("graph_launches", re.compile(r"GraphLaunch")),
    ("synchronisations", re.compile(r"Synchronize")),
    ("copies", re.compile(r"[Mm]emcpy")),
    ("command_buffer_notes", re.compile(r"CommandBuffer")),
)

# What `experiments.benchmark.progress_line` logs for each scaling point.
_PROGRESS = re.compile(r"scaling (\w+)=(\d+): ([\d.e+-]+) ms/iteration, "
                       r"([\d.e+-]+) CPU ms/iteration")
_INSTRUCTION = re.compile(r"^\s+(?:ROOT\s+)?%?[\w.\-]+\s*=\s*.*?\s([a-z][a-z0-9\-]*)\(")
_CALLED = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation|"
                     r"branch_computations)=(?:\{([^}]*)\}|(%?[\w.\-]+))")


# --------------------------------------------------------------------------
# Timings.


def timing_points(results: Dict[str, Any]) -> List[Dict[str, Any]]:
  """The stage-1 settings of one benchmark JSON, as rows of the summary.

  Args:
    results: `experiments.benchmark.run_benchmark`'s results.

  Returns:
    [{"point": "main" or "<row>_<value>", "num_seeds", "iterations" (per
    chunk), "ms", "cpu_ms", "profiled_ms" (the profiled chunk per iteration,
    or None)}], main first, then the scaling points in order.
  """
  rows = [dict(results, row=None, value=None, num_seeds=1)]
  rows += results.get("scaling", [])
  points = []
  for row in rows:
    profile = row.get("profile") or {}
    iterations = row.get("iterations_per_chunk") or results.get("iterations_per_chunk")
    profiled = None
    if "seconds" in profile and iterations:
      profiled = 1e3 * profile["seconds"] / iterations
    points.append({"point": "main" if row["row"] is None else f"{row['row']}_{row['value']}",
                   "num_seeds": row.get("num_seeds", 1), "iterations": iterations,
                   "ms": row["ms_per_iteration"],
                   "cpu_ms": row["cpu_ms_per_iteration"], "profiled_ms": profiled})
  return points


def timing_points_from_log(text: str) -> List[Dict[str, Any]]:
  """The scaling points of a benchmark's progress log (a run cut short).

  Args:
    text: the benchmark's stderr.

  Returns:
    The rows `timing_points` gives for the scaling points that finished
    (the main setting's line has no CPU time, so it is left out).
  """
  points = []
  for row, value, ms, cpu_ms in _PROGRESS.findall(text):
    points.append({"point": f"{row}_{value}", "num_seeds": int(value) if row == "seeds" else 1,
                   "iterations": None, "ms": float(ms), "cpu_ms": float(cpu_ms),
                   "profiled_ms": None})
  return points


def format_timings(way: str, points: Sequence[Dict[str, Any]], source: str) -> List[str]:
  """Lines of one way's timing table.

  Args:
    way: the way's name.
    points: from `timing_points` or `timing_points_from_log`.
    source: where they came from (shown).

  Returns:
    The lines.
  """
  lines = [f"{way} ({source})",
           f"  {'point':<10} {'S':>3} {'ms/iter':>9} {'x S=1':>6} {'ms/seed':>8} "
           f"{'host CPU ms/iter':>17} {'profiled ms/iter':>17}"]
  one = next((p["ms"] for p in points if p["point"] == "seeds_1"), None)
  for p in points:
    ratio = f"{p['ms'] / one:.2f}" if one and p["point"].startswith("seeds_") else ""
    profiled = f"{p['profiled_ms']:.3f}" if p["profiled_ms"] is not None else ""
    lines.append(f"  {p['point']:<10} {p['num_seeds']:>3} {p['ms']:>9.3f} {ratio:>6} "
                 f"{p['ms'] / p['num_seeds']:>8.3f} {p['cpu_ms']:>17.3f} {profiled:>17}")
  return lines


# --------------------------------------------------------------------------
# Optimised HLO.


def split_computations(text: str) -> Dict[str, List[str]]:
  """The instruction lines of each computation of an HLO module's text.

  Args:
    text: `HloModule ...` text as XLA dumps it.

  Returns:
    {computation name (without "%"): its instruction lines}.
  """
  computations, current = {}, None
  for line in text.splitlines():
    if not line.startswith((" ", "\t", "}")) and line.rstrip().endswith("{"):
      header = line.split("(", 1)[0].split()
      current = header[-1].lstrip("%") if header else None
      if current is not None:
        computations[current] = []
    elif line.startswith("}"):
      current = None
    elif current is not None and line.strip():
      computations[current].append(line)
  return computations


def called_computations(line: str) -> List[str]:
  """The computations one instruction line calls (fusions, loops, branches).

  Args:
    line: an HLO instruction.

  Returns:
    Their names, without "%".
  """
  names = []
  for braced, single in _CALLED.findall(line):
    names += [n.strip().lstrip("%") for n in (braced or single).split(",") if n.strip()]
  return names


def hlo_summary(text: str) -> Dict[str, Any]:
  """Which of a module's operations its command buffers reach.

  A computation is reached when it is a command-buffer computation or is
  called, directly or through others, from one; an operation is covered
  when its computation is reached.

  Args:
    text: the optimised HLO text of one module.

  Returns:
    {"computations", "command_buffers" (computations named after the
    command-buffer pass), "ops": {opcode: {"all", "in_command_buffers"}} for
    COUNTED_OPCODES, "raw": {"command_buffer", "call(": occurrences in the
    text}}.
  """
  computations = split_computations(text)
  roots = [n for n in computations if COMMAND_BUFFER_NAME in n]
  reached, frontier = set(roots), list(roots)
  while frontier:
    for line in computations.get(frontier.pop(), []):
      for callee in called_computations(line):
        if callee not in reached:
          reached.add(callee)
          frontier.append(callee)
  ops = {op: {"all": 0, "in_command_buffers": 0} for op in COUNTED_OPCODES}
  for name, lines in computations.items():
    for line in lines:
      match = _INSTRUCTION.match(line)
      if match and match.group(1) in ops:
        ops[match.group(1)]["all"] += 1
        ops[match.group(1)]["in_command_buffers"] += name in reached
  return {"computations": len(computations), "command_buffers": len(roots), "ops": ops,
          "raw": {COMMAND_BUFFER_NAME: text.count(COMMAND_BUFFER_NAME),
                  "call(": text.count("call(")}}


def format_hlo(point: str, path: str, summary: Dict[str, Any]) -> str:
  """One line of the HLO part of the summary.

  Args:
    point: the setting (e.g. "seeds_2").
    path: the module's file.
    summary: from `hlo_summary`.

  Returns:
    The line.
  """
  module = os.path.basename(path).split(".")[1] if "." in os.path.basename(path) else path
  ops = ", ".join(f"{op} {c['in_command_buffers']}/{c['all']}"
                  for op, c in summary["ops"].items() if c["all"])
  return (f"  {point:<10} {module}: {summary['command_buffers']} command-buffer computations "
          f"of {summary['computations']}; in command buffers / all: {ops or 'none'}; "
          f"raw 'command_buffer' x{summary['raw'][COMMAND_BUFFER_NAME]}, "
          f"'call(' x{summary['raw']['call(']}")


# --------------------------------------------------------------------------
# Profiler traces.


def trace_summary(trace: Dict[str, Any], iterations: Optional[int] = None,
                  top: int = 5) -> Dict[str, Any]:
  """Counts of a Chrome trace-event JSON from jax.profiler, per iteration.

  Processes named "/device:..." are the accelerator's (one per device);
  where a device has threads named "Stream ...", only those count (the
  others, "XLA Ops", "XLA Modules", "Steps", restate the same time by HLO
  op, module or step); the rest are the host's, the CUDA driver calls
  ("/host:CUPTI") among them.

  Args:
    trace: the parsed trace JSON ({"traceEvents": [...]}).
    iterations: generator iterations in the traced chunk (None: totals).
    top: how many of the most frequent names to keep.

  Returns:
    {"per": "iteration" or "chunk", "host": {kind: events} for
    HOST_EVENT_KINDS, "device_events", "device_busy_fraction" (summed
    device event time over the device's traced span; above 1 where streams
    overlap; None without device events), "top_host", "top_device": [(name,
    events in the whole trace)], Python functions (the profiler's "$..."
    events) left out of top_host}.
  """
  events = trace.get("traceEvents", [])
  process = {e["pid"]: e.get("args", {}).get("name", "") for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
  thread = {(e["pid"], e.get("tid")): e.get("args", {}).get("name", "") for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name"}
  devices = {pid for pid, name in process.items() if name.startswith("/device:")}
  with_streams = {pid for (pid, _), name in thread.items()
                  if pid in devices and name.startswith("Stream")}
  host, device = collections.Counter(), collections.Counter()
  busy, start, end = 0.0, None, None
  for e in events:
    if e.get("ph") != "X":
      continue
    pid = e.get("pid")
    if pid in devices:
      if pid in with_streams and not thread.get((pid, e.get("tid")), "").startswith("Stream"):
        continue
      device[e["name"]] += 1
      duration = float(e.get("dur", 0.0))
      busy += duration
      start = e["ts"] if start is None else min(start, e["ts"])
      end = e["ts"] + duration if end is None else max(end, e["ts"] + duration)
    else:
      host[e["name"]] += 1
  scale = 1.0 / iterations if iterations else 1.0
  kinds = {kind: scale * sum(n for name, n in host.items() if pattern.search(name))
           for kind, pattern in HOST_EVENT_KINDS}
  span = (end - start) if device else 0.0
  return {"per": "iteration" if iterations else "chunk", "host": kinds,
          "device_events": scale * sum(device.values()),
          "device_busy_fraction": busy / span if span > 0 else None,
          "top_host": [(name, n) for name, n in host.most_common()
                       if not name.startswith("$")][:top],
          "top_device": device.most_common(top)}


def find_trace_json(directory: str) -> Optional[str]:
  """The newest *.trace.json.gz under a profile directory, if any.

  Args:
    directory: a `jax.profiler.trace` log directory.

  Returns:
    Its path, or None.
  """
  found = []
  for root, _, names in os.walk(directory):
    found += [os.path.join(root, n) for n in names if n.endswith(".trace.json.gz")]
  return max(found, key=os.path.getmtime) if found else None


def format_trace(point: str, summary: Dict[str, Any]) -> List[str]:
  """Lines of the trace part of the summary for one point.

  Args:
    point: the setting.
    summary: from `trace_summary`.

  Returns:
    The lines.
  """
  host = ", ".join(f"{kind} {n:.1f}" for kind, n in summary["host"].items())
  busy = summary["device_busy_fraction"]
  device = ("no device events" if busy is None else
            f"device events {summary['device_events']:.1f}, device busy {100 * busy:.0f}%")
  return [f"  {point:<10} per {summary['per']}: host {host}; {device}",
          f"  {'':<10} most frequent on the host (whole trace): {summary['top_host']}",
          f"  {'':<10} most frequent on the device (whole trace): {summary['top_device']}"]


# --------------------------------------------------------------------------
# The whole folder.


def _read_json(path: str) -> Optional[Dict[str, Any]]:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def _sorted_points(names: Iterable[str]) -> List[str]:
  """main first, then rows by name and numeric value."""
  def key(name):
    row, _, value = name.rpartition("_")
    return (name != "main", row, int(value) if value.isdigit() else 0, name)
  return sorted(names, key=key)


def summarize(out_dir: str) -> str:
  """The probe's summary, from everything it left in out_dir.

  Args:
    out_dir: the probe's output folder.

  Returns:
    The text (a part with nothing to show says so).
  """
  lines = ["== timings (ms per generator iteration, all seeds together) =="]
  iterations = {}
  for way in WAYS:
    results = _read_json(os.path.join(out_dir, f"{way}.json"))
    if results is not None:
      points, source = timing_points(results), f"{way}.json"
      if way == "profiled":
        iterations = {p["point"]: p["iterations"] for p in points}
    else:
      try:
        with open(os.path.join(out_dir, f"{way}.log"), encoding="utf-8") as f:
          points, source = timing_points_from_log(f.read()), f"{way}.log, run cut short"
      except OSError:
        lines.append(f"{way}: not run")
        continue
    lines += format_timings(way, points, source)

  lines.append("== optimised HLO of the stage-1 chunk program ==")
  hlo_root = os.path.join(out_dir, "hlo")
  hlo_points = _sorted_points(os.listdir(hlo_root)) if os.path.isdir(hlo_root) else []
  shown = 0
  for point in hlo_points:
    folder = os.path.join(hlo_root, point)
    for name in sorted(os.listdir(folder)):
      if name.endswith("after_optimizations.txt"):
        with open(os.path.join(folder, name), encoding="utf-8") as f:
          lines.append(format_hlo(point, name, hlo_summary(f.read())))
        shown += 1
  if not shown:
    lines.append("  none dumped")

  lines.append("== profiler traces ==")
  trace_root = os.path.join(out_dir, "traces")
  trace_points = _sorted_points(os.listdir(trace_root)) if os.path.isdir(trace_root) else []
  shown = 0
  for point in trace_points:
    path = find_trace_json(os.path.join(trace_root, point))
    if path is None:
      continue
    with gzip.open(path, "rt", encoding="utf-8") as f:
      lines += format_trace(point, trace_summary(json.load(f), iterations.get(point)))
    shown += 1
  if not shown:
    lines.append("  none written")
  return "\n".join(lines)


PACKED_RESULTS = "probe_results.tar.gz"
PACKED_HLO = "probe_hlo.tar.gz"
_PACKED_TRACE = re.compile(r"^trace_(\w+)\.json\.gz$")


def unpack(out_dir: str, into: str) -> None:
  """Lays the probe's packed $OUT out as the probe's working folder.

  Args:
    out_dir: a folder with the probe's archives and trace_<point>.json.gz.
    into: an empty folder to fill: <way>.json/.log, hlo/<point>/...,
      traces/<point>/<point>.trace.json.gz.
  """
  for archive in (PACKED_RESULTS, PACKED_HLO):
    path = os.path.join(out_dir, archive)
    if os.path.exists(path):
      with tarfile.open(path) as tar:
        # "data": plain files and folders only, all inside `into`.
        tar.extractall(into, filter="data")
  for name in os.listdir(out_dir):
    match = _PACKED_TRACE.match(name)
    if match:
      folder = os.path.join(into, "traces", match.group(1))
      os.makedirs(folder, exist_ok=True)
      shutil.copy(os.path.join(out_dir, name),
                  os.path.join(folder, f"{match.group(1)}.trace.json.gz"))


def summarize_any(folder: str) -> str:
  """`summarize` of the probe's working folder or of its packed $OUT.

  Args:
    folder: either layout.

  Returns:
    The summary text.
  """
  if not os.path.exists(os.path.join(folder, PACKED_RESULTS)):
    return summarize(folder)
  with tempfile.TemporaryDirectory() as scratch:
    unpack(folder, scratch)
    return summarize(scratch)


def main(argv: Sequence[str]) -> int:
  """Prints the summary of the folder named on the command line.

  Args:
    argv: [program, OUT_DIR].

  Returns:
    The exit status: 0, or 2 for a bad command line.
  """
  if len(argv) != 2 or not os.path.isdir(argv[1]):
    print("error: usage: python -m experiments.benchmarking.probe_summary OUT_DIR "
          f"(found {' '.join(argv[1:]) or 'no argument'})", file=sys.stderr)
    return 2
  print(summarize_any(argv[1]))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
