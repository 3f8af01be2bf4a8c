r"""Trains and evaluates one configuration for all its seeds, then prints the table.

  python -m experiments.train --config=experiments/configs/digits.py \
      --workdir=/tmp/gmn_digits [--config.gm.weight=50 ...] [--overwrite]

Writes config.json, results.json, metrics.jsonl, TensorBoard files and orbax
checkpoints under --workdir (see gmn_jax.train). Rerunning the same command
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

import sys
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from gmn_jax import parallel
from gmn_jax import preemption
from gmn_jax import train
from gmn_jax.errors import ConfigError
from gmn_jax.errors import GMNError

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
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices", 1, "Devices that stage 1 splits its batches over (data parallelism); "
    "0 uses every device. Ignored with --multihost, which uses all of them.")
_MULTIHOST = flags.DEFINE_bool(
    "multihost", None, "Join a multi-host run with jax.distributed.initialize() (default: "
    "the GMN_MULTIHOST environment variable).")

def fail(error: Exception) -> None:
  """Prints the one-line error to stderr and exits with status 2."""
  print(f"error: {error}", file=sys.stderr)
  sys.exit(2)


def stop(interrupted: preemption.Interrupted) -> None:
  """Prints why the run stopped and exits with status 128 + signal number."""
  print(f"interrupted: {interrupted}", file=sys.stderr)
  sys.exit(interrupted.exit_code)


def parse_flags(argv: Sequence[str]) -> Sequence[str]:
  """absl's flag parsing, with a bad flag or override exiting 2 in one line.

  Args:
    argv: the command line.

  Returns:
    The arguments left after the flags.
  """
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
    # config_flags reports an unknown or mistyped --config.<field> with these.
    fail(train.command_line_error(error, argv))


def load_config():
  """The --config value, with a missing or broken file as a ConfigError.

  Returns:
    The ConfigDict.

  Raises:
    ConfigError: when --config is absent or its file cannot be loaded.
  """
  try:
    config = _CONFIG.value
    if config is None:
      raise ConfigError("--config: expected a config file such as "
                        "experiments/configs/digits.py, found nothing")
    config.keys()  # config_flags reports a failed load lazily, on first use.
  except OSError as error:
    raise ConfigError(f"--config: {' '.join(str(error).split())}") from error
  return config


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    fail(ConfigError(f"command line: expected only flags, found {' '.join(argv[1:])}"))
  train.quiet_checkpoint_logs()
  try:
    # Before anything touches a device.
    multihost = parallel.initialize_multihost(_MULTIHOST.value)
    mesh = None
    if multihost or _NUM_DEVICES.value != 1:
      mesh = parallel.make_mesh(None if multihost else (_NUM_DEVICES.value or None))
    config = load_config()
    if not _WORKDIR.value:
      raise ConfigError("--workdir: expected a directory for the run's outputs, found nothing")
    gamma = None
    if _CALIBRATION_FROM.value:
      gamma = train.calibration_gamma_from(_CALIBRATION_FROM.value)
    results = train.train_and_evaluate(config, _WORKDIR.value,
                                       overwrite=_OVERWRITE.value, calibration_gamma=gamma,
                                       mesh=mesh)
  except GMNError as error:
    fail(error)
  except preemption.Interrupted as interrupted:
    stop(interrupted)
  if parallel.is_primary():
    print(train.format_results_table(results))
    print(f"results: {_WORKDIR.value}/{train.RESULTS_FILE}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
