"""Tests of experiments/ablation.py: the rows, the table and the binary's errors."""

import os
import subprocess
import sys

import pytest

from experiments import ablation
from gmn_jax import config as gmn_config
from gmn_jax.errors import ConfigError
from test_train_support import tiny_config, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_result(method, mean):
  metrics = {name: {"mean": mean, "std": 0.5, "per_seed": [mean - 0.5, mean + 0.5]}
             for name in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h")}
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
