r"""Runs the six rows of the paper's ablation table on one configuration.

  python -m experiments.ablation --config=experiments/configs/digits.py \
      --workdir=/tmp/gmn_ablation [--config.train.num_iterations=...] \
      [--methods=real_only,cwgan_gm] [--overwrite]

Each method trains and evaluates all of config.seeds in W/<method> (a rerun
resumes every row, see gmn_jax.train), with the method's own critic (any
config.critic.conditional override is reset). Writes W/ablation.md: one row
per variant, mean ± std over seeds of ZSL T1, GZSL u, s, H and AUSUC, and
the command line (shell-quoted, ready to paste), and prints it; and
W/plots/ablation.png, the same as grouped bars with std error bars
(`python -m experiments.plot --workdir=W` adds every row's figures).
Bad input prints one line to stderr and exits with status 2; SIGTERM / SIGINT
stop at the next checkpoint with status 143 / 130 (rerun to resume).
"""

import os
import shlex
import sys
from typing import Any, Dict, Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from gmn_jax import config as gmn_config
from gmn_jax import plotting
from gmn_jax import train
from gmn_jax.errors import ConfigError

_CONFIG = None
_WORKDIR = None
_METHODS = None
_OVERWRITE = None


def define_flags() -> None:
  """Defines the command-line flags.

  Called only when the module runs as a program, so that importing it (as
  the tests do, several binaries into one process) defines no absl flags
  and two binaries' flags of the same name never collide.
  """
  global _CONFIG, _WORKDIR, _METHODS, _OVERWRITE
  _CONFIG = config_flags.DEFINE_config_file(
      "config", None, "A config file, e.g. experiments/configs/digits.py; override fields with "
      "--config.<field>=<value> (config.method is set per row).", lock_config=False)
  _WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the rows' runs and ablation.md.")
  _METHODS = flags.DEFINE_list("methods", list(gmn_config.ABLATION_METHODS),
                               "The methods (rows) to run, in order.")
  _OVERWRITE = flags.DEFINE_bool("overwrite", False, "Start every row afresh.")

ABLATION_FILE = "ablation.md"


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


def run_ablation(config, workdir: str, methods: Sequence[str], *, overwrite: bool = False,
                 dataset=None) -> list:
  """Trains and evaluates each method on `config` in workdir/<method>.

  Args:
    config: the base configuration (its method is replaced per row).
    workdir: the ablation's directory.
    methods: method names, in table order.
    overwrite: start every row afresh.
    dataset: an in-memory `ZSLDataset` to use instead of config.data_dir.

  Returns:
    The results.json dicts, in `methods` order.

  Raises:
    ConfigError: for an unknown method (before anything runs) or a bad config.
  """
  unknown = [m for m in methods if m not in gmn_config.VARIANTS]
  if unknown or not methods:
    raise ConfigError(f"--methods: expected names among {sorted(gmn_config.VARIANTS)}, "
                      f"found {list(methods)}")
  results = []
  for method in methods:
    row_config = config.copy_and_resolve_references()
    row_config.method = method
    row_config.critic.conditional = None  # The row decides the critic type.
    results.append(train.train_and_evaluate(row_config, os.path.join(workdir, method),
                                            overwrite=overwrite, dataset=dataset))
  return results


def main(argv: Sequence[str]) -> None:
  cli.reject_arguments(argv)
  cli.quiet_checkpoint_logs()
  config = cli.run_guarded(lambda: cli.load_config(_CONFIG))
  results = cli.run_guarded(lambda: run_ablation(
      config, cli.require_workdir(_WORKDIR.value, "the runs"), _METHODS.value,
      overwrite=_OVERWRITE.value))
  command = command_line(sys.argv)
  table = format_ablation_table(
      results, title=f"Ablation on {config.dataset}", command=command)
  path = os.path.join(_WORKDIR.value, ABLATION_FILE)
  with open(path, "w", encoding="utf-8") as f:
    f.write(table)
  chart = plotting.plot_ablation_bars(
      results, os.path.join(_WORKDIR.value, plotting.PLOTS_DIR, "ablation.png"),
      title=f"Ablation on {config.dataset}: mean ± std over generator seeds")
  print(table)
  print(f"written: {path}")
  print(f"written: {chart}")


if __name__ == "__main__":
  define_flags()
  app.run(main, flags_parser=parse_flags)
