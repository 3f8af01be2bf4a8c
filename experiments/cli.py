"""What every absl binary under experiments/ shares: one-line errors, exit codes.

A binary's bad input (a flag, a --config override, the config file, the
data) ends with one line `error: ...` on stderr and exit status 2; a stop
signal ends with `interrupted: ...` and status 128 + the signal number.
"""

import sys
from typing import TYPE_CHECKING, NoReturn, Sequence

from absl import flags

from gmn_jax.errors import ConfigError

if TYPE_CHECKING:
  # Imported for the annotation only: the data binaries (check_data) use this
  # module and must not import JAX, which gmn_jax.preemption does.
  from gmn_jax import preemption  # pylint: disable=g-bad-import-order


def fail(error: Exception) -> NoReturn:
  """Prints the one-line error to stderr and exits with status 2.

  Args:
    error: the error; its str() is the line (line breaks become spaces).
  """
  text = str(error).replace("\n", " ")
  print(f"error: {text}", file=sys.stderr)
  sys.exit(2)


def stop(interrupted: "preemption.Interrupted") -> NoReturn:
  """Prints why the run stopped and exits with status 128 + signal number.

  Args:
    interrupted: the stop request that ended the run.
  """
  print(f"interrupted: {interrupted}", file=sys.stderr)
  sys.exit(interrupted.exit_code)


def parse_flags(argv: Sequence[str]) -> Sequence[str]:
  """absl's flag parsing, with a bad flag or override exiting 2 in one line.

  Pass as `app.run(main, flags_parser=parse_flags)`.

  Args:
    argv: the command line.

  Returns:
    The arguments left after the flags.
  """
  try:
    return flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as error:
    # config_flags reports an unknown or mistyped --config.<field> with these.
    # Imported here: gmn_jax.train imports JAX, which check_data must not.
    from gmn_jax import train  # pylint: disable=g-import-not-at-top
    fail(train.command_line_error(error, argv))


def reject_arguments(argv: Sequence[str]) -> None:
  """Exits 2 in one line when positional arguments follow the flags.

  Args:
    argv: what `parse_flags` left: the program name, then any arguments.
  """
  if len(argv) > 1:
    fail(ConfigError(f"command line: expected only flags, found {' '.join(argv[1:])}"))


def load_config(config_flag: flags.FlagHolder, example: str = "experiments/configs/digits.py"):
  """The value of a config_flags.DEFINE_config_file flag, checked.

  Args:
    config_flag: the flag holder.
    example: a config file named in the error when the flag is missing.

  Returns:
    The ConfigDict.

  Raises:
    ConfigError: when the flag is absent or its file cannot be loaded.
  """
  try:
    config = config_flag.value
    if config is None:
      raise ConfigError(f"--config: expected a config file such as {example}, found nothing")
    config.keys()  # config_flags reports a failed load lazily, on first use.
  except OSError as error:
    raise ConfigError(f"--config: {' '.join(str(error).split())}") from error
  return config


def write_results(path: str, results) -> None:
  """Writes a binary's results as JSON (whole or not at all) and says where.

  Args:
    path: the --json_out file; its folder must exist.
    results: JSON-serialisable results.

  Raises:
    ConfigError: the file cannot be written.
  """
  # Imported here: gmn_jax.metric_writers imports NumPy, which this module's
  # light users (check_data) need not load for their flags.
  from gmn_jax import metric_writers  # pylint: disable=g-import-not-at-top
  try:
    metric_writers.write_json_atomic(path, results, indent=1)
  except OSError as error:
    raise ConfigError(f"--json_out: cannot write {path}: {error.strerror}") from error
  print(f"results: {path}")
