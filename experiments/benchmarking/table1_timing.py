r"""Times the paper's Table 1 (the ablation) on one device and projects the full run.

    python -m experiments.benchmarking.table1_timing \
        --config=experiments/configs/cub.py --workdir=/tmp/t1_cub \
        [--iterations=300] [--concurrent_rows=3] [--methods=...] [--json_out=F]

Runs `experiments.ablation`'s rows (`ablation.run_ablation`, all six by
default, the config's seeds) on synthetic data with the dataset's real
shapes (`experiments.benchmarking.shapes`; timing does not depend on the
values), with stage 1 cut to --iterations and stage 2 at the config's
epochs, and measures the wall time of the whole table. Each row's results
carry its stage-1 ms per iteration (all seeds of a row vmapped together),
so the table at the config's own iteration count is projected as

    measured wall time + Σ_rows (reference iterations − iterations) × ms/iteration,

which counts compilation, stage 2 and checkpoints once, as a real run does;
with concurrent rows the stage-1 sum is an upper bound (rows overlap).
Prints one line per row and the projection, and writes the JSON.
`experiments/benchmarking/gpu_table1.sh` runs it for CUB, SUN and AWA1 on a
GPU; docs/benchmarks.md ("Table 1 on one GPU") has what it measured.
"""

import json
import os
import time
from typing import Any, Dict, Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from gmn_jax.errors import ConfigError

_CONFIG = None
_WORKDIR = None
_ITERATIONS = None
_CONCURRENT_ROWS = None
_METHODS = None
_JSON_OUT = None


def define_flags() -> None:
  """Defines the command-line flags (only when run as a program)."""
  global _CONFIG, _WORKDIR, _ITERATIONS, _CONCURRENT_ROWS, _METHODS, _JSON_OUT
  _CONFIG = config_flags.DEFINE_config_file("config", None, "A dataset preset.",
                                            lock_config=False)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Where the rows run (must not exist).")
  _ITERATIONS = flags.DEFINE_integer("iterations", 300, "Stage-1 iterations per row.",
                                     lower_bound=1)
  _CONCURRENT_ROWS = flags.DEFINE_integer("concurrent_rows", 1, "Rows at once (run_rows).",
                                          lower_bound=1)
  _METHODS = flags.DEFINE_list("methods", None, "Rows (default: the six of Table 1).")
  _JSON_OUT = flags.DEFINE_string("json_out", None, "Where to write the results.")


def project(rows: Sequence[Dict[str, Any]], wall_s: float, iterations: int,
            reference_iterations: int) -> Dict[str, Any]:
  """The full table's projected time from a shortened run.

  Args:
    rows: per row {"method", "ms_per_iteration"} (None for real_only).
    wall_s: the measured wall time of the shortened table.
    iterations: the stage-1 iterations it ran per row.
    reference_iterations: the config's own.

  Returns:
    {"measured_s", "remaining_stage1_s", "projected_s"}.
  """
  remaining = sum((reference_iterations - iterations) * row["ms_per_iteration"] / 1e3
                  for row in rows if row["ms_per_iteration"])
  return {"measured_s": wall_s, "remaining_stage1_s": remaining,
          "projected_s": wall_s + remaining}


def run(config, workdir: str, *, iterations: int, concurrent_rows: int,
        methods: Sequence[str]) -> Dict[str, Any]:
  """Runs the shortened table and projects it (see the module docstring).

  Args:
    config: the dataset preset (its iteration count is the reference).
    workdir: a new directory for the rows.
    iterations: stage-1 iterations per row.
    concurrent_rows: rows run at once.
    methods: the rows.

  Returns:
    The JSON dict.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  from experiments import ablation
  from experiments.benchmarking import shapes
  # pylint: enable=g-import-not-at-top
  if os.path.exists(workdir):
    raise ConfigError(f"--workdir: {workdir} exists; give a new folder (nothing is "
                          "overwritten)")
  reference_iterations = int(config.train.num_iterations)
  short = config.copy_and_resolve_references()
  short.train.num_iterations = iterations
  short.train.iterations_per_call = min(int(short.train.iterations_per_call), iterations)
  dataset = shapes.benchmark_dataset(short)
  start = time.perf_counter()
  results = ablation.run_ablation(short, workdir, methods, dataset=dataset,
                                  concurrent_rows=concurrent_rows)
  wall_s = time.perf_counter() - start
  rows = [{"method": r["method"], "ms_per_iteration": r["timings"].get("ms_per_iteration"),
           "stage1_s": r["timings"].get("stage1_s")} for r in results]
  out = {"dataset": config.dataset, "device": str(jax.devices()[0].device_kind),
         "backend": jax.default_backend(), "jax": jax.__version__,
         "seeds": [int(s) for s in config.seeds], "iterations": iterations,
         "reference_iterations": reference_iterations, "eval_epochs": int(config.eval.epochs),
         "concurrent_rows": concurrent_rows, "rows": rows}
  out.update(project(rows, wall_s, iterations, reference_iterations))
  return out


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  config = cli.run_guarded(lambda: cli.load_config(_CONFIG))
  workdir = cli.run_guarded(lambda: cli.require_workdir(_WORKDIR.value, "the rows"))
  # pylint: disable=g-import-not-at-top
  from gmn_jax import config as gmn_config
  # pylint: enable=g-import-not-at-top
  methods = _METHODS.value or list(gmn_config.ABLATION_METHODS)
  out = cli.run_guarded(lambda: run(config, workdir, iterations=_ITERATIONS.value,
                                    concurrent_rows=_CONCURRENT_ROWS.value, methods=methods))
  for row in out["rows"]:
    ms = row["ms_per_iteration"]
    print(f"{row['method']:12s} {'-' if ms is None else f'{ms:.2f} ms/iteration'}")
  print(f"{out['dataset']}: {out['measured_s']:.1f} s measured at {out['iterations']} "
        f"iterations, projected {out['projected_s'] / 60:.1f} min at "
        f"{out['reference_iterations']} ({out['device']}, {out['concurrent_rows']} rows at once)")
  if _JSON_OUT.value:
    with open(_JSON_OUT.value, "w") as f:
      json.dump(out, f, indent=1)


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
