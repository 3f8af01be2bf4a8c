"""What every absl binary under experiments/ shares: one-line errors, exit codes.

A binary's bad input (a flag, a --config override, the config file, the
data) ends with one line `error: ...` on stderr and exit status 2; a stop
signal ends with `interrupted: ...` and status 128 + the signal number.
JAX's INFO lines about accelerator backends that a machine lacks ("Unable
to initialize backend 'tpu'") are hidden unless --verbosity=1 (or more);
its warnings, e.g. about a GPU that is present but unusable, always show.
"""

import glob
import logging as python_logging
import os
import re
import sys
import traceback
from typing import TYPE_CHECKING, Any, Callable, Dict, List, NoReturn, Optional, Sequence, Tuple

from absl import flags
from absl import logging

from gmn_jax.errors import ConfigError

METRIC_LABELS = {"zsl_t1": "ZSL T1", "gzsl_u": "GZSL u", "gzsl_s": "GZSL s",
                 "gzsl_h": "GZSL H"}
CALIBRATION_LABELS = {"ausuc": "AUSUC", "oracle_calibrated_gzsl_h": "H cal.*",
                      "calibrated_gzsl_h": "H cal."}
# The presets: experiments/configs/<name>.py.
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
# What a config field's flag parser says about a value of the wrong type, and
# the type it wanted.
_PARSE_ERRORS = (
    (re.compile(r"invalid literal for int\(\) with base 10: .*"), "an int"),
    (re.compile(r"could not convert string to float: .*"), "a float"),
    (re.compile(r"\('Non-boolean argument to boolean flag', .*\)"), "true or false"),
)

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


def stop_at_once() -> NoReturn:
  """A second Ctrl-C: one line, and exit with status 130 at once.

  `os._exit` skips the interpreter's clean-up, which would wait for running
  device work and background writers; every file of a workdir is written
  atomically (a temporary file or directory, then a rename), so the workdir
  resumes from its last complete checkpoint.
  """
  print("interrupted: a second Ctrl-C stopped the run at once; rerun the same command "
        "(same --workdir) to resume from its last complete checkpoint", file=sys.stderr)
  sys.stderr.flush()
  sys.stdout.flush()
  os._exit(130)  # pylint: disable=protected-access


def run_guarded(fn: Callable[[], Any]) -> Any:
  """fn(), ended the binaries' way: a GMNError in one line (status 2), a stop
  signal with `stop`, a second Ctrl-C with `stop_at_once`.

  Args:
    fn: the binary's work.

  Returns:
    What fn returned.
  """
  from gmn_jax import preemption  # pylint: disable=g-import-not-at-top
  from gmn_jax.errors import GMNError  # pylint: disable=g-import-not-at-top
  try:
    return fn()
  except GMNError as error:
    fail(error)
  except preemption.Interrupted as interrupted:
    stop(interrupted)
  except KeyboardInterrupt:
    stop_at_once()


def require_workdir(value: Optional[str], what: str) -> str:
  """The --workdir flag's value, or a ConfigError naming what it is for.

  Args:
    value: the flag's value.
    what: e.g. "the sweep".

  Returns:
    The value.
  """
  if not value:
    raise ConfigError(f"--workdir: expected a directory for {what}, found nothing")
  return value


def define_device_flags() -> Tuple[flags.FlagHolder, flags.FlagHolder]:
  """--num_devices and --multihost, for the binaries that train.

  Returns:
    (num_devices, multihost) flag holders; give them to `mesh_from_flags`.
  """
  num_devices = flags.DEFINE_integer(
      "num_devices", 1, "Devices that stage 1 splits its batches over (data parallelism); "
      "0 uses every device. Ignored with --multihost, which uses all of them.")
  multihost = flags.DEFINE_bool(
      "multihost", None, "Join a multi-host run with jax.distributed.initialize() (default: "
      "the GMN_MULTIHOST environment variable).")
  return num_devices, multihost


def mesh_from_flags(num_devices: flags.FlagHolder, multihost: flags.FlagHolder):
  """Joins a multi-host run when asked, and the ('data',) mesh the flags ask for.

  Called before anything touches a device.

  Args:
    num_devices: the --num_devices holder.
    multihost: the --multihost holder.

  Returns:
    A mesh (`parallel.make_mesh`), or None for the default device.
  """
  from gmn_jax import parallel  # pylint: disable=g-import-not-at-top
  joined = parallel.initialize_multihost(multihost.value)
  if joined or num_devices.value != 1:
    return parallel.make_mesh(None if joined else (num_devices.value or None))
  return None


def parse_flags(argv: Sequence[str]) -> Sequence[str]:
  """absl's flag parsing, with a bad flag or override exiting 2 in one line.

  Pass as `app.run(main, flags_parser=parse_flags)`.

  Args:
    argv: the command line.

  Returns:
    The arguments left after the flags.
  """
  quiet_platform_probe_logs()
  config_files = _config_file_arguments(argv)
  for name, value in config_files:
    missing = _missing_config_file(name, value)
    if missing is not None:
      fail(missing)
  try:
    return flags.FLAGS(argv)
  except Exception as error:  # pylint: disable=broad-except
    # A config file that raised: config_flags passes a TypeError / ValueError
    # on inside a flag error, anything else as it is.
    config_error = config_file_error(error, config_files)
    if config_error is not None:
      fail(config_error)
    if isinstance(error, (flags.Error, AttributeError, KeyError, TypeError, ValueError)):
      # config_flags reports an unknown or mistyped --config.<field> with these.
      fail(command_line_error(error, argv))
    raise


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
  mistyped = re.fullmatch(r"flag --(config\.[^=]+)=(.*?): (.*)", text)
  if mistyped:
    for pattern, expected in _PARSE_ERRORS:
      if pattern.fullmatch(mistyped.group(3)):
        return ConfigError(f"--{mistyped.group(1)}: expected {expected}, "
                           f"found {mistyped.group(2)!r}")
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


def preset_names() -> List[str]:
  """The presets' names: experiments/configs/<name>.py, sorted."""
  return sorted(os.path.basename(path)[:-len(".py")]
                for path in glob.glob(os.path.join(CONFIGS_DIR, "*.py"))
                if not os.path.basename(path).startswith("_"))


def _presets_text() -> str:
  """'experiments/configs/{apy,awa1,...}.py', relative to the working directory when below it."""
  folder = os.path.relpath(CONFIGS_DIR)
  if folder.startswith(os.pardir):
    folder = CONFIGS_DIR
  return f"{folder}{os.sep}{{{','.join(preset_names())}}}.py"


def _config_file_arguments(argv: Sequence[str]) -> List[tuple]:
  """(flag name, value) of every config-file flag (--config=FILE[:ARG]) in argv."""
  names = {name for name in flags.FLAGS
           if type(flags.FLAGS[name].parser).__name__ == "ConfigFileFlagParser"}
  found = []
  args = list(argv[1:])
  for i, arg in enumerate(args):
    if arg == "--":
      break
    match = re.fullmatch(r"--?([^=]+)(?:=(.*))?", arg, re.DOTALL)
    if not match or match.group(1) not in names:
      continue
    value = match.group(2)
    if value is None:  # --config FILE
      value = args[i + 1] if i + 1 < len(args) else None
    if value is not None:
      found.append((match.group(1), value))
  return found


def _missing_config_file(name: str, value: str) -> Optional[ConfigError]:
  """The error for a --config value whose file does not exist; None if it does."""
  path = value.split(":", 1)[0]
  if os.path.isfile(path):
    return None
  if not path:
    return ConfigError(f"--{name}: expected a config file such as "
                       f"experiments/configs/digits.py, found nothing")
  return ConfigError(f"--{name}: no such config file {path} (the presets are "
                     f"{_presets_text()})")


def config_file_error(error: BaseException, config_files: Sequence[tuple]
                      ) -> Optional[ConfigError]:
  """One line for a config file that raised while it was loaded.

  Args:
    error: what parsing the flags raised.
    config_files: (flag name, value) of the command line's config files.

  Returns:
    "--config=FILE:ARG: ..." naming the file, the error and its line; None
    when `error` did not come from loading a config file.
  """
  chain, cause = [], error
  while cause is not None and cause not in chain:
    chain.append(cause)
    cause = cause.__cause__ or cause.__context__
  for name, value in config_files:
    path = os.path.abspath(value.split(":", 1)[0])
    for cause in reversed(chain):  # the original error first
      frames = [frame for frame in traceback.extract_tb(cause.__traceback__)
                if os.path.abspath(frame.filename) == path]
      if isinstance(cause, SyntaxError) and cause.filename and (
          os.path.abspath(cause.filename) == path):
        chain = [cause]  # reported as the original error
        break
      if frames or "Error whilst parsing config file" in str(cause):
        break
    else:
      continue
    original = chain[-1]
    if isinstance(original, ConfigError):  # a preset's own message
      return ConfigError(f"--{name}={value}: {' '.join(str(original).split())}")
    where = f", line {frames[-1].lineno}" if frames else ""
    message = " ".join(str(original).split())
    flag = f"--{name}={value}" if ":" in value else f"--{name}"
    return ConfigError(f"{flag}: {value.split(':', 1)[0]}{where} raised "
                       f"{type(original).__name__}" + (f": {message}" if message else ""))
  return None


def quiet_platform_probe_logs() -> None:
  """Hides JAX's INFO lines about backends this machine lacks.

  At its first use of a device JAX tries every backend it knows and logs
  "Unable to initialize backend 'tpu': ..." at INFO for each one that is not
  there. Those lines are dropped unless --verbosity is 1 (DEBUG) or more;
  JAX's warnings (a GPU or TPU that is present but unusable, a failing
  plugin) and errors pass, and so does a backend named in JAX_PLATFORMS,
  which JAX reports as an error. Idempotent.
  """
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _PlatformProbeFilter) for f in handler.filters):
    handler.addFilter(_PlatformProbeFilter())


class _PlatformProbeFilter(python_logging.Filter):
  """Drops JAX's INFO "Unable to initialize backend" records (see above)."""

  def filter(self, record: python_logging.LogRecord) -> bool:
    if (record.levelno >= python_logging.WARNING or not record.name.startswith("jax")
        or logging.get_verbosity() >= logging.DEBUG):
      return True
    return not str(record.msg).startswith("Unable to initialize backend")


def quiet_checkpoint_logs() -> None:
  """Hides orbax's INFO lines (several per checkpoint) from the absl log.

  Binaries call this; warnings and errors still show.
  """
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= python_logging.WARNING
      or f"{os.sep}orbax{os.sep}" not in record.pathname)


def format_mean_std(entry: Dict[str, Any]) -> str:
  """`results.format_mean_std`, imported when a table is written (not at start-up)."""
  from gmn_jax import results  # pylint: disable=g-import-not-at-top
  return results.format_mean_std(entry)


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
