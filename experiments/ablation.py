r"""Runs a results table of the paper on one configuration: Table 1 or Table 2.

  python -m experiments.ablation --config=experiments/configs/digits.py \
      --workdir=/tmp/gmn_ablation [--config.train.num_iterations=...] \
      [--table=ablation|comparison] [--methods=real_only,cwgan_gm] [--overwrite] \
      [--concurrent_rows=3]

--table=ablation (the default) runs the six rows of the paper's ablation
table (Table 1); --table=comparison the rows of its comparison with other
systems (Table 2) that this project implements (`gmn_jax.comparison`).
--methods selects rows by name (default: all of the table's). Each row
trains and evaluates all of config.seeds in W/<row> (a rerun resumes every
row, see gmn_jax.train), with its method's own critic (any
config.critic.conditional override is reset) and its config overrides (the
comparison's "fclswgan_ale" is method fclswgan with eval.classifier=ale);
every row's config is checked before the first trains. Writes W/<table>.md
and prints it: the ablation's has one row per variant, mean ± std over
seeds of ZSL T1, GZSL u, s, H and AUSUC; the comparison's has ZSL T1, GZSL
u, s, H beside the numbers reported for the dataset (CUB, SUN, AWA1), with
their sources; both end with the command line (shell-quoted, ready to
paste). Also writes W/plots/<table>.png, the same as grouped bars with std
error bars (the reported values marked), and `python -m experiments.plot
--workdir=W` adds every row's figures.
Bad input prints one line to stderr and exits with status 2; SIGTERM / SIGINT
stop at the next checkpoint with status 143 / 130 (rerun to resume).
"""

import concurrent.futures
import os
import shlex
import shutil
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import cli
from gmn_jax import comparison
from gmn_jax import config as gmn_config
from gmn_jax import config_utils
from gmn_jax import plotting
from gmn_jax import preemption
from gmn_jax import train
from gmn_jax import workdir as workdirs
from gmn_jax.errors import ConfigError

_CONFIG = None
_WORKDIR = None
_TABLE = None
_METHODS = None
_OVERWRITE = None
_CONCURRENT_ROWS = None


def define_flags() -> None:
  """Defines the command-line flags.

  Called only when the module runs as a program, so that importing it (as
  the tests do, several binaries into one process) defines no absl flags
  and two binaries' flags of the same name never collide.
  """
  global _CONFIG, _WORKDIR, _TABLE, _METHODS, _OVERWRITE, _CONCURRENT_ROWS
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "A config file, e.g. experiments/configs/digits.py; override fields with "
      "--config.<field>=<value> (config.method is set per row).", lock_config=False)
  _WORKDIR = flags.DEFINE_string("workdir", None,
                                 "Directory of the rows' runs and of the table's .md file.")
  # A string checked in main, not an enum: a bad value then reads like every
  # other bad input ("--table: expected ..., found ...").
  _TABLE = flags.DEFINE_string("table", "ablation", "The table to run: " + " or ".join(TABLES)
                               + " (the paper's Table 1 or Table 2).")
  _METHODS = flags.DEFINE_list(
      "methods", None, "The rows to run, in order (default: all of the table's). Ablation: "
      f"methods, {','.join(gmn_config.ABLATION_METHODS)}; comparison: rows, "
      f"{','.join(row.name for row in comparison.COMPARISON_ROWS)}.")
  _OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start every row afresh.")
  _CONCURRENT_ROWS = flags.DEFINE_integer(
      "concurrent_rows", 1, "Rows run at once, in threads of this process (experimental: on a "
      "GPU, 3 keeps the card busy while other rows compile and evaluate; 1 on a CPU).",
      lower_bound=1)

ABLATION_FILE = "ablation.md"
COMPARISON_FILE = comparison.COMPARISON_FILE
TABLES = ("ablation", "comparison")


def format_ablation_table(rows: Sequence[Dict[str, Any]], *, title: str = "",
                          command: str = "") -> str:
  """The markdown table of ablation.md.

  Args:
    rows: results.json dicts (of `train.train_and_evaluate`), one per method.
    title: an optional heading line.
    command: an optional command line, shown under the table.

  Returns:
    Markdown text: one row per method, columns ZSL T1, GZSL u, s, H and,
    when every row has it, AUSUC (the columns of ablation.png), as
    "mean ± std" over the generator seeds (in %).
  """
  labels = dict(cli.METRIC_LABELS)
  with_ausuc = bool(rows) and all("ausuc" in row["metrics"] for row in rows)
  if with_ausuc:
    labels["ausuc"] = cli.CALIBRATION_LABELS["ausuc"]
  lines = [f"## {title}", ""] if title else []
  lines += ["| method | row | seeds | " + " | ".join(labels.values()) + " |",
            "|---|---|---|" + "---|" * len(labels)]
  for row in rows:
    cells = [cli.format_mean_std(row["metrics"][name]) for name in labels]
    lines.append(f"| {row['method']} | {row['paper_row']} | {len(row['seeds'])} | "
                 + " | ".join(cells) + " |")
  lines += ["", "Accuracies in %, per-class mean top-1 at the last epoch of the final "
            "classifier; mean ± std (ddof 0) over generator seeds."]
  if with_ausuc:
    lines[-1] += (" AUSUC: area under the seen-unseen accuracy curve of calibrated "
                  "stacking, in %.")
  if command:
    lines += ["", "```", command, "```"]
  return "\n".join(lines) + "\n"


def command_line(argv: Sequence[str]) -> str:
  """The command that ran, quoted for a POSIX shell so that it can be pasted.

  Args:
    argv: sys.argv (its first item, the program, is replaced by the module).

  Returns:
    e.g. `python -m experiments.ablation '--config.seeds=(1,2)' ...`.
  """
  return shlex.join(["python", "-m", "experiments.ablation", *argv[1:]])


# Shared by the binaries (tests drive them through these names).
fail = cli.fail
parse_flags = cli.parse_flags


def check_table(table: str) -> str:
  """The --table value, checked.

  Args:
    table: "ablation" or "comparison".

  Returns:
    The same value.

  Raises:
    ConfigError: for any other value.
  """
  if table not in TABLES:
    raise ConfigError(f"--table: expected one of {', '.join(TABLES)}, found {table!r}")
  return table


def run_rows(config, workdir: str, rows: Sequence[comparison.Row], *,
             overwrite: bool = False, dataset=None,
             concurrent_rows: int = 1) -> List[Dict[str, Any]]:
  """Trains and evaluates each row on `config` in workdir/<row name>.

  Every row's config (`comparison.row_config`) is built and validated
  first, so that a bad row fails in one line before hours of the rows
  ahead of it have run. A row that shares stage 1 with an earlier row
  (its config differs only in eval.* fields, as f-CLSWGAN's ALE and DEVISE
  rows) and has no workdir yet starts from a copy of that row's: its
  generators are restored, not trained again (not with `overwrite`).

  With `concurrent_rows` > 1 that many rows run at once, each in its own
  thread of this process: on an accelerator one row's compilations, host
  work and stage 2 then overlap another's device programs (one row alone
  leaves the card idle while it compiles or evaluates). Each row computes
  what it computes alone, so the results are the same; a row copying an
  earlier row's generators starts once that row has finished. A stop signal
  stops every running row at its next checkpoint.

  Args:
    config: the base configuration (its method is replaced per row).
    workdir: the table's directory.
    rows: the rows, in table order.
    overwrite: start every row afresh.
    dataset: an in-memory `ZSLDataset` to use instead of config.data_dir.
    concurrent_rows: how many rows run at once (1: one after another).

  Returns:
    The results.json dicts, in `rows` order.

  Raises:
    ConfigError: a row's config is invalid (before anything runs).
  """
  configs = []
  for row in rows:
    row_config = comparison.row_config(config, row)
    try:
      gmn_config.validate(row_config, check_data_dir=dataset is None)
    except ConfigError as error:
      row_overrides = row.overrides_for(config.dataset)
      if not row_overrides:
        raise
      # Name the row: the same field may be fine in the base config.
      overrides = ", ".join(f"{k}={v!r}" for k, v in row_overrides.items())
      raise ConfigError(f"{error} (row {row.name}, which sets {overrides})") from error
    configs.append(row_config)
  donors = [_stage1_donor(rows[:i], configs[:i], c) for i, c in enumerate(configs)]

  def run_row(i: int) -> Dict[str, Any]:
    row, row_dir = rows[i], os.path.join(workdir, rows[i].name)
    if donors[i] is not None and not overwrite and not os.path.exists(row_dir):
      # The same generators as an earlier row (e.g. f-CLSWGAN with another
      # final classifier): start from a copy of that row's run, which
      # train_and_evaluate extends by evaluating again from the final
      # checkpoints, as for any change of eval.* fields.
      logging.info("%s: the generators of row %s (it differs only in eval.* fields): "
                   "copying %s and evaluating again", row.name, donors[i], donors[i])
      shutil.copytree(os.path.join(workdir, donors[i]), row_dir,
                      ignore=shutil.ignore_patterns(workdirs.LOCK_FILE, "plots"))
    return train.train_and_evaluate(configs[i], row_dir, overwrite=overwrite, dataset=dataset)

  if concurrent_rows <= 1:
    return [run_row(i) for i in range(len(rows))]
  return _run_concurrently(run_row, donors, [row.name for row in rows], concurrent_rows)


def _run_concurrently(run_row, donors: Sequence[Optional[str]], names: Sequence[str],
                      workers: int) -> List[Dict[str, Any]]:
  """`run_row(i)` for every row, `workers` at a time; a row waits for its donor.

  The main thread holds the stop-signal handlers (`preemption.StopOnSignal`)
  and waits in short steps, so a signal reaches every row's loop; the first
  error (or stop) of a row is raised once every running row has ended.
  """
  index = {name: i for i, name in enumerate(names)}
  results: List[Any] = [None] * len(names)
  errors: List[BaseException] = []
  with preemption.StopOnSignal(), concurrent.futures.ThreadPoolExecutor(workers) as pool:
    pending = {}
    waiting = list(range(len(names)))
    while waiting or pending:
      for i in list(waiting):
        donor = donors[i]
        if not errors and (donor is None or results[index[donor]] is not None):
          waiting.remove(i)
          pending[pool.submit(run_row, i)] = i
      if errors and not pending:
        break
      done, _ = concurrent.futures.wait(list(pending), timeout=0.05,
                                        return_when=concurrent.futures.FIRST_COMPLETED)
      for future in done:
        i = pending.pop(future)
        try:
          results[i] = future.result()
        except BaseException as error:  # pylint: disable=broad-except
          if not isinstance(error, preemption.Interrupted):
            # The other rows stop at their next checkpoint (resumable).
            preemption.request_stop()
          errors.append(error)
  if errors:
    interrupted = [e for e in errors if isinstance(e, preemption.Interrupted)]
    raise (errors[0] if len(interrupted) < len(errors) else interrupted[0])
  return results


def _stage1_donor(rows, configs, config) -> Optional[str]:
  """The first earlier row whose stage 1 `config` shares, or None."""
  fingerprint = config_utils.config_fingerprint(config)
  for row, other in zip(rows, configs):
    if not workdirs.stage1_differences(config_utils.config_fingerprint(other), fingerprint):
      return row.name
  return None


def run_ablation(config, workdir: str, methods: Sequence[str], *, overwrite: bool = False,
                 dataset=None, concurrent_rows: int = 1) -> list:
  """Trains and evaluates each method on `config` in workdir/<method>.

  Args:
    config: the base configuration (its method is replaced per row).
    workdir: the ablation's directory.
    methods: method names, in table order.
    overwrite: start every row afresh.
    dataset: an in-memory `ZSLDataset` to use instead of config.data_dir.
    concurrent_rows: rows run at once (`run_rows`).

  Returns:
    The results.json dicts, in `methods` order.

  Raises:
    ConfigError: for an unknown method (before anything runs) or a bad config.
  """
  unknown = [m for m in methods if m not in gmn_config.VARIANTS]
  if unknown or not methods:
    raise ConfigError(f"--methods: expected names among {sorted(gmn_config.VARIANTS)}, "
                      f"found {list(methods)}")
  return run_rows(config, workdir, [comparison.ablation_row(m) for m in methods],
                  overwrite=overwrite, dataset=dataset, concurrent_rows=concurrent_rows)


def run_comparison(config, workdir: str, names: Optional[Sequence[str]], *,
                   overwrite: bool = False, dataset=None, concurrent_rows: int = 1
                   ) -> Tuple[List[comparison.Row], List[Dict[str, Any]]]:
  """Trains and evaluates the comparison's (Table 2's) rows in workdir/<row name>.

  Args:
    config: the base configuration (method and overrides are set per row).
    workdir: the comparison's directory.
    names: row names of `comparison.COMPARISON_ROWS`, in order; None for all.
    overwrite: start every row afresh.
    dataset: an in-memory `ZSLDataset` to use instead of config.data_dir.
    concurrent_rows: rows run at once (`run_rows`).

  Returns:
    (the rows, their results.json dicts), in the order of `names`.

  Raises:
    ConfigError: for an unknown row or a row whose config is invalid (both
      before anything runs).
  """
  rows = comparison.select_rows(names)
  return rows, run_rows(config, workdir, rows, overwrite=overwrite, dataset=dataset,
                        concurrent_rows=concurrent_rows)


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  cli.quiet_checkpoint_logs()
  table = cli.run_guarded(lambda: check_table(_TABLE.value))
  config = cli.run_guarded(lambda: cli.load_config(_CONFIG))
  workdir = cli.run_guarded(lambda: cli.require_workdir(_WORKDIR.value, "the runs"))
  command = command_line(sys.argv)
  if table == "comparison":
    rows, results = cli.run_guarded(lambda: run_comparison(
        config, workdir, _METHODS.value, overwrite=_OVERWRITE.value,
        concurrent_rows=_CONCURRENT_ROWS.value))
    text = comparison.format_comparison_table(
        rows, results, config.dataset, title=f"Comparison on {config.dataset} (the paper's "
        "Table 2)", command=command)
    chart_title = (f"Comparison on {config.dataset}: mean ± std over generator seeds"
                   + (", reported values marked" if comparison.paper_numbers(config.dataset)
                      else ""))
    chart_options = {"metric_names": comparison.METRICS, "labels": [r.label for r in rows],
                     "reported": comparison.reported(config.dataset, rows)}
    path = os.path.join(workdir, COMPARISON_FILE)
  else:
    methods = (list(gmn_config.ABLATION_METHODS) if _METHODS.value is None
               else _METHODS.value)
    results = cli.run_guarded(lambda: run_ablation(
        config, workdir, methods, overwrite=_OVERWRITE.value,
        concurrent_rows=_CONCURRENT_ROWS.value))
    text = format_ablation_table(results, title=f"Ablation on {config.dataset}",
                                 command=command)
    chart_title = f"Ablation on {config.dataset}: mean ± std over generator seeds"
    chart_options = {}
    path = os.path.join(workdir, ABLATION_FILE)
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)
  chart = plotting.plot_ablation_bars(
      results, os.path.join(workdir, plotting.PLOTS_DIR, f"{table}.png"), title=chart_title,
      **chart_options)
  print(text)
  print(f"written: {path}")
  print(f"written: {chart}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
