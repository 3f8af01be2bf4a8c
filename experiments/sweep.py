r"""Chooses hyperparameters on the validation split, then measures them on test.

  python -m experiments.sweep --config=experiments/configs/cub.py --workdir=W \
      --sweep='gm.weight=10,100,1000;eval.n_synth_unseen=50,100,250,500' \
      [--metric=gzsl_h] [--oracle] [--runs_per_program=N] [--overwrite]

Every combination of the grid trains and evaluates with the config's seeds
on the validation split; the best mean of --metric over seeds is chosen and
rerun on the test split (see gmn_jax.sweep for the layout of W). Fields that
are traced hyperparameters train as one program with the seeds, eval.*
fields are evaluated from the same generators, and other fields run as
separate programs: the binary prints which is which before it starts.
Writes W/sweep.md (printed at the end), W/sweep.json and W/plots/sweep.png.
--oracle also runs the grid on the test split and reports its best,
labelled as an oracle. A rerun resumes (finished combinations are read
back). Bad input prints one line to stderr and exits with status 2;
SIGTERM / SIGINT stop at the next checkpoint with status 143 / 130.
--num_devices and --multihost are those of experiments.train.
"""

import os
import shlex
import sys
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from gmn_jax import parallel
from gmn_jax import sweep as sweeps
from gmn_jax import sweep_grid
from gmn_jax import sweep_report
from gmn_jax.errors import ConfigError

_CONFIG = None
_WORKDIR = None
_SWEEP = None
_METRIC = None
_ORACLE = None
_RUNS_PER_PROGRAM = None
_OVERWRITE = None
_NUM_DEVICES = None
_MULTIHOST = None


def define_flags() -> None:
  """Defines the command-line flags (only when the module runs as a program)."""
  # pylint: disable=global-statement
  global _CONFIG, _WORKDIR, _SWEEP, _METRIC, _ORACLE, _RUNS_PER_PROGRAM, _OVERWRITE
  global _NUM_DEVICES, _MULTIHOST
  # pylint: enable=global-statement
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "A config file, e.g. experiments/configs/cub.py; override fields with "
      "--config.<field>=<value> (the split is set by the sweep).", lock_config=False)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the sweep's runs and reports.")
  _SWEEP = flags.DEFINE_string(
      "sweep", None, "The grid: 'field=v1,v2;field=v1,v2', e.g. "
      "'gm.weight=10,100;eval.n_synth_unseen=50,100'.")
  _METRIC = flags.DEFINE_enum("metric", "gzsl_h", list(sweeps.SELECTION_METRICS),
                              "What the choice maximises (mean over seeds, validation split).")
  _ORACLE = flags.DEFINE_bool("oracle", False, "Also run the grid on the test split and report "
                              "its best, labelled as an oracle.")
  _RUNS_PER_PROGRAM = flags.DEFINE_integer(
      "runs_per_program", None, "The most runs (setting x seed) in one stage-1 program; "
      "default: num_parallel_seeds seeds of every setting sharing the program.")
  _OVERWRITE = flags.DEFINE_bool("overwrite", False,
                                 "Delete the sweep's outputs in --workdir and start afresh.")
  _NUM_DEVICES, _MULTIHOST = cli.define_device_flags()


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  cli.quiet_checkpoint_logs()

  def run():
    mesh = cli.mesh_from_flags(_NUM_DEVICES, _MULTIHOST)  # before anything touches a device
    config = cli.load_config(_CONFIG)
    cli.require_workdir(_WORKDIR.value, "the sweep")
    if _RUNS_PER_PROGRAM.value is not None and _RUNS_PER_PROGRAM.value < 1:
      raise ConfigError(f"--runs_per_program: expected a positive integer, found "
                        f"{_RUNS_PER_PROGRAM.value}")
    grid = sweep_grid.parse_grid(_SWEEP.value, config)
    if parallel.is_primary():
      print(sweep_grid.describe(grid), flush=True)
    sweeps.sweep(config, grid, _WORKDIR.value, metric=_METRIC.value, oracle=_ORACLE.value,
                 runs_per_program=_RUNS_PER_PROGRAM.value, overwrite=_OVERWRITE.value,
                 command=shlex.join(["python", "-m", "experiments.sweep", *sys.argv[1:]]),
                 mesh=mesh)

  cli.run_guarded(run)
  if not parallel.is_primary():
    return
  path = os.path.join(_WORKDIR.value, sweep_report.MARKDOWN_FILE)
  with open(path, encoding="utf-8") as f:
    print(f.read())
  print(f"written: {path}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
