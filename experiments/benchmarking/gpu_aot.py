r"""Compiles the stage-1 program for a GPU without one, and models its cost.

    python -m experiments.benchmarking.gpu_aot \
        --config=experiments/configs/cub.py --out_dir=/tmp/gpu_aot \
        [--seed_counts=1,2,4,8] [--iterations=100] \
        [--target_config=experiments/benchmarking/gpu_targets/h100_sxm.txtpb] \
        [--measured_ms=1:2.14,2:3.43,4:5.78,8:10.41] [--json_out=F]
    python -m experiments.benchmarking.gpu_aot --analyse_dir=DIR [--measured_json=F] ...

The first form needs JAX's CUDA plugin (`pip install "jax[cuda12]"`) but no
GPU: it compiles the stage-1 chunk that `experiments.benchmark` times, once
per number of vmapped seeds, for the device that --target_config describes
(ahead-of-time, through `jax.experimental.topologies`), with XLA's dump of
each program in OUT_DIR/seeds_<S>. The second form reads dumps that
already exist, e.g. `experiments.benchmark --dump_hlo_dir=DIR` on a GPU
(one folder per setting: main, seeds_2, ...).

For each program it prints, per generator iteration: kernel launches, what
the host launches (command buffers + loose kernels), product GFLOP, GB read
and written, and `experiments.benchmarking.kernel_model`'s time —
max(products, bytes / bandwidth) + launch latency per launch — with its
split, and a lower bound
(peak bandwidth from the target, no launch latency). With measured times
(--measured_ms, or the seeds rows of a benchmark --json_out given as
--measured_json) it also fits the bandwidth and latency that best explain
them. docs/benchmarks.md ("What limits parallel seeds on the GPU") is what
this found for CUB on an H100.

A bad flag, config or dump prints one line to stderr and exits 2. Existing
dump folders are never overwritten.
"""

import dataclasses
import math
import os
import re
import sys
from typing import Any, Dict, Optional, Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from experiments.benchmarking import gpu_dump
from experiments.benchmarking import kernel_model
from gmn_jax.errors import ConfigError
from gmn_jax.errors import DataError
from gmn_jax.errors import GMNError

DEFAULT_TARGET = os.path.join(os.path.dirname(__file__), "gpu_targets", "h100_sxm.txtpb")
# The 8192² float32 product on the project's H100 (docs/benchmarks.md), TF32.
DEFAULT_MATMUL_RATE = 373e12

_CONFIG = None
_OUT_DIR = None
_ANALYSE_DIR = None
_SEED_COUNTS = None
_ITERATIONS = None
_TARGET_CONFIG = None
_MATMUL_RATE = None
_BANDWIDTH = None
_LAUNCH_LATENCY = None
_MEASURED_MS = None
_MEASURED_JSON = None
_JSON_OUT = None
_TOP = None


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program)."""
  # pylint: disable=global-statement
  global _CONFIG, _OUT_DIR, _ANALYSE_DIR, _SEED_COUNTS, _ITERATIONS, _TARGET_CONFIG
  global _MATMUL_RATE, _BANDWIDTH, _LAUNCH_LATENCY, _MEASURED_MS, _MEASURED_JSON
  global _JSON_OUT, _TOP
  # pylint: enable=global-statement
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "A dataset config, e.g. experiments/configs/cub.py.", lock_config=False)
  _OUT_DIR = flags.DEFINE_string("out_dir", None, "Where the dumps go (OUT_DIR/seeds_<S>).")
  _ANALYSE_DIR = flags.DEFINE_string(
      "analyse_dir", None, "Analyse the dumps in DIR's subfolders instead of compiling.")
  _SEED_COUNTS = flags.DEFINE_string("seed_counts", "1,2,4,8",
                                     "Comma-separated numbers of vmapped seeds to compile.")
  _ITERATIONS = flags.DEFINE_integer("iterations", 100,
                                     "Generator iterations per compiled chunk.")
  _TARGET_CONFIG = flags.DEFINE_string("target_config", DEFAULT_TARGET,
                                       "The GPU to compile for (GpuTargetConfigProto text).")
  _MATMUL_RATE = flags.DEFINE_float("matmul_rate", DEFAULT_MATMUL_RATE,
                                    "Measured FLOP/s of a large float32 product.")
  _BANDWIDTH = flags.DEFINE_float(
      "bandwidth", 0.0, "Model bytes/s (0: fitted to the measured times, else 2.1e12).")
  _LAUNCH_LATENCY = flags.DEFINE_float(
      "launch_latency", -1.0, "Model seconds per launch (<0: fitted, else 1.5e-6).")
  _MEASURED_MS = flags.DEFINE_string("measured_ms", None,
                                     "Measured ms/iteration per seed count, e.g. 1:2.14,2:3.43.")
  _MEASURED_JSON = flags.DEFINE_string(
      "measured_json", None, "A benchmark --json_out whose main and seeds rows give the times.")
  _JSON_OUT = flags.DEFINE_string("json_out", None, "Where to write the results as JSON.")
  _TOP = flags.DEFINE_integer("top", 10, "How many of the costliest launches to list.")


# The bandwidth and latency used when nothing is measured: the fit to the
# H100 measurements of CUB (docs/benchmarks.md).
FALLBACK_BANDWIDTH = 2.1e12
FALLBACK_LATENCY = 1.5e-6


def parse_measured(text: str) -> Dict[int, float]:
  """"1:2.14,2:3.43" -> {1: 2.14, 2: 3.43}.

  Args:
    text: comma-separated seeds:ms pairs.

  Returns:
    ms per iteration by seed count.

  Raises:
    ConfigError: a malformed pair or a non-positive number.
  """
  measured = {}
  for pair in (p.strip() for p in text.split(",") if p.strip()):
    found = re.fullmatch(r"(\d+):([0-9.eE+\-]+)", pair)
    try:
      seeds, ms = (int(found.group(1)), float(found.group(2))) if found else (0, 0.0)
    except ValueError:
      seeds, ms = 0, 0.0
    if seeds < 1 or not ms > 0:
      raise ConfigError(f"--measured_ms: expected SEEDS:MS pairs such as 1:2.14,2:3.43, "
                        f"found {pair!r}")
    measured[seeds] = ms
  return measured


def measured_from_json(path: str) -> Dict[int, float]:
  """ms per iteration by seed count from an `experiments.benchmark` JSON.

  Args:
    path: the benchmark's --json_out.

  Returns:
    {1: the main setting's ms (unless a seeds row has S = 1), S: the seeds
    row's ms}.

  Raises:
    DataError: unreadable file, or no timings in it.
  """
  from gmn_jax import metric_writers  # pylint: disable=g-import-not-at-top
  results = metric_writers.read_json(path)
  measured = {}
  if isinstance(results, dict) and isinstance(results.get("ms_per_iteration"), (int, float)):
    measured[1] = float(results["ms_per_iteration"])
  for point in (results.get("scaling") or []) if isinstance(results, dict) else []:
    if point.get("row") == "seeds" and isinstance(point.get("ms_per_iteration"), (int, float)):
      measured[int(point["value"])] = float(point["ms_per_iteration"])
  if not measured:
    raise DataError(path, "ms_per_iteration", "an experiments.benchmark JSON with the main "
                    "setting's time (and seeds scaling rows)", "no timings")
  return measured


def target_peak_bandwidth(target_text: str) -> Optional[float]:
  """memory_bandwidth (bytes/s) of a GpuTargetConfigProto text, if given."""
  found = re.search(r"memory_bandwidth:\s*([0-9.eE+]+)", target_text)
  return float(found.group(1)) if found else None


def target_num_sms(target_text: str) -> int:
  """core_count (SMs) of a GpuTargetConfigProto text (132 if absent)."""
  found = re.search(r"core_count:\s*(\d+)", target_text)
  return int(found.group(1)) if found else 132


def compile_for_target(config, target_text: str, seed_counts: Sequence[int], iterations: int,
                       out_dir: str, log=print) -> Dict[int, str]:
  """Compiles the stage-1 chunk per seed count for a described GPU, dumping XLA's files.

  Args:
    config: the run's configuration.
    target_text: the GpuTargetConfigProto text of the GPU.
    seed_counts: numbers of vmapped seeds.
    iterations: generator iterations per chunk.
    out_dir: the dumps go to out_dir/seeds_<S>, which must not exist or
      be empty.
    log: where progress lines go.

  Returns:
    {S: dump folder}.

  Raises:
    ConfigError: no CUDA plugin, a bad target, or a dump folder in use.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from experiments.benchmarking import shapes  # pylint: disable=g-import-not-at-top
  from experiments.benchmarking import timing  # pylint: disable=g-import-not-at-top
  from gmn_jax import specs  # pylint: disable=g-import-not-at-top
  from gmn_jax import train_chunk  # pylint: disable=g-import-not-at-top
  from gmn_jax import train_state  # pylint: disable=g-import-not-at-top
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top

  folders = {s: os.path.join(out_dir, f"seeds_{s}") for s in seed_counts}
  for folder in folders.values():
    if os.path.exists(folder) and (not os.path.isdir(folder) or os.listdir(folder)):
      raise ConfigError(f"--out_dir: {folder} exists and is not an empty folder; "
                        "choose another --out_dir (dumps are never overwritten)")
  # Keep the (absent) GPU out of JAX's backends: with cpu only, the CUDA
  # plugin registers its compiler without looking for a device.
  jax.config.update("jax_platforms", "cpu")
  # The program a GPU runs, not the CPU's (the critic scan unrolled).
  from gmn_jax import train_step  # pylint: disable=g-import-not-at-top
  train_step.UNROLL_CRITIC_STEPS = True
  try:
    topology = topologies.get_topology_desc(platform="cuda", topology="1x1x1",
                                            target_config=target_text)
  except NotImplementedError as error:
    raise ConfigError(
        "compiling for a GPU without one needs JAX's CUDA plugin: pip install "
        f"\"jax[cuda12]=={jax.__version__}\" (no GPU or driver needed); JAX said: {error}"
    ) from error
  except Exception as error:  # The plugin's own errors (a bad proto) are plain RuntimeErrors.
    raise ConfigError(f"--target_config: the CUDA plugin refused it: {error}") from error
  device = jax.sharding.SingleDeviceSharding(topology.devices[0])

  def on_target(tree):
    return jax.tree_util.tree_map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device)
        if hasattr(leaf, "shape") else leaf, tree)

  dataset = shapes.benchmark_dataset(config)
  spec = specs.train_spec(config, dataset)
  hyper = specs.hyperparameters(config)
  data = train_state.make_train_data(dataset, spec)
  for seeds, folder in folders.items():
    states, keys = timing.init_states(spec, data, seeds)  # On the CPU: shapes only.
    # Without the progress callback: a host callback cannot be compiled
    # without the host's GPU client, and it runs once a second, not per
    # iteration (docs/runs.md, "Progress"), so the traffic is the same.
    program = jax.jit(train_chunk.make_chunk_fn(spec, iterations, seeds), donate_argnums=0)
    os.makedirs(folder, exist_ok=True)
    args = (states, data, hyper, keys, jnp.int32(0), jnp.int32(iterations + 1))
    program.lower(*map(on_target, args)).compile(
        compiler_options={"xla_dump_to": folder, "xla_dump_hlo_as_text": True})
    log(f"compiled S = {seeds} for {topology.devices[0].device_kind} into {folder}")
  return folders


def fit_device(dumps: Dict[int, gpu_dump.Dump], measured: Dict[int, float],
               base: kernel_model.Device) -> kernel_model.Device:
  """The bandwidth and launch latency that best explain measured times.

  A grid search (bandwidth 0.5–4 TB/s in 0.05 steps, latency 0–10 µs in
  0.25 µs steps) minimising the squared log ratio of model to measurement.

  Args:
    dumps: analysed programs by seed count.
    measured: ms per iteration by seed count (those without a dump are
      ignored).
    base: the device whose other fields are kept.

  Returns:
    The fitted Device.

  Raises:
    ConfigError: fewer than two measured programs.
  """
  common = sorted(set(dumps) & set(measured))
  if len(common) < 2:
    raise ConfigError("fitting bandwidth and latency needs measured times for at least two "
                      f"compiled seed counts; have {common}")
  best = None
  for bandwidth in (x * 0.05e12 for x in range(10, 81)):
    for latency in (x * 0.25e-6 for x in range(41)):
      device = dataclasses.replace(base, bandwidth=bandwidth, launch_latency=latency)
      error = sum(math.log(kernel_model.model_time(dumps[s], device).total * 1e3 / measured[s])
                  ** 2 for s in common)
      if best is None or error < best[0]:
        best = (error, device)
  return best[1]


def analyse(dumps: Dict[Any, gpu_dump.Dump], device: kernel_model.Device,
            peak_bandwidth: Optional[float], measured: Dict[int, float],
            top: int) -> Dict[str, Any]:
  """The model's rows for every program, JSON-ready.

  Args:
    dumps: analysed programs by seed count (or folder name).
    device: the model's device.
    peak_bandwidth: the target's bytes/s, for the lower bound (None: none).
    measured: ms per iteration by seed count.
    top: how many of the costliest launches to list per program.

  Returns:
    {"device": ..., "rows": [...]} with ms values per iteration.
  """
  rows = []
  for key, dump in dumps.items():
    time = kernel_model.model_time(dump, device)
    row = {"program": key, "dump": dump.directory,
           "launches_per_iteration": dump.launches_per_iteration,
           "host_launches_per_iteration": dump.host_launches_per_iteration,
           "launches_outside_command_buffers": sum(
               k.runs_per_iteration for k in dump.kernels if not k.in_command_buffer),
           "gflop_per_iteration": dump.flop_per_iteration / 1e9,
           "gb_per_iteration": dump.bytes_per_iteration / 1e9,
           "model_ms": time.total * 1e3, "product_bound_ms": time.product_bound * 1e3,
           "memory_bound_ms": time.memory_bound * 1e3, "latency_ms": time.latency * 1e3,
           "top": [{"name": k.name, "runs_per_iteration": k.runs_per_iteration,
                    "mb": k.bytes / 1e6, "gflop": k.flop / 1e9, "us_per_iteration": s * 1e6}
                   for k, s in kernel_model.top_kernels(dump, device, top)]}
    if peak_bandwidth:
      bound = dataclasses.replace(device, bandwidth=peak_bandwidth, launch_latency=0.0)
      row["lower_bound_ms"] = kernel_model.model_time(dump, bound).total * 1e3
    if key in measured:
      row["measured_ms"] = measured[key]
    rows.append(row)
  return {"device": {"matmul_rate": device.matmul_rate, "bandwidth": device.bandwidth,
                     "launch_latency": device.launch_latency, "num_sms": device.num_sms,
                     "tile": list(device.tile)},
          "rows": rows}


def format_table(results: Dict[str, Any]) -> str:
  """The rows as a Markdown table, then each program's costliest launches."""
  d = results["device"]
  lines = [f"model: {d['bandwidth'] / 1e12:.2f} TB/s, {d['launch_latency'] * 1e6:.2f} µs per "
           f"launch, {d['matmul_rate'] / 1e12:.0f} TFLOP/s products, {d['num_sms']} SMs",
           "",
           "| program | launches/it | host launches/it | GFLOP/it | GB/it | model ms "
           "(products + memory + latency) | lower bound ms | measured ms |",
           "|---|---|---|---|---|---|---|---|"]
  def label(program):
    return f"S = {program}" if isinstance(program, int) else str(program)

  for r in results["rows"]:
    bound = f"{r['lower_bound_ms']:.2f}" if "lower_bound_ms" in r else "–"
    measured = f"{r['measured_ms']:.2f}" if "measured_ms" in r else "–"
    lines.append(
        f"| {label(r['program'])} | {r['launches_per_iteration']:.0f} | "
        f"{r['host_launches_per_iteration']:.1f} | {r['gflop_per_iteration']:.1f} | "
        f"{r['gb_per_iteration']:.2f} | {r['model_ms']:.2f} ({r['product_bound_ms']:.2f} + "
        f"{r['memory_bound_ms']:.2f} + {r['latency_ms']:.2f}) | {bound} | {measured} |")
  for r in results["rows"]:
    lines += ["", f"costliest launches, {label(r['program'])} (µs per iteration, no latency):"]
    lines += [f"  {t['us_per_iteration']:8.1f}  {t['runs_per_iteration']:g} × {t['name']} "
              f"({t['mb']:.1f} MB, {t['gflop']:.2f} GFLOP)" for t in r["top"]]
  return "\n".join(lines)


def dumps_under(directory: str) -> Dict[Any, gpu_dump.Dump]:
  """Analyses every subfolder of directory that holds a dump.

  Args:
    directory: e.g. a benchmark's --dump_hlo_dir or this binary's --out_dir.

  Returns:
    {seed count (from seeds_<S>; 1 for main) or folder name: Dump}.

  Raises:
    DataError: no subfolder holds a dump, or one holds a broken dump.
  """
  if not os.path.isdir(directory):
    raise DataError(directory, None, "a folder (--analyse_dir)", "no folder")
  dumps = {}
  names = sorted(os.listdir(directory))
  # "main" (the benchmark's main setting, one seed) counts as S = 1 unless a
  # seeds_1 folder holds the same program.
  for name in sorted(names, key=lambda n: n == "main"):
    folder = os.path.join(directory, name)
    if not os.path.isdir(folder) or not any(
        n.endswith("after_optimizations.txt") for n in os.listdir(folder)):
      continue
    found = re.fullmatch(r"seeds_(\d+)", name)
    key = int(found.group(1)) if found else name
    if name == "main":
      if 1 in dumps:
        continue
      key = 1
    dumps[key] = gpu_dump.analyse_dump(folder)
  if not dumps:
    raise DataError(directory, None, "subfolders with XLA:GPU dumps "
                    "(*after_optimizations.txt)", "none")
  return dict(sorted(dumps.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])))


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  try:
    if bool(_OUT_DIR.value) == bool(_ANALYSE_DIR.value):
      raise ConfigError("expected exactly one of --out_dir (compile, then analyse) and "
                        "--analyse_dir (analyse existing dumps)")
    try:
      with open(_TARGET_CONFIG.value, encoding="utf-8") as f:
        target_text = f.read()
    except OSError as error:
      raise ConfigError(f"--target_config: cannot read {_TARGET_CONFIG.value}: "
                        f"{error.strerror}") from error
    measured = {}
    if _MEASURED_JSON.value:
      measured.update(measured_from_json(_MEASURED_JSON.value))
    if _MEASURED_MS.value:
      measured.update(parse_measured(_MEASURED_MS.value))
    if _OUT_DIR.value:
      config = cli.load_config(_CONFIG, example="experiments/configs/cub.py")
      from experiments import benchmark  # pylint: disable=g-import-not-at-top
      seed_counts = benchmark.parse_counts(_SEED_COUNTS.value, "seed_counts")
      if _ITERATIONS.value < 1:
        raise ConfigError(f"--iterations: expected a positive integer, found "
                          f"{_ITERATIONS.value}")
      folders = compile_for_target(config, target_text, seed_counts, _ITERATIONS.value,
                                   _OUT_DIR.value, log=lambda line: print(line, file=sys.stderr))
      dumps = {s: gpu_dump.analyse_dump(f) for s, f in sorted(folders.items())}
    else:
      dumps = dumps_under(_ANALYSE_DIR.value)
    base = kernel_model.Device(_MATMUL_RATE.value, _BANDWIDTH.value or FALLBACK_BANDWIDTH,
                               FALLBACK_LATENCY if _LAUNCH_LATENCY.value < 0
                               else _LAUNCH_LATENCY.value, target_num_sms(target_text))
    fit = None
    numeric = {k: v for k, v in dumps.items() if isinstance(k, int)}
    if len(set(numeric) & set(measured)) >= 2 and not (
        _BANDWIDTH.value or _LAUNCH_LATENCY.value >= 0):
      fit = fit_device(numeric, measured, base)
    results = analyse(dumps, fit or base, target_peak_bandwidth(target_text), measured,
                      _TOP.value)
    results["fitted"] = fit is not None
    print(("fitted to the measured times; " if results["fitted"] else "") + format_table(results))
    if _JSON_OUT.value:
      cli.write_results(_JSON_OUT.value, results)
  except GMNError as error:
    cli.fail(error)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
