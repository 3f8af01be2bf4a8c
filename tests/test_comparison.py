"""Tests of gmn_jax/comparison.py and the --table=comparison binary (the paper's Table 2)."""

import dataclasses
import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

from experiments import ablation
from experiments import configs as preset_configs
from gmn_jax import comparison
from gmn_jax import plotting
from gmn_jax.errors import ConfigError
from test_train_support import tiny_config, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h")


def _result(method, per_seed, seeds=(1, 2)):
  """A results.json-like dict: every metric has these per-seed values (+ 1 per metric)."""
  metrics = {}
  for i, name in enumerate(NAMES):
    values = [v + i for v in per_seed]
    metrics[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                     "per_seed": values}
  return {"method": method, "paper_row": method, "seeds": list(seeds), "metrics": metrics}


# -- The table's rows and numbers ---------------------------------------------------------------

def test_the_rows_are_the_tables_systems_in_order():
  assert [r.name for r in comparison.COMPARISON_ROWS] == [
      "real_only", "fclswgan", "fclswgan_ale", "fclswgan_devise", "cwgan_cls", "cyclewgan",
      "cycle_clswgan", "gmmn", "cvae", "cwgan_gm"]
  by_name = {r.name: r for r in comparison.COMPARISON_ROWS}
  assert (by_name["fclswgan_ale"].method, dict(by_name["fclswgan_ale"].overrides)) == (
      "fclswgan", {"eval.classifier": "ale"})
  assert (by_name["fclswgan_devise"].method, dict(by_name["fclswgan_devise"].overrides)) == (
      "fclswgan", {"eval.classifier": "devise"})
  # Every other row is its method alone, under the method's name.
  for row in comparison.COMPARISON_ROWS:
    if row.name not in ("fclswgan_ale", "fclswgan_devise"):
      assert (row.method, dict(row.overrides)) == (row.name, {})
    assert row.label and row.source
  assert [r.name for r in comparison.PAPER_ONLY_ROWS] == ["zhang18"]


def test_a_row_is_immutable():
  row = comparison.Row("x", "cwgan", {"eval.epochs": 3}, "X", "nowhere")
  with pytest.raises(dataclasses.FrozenInstanceError):
    row.method = "cwgan_gm"
  with pytest.raises(TypeError):
    row.overrides["eval.epochs"] = 4  # a read-only view, not the caller's dict


def test_every_reported_number_belongs_to_a_row_and_h_is_the_harmonic_mean_of_u_and_s():
  names = {r.name for r in comparison.COMPARISON_ROWS + comparison.PAPER_ONLY_ROWS}
  assert set(comparison.PAPER_NUMBERS) == {"CUB", "SUN", "AWA1"}
  for dataset, rows in comparison.PAPER_NUMBERS.items():
    assert set(rows) <= names, dataset
    for name, values in rows.items():
      assert set(values) == set(comparison.METRICS), (dataset, name)
      assert all(v is None or 0 < v < 100 for v in values.values()), (dataset, name)
      u, s, h = values["gzsl_u"], values["gzsl_s"], values["gzsl_h"]
      if None not in (u, s, h):
        # A transcription check: the sources round to one decimal.
        assert abs(2 * u * s / (u + s) - h) < 0.06, (dataset, name)
  # The GMN row is the paper's own (the official README's "Paper" rows).
  assert comparison.PAPER_NUMBERS["CUB"]["cwgan_gm"] == {
      "zsl_t1": 64.3, "gzsl_u": 56.1, "gzsl_s": 54.3, "gzsl_h": 55.2}
  assert comparison.paper_numbers("cub") is comparison.PAPER_NUMBERS["CUB"]
  assert comparison.paper_numbers("digits") is None


# -- A row's config -----------------------------------------------------------------------------

def test_row_config_sets_the_method_resets_the_critic_and_applies_the_overrides():
  base = tiny_config(method="cwgan_gm", **{"critic.conditional": False})
  row = comparison.Row("soft", "cwgan", {"eval.classifier": "softmax", "eval.epochs": 7})
  config = comparison.row_config(base, row)
  assert (config.method, config.critic.conditional) == ("cwgan", None)
  assert (config.eval.classifier, config.eval.epochs) == ("softmax", 7)
  # The base is a template for every row: unchanged.
  assert (base.method, base.critic.conditional, base.eval.classifier, base.eval.epochs) == (
      "cwgan_gm", False, "bilinear", 3)


def test_every_comparison_row_maps_to_its_method_and_overrides():
  base = tiny_config(**{"critic.conditional": True})
  for row in comparison.COMPARISON_ROWS:
    config = comparison.row_config(base, row)
    assert (config.method, config.critic.conditional) == (row.method, None)
    for field, value in row.overrides.items():
      section, name = field.split(".")
      assert config[section][name] == value


def test_fclswgan_rows_take_xian_et_als_settings_on_the_papers_datasets_only():
  for dataset, lr in (("CUB", 1e-4), ("sun", 2e-4), ("AWA1", 1e-5)):
    base = tiny_config(dataset=dataset)
    for name in ("fclswgan", "fclswgan_ale", "fclswgan_devise"):
      (row,) = comparison.select_rows([name])
      config = comparison.row_config(base, row)
      assert (config.generator.kind, config.generator.noise_dim) == ("attribute_concat", 0)
      assert tuple(config.generator.hidden_dims) == tuple(config.critic.hidden_dims) == (4096,)
      assert (config.train.batch_size, config.train.adam_b1) == (64, 0.5)
      assert config.train.lr_generator == config.train.lr_critic == lr
      # The budget stays the table's.
      assert config.train.num_iterations == base.train.num_iterations
    # GMN's row keeps GMN's networks.
    (gmn,) = comparison.select_rows(["cwgan_gm"])
    assert tuple(comparison.row_config(base, gmn).generator.hidden_dims) == (8,)
    (gmmn,) = comparison.select_rows(["gmmn"])
    config = comparison.row_config(base, gmmn)
    assert (config.train.lr_generator, config.train.adam_b1, config.generator.noise_dim) == (
        2e-4, 0.9, 15)
  # Elsewhere (digits) the config's own settings.
  (row,) = comparison.select_rows(["fclswgan"])
  config = comparison.row_config(tiny_config(dataset="digits"), row)
  assert tuple(config.generator.hidden_dims) == (8,) and config.train.batch_size == 8


def test_row_config_rejects_an_unknown_field_and_a_mistyped_value():
  with pytest.raises(ConfigError, match=r"row x: override eval\.clasifier='ale': "
                     r"config\.eval\.clasifier is not a known field"):
    comparison.row_config(tiny_config(), comparison.Row("x", "cwgan", {"eval.clasifier": "ale"}))
  with pytest.raises(ConfigError, match="not a known field"):
    comparison.row_config(tiny_config(), comparison.Row("x", "cwgan", {"nope.x": 1}))
  with pytest.raises(ConfigError, match=r"row x: override eval\.epochs='many'"):
    comparison.row_config(tiny_config(), comparison.Row("x", "cwgan", {"eval.epochs": "many"}))


def test_select_rows():
  assert comparison.select_rows(None) == list(comparison.COMPARISON_ROWS)
  assert [r.name for r in comparison.select_rows(["cwgan_gm", "real_only"])] == [
      "cwgan_gm", "real_only"]
  with pytest.raises(ConfigError, match=r"--methods: expected row names among .*found "
                     r"\['real_only', 'gan'\]"):
    comparison.select_rows(["real_only", "gan"])
  with pytest.raises(ConfigError, match="--methods"):
    comparison.select_rows([])


# -- comparison.md ------------------------------------------------------------------------------

def test_table_puts_our_mean_and_std_beside_the_reported_numbers():
  by_name = {r.name: r for r in comparison.COMPARISON_ROWS}
  rows = [by_name["real_only"], by_name["fclswgan_ale"], by_name["cwgan_gm"]]
  # Hand-computed: [50, 54] -> 52.00 ± 2.00; [10, 20, 30] -> 20.00 ± 8.16 (ddof 0).
  results = [_result("real_only", [50.0, 54.0]),
             _result("fclswgan", [10.0, 20.0, 30.0], seeds=(1, 2, 3)),
             _result("cwgan_gm", [60.0, 60.0])]
  table = comparison.format_comparison_table(rows, results, "CUB", title="Comparison on CUB",
                                             command="python -m experiments.ablation --x")
  lines = table.splitlines()
  assert lines[0] == "## Comparison on CUB"
  assert lines[2] == ("| row | system | seeds | ZSL T1 | reported | GZSL u | reported | "
                      "GZSL s | reported | GZSL H | reported |")
  assert ("| real_only | Train only with real samples | 2 | 52.00 ± 2.00 | 57.8 | "
          "53.00 ± 2.00 | 27.5 | 54.00 ± 2.00 | 66.9 | 55.00 ± 2.00 | 39.0 |") in lines
  assert ("| fclswgan_ale | Xian et al. '18 – ALE | 3 | 20.00 ± 8.16 | — | "
          "21.00 ± 8.16 | — | 22.00 ± 8.16 | — | 23.00 ± 8.16 | — |") in lines
  assert ("| cwgan_gm | GMN (Sariyildiz & Cinbis '19) | 2 | 60.00 ± 0.00 | 64.3 | "
          "61.00 ± 0.00 | 56.1 | 62.00 ± 0.00 | 54.3 | 63.00 ± 0.00 | 55.2 |") in lines
  assert ("| — | Zhang et al. '18: not implemented (a kernel compatibility model, not a "
          "generator) | — | — | — | — | — | — | — | — | — |") in lines
  # Each row's source is listed; the command closes the file.
  assert f"- cwgan_gm: {by_name['cwgan_gm'].source}" in lines
  assert f"- fclswgan_ale: {by_name['fclswgan_ale'].source}" in lines
  assert table.endswith("```\npython -m experiments.ablation --x\n```\n")


def test_table_of_a_dataset_the_paper_does_not_cover_has_only_our_numbers():
  rows = comparison.select_rows(["real_only"])
  table = comparison.format_comparison_table(rows, [_result("real_only", [50.0, 54.0])],
                                             "digits")
  assert "| row | system | seeds | ZSL T1 | GZSL u | GZSL s | GZSL H |" in table
  assert ("| real_only | Train only with real samples | 2 | 52.00 ± 2.00 | 53.00 ± 2.00 | "
          "54.00 ± 2.00 | 55.00 ± 2.00 |") in table
  assert "reported" not in table
  assert "The paper has no numbers for digits" in table
  with pytest.raises(ValueError, match="1 rows but 0 results"):
    comparison.format_comparison_table(rows, [], "digits")


def test_chart_marks_the_reported_values_on_their_bars(tmp_path):
  rows = comparison.select_rows(["real_only", "fclswgan", "cwgan_gm"])
  results = [_result(r.name, [40.0 + 10 * k]) for k, r in enumerate(rows)]
  reported = comparison.reported("SUN", rows)
  assert reported[1] is None  # no numbers found for f-CLSWGAN
  path, figure = plotting.plot_ablation_bars(
      results, str(tmp_path / "c.png"), metric_names=comparison.METRICS,
      labels=[r.label for r in rows], reported=reported, return_figure=True)
  assert os.path.getsize(path) > 0
  (axes,) = figure.axes
  texts = [t.get_text() for legend in figure.legends for t in legend.get_texts()]
  assert texts == [r.label for r in rows] + ["reported"]
  # One black line per known value, across its bar: rows 0 and 2, four metrics each.
  width = 0.8 / len(rows)
  expected = []
  for k in (0, 2):
    numbers = comparison.PAPER_NUMBERS["SUN"][rows[k].name]
    for i, name in enumerate(comparison.METRICS):
      centre = i + (k - 1) * width
      expected.append([[centre - width / 2, numbers[name]], [centre + width / 2, numbers[name]]])
  error_bars = {id(line) for c in axes.containers if getattr(c, "errorbar", None)
                for line in c.errorbar.lines[2]}
  marks = [c for c in axes.collections if id(c) not in error_bars]
  np.testing.assert_allclose([seg for c in marks for seg in c.get_segments()], expected)


# -- Running the rows ---------------------------------------------------------------------------

@pytest.mark.slow  # run_rows' training is covered by the reuse test and the binary's
def test_run_rows_trains_each_row_with_its_config_in_its_own_workdir(tmp_path):
  config = tiny_config(seeds=(1,), **{"critic.conditional": False})
  rows = [comparison.Row("real_only", "real_only"),
          comparison.Row("cwgan_soft", "cwgan", {"eval.classifier": "softmax"}, "cWGAN soft")]
  results = ablation.run_rows(config, str(tmp_path), rows, dataset=tiny_dataset())
  assert sorted(os.listdir(tmp_path)) == ["cwgan_soft", "real_only"]
  assert [r["method"] for r in results] == ["real_only", "cwgan"]
  with open(tmp_path / "cwgan_soft" / "config.json", encoding="utf-8") as f:
    stored = json.load(f)["config"]
  assert (stored["method"], stored["critic.conditional"], stored["eval.classifier"]) == (
      "cwgan", None, "softmax")


def test_a_row_differing_only_in_eval_fields_reuses_the_earlier_rows_generators(
    tmp_path, monkeypatch):
  # pylint: disable=g-import-not-at-top
  from gmn_jax import stage1
  from gmn_jax import train
  # pylint: enable=g-import-not-at-top
  config = tiny_config(seeds=(1,))
  rows = [comparison.Row("cwgan", "cwgan"),
          comparison.Row("cwgan_devise", "cwgan", {"eval.classifier": "devise"}),
          comparison.Row("cwgan_gm", "cwgan_gm")]
  trained = []
  real_train = stage1.train_generators

  def counting(spec, *args, **kwargs):
    out = real_train(spec, *args, **kwargs)
    trained.extend(r.start_iteration for r in out)
    return out

  monkeypatch.setattr(stage1, "train_generators", counting)
  results = ablation.run_rows(config, str(tmp_path / "table"), rows, dataset=tiny_dataset())
  # Three rows, stage 1 trained from iteration 0 twice: the devise row
  # restored the cwgan row's final generators (start at the last iteration).
  assert trained == [0, config.train.num_iterations, 0]
  assert not os.path.exists(tmp_path / "table" / "cwgan_devise" / "plots")
  with open(tmp_path / "table" / "cwgan_devise" / "config.json", encoding="utf-8") as f:
    assert json.load(f)["config"]["eval.classifier"] == "devise"
  # The same numbers as the row trained alone from scratch.
  monkeypatch.undo()
  alone = train.train_and_evaluate(comparison.row_config(config, rows[1]),
                                   str(tmp_path / "alone"), dataset=tiny_dataset())
  for name in NAMES:
    np.testing.assert_allclose(results[1]["metrics"][name]["per_seed"],
                               alone["metrics"][name]["per_seed"], atol=1e-3)
  assert results[1]["final_classifier"]["kind"] == "devise"
  assert results[0]["final_classifier"]["kind"] == "bilinear"


def test_a_bad_row_is_rejected_before_anything_runs(tmp_path):
  rows = [comparison.Row("real_only", "real_only"),
          comparison.Row("fancy", "cwgan", {"eval.classifier": "no_such_classifier"})]
  with pytest.raises(ConfigError, match=r"config\.eval\.classifier: .*\(row fancy, which sets "
                     r"eval\.classifier='no_such_classifier'\)"):
    ablation.run_rows(tiny_config(), str(tmp_path), rows, dataset=tiny_dataset())
  with pytest.raises(ConfigError, match="config.method"):
    ablation.run_rows(tiny_config(), str(tmp_path), [comparison.Row("x", "no_such_method")],
                      dataset=tiny_dataset())
  with pytest.raises(ConfigError, match="--methods"):
    ablation.run_comparison(tiny_config(), str(tmp_path), ["real_only", "gan"])
  assert not os.listdir(tmp_path)


def _run_binary(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "experiments.ablation", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_binary_runs_the_selected_rows_of_the_comparison_on_digits(tmp_path):
  workdir = tmp_path / "w"
  # The smoke budget; real_only trains no generator and cwgan_gm is GMN itself.
  args = ["--config=experiments/configs/digits.py:smoke", "--table=comparison",
          "--methods=real_only,cwgan_gm", f"--workdir={workdir}"]
  result = _run_binary(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(workdir)) == ["comparison.md", "cwgan_gm", "plots", "real_only"]
  for name in ("real_only", "cwgan_gm"):
    with open(workdir / name / "config.json", encoding="utf-8") as f:
      stored = json.load(f)["config"]
    assert (stored["method"], stored["critic.conditional"]) == (name, None)
    for field, value in preset_configs.SMOKE_BUDGET.items():
      assert stored[field] == (list(value) if isinstance(value, tuple) else value), field
  table = (workdir / "comparison.md").read_text()
  assert "| row | system | seeds | ZSL T1 | GZSL u | GZSL s | GZSL H |" in table
  assert "| real_only | Train only with real samples | 1 | " in table
  assert "| cwgan_gm | GMN (Sariyildiz & Cinbis '19) | 1 | " in table
  assert "The paper has no numbers for digits" in table
  assert table.split("```")[1].strip() == shlex.join(["python", "-m", "experiments.ablation",
                                                      *args])
  assert table in result.stdout  # printed
  assert f"written: {workdir / 'plots' / 'comparison.png'}" in result.stdout
  assert os.path.getsize(workdir / "plots" / "comparison.png") > 0
  assert not (workdir / "ablation.md").exists()


@pytest.mark.parametrize("flag, message", [
    ("--table=table2", "error: --table: expected one of ablation, comparison, found 'table2'"),
    ("--methods=real_only,gan", "error: --methods: expected row names among ['real_only', "),
])
def test_binary_exits_2_in_one_line_on_a_bad_table_or_row(tmp_path, flag, message):
  args = ["--config=experiments/configs/digits.py", f"--workdir={tmp_path}", flag]
  if flag.startswith("--methods"):
    args.append("--table=comparison")
  result = _run_binary(*args, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(message)
  assert "Traceback" not in result.stderr
  assert not os.listdir(tmp_path)
