"""What every absl binary under experiments/ shares: one-line errors, exit codes.

A binary's bad input (a flag, a --config override, the config file, the
data) ends with one line `error: ...` on stderr and exit status 2; a stop
signal ends with `interrupted: ...` and status 128 + the signal number.
"""

import os
import re
import sys
from typing import TYPE_CHECKING, Any, Dict, NoReturn, Sequence

from absl import flags
from absl import logging

from gmn_jax.errors import ConfigError

METRIC_LABELS = {"zsl_t1": "ZSL T1", "gzsl_u": "GZSL u", "gzsl_s": "GZSL s",
                 "gzsl_h": "GZSL H"}
CALIBRATION_LABELS = {"ausuc": "AUSUC", "oracle_calibrated_gzsl_h": "H cal.*",
                      "calibrated_gzsl_h": "H cal."}

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
    fail(command_line_error(error, argv))


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


def command_line_error(error: Exception, argv: Sequence[str]) -> ConfigError:
  """One clear line for a command-line error of absl / config_flags.

  config_flags reports an unknown `--config.<field>` as a KeyError holding
  only the last name ('wieght' and a suggestion); this names the whole flag
  and the field suggested, like `validate_config` does.

  Args:
    error: what parsing the flags raised.
    argv: the command line.

  Returns:
    The ConfigError to print.
  """
  if error.args and isinstance(error.args[0], KeyError):
    error = error.args[0]  # config_flags wraps it in an AttributeError.
  raw = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  text = " ".join(str(raw).split())
  unknown = re.fullmatch(r"Unknown command line flag '(config\.[^']+)'", text)
  if unknown:
    return ConfigError(f"--{unknown.group(1)}: {unknown.group(1)} is not a known field")
  if isinstance(error, KeyError):
    missing = str(raw).splitlines()[0].strip("'\"") if str(raw) else ""
    suggestion = re.search(r'Did you mean "([^"]+)"', str(raw))
    for arg in argv:
      if not arg.startswith("--config."):
        continue
      path = arg[len("--config."):].split("=", 1)[0]
      parts = path.split(".")
      if missing in parts:
        prefix = parts[:parts.index(missing)]
        message = f"--config.{path}: config.{'.'.join(prefix + [missing])} is not a known field"
        if suggestion:
          message += f" (did you mean config.{'.'.join(prefix + [suggestion.group(1)])}?)"
        return ConfigError(message)
  return ConfigError(f"command line: {text}")


def quiet_checkpoint_logs() -> None:
  """Hides orbax's INFO lines (several per checkpoint) from the absl log.

  Binaries call this; warnings and errors still show.
  """
  import logging as python_logging  # pylint: disable=g-import-not-at-top
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= python_logging.WARNING
      or f"{os.sep}orbax{os.sep}" not in record.pathname)


def format_mean_std(entry: Dict[str, Any]) -> str:
  """'55.31 ± 1.20' from a results.json metric entry.

  Args:
    entry: {"mean": float, "std": float, ...}.

  Returns:
    The text.
  """
  return f"{entry['mean']:.2f} ± {entry['std']:.2f}"


def format_results_table(results: Dict[str, Any]) -> str:
  """The table printed at the end of a run (one row per metric).

  Args:
    results: the results.json dict of `train.train_and_evaluate`.

  Returns:
    A multi-line text.
  """
  seeds = results["seeds"]
  lines = [f"{results['paper_row']} ({results['method']}) on {results['dataset']}, "
           f"{len(seeds)} generator seed{'s' if len(seeds) != 1 else ''} {tuple(seeds)}; "
           "accuracies in %, last epoch, mean ± std over seeds",
           f"{'metric':<8}  {'mean ± std':>14}  per seed"]
  labels = dict(METRIC_LABELS)
  labels.update({k: v for k, v in CALIBRATION_LABELS.items() if k in results["metrics"]})
  for name, label in labels.items():
    entry = results["metrics"][name]
    per_seed = " ".join(f"{v:.2f}" for v in entry["per_seed"])
    lines.append(f"{label:<8}  {format_mean_std(entry):>14}  {per_seed}")
  if "oracle_calibrated_gzsl_h" in results["metrics"]:
    lines.append("AUSUC: area under the seen-unseen curve of calibrated stacking; H cal.*: "
                 "its best H, gamma chosen on this split (an oracle)")
  if "calibrated_gzsl_h" in results["metrics"]:
    lines.append("H cal.: calibrated stacking with the gamma chosen on the validation split")
  return "\n".join(lines)


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
