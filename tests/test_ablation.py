"""Tests of experiments/ablation.py: the rows, the table and the binary's errors."""

import os
import shlex
import subprocess
import sys
import textwrap

import pytest

from experiments import ablation
from gmn_jax import comparison
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


def test_table_text_is_unchanged():
  # The whole of ablation.md for two rows, as the binary wrote it before
  # --table=comparison existed (the comparison has its own table).
  rows = [{"method": "real_only", "paper_row": "real only", "seeds": [1, 2],
           "metrics": {n: {"mean": 10.0 + i, "std": 0.25 * i}
                       for i, n in enumerate(("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"))}},
          {"method": "cwgan_gm", "paper_row": "cWGAN^S + GM (GMN)", "seeds": [1, 2, 3],
           "metrics": {n: {"mean": 50.0 + i, "std": 1.0 / 3}
                       for i, n in enumerate(("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"))}}]
  assert ablation.format_ablation_table(rows, title="Ablation on tiny",
                                        command="python -m experiments.ablation --x=1") == (
      "## Ablation on tiny\n\n"
      "| method | row | seeds | ZSL T1 | GZSL u | GZSL s | GZSL H |\n"
      "|---|---|---|---|---|---|---|\n"
      "| real_only | real only | 2 | 10.00 ± 0.00 | 11.00 ± 0.25 | 12.00 ± 0.50 | "
      "13.00 ± 0.75 |\n"
      "| cwgan_gm | cWGAN^S + GM (GMN) | 3 | 50.00 ± 0.33 | 51.00 ± 0.33 | 52.00 ± 0.33 | "
      "53.00 ± 0.33 |\n\n"
      "Accuracies in %, per-class mean top-1 at the last epoch of the final classifier; "
      "mean ± std (ddof 0) over generator seeds.\n\n"
      "```\npython -m experiments.ablation --x=1\n```\n")


def test_the_ablations_rows_are_its_methods_with_no_overrides(monkeypatch, tmp_path):
  for method in gmn_config.ABLATION_METHODS:
    row = comparison.ablation_row(method)
    assert (row.name, row.method, dict(row.overrides), row.label) == (
        method, method, {}, gmn_config.VARIANTS[method].paper_row)
  # Both tables train through the one loop over rows.
  seen = []
  monkeypatch.setattr(ablation, "run_rows",
                      lambda config, workdir, rows, **kwargs: seen.append(list(rows)) or [])
  ablation.run_ablation(tiny_config(), str(tmp_path), ["real_only", "cwgan"])
  ablation.run_comparison(tiny_config(), str(tmp_path), ["fclswgan_ale"])
  assert [[r.name for r in rows] for rows in seen] == [["real_only", "cwgan"], ["fclswgan_ale"]]
  assert dict(seen[1][0].overrides) == {"eval.classifier": "ale"}


_DRIVER = textwrap.dedent("""
    import os
    from absl import app
    from experiments import ablation

    def fake_rows(config, workdir, methods, **kwargs):
      os.makedirs(workdir, exist_ok=True)
      return [{"method": m, "paper_row": m, "seeds": [1],
               "metrics": {n: {"mean": 30.0 + k, "std": 0.0, "per_seed": [30.0 + k]}
                           for n in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h")}}
              for k, m in enumerate(methods)]

    ablation.run_ablation = fake_rows  # the rows' training is tested above
    ablation.define_flags()
    app.run(ablation.main, flags_parser=ablation.parse_flags)
    """)


def test_binary_without_table_or_methods_runs_the_six_ablation_rows(tmp_path):
  driver = tmp_path / "driver.py"
  driver.write_text(_DRIVER)
  workdir = tmp_path / "w"
  result = subprocess.run(
      [sys.executable, str(driver), "--config=experiments/configs/digits.py",
       f"--workdir={workdir}"], cwd=REPO, capture_output=True, text=True, timeout=120,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  table = (workdir / ablation.ABLATION_FILE).read_text()
  body = [l for l in table.splitlines() if l.startswith("| ") and "---" not in l][1:]
  assert [l.split(" | ")[0][2:] for l in body] == list(gmn_config.ABLATION_METHODS)
  assert sorted(os.listdir(workdir)) == ["ablation.md", "plots"]
  assert os.listdir(workdir / "plots") == ["ablation.png"]


@pytest.mark.slow  # Flaky: orbax's concurrent saves race (docs/benchmarks.md, "Rows at once").
def test_concurrent_rows_give_the_results_of_rows_one_after_another(tmp_path):
  # Each row computes what it computes alone; threads only overlap them.
  config = tiny_config(seeds=(1,))
  methods = ["cwgan", "real_only", "wgan_gm"]
  alone = ablation.run_ablation(config, str(tmp_path / "alone"), methods, dataset=tiny_dataset())
  together = ablation.run_ablation(config, str(tmp_path / "together"), methods,
                                   dataset=tiny_dataset(), concurrent_rows=3)
  assert [r["method"] for r in together] == methods
  for a, b in zip(alone, together):
    assert a["metrics"] and a["metrics"] == b["metrics"], a["method"]


@pytest.mark.slow
def test_a_failing_concurrent_row_stops_the_others_and_raises_its_error(tmp_path, monkeypatch):
  # pylint: disable=g-import-not-at-top
  from gmn_jax import preemption
  from gmn_jax import train
  # pylint: enable=g-import-not-at-top
  real = train.train_and_evaluate

  def flaky(config, workdir, **kwargs):
    if config.method == "cwgan":
      raise ValueError("row cwgan broke")
    return real(config, workdir, **kwargs)

  monkeypatch.setattr(train, "train_and_evaluate", flaky)
  with pytest.raises(ValueError, match="row cwgan broke"):
    ablation.run_ablation(tiny_config(seeds=(1,)), str(tmp_path), ["cwgan", "real_only"],
                          dataset=tiny_dataset(), concurrent_rows=2)
  # No stop request outlives the call.
  assert preemption.requested_signal() is None
