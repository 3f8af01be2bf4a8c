"""Tests of experiments/ablation.py: the rows, the table and the binary's errors."""

import os
import shlex
import subprocess
import sys

import pytest

from experiments import ablation
from gmn_jax import config as gmn_config
from gmn_jax.errors import ConfigError
from test_train_support import tiny_config, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_result(method, mean, names=("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h")):
  metrics = {name: {"mean": mean, "std": 0.5, "per_seed": [mean - 0.5, mean + 0.5]}
             for name in names}
  return {"method": method, "paper_row": gmn_config.VARIANTS[method].paper_row,
          "seeds": [1, 2], "metrics": metrics}


def test_table_has_one_row_per_method_with_mean_and_std():
  rows = [_fake_result(m, 10.0 + i) for i, m in enumerate(gmn_config.ABLATION_METHODS)]
  table = ablation.format_ablation_table(rows, title="Ablation on tiny", command="python -m x")
  lines = table.splitlines()
  assert lines[0] == "## Ablation on tiny"
  body = [l for l in lines if l.startswith("| ") and "---" not in l][1:]
  assert [l.split(" | ")[0][2:] for l in body] == list(gmn_config.ABLATION_METHODS)
  assert "| cwgan_gm | cWGAN^S + GM (GMN) | 2 | 14.00 ± 0.50 | 14.00 ± 0.50 |" in table
  assert "python -m x" in table


def test_table_has_the_ausuc_column_of_the_chart_when_every_row_has_it():
  names = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "ausuc")
  rows = [_fake_result("real_only", 10.0, names), _fake_result("cwgan_gm", 20.0, names)]
  table = ablation.format_ablation_table(rows)
  assert "| method | row | seeds | ZSL T1 | GZSL u | GZSL s | GZSL H | AUSUC |" in table
  cells = " | ".join(["20.00 ± 0.50"] * 5)
  assert f"| cwgan_gm | cWGAN^S + GM (GMN) | 2 | {cells} |" in table
  assert "AUSUC: area under the seen-unseen accuracy curve" in table
  # As plotting.plot_ablation_bars: the column only when every row has it.
  rows[0] = _fake_result("real_only", 10.0)
  assert "AUSUC" not in ablation.format_ablation_table(rows)


def test_the_command_line_is_shell_quoted():
  argv = ["ablation.py", "--config=experiments/configs/cub.py:smoke", "--config.seeds=(1,2)",
          "--workdir=runs/my ablation", "--methods=real_only,cwgan_gm"]
  command = ablation.command_line(argv)
  assert command == ("python -m experiments.ablation --config=experiments/configs/cub.py:smoke "
                     "'--config.seeds=(1,2)' '--workdir=runs/my ablation' "
                     "--methods=real_only,cwgan_gm")
  assert shlex.split(command)[3:] == argv[1:]


def test_binary_writes_ablation_md_with_the_pasteable_command(tmp_path):
  # real_only trains no generator: only the final classifiers of a smoke budget.
  args = ["--config=experiments/configs/digits.py:smoke", "--config.seeds=(1,2)",
          "--methods=real_only", f"--workdir={tmp_path / 'w'}"]
  result = subprocess.run([sys.executable, "-m", "experiments.ablation", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  table = (tmp_path / "w" / ablation.ABLATION_FILE).read_text()
  assert "| method | row | seeds | ZSL T1 | GZSL u | GZSL s | GZSL H | AUSUC |" in table
  assert "| real_only | real only | 2 | " in table
  command = table.split("```")[1].strip()
  assert command == shlex.join(["python", "-m", "experiments.ablation", *args])
  assert "'--config.seeds=(1,2)'" in command


def test_run_ablation_trains_each_row_in_its_own_workdir(tmp_path):
  config = tiny_config(seeds=(1,), **{"critic.conditional": True})
  rows = ablation.run_ablation(config, str(tmp_path), ["real_only", "wgan_gm"],
                               dataset=tiny_dataset())
  assert [r["method"] for r in rows] == ["real_only", "wgan_gm"]
  assert sorted(os.listdir(tmp_path)) == ["real_only", "wgan_gm"]
  # The row decides the critic: the conditional override was reset for WGAN.
  assert rows[1]["config"]["critic.conditional"] is None
  assert (tmp_path / "wgan_gm" / "results.json").exists()


def test_unknown_method_is_rejected_before_anything_runs(tmp_path):
  with pytest.raises(ConfigError, match="--methods"):
    ablation.run_ablation(tiny_config(), str(tmp_path), ["real_only", "gan"])
  assert not os.listdir(tmp_path)


def test_binary_exits_2_on_a_bad_method(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "experiments.ablation", "--config=experiments/configs/digits.py",
       f"--workdir={tmp_path}", "--methods=real_only,gan"],
      cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith("error: --methods")
  assert "Traceback" not in result.stderr
