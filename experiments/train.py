r"""Trains and evaluates one configuration for all its seeds, then prints the table.

  python -m experiments.train --config=experiments/configs/digits.py \
      --workdir=/tmp/gmn_digits [--config.gm.weight=50 ...] [--overwrite]

Writes config.json, results.json, metrics.jsonl, TensorBoard files and orbax
checkpoints under --workdir (see gmn_jax.workdir). Rerunning the same command
resumes; a different config in the same workdir is refused unless
--overwrite. Any bad input (config, data directory, diverged training) prints
one line to stderr and exits with status 2.

SIGTERM or SIGINT (Ctrl-C) stops the run at the next chunk boundary after
saving a checkpoint, prints one line and exits with status 143 (SIGTERM) or
130 (SIGINT); rerunning the same command resumes.

Parallelism: --config.num_parallel_seeds=S trains S generator seeds at once
in one vmapped program (same results as one at a time); --num_devices=N
(0: all) splits stage 1's batches over N devices of this host; --multihost
(or GMN_MULTIHOST=1) joins a multi-host run through
jax.distributed.initialize() (coordinator from GMN_COORDINATOR_ADDRESS,
GMN_NUM_PROCESSES, GMN_PROCESS_ID, or detected on Cloud TPU / Slurm), uses
every device of every process, and lets only process 0 write and print.

--calibration_gamma_from=W_VAL takes the calibrated-stacking gamma that a
finished run with --config.split=validation chose (best H on its validation
split) and reports u, s, H at that gamma beside the test-split oracle.
"""

from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from gmn_jax import parallel
from gmn_jax import train
from gmn_jax import workdir

_CONFIG = None
_WORKDIR = None
_OVERWRITE = None
_CALIBRATION_FROM = None
_NUM_DEVICES = None
_MULTIHOST = None

# Shared by the binaries (tests drive them through these names).
fail = cli.fail
stop = cli.stop
parse_flags = cli.parse_flags


def define_flags() -> None:
  """Defines the command-line flags.

  Called only when the module runs as a program, so that importing it (as
  the tests do, several binaries into one process) defines no absl flags
  and two binaries' flags of the same name never collide.
  """
  # pylint: disable=global-statement
  global _CONFIG, _WORKDIR, _OVERWRITE, _CALIBRATION_FROM, _NUM_DEVICES, _MULTIHOST
  # pylint: enable=global-statement
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "A config file, e.g. experiments/configs/digits.py; override fields with "
      "--config.<field>=<value>.", lock_config=True)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the run's outputs.")
  _OVERWRITE = flags.DEFINE_bool(
      "overwrite", False, "Delete this project's outputs in --workdir and start afresh "
      "instead of resuming.")
  _CALIBRATION_FROM = flags.DEFINE_string(
      "calibration_gamma_from", None, "Workdir of a finished run with "
      "--config.split=validation; its best-H calibration gamma is applied to this run.")
  _NUM_DEVICES, _MULTIHOST = cli.define_device_flags()


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  cli.quiet_checkpoint_logs()

  def run():
    mesh = cli.mesh_from_flags(_NUM_DEVICES, _MULTIHOST)  # before anything touches a device
    config = cli.load_config(_CONFIG)
    cli.require_workdir(_WORKDIR.value, "the run's outputs")
    gamma = None
    if _CALIBRATION_FROM.value:
      gamma = workdir.calibration_gamma_from(_CALIBRATION_FROM.value)
    return train.train_and_evaluate(config, _WORKDIR.value, overwrite=_OVERWRITE.value,
                                    calibration_gamma=gamma, mesh=mesh)

  results = cli.run_guarded(run)
  if parallel.is_primary():
    print(cli.format_results_table(results))
    print(f"results: {_WORKDIR.value}/{workdir.RESULTS_FILE}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
