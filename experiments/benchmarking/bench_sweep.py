r"""What a grid of traced settings costs as one program vs one run per setting.

  python -m experiments.benchmarking.bench_sweep \
      --config=experiments/configs/digits.py [--field=gm.weight] \
      [--values=1,3,10,30,100,300,1000,3000] [--workdir=/tmp/bench_sweep]

Runs the same grid three times on the validation split, both stages
included: through `gmn_jax.sweep.run_grid` (the settings vmapped with the
seeds into one stage-1 program, their stage 2 as one program); as one
`train.train_and_evaluate` per setting in this process (after the first,
they reuse its compiled programs: the traced settings never recompile); and
as one `python -m experiments.train` process per setting (what a user
without the sweep runs: each compiles). Prints wall and CPU seconds of each
(the children's CPU time for the processes), stage 1's steady ms per
iteration and run, and the largest difference of any setting's per-seed
metrics between the grid and the in-process runs (the same computation).
"""

import json
import os
import shutil
import subprocess
import sys
from typing import Sequence

from absl import app
from absl import flags
import numpy as np
from ml_collections import config_flags

from experiments import cli
from experiments.benchmarking import measure
from gmn_jax import sweep
from gmn_jax import sweep_grid
from gmn_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file.", lock_config=False)
_FIELD = flags.DEFINE_string("field", "gm.weight", "A traced stage-1 field to sweep.")
_VALUES = flags.DEFINE_list("values", ["1", "3", "10", "30", "100", "300", "1000", "3000"],
                            "Its values (8 by default).")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/gmn_bench_sweep", "Scratch directory (emptied).")


def _ms_per_iteration(summary) -> float:
  return summary["timings"]["ms_per_iteration"]


def _process_runs(grid, workdir: str) -> None:
  """One `experiments.train` process per setting, with this command's config flags."""
  config_flags_given = [a for a in sys.argv[1:] if a.startswith("--config")]
  for k, setting in enumerate(sweep_grid.combinations(grid)):
    overrides = [f"--config.{field}={sweep_grid.format_value(value)}"
                 for field, value in setting.items()]
    subprocess.run([sys.executable, "-m", "experiments.train", *config_flags_given,
                    "--config.split=validation", *overrides,
                    f"--workdir={os.path.join(workdir, f'process_{k}')}"],
                   check=True, capture_output=True)


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  cli.quiet_checkpoint_logs()
  config = cli.load_config(_CONFIG)
  grid = sweep_grid.parse_grid(f"{_FIELD.value}={','.join(_VALUES.value)}", config)
  shutil.rmtree(_WORKDIR.value, ignore_errors=True)
  grouped, grid_wall, grid_cpu = measure.timed(lambda: sweep.run_grid(
      config, grid, os.path.join(_WORKDIR.value, "grid"), split="validation"))
  separate_wall = separate_cpu = 0.0
  largest = 0.0
  for k, setting in enumerate(sweep_grid.combinations(grid)):
    alone, wall, cpu = measure.timed(lambda setting=setting, k=k: train.train_and_evaluate(
        sweep_grid.apply(config, {**setting, "split": "validation"}),
        os.path.join(_WORKDIR.value, f"separate_{k}")))
    separate_wall += wall
    separate_cpu += cpu
    for name, entry in alone["metrics"].items():
      if name in grouped[k]["metrics"]:
        largest = max(largest, max(abs(a - b) for a, b in zip(
            entry["per_seed"], grouped[k]["metrics"][name]["per_seed"])))
    separate_ms = _ms_per_iteration(alone)
  _, process_wall, process_cpu = measure.timed(lambda: _process_runs(grid, _WORKDIR.value))
  process_ms = [json.load(open(os.path.join(_WORKDIR.value, f"process_{k}", "results.json"),
                               encoding="utf-8"))["timings"]["ms_per_iteration"]
                for k in range(len(grouped))]
  count = len(grouped)
  print(f"{count} settings of {_FIELD.value} x {len(config.seeds)} seed(s), "
        f"{config.train.num_iterations} iterations, both stages, validation split")
  print(f"{'':<34}{'wall s':>9}{'CPU s':>9}{'ms/it/run':>11}")
  rows = [("grid, one program", grid_wall, grid_cpu, _ms_per_iteration(grouped[0])),
          ("a run per setting, one process", separate_wall, separate_cpu, separate_ms),
          ("a process per setting", process_wall, process_cpu, float(np.median(process_ms)))]
  for name, wall, cpu, ms in rows:
    print(f"{name:<34}{wall:>9.1f}{cpu:>9.1f}{ms:>11.3f}")
  for name, wall, cpu, _ in rows[1:]:
    print(f"{name} / grid: wall {wall / grid_wall:.2f}x, CPU {cpu / grid_cpu:.2f}x")
  print(f"largest per-seed metric difference between the two: {largest:.4f} points")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
