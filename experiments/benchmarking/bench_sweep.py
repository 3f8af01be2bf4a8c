r"""What a grid of traced settings costs as one program vs one run per setting.

  python -m experiments.benchmarking.bench_sweep \
      --config=experiments/configs/digits.py [--field=gm.weight] \
      [--values=1,3,10,30,100,300,1000,3000] [--workdir=/tmp/bench_sweep]

Runs the same grid twice on the validation split, both stages included:
once through `gmn_jax.sweep.run_grid` (the settings vmapped with the seeds
into one stage-1 program, their stage 2 as one program) and once as one
`train.train_and_evaluate` per setting, each in a fresh workdir. Prints the
wall and process CPU seconds of each (compilation included, as a user pays
it), their ratios, and the largest difference of any setting's per-seed
metrics between the two ways (both are the same computation).
"""

import os
import shutil
import time
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from gmn_jax import sweep
from gmn_jax import sweep_grid
from gmn_jax import train

_CONFIG = config_flags.DEFINE_config_file("config", None, "A config file.", lock_config=False)
_FIELD = flags.DEFINE_string("field", "gm.weight", "A traced stage-1 field to sweep.")
_VALUES = flags.DEFINE_list("values", ["1", "3", "10", "30", "100", "300", "1000", "3000"],
                            "Its values (8 by default).")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/gmn_bench_sweep", "Scratch directory (emptied).")


def _timed(fn):
  wall, cpu = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - wall, time.process_time() - cpu


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  cli.quiet_checkpoint_logs()
  config = cli.load_config(_CONFIG)
  grid = sweep_grid.parse_grid(f"{_FIELD.value}={','.join(_VALUES.value)}", config)
  shutil.rmtree(_WORKDIR.value, ignore_errors=True)
  grouped, grid_wall, grid_cpu = _timed(lambda: sweep.run_grid(
      config, grid, os.path.join(_WORKDIR.value, "grid"), split="validation"))
  separate_wall = separate_cpu = 0.0
  largest = 0.0
  for k, setting in enumerate(sweep_grid.combinations(grid)):
    alone, wall, cpu = _timed(lambda setting=setting, k=k: train.train_and_evaluate(
        sweep_grid.apply(config, {**setting, "split": "validation"}),
        os.path.join(_WORKDIR.value, f"separate_{k}")))
    separate_wall += wall
    separate_cpu += cpu
    for name, entry in alone["metrics"].items():
      if name in grouped[k]["metrics"]:
        largest = max(largest, max(abs(a - b) for a, b in zip(
            entry["per_seed"], grouped[k]["metrics"][name]["per_seed"])))
  count = len(grouped)
  print(f"{count} settings of {_FIELD.value} x {len(config.seeds)} seed(s), "
        f"{config.train.num_iterations} iterations, both stages, validation split")
  print(f"{'':<22}{'wall s':>9}{'CPU s':>9}")
  print(f"{'grid, one program':<22}{grid_wall:>9.1f}{grid_cpu:>9.1f}")
  print(f"{'one run per setting':<22}{separate_wall:>9.1f}{separate_cpu:>9.1f}")
  print(f"separate / grid: wall {separate_wall / grid_wall:.2f}x, "
        f"CPU {separate_cpu / grid_cpu:.2f}x")
  print(f"largest per-seed metric difference between the two: {largest:.4f} points")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
