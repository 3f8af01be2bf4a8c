r"""Speed of stage 1 and of the final classifier at a dataset's real shapes.

  python -m experiments.benchmark --config=experiments/configs/cub.py \
      [--iterations=5] [--chunks=3] [--json_out=bench_cub.json] \
      [--scaling=seeds,batch,seen,gm_classes,thetas | --skip_scaling] \
      [--classifier_epochs=200 | --skip_classifier] [--seed_counts=1,2,4,8] \
      [--profile_dir=DIR] [--dump_hlo_dir=DIR] [--config.<field>=...]

The data are synthetic, in memory, with the real shapes of the config's
dataset (`gmn_jax.data.synthetic.PRESETS`: CUB 150 seen / 50 unseen classes,
7057 training features of 2048 dimensions; the embedding size follows
`config.embedding`, e.g. 1336 for CUB's att+sent). Timing does not depend on
the values.

Measured, on the default device:

* `ms_per_iteration`: median over `--chunks` timed calls of the jitted
  `lax.scan` of `--iterations` generator iterations (one iteration = its
  n_critic critic steps + the generator step with GM), after compilation;
  `compile_s` is the ahead-of-time compilation of that program.
* `flop_per_iteration`: XLA's cost analysis of ONE iteration. The analysis
  counts a loop body once, so the iteration (whose critic steps are a scan)
  is counted as cost(train_iteration) + (n_critic - 1) cost(critic_step),
  and checked against `analytic_flop_per_iteration`, a count of the matrix
  products alone (see `analytic_iteration_flops`). `flop_source` says where
  the count came from: "xla" (the device's analysis), "xla_cpu_lowering"
  (the same program lowered for the CPU, where the device's backend gives
  no analysis, as the CUDA plugin does) or "analytic" (neither did).
* `achieved_flops` and `fraction_of_matmul_peak`: that count over the
  measured time, divided by the FLOP/s of a large float32 `jnp` matrix
  product timed in the same run on the same device, right after each timed
  call (median over calls); `fraction_of_matmul_peak_cpu_time` is the same
  ratio of FLOPs per CPU-second of this process, which the load of a shared
  machine disturbs much less than wall time.
* `components`: one critic step, the generator step (value and gradient,
  GM included) and GM alone, each jitted and timed by itself with its FLOP
  count (and `flop_source`, as above) and fractions: where the time goes.
* `peak_memory_bytes`: the device's peak where it reports one, else the
  process's maximum resident set size.
* scaling rows (`--scaling`): parallel seeds 1/2/4/8 (stage 1 vmapped over
  seeds), batch size 64..1024, seen classes (150, 300, 645), GM classes per
  iteration (1, 5, 20), GM θ samples M (1, 2, 4).
* `final_classifier`: `evaluate.train_final_classifier` on real seen +
  synthetic unseen features, `eval.num_classifier_seeds` seeds at once, timed
  for `--classifier_epochs` epochs (second call, after compilation) and
  projected to `config.eval.epochs`.
* `--profile_dir=DIR`: after the timed chunks of the main setting and of
  every scaling point, one more (untimed) chunk runs inside
  `jax.profiler.trace(DIR/<point>)`, `<point>` being `main` or
  `<row>_<value>` (e.g. `seeds_2`); each row's `profile` entry says where
  its trace went, which files the profiler wrote and how long the profiled
  chunk took. On a GPU, XLA runs command buffers (CUDA graphs) op by op while
  a trace is active unless XLA_FLAGS has
  `--xla_enable_command_buffers_during_profiling=true`.
* `--dump_hlo_dir=DIR`: XLA dumps the stage-1 chunk programs it compiles
  (HLO text before and after optimisation, and whatever else the backend
  dumps) into DIR/<point>, through that compilation's own options, so no
  other program is dumped. A program that JAX's persistent compilation cache
  supplies is not compiled: at most its optimised HLO is dumped (on the CPU,
  as `module_<n>.jit_chunk.after_optimizations.txt`).

Prints a table and writes everything to --json_out. A bad flag or config
prints one line to stderr and exits 2.
"""

import os
import platform
import statistics
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import app
from absl import flags
import jax
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments import cli
from experiments.benchmarking import flops
from experiments.benchmarking import measure
from experiments.benchmarking import profiling
from experiments.benchmarking import shapes
from experiments.benchmarking import timing
from gmn_jax import config as gmn_config
from gmn_jax import specs
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import ConfigError
from gmn_jax.errors import GMNError

_CONFIG = None
_ITERATIONS = None
_CHUNKS = None
_JSON_OUT = None
_SCALING = None
_SKIP_SCALING = None
_SCALING_ITERATIONS = None
_CLASSIFIER_EPOCHS = None
_SKIP_CLASSIFIER = None
_SKIP_BREAKDOWN = None
_MATMUL_SIZE = None
_SEED_COUNTS = None
_PROFILE_DIR = None
_DUMP_HLO_DIR = None


def define_flags() -> None:
  """Defines the command-line flags.

  Called only when the module runs as a program, so that importing it (as
  the tests do) defines no absl flags that could collide with another
  binary's.
  """
  # pylint: disable=global-statement
  global _CONFIG, _ITERATIONS, _CHUNKS, _JSON_OUT, _SCALING, _SKIP_SCALING
  global _SCALING_ITERATIONS, _CLASSIFIER_EPOCHS, _SKIP_CLASSIFIER, _SKIP_BREAKDOWN
  global _MATMUL_SIZE, _SEED_COUNTS, _PROFILE_DIR, _DUMP_HLO_DIR
  # pylint: enable=global-statement
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "A dataset config, e.g. experiments/configs/cub.py.", lock_config=False)
  _ITERATIONS = flags.DEFINE_integer("iterations", 5, "Generator iterations per timed call.")
  _CHUNKS = flags.DEFINE_integer("chunks", 3, "Timed calls after compilation (median taken).")
  _JSON_OUT = flags.DEFINE_string("json_out", None, "Where to write the results as JSON.")
  _SCALING = flags.DEFINE_string(
      "scaling", "seeds,batch,seen,gm_classes,thetas",
      "Comma-separated scaling rows to run: " + ", ".join(
          ("seeds", "batch", "seen", "gm_classes", "thetas")) + ".")
  _SKIP_SCALING = flags.DEFINE_bool("skip_scaling", False, "Run no scaling rows.")
  _SCALING_ITERATIONS = flags.DEFINE_integer(
      "scaling_iterations", 0, "Iterations per timed call in scaling rows (0: --iterations).")
  _CLASSIFIER_EPOCHS = flags.DEFINE_integer(
      "classifier_epochs", 0, "Final-classifier epochs actually timed (0: config.eval.epochs); "
      "the time is projected to config.eval.epochs.")
  _SKIP_CLASSIFIER = flags.DEFINE_bool("skip_classifier", False,
                                       "Do not time the final classifier.")
  _SKIP_BREAKDOWN = flags.DEFINE_bool(
      "skip_breakdown", False, "Do not time the critic step, generator step and GM alone.")
  _MATMUL_SIZE = flags.DEFINE_integer(
      "matmul_size", 0, "Side of the square float32 matrix product that measures the device's "
      "rate (0: 2048 on CPU, 8192 on accelerators).")
  _SEED_COUNTS = flags.DEFINE_string(
      "seed_counts", ",".join(map(str, SCALING_VALUES["seeds"])),
      "Comma-separated numbers of parallel seeds that the seeds scaling row times.")
  _PROFILE_DIR = flags.DEFINE_string(
      "profile_dir", None, "Also run one untimed chunk of each stage-1 setting under "
      "jax.profiler.trace(DIR/<point>).")
  _DUMP_HLO_DIR = flags.DEFINE_string(
      "dump_hlo_dir", None, "Dump the compiled stage-1 programs' HLO into DIR/<point>.")


SCALING_ROWS = ("seeds", "batch", "seen", "gm_classes", "thetas")
SCALING_VALUES = {
    "seeds": (1, 2, 4, 8),
    "batch": (64, 128, 256, 512, 1024),
    "seen": (150, 300, 645),
    "gm_classes": (1, 5, 20),
    "thetas": (1, 2, 4),
}


# --------------------------------------------------------------------------
# Scaling rows.


def _override(config: ml_collections.ConfigDict, path: str, value) -> ml_collections.ConfigDict:
  copy = ml_collections.ConfigDict(config.to_dict())
  section, name = path.split(".")
  copy[section][name] = value
  return copy


def scaling_row(name: str, config: ml_collections.ConfigDict, dataset: ZSLDataset, *,
                iterations: int, chunks: int, matmul_size: int,
                on_result: Callable[[Dict], None], values: Optional[Sequence[int]] = None,
                profile_dir: Optional[str] = None,
                dump_hlo_dir: Optional[str] = None) -> List[Dict]:
  """Times stage 1 over the values of one scaling row.

  Args:
    name: one of SCALING_ROWS.
    config: the base configuration.
    dataset: the base dataset.
    iterations: generator iterations per timed call.
    chunks: timed calls.
    matmul_size: the reference product, timed after every chunk.
    on_result: called with each point as it is measured (for progress).
    values: the row's values (None: SCALING_VALUES[name]).
    profile_dir: when given, each point's extra profiled chunk traces into
      profile_dir/<point> (`point_name`).
    dump_hlo_dir: when given, each point's program is dumped into
      dump_hlo_dir/<point>.

  Returns:
    One dict per value: {"row", "value", **timing.time_stage1(...), "fraction_wall",
    "fraction_cpu_time"} (fractions of the product's rate from the analytic
    FLOP count, comparable across points whatever the load did meanwhile); a
    value the dataset cannot take (e.g. more GM classes than seen classes) is
    skipped.
  """
  hyper = specs.hyperparameters(config)
  points = []
  for value in SCALING_VALUES[name] if values is None else values:
    point_config, point_dataset, num_seeds = config, dataset, 1
    if name == "seeds":
      num_seeds = value
    elif name == "batch":
      point_config = _override(config, "train.batch_size", value)
    elif name == "seen":
      point_dataset = shapes.benchmark_dataset(config, num_seen=value)
    elif name == "gm_classes":
      point_config = _override(config, "gm.num_classes", value)
    elif name == "thetas":
      point_config = _override(config, "gm.num_theta_samples", value)
    try:
      spec = specs.train_spec(point_config, point_dataset)
    except ConfigError as error:
      print(f"skipping {name}={value}: {error}", file=sys.stderr)
      continue
    where = profiling.point_name(name, value)
    point = {"row": name, "value": value,
             **timing.time_stage1(spec, point_dataset, hyper, iterations=iterations,
                                  chunks=chunks, num_seeds=num_seeds, matmul_size=matmul_size,
                                  profile_dir=_subdirectory(profile_dir, where),
                                  dump_hlo_dir=_subdirectory(dump_hlo_dir, where))}
    fractions = timing.fractions_of_matmul(point["analytic_flop_per_iteration"], point)
    point.update(fraction_wall=fractions["wall"], fraction_cpu_time=fractions["cpu_time"])
    points.append(point)
    on_result(point)
  return points


def _subdirectory(directory: Optional[str], name: str) -> Optional[str]:
  return os.path.join(directory, name) if directory else None


# --------------------------------------------------------------------------
# The whole benchmark.


def machine_description() -> Dict[str, Any]:
  """Device, backend, JAX version, CPU count and load average.

  Returns:
    A JSON-ready dict.
  """
  device = jax.devices()[0]
  return {"backend": jax.default_backend(), "device_kind": device.device_kind,
          "device_count": jax.device_count(), "jax_version": jax.__version__,
          "cpu_count": os.cpu_count(), "platform": platform.platform(),
          "processor": platform.processor(),
          "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def run_benchmark(config: ml_collections.ConfigDict, *, iterations: int, chunks: int,
                  scaling: Sequence[str], scaling_iterations: int, classifier_epochs: int,
                  skip_classifier: bool, matmul_size: int, breakdown: bool = True,
                  seed_counts: Sequence[int] = SCALING_VALUES["seeds"],
                  profile_dir: Optional[str] = None, dump_hlo_dir: Optional[str] = None,
                  log: Callable[[str], None] = print) -> Dict[str, Any]:
  """Runs every measurement and returns the JSON-ready results.

  Args:
    config: the configuration (a dataset preset plus overrides).
    iterations: generator iterations per timed call.
    chunks: timed calls.
    scaling: which scaling rows to run (a subset of SCALING_ROWS).
    scaling_iterations: iterations per timed call in scaling rows.
    classifier_epochs: final-classifier epochs to time (0: config.eval.epochs).
    skip_classifier: do not time the final classifier.
    matmul_size: the reference matrix product's side (0: by backend).
    breakdown: also time the iteration's parts alone (`time_components`).
    seed_counts: the values of the "seeds" scaling row.
    profile_dir: when given, one untimed, profiled chunk per stage-1 setting
      (`time_stage1`), traced into profile_dir/<point>.
    dump_hlo_dir: when given, the stage-1 programs' HLO goes to
      dump_hlo_dir/<point>.
    log: where progress lines go.

  Returns:
    The results dict (see the module docstring).

  Raises:
    ConfigError: bad settings.
  """
  for flag, value in (("iterations", iterations), ("chunks", chunks),
                      ("scaling_iterations", scaling_iterations)):
    if value < 1:
      raise ConfigError(f"--{flag}: expected a positive integer, found {value}")
  unknown = [row for row in scaling if row not in SCALING_ROWS]
  if unknown:
    raise ConfigError(f"--scaling: expected names among {SCALING_ROWS}, found {unknown}")
  if not seed_counts or any(int(n) != n or n < 1 for n in seed_counts):
    raise ConfigError(f"--seed_counts: expected positive integers, found {list(seed_counts)}")
  for flag, directory in (("profile_dir", profile_dir), ("dump_hlo_dir", dump_hlo_dir)):
    if directory and os.path.exists(directory) and not os.path.isdir(directory):
      raise ConfigError(f"--{flag}: expected a directory, found the file {directory}")
  gmn_config.validate(config, check_data_dir=False)
  variant = gmn_config.get_variant(config)
  if not variant.uses_generator:
    raise ConfigError(f"config.method: expected a method with a generator, found "
                      f"{config.method!r}")
  if not matmul_size:
    matmul_size = 2048 if jax.default_backend() == "cpu" else 8192
  results = {"config": {"dataset": config.dataset, "method": config.method,
                        "embedding": config.embedding, "precision": config.precision},
             "machine": machine_description()}
  log(f"machine: {results['machine']}")
  results["matmul"] = measure.matmul_rate(matmul_size)
  log(f"float32 matmul {matmul_size}²: {results['matmul']['flops'] / 1e9:.1f} GFLOP/s")

  dataset = shapes.benchmark_dataset(config)
  spec = specs.train_spec(config, dataset)
  results["shapes"] = {"num_train": int(dataset.train_features.shape[0]),
                       "feature_dim": dataset.feature_dim, "embedding_dim": spec.embedding_dim,
                       "num_seen": spec.num_seen, "num_unseen": spec.num_unseen,
                       "batch_size": spec.batch_size, "n_critic": spec.n_critic,
                       "gm_num_classes": spec.gm_num_classes,
                       "gm_real_per_class": spec.gm_real_per_class,
                       "gm_fake_repeat": spec.gm_fake_repeat,
                       "num_theta_samples": spec.num_theta_samples}
  hyper = specs.hyperparameters(config)
  main_row = timing.time_stage1(
      spec, dataset, hyper, iterations=iterations, chunks=chunks, count_flops=True,
      matmul_size=matmul_size,
      profile_dir=_subdirectory(profile_dir, profiling.point_name(None)),
      dump_hlo_dir=_subdirectory(dump_hlo_dir, profiling.point_name(None)))
  flop, flop_source = flops.iteration_flop_count(main_row["flops"])
  fractions = timing.fractions_of_matmul(flop, main_row)
  results["matmul"]["after_chunks"] = main_row["matmul_after_chunks"]
  results["matmul"]["flops_next_to_chunks"] = statistics.median(
      m["flops"] for m in main_row["matmul_after_chunks"])
  results.update(
      ms_per_iteration=main_row["ms_per_iteration"],
      cpu_ms_per_iteration=main_row["cpu_ms_per_iteration"], compile_s=main_row["compile_s"],
      chunk_seconds=main_row["chunk_seconds"], chunk_cpu_seconds=main_row["chunk_cpu_seconds"],
      iterations_per_chunk=iterations,
      flop_per_iteration=flop, flop_source=flop_source, flops_detail=main_row["flops"],
      analytic_flop_per_iteration=main_row["flops"]["analytic"]["per_iteration"],
      achieved_flops=fractions["achieved_flops"],
      fraction_of_matmul_peak=fractions["wall"],
      fraction_of_matmul_peak_cpu_time=fractions["cpu_time"],
      projected_full_run_s=main_row["ms_per_iteration"] / 1e3 * config.train.num_iterations,
      num_iterations=int(config.train.num_iterations))
  for name in ("profile", "hlo_dump"):
    if name in main_row:
      results[name] = main_row[name]
  log(f"stage 1: {results['ms_per_iteration']:.1f} ms/iteration, compile "
      f"{results['compile_s']:.1f} s, {flop / 1e9:.1f} GFLOP/iteration ({flop_source}; analytic "
      f"{results['analytic_flop_per_iteration'] / 1e9:.1f}), "
      f"{percent(results['fraction_of_matmul_peak'], 0)} of the matmul rate (wall), "
      f"{percent(results['fraction_of_matmul_peak_cpu_time'], 0)} (CPU time)")
  results["peak_memory_stage1"] = measure.peak_memory()  # Before the scaling rows.
  if breakdown:
    results["components"] = timing.time_components(spec, dataset, hyper, repeats=chunks,
                                                   matmul_size=matmul_size)
    log(f"components: {results['components']}")

  if "profile" in main_row:
    log(f"profile: {main_row['profile']}")
  results["scaling"] = []
  for name in scaling:
    results["scaling"] += scaling_row(
        name, config, dataset, iterations=scaling_iterations, chunks=chunks,
        matmul_size=matmul_size, on_result=lambda p: log(progress_line(p)),
        values=seed_counts if name == "seeds" else None, profile_dir=profile_dir,
        dump_hlo_dir=dump_hlo_dir)
  if not skip_classifier:
    epochs = classifier_epochs or int(config.eval.epochs)
    results["final_classifier"] = timing.time_final_classifier(config, dataset, epochs=epochs)
    log(f"final classifier: {results['final_classifier']}")
  results["peak_memory"] = measure.peak_memory()
  return results


def progress_line(point: Dict[str, Any]) -> str:
  """The line logged when a scaling point has been measured.

  `experiments/benchmarking/probe_summary.py` reads these lines back when a run
  was cut short before writing its JSON, so keep its pattern in step.

  Args:
    point: one entry of `scaling_row`'s result.

  Returns:
    E.g. "scaling seeds=2: 3.43 ms/iteration, 0.75 CPU ms/iteration
    (compile 20.1 s)".
  """
  return (f"scaling {point['row']}={point['value']}: {point['ms_per_iteration']:.4g} "
          f"ms/iteration, {point['cpu_ms_per_iteration']:.4g} CPU ms/iteration "
          f"(compile {point['compile_s']:.1f} s)")


def parse_counts(text: str, flag: str) -> List[int]:
  """A comma-separated list of positive integers from a flag.

  Args:
    text: e.g. "1,2,4,8".
    flag: the flag's name, for the error.

  Returns:
    The integers, in the given order.

  Raises:
    ConfigError: an entry is not a positive integer, or there is none.
  """
  entries = [t.strip() for t in text.split(",") if t.strip()]
  if not entries or not all(e.isdigit() and int(e) > 0 for e in entries):
    raise ConfigError(f"--{flag}: expected comma-separated positive integers, found {text!r}")
  return [int(e) for e in entries]


def percent(fraction: Optional[float], digits: int = 1) -> str:
  """A fraction as a percentage, or "n/a" where it is missing or not finite.

  Args:
    fraction: the fraction (None allowed).
    digits: decimals.

  Returns:
    E.g. "12.5%".
  """
  if fraction is None or not np.isfinite(fraction):
    return "n/a"
  return f"{100 * fraction:.{digits}f}%"


def format_table(results: Dict[str, Any]) -> str:
  """The printed summary of `run_benchmark`'s results.

  Args:
    results: from `run_benchmark`.

  Returns:
    A multi-line text.
  """
  m, c = results["machine"], results["config"]
  lines = [f"{c['dataset']} {c['method']} ({c['embedding']}, {c['precision']}) on "
           f"{m['device_kind']} ({m['backend']}, {m['cpu_count']} CPUs, load "
           f"{m['load_average']}), JAX {m['jax_version']}",
           f"{'measure':<38} {'value':>14}"]

  def add(label, value):
    lines.append(f"{label:<38} {value:>14}")

  add("ms / generator iteration", f"{results['ms_per_iteration']:.1f}")
  add("compile (s)", f"{results['compile_s']:.1f}")
  add(f"GFLOP / iteration ({results['flop_source']})",
      f"{results['flop_per_iteration'] / 1e9:.1f}")
  add("GFLOP / iteration (analytic matmuls)",
      f"{results['analytic_flop_per_iteration'] / 1e9:.1f}")
  add("achieved GFLOP/s", f"{results['achieved_flops'] / 1e9:.1f}")
  add(f"f32 matmul {results['matmul']['size']}² GFLOP/s (next to chunks)",
      f"{results['matmul']['flops_next_to_chunks'] / 1e9:.1f}")
  add("fraction of matmul rate (wall)", percent(results["fraction_of_matmul_peak"]))
  add("fraction of matmul rate (CPU time)", percent(results["fraction_of_matmul_peak_cpu_time"]))
  add(f"projected {results['num_iterations']} iterations (min)",
      f"{results['projected_full_run_s'] / 60:.1f}")
  add(f"peak memory, stage 1 ({results['peak_memory_stage1']['source']}, MiB)",
      f"{results['peak_memory_stage1']['bytes'] / 2**20:.0f}")
  add(f"peak memory, whole run ({results['peak_memory']['source']}, MiB)",
      f"{results['peak_memory']['bytes'] / 2**20:.0f}")
  for name, part in results.get("components", {}).items():
    add(f"{name}: ms / GFLOP ({part['flop_source']}) / wall / CPU",
        f"{part['ms']:.1f} / {part['flop'] / 1e9:.1f} / {percent(part['fraction_wall'], 0)} / "
        f"{percent(part['fraction_cpu_time'], 0)}")
  if results.get("scaling"):
    lines.append(f"{'scaling':<12} {'value':>6} {'ms/iter':>9} {'ms/iter/seed':>13} "
                 f"{'GFLOP':>7} {'% wall':>7} {'% CPU':>6} {'compile s':>10}")
    for p in results["scaling"]:
      lines.append(f"{p['row']:<12} {p['value']:>6} {p['ms_per_iteration']:>9.0f} "
                   f"{p['ms_per_iteration_per_seed']:>13.0f} "
                   f"{p['analytic_flop_per_iteration'] / 1e9:>7.1f} "
                   f"{100 * p['fraction_wall']:>7.0f} {100 * p['fraction_cpu_time']:>6.0f} "
                   f"{p['compile_s']:>10.1f}")
  for name, label in (("profile", "profiler traces in"), ("hlo_dump", "HLO dumps in")):
    if results.get(name):  # One folder per setting: main, seeds_2, ...
      add(label, os.path.dirname(results[name]["dir"]))
  final = results.get("final_classifier")
  if final:
    add(f"final classifier {final['epochs_timed']} epochs (s)", f"{final['seconds']:.1f}")
    add(f"final classifier {final['epochs']} epochs, projected (s)",
        f"{final['projected_s']:.1f}")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  try:
    config = cli.load_config(_CONFIG, example="experiments/configs/cub.py")
    scaling = [] if _SKIP_SCALING.value else [
        s.strip() for s in _SCALING.value.split(",") if s.strip()]
    results = run_benchmark(
        config, iterations=_ITERATIONS.value, chunks=_CHUNKS.value, scaling=scaling,
        scaling_iterations=_SCALING_ITERATIONS.value or _ITERATIONS.value,
        classifier_epochs=_CLASSIFIER_EPOCHS.value, skip_classifier=_SKIP_CLASSIFIER.value,
        matmul_size=_MATMUL_SIZE.value, breakdown=not _SKIP_BREAKDOWN.value,
        seed_counts=parse_counts(_SEED_COUNTS.value, "seed_counts"),
        profile_dir=_PROFILE_DIR.value, dump_hlo_dir=_DUMP_HLO_DIR.value,
        log=lambda line: print(line, file=sys.stderr))
    print(format_table(results))
    if _JSON_OUT.value:
      cli.write_results(_JSON_OUT.value, results)
  except GMNError as error:
    cli.fail(error)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
