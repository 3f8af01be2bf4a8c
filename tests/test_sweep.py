"""gmn_jax.sweep, sweep_grid, sweep_report and experiments.sweep."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gmn_jax import parallel
from gmn_jax import preemption
from gmn_jax import stage1
from gmn_jax import sweep
from gmn_jax import sweep_grid
from gmn_jax import sweep_report
from gmn_jax import train
from gmn_jax import workdir_plots
from gmn_jax.errors import ConfigError
from tests.test_train_support import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(**overrides):
  """A tiny config on the builtin digits (which has a validation split)."""
  return tiny_config(**{"dataset": "digits", **overrides})


# --------------------------------------------------------------------------
# The grid.


def test_values_take_the_type_of_the_config_field():
  grid = sweep_grid.parse_grid(
      " gm.weight=10,1e2 ; eval.n_synth_unseen=5,7;generator.hidden_dims=(8,),(4,4);"
      "train.class_balanced=true,False;gm.classifier=bilinear,'softmax'", _config())
  assert grid == {"gm.weight": [10.0, 100.0], "eval.n_synth_unseen": [5, 7],
                  "generator.hidden_dims": [(8,), (4, 4)],
                  "train.class_balanced": [True, False],
                  "gm.classifier": ["bilinear", "softmax"]}
  assert all(type(v) is float for v in grid["gm.weight"])  # pylint: disable=unidiomatic-typecheck
  # A field unset in the config (None) takes booleans and literals.
  assert sweep_grid.parse_grid("critic.conditional=true,False", _config()) == {
      "critic.conditional": [True, False]}


@pytest.mark.parametrize("text,message", [
    ("", "found nothing"),
    ("gm.weight", "expected field=value"),
    ("gm.weight=", "expected field=value"),
    ("gm.wieght=1,2", "gm.wieght: not a config field"),
    ("gm=1,2", "gm: a section, not a field"),
    ("seeds=(1,),(2,)", "seeds: the sweep sets it itself"),
    ("split=test", "split: the sweep sets it itself"),
    ("gm.weight=1;gm.weight=2", "gm.weight: given twice"),
    ("gm.weight=1,1.0", "gm.weight: a value is repeated"),
    ("eval.n_synth_unseen=5,a", "eval.n_synth_unseen: expected int values, found 'a'"),
    ("train.class_balanced=yes", "expected bool values"),
    ("generator.hidden_dims=8x8", "expected tuple values"),
])
def test_bad_grids_are_refused_naming_the_field(text, message):
  with pytest.raises(ConfigError, match="--sweep: .*" + message.replace("(", r"\(")):
    sweep_grid.parse_grid(text, _config())


def test_fields_are_classified_by_how_they_train():
  assert sweep_grid.classify("gm.weight") == sweep_grid.STAGE1_TRACED
  assert sweep_grid.classify("train.lr_critic") == sweep_grid.STAGE1_TRACED
  assert sweep_grid.classify("eval.weight_decay") == sweep_grid.STAGE2_TRACED
  assert sweep_grid.classify("eval.n_synth_unseen") == sweep_grid.STAGE2
  assert sweep_grid.classify("generator.hidden_dims") == sweep_grid.PROGRAM
  assert sweep_grid.classify("train.num_iterations") == sweep_grid.PROGRAM


def test_combinations_run_the_last_field_fastest_and_have_readable_names():
  combos = sweep_grid.combinations({"a.x": [1, 2], "b.y": [(8,), (4, 4)]})
  assert combos == [{"a.x": 1, "b.y": (8,)}, {"a.x": 1, "b.y": (4, 4)},
                    {"a.x": 2, "b.y": (8,)}, {"a.x": 2, "b.y": (4, 4)}]
  assert sweep_grid.label({"gm.weight": 100.0, "b.y": (4, 4)}) == "gm.weight=100, b.y=(4,4)"
  assert sweep_grid.directory_name({"gm.weight": 0.5, "b.y": (8,), "c": "a b/c"}) == (
      "gm.weight=0.5,b.y=(8,),c=a_b_c")
  assert sweep_grid.directory_name({}) == "base"


# --------------------------------------------------------------------------
# The choice and the report.


def _summary(setting, per_seed, metric="gzsl_h"):
  return {"setting": setting, "dir": "d",
          "metrics": {metric: {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed)),
                               "per_seed": per_seed}}}


def test_the_first_best_mean_is_chosen_with_ties_and_rivals_within_one_std():
  summaries = [_summary({"x": 1}, [10.0, 12.0]),     # 11.00 ± 1
               _summary({"x": 2}, [13.0, 15.0]),     # 14.00 ± 1: the first best
               _summary({"x": 3}, [13.999, 14.003]),  # 14.00 at two decimals: a tie
               _summary({"x": 4}, [13.0, 13.4]),     # 13.2: within one std of 14 ± 1
               _summary({"x": 5}, [5.0, 5.0])]
  chosen = sweep.choose(summaries, "gzsl_h")
  assert chosen["index"] == 1 and chosen["setting"] == {"x": 2}
  assert chosen["mean"] == 14.0 and chosen["std"] == 1.0
  assert chosen["ties"] == [1, 2] and chosen["within_one_std"] == [3]


def test_a_choice_on_the_test_split_is_refused_unless_labelled_an_oracle():
  on_test = [{**_summary({"x": 1}, [1.0]), "split": "test"},
             {**_summary({"x": 2}, [2.0]), "split": "test"}]
  with pytest.raises(ConfigError, match="expected results of the validation split, found "
                     "split 'test'"):
    sweep.choose(on_test, "gzsl_h")
  assert sweep.choose(on_test, "gzsl_h", oracle=True)["setting"] == {"x": 2}


def _report_entry(x, h):
  return {"setting": {"gm.weight": x}, "label": sweep_grid.label({"gm.weight": x}), "dir": "d",
          "metrics": {name: {"mean": h, "std": 1.0, "per_seed": [h - 1, h + 1]}
                      for name in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h")}}


def test_the_report_lists_every_setting_the_choice_and_the_cost_of_honesty(tmp_path):
  report = {"metric": "gzsl_h", "dataset": "digits", "method": "cwgan_gm", "seeds": [1, 2],
            "fields": [{"field": "gm.weight", "values": [10.0, 100.0],
                        "kind": sweep_grid.STAGE1_TRACED, "how": "vmapped"}],
            "validation": [_report_entry(10.0, 30.0), _report_entry(100.0, 40.0)],
            "choice": {"label": "gm.weight=100", "setting": {"gm.weight": 100.0},
                       "mean": 40.0, "std": 1.0, "ties": ["gm.weight=100"],
                       "within_one_std": []},
            "test": {"metrics": _report_entry(100.0, 35.0)["metrics"]},
            "oracle": {"entries": [_report_entry(10.0, 37.5), _report_entry(100.0, 35.0)],
                       "best": {"label": "gm.weight=10", "mean": 37.5, "std": 1.0,
                                "setting": {"gm.weight": 10.0}}},
            "command": "python -m experiments.sweep ..."}
  text = sweep_report.format_markdown(report)
  assert "| gm.weight | 10, 100 | stage 1, traced: vmapped |" in text
  assert "| 100 | 40.00 ± 1.00 | 40.00 ± 1.00 | 40.00 ± 1.00 | 40.00 ± 1.00 | chosen |" in text
  assert "| 10 | 37.50 ± 1.00 | 37.50 ± 1.00 | 37.50 ± 1.00 | 37.50 ± 1.00 | oracle best |" in text
  assert "| 35.00 ± 1.00 | 35.00 ± 1.00 | 35.00 ± 1.00 | 35.00 ± 1.00 |" in text
  assert "honesty costs 2.50 points here" in text
  assert "Ties at two decimals: none. Within one std of it: none." in text
  assert sweep_report.plot(report, str(tmp_path / "sweep.png")) == str(tmp_path / "sweep.png")
  assert (tmp_path / "sweep.png").stat().st_size > 0


# --------------------------------------------------------------------------
# The grid as one program.


def _separate_run(config, setting, workdir):
  """One setting alone, as `experiments.train --config.split=validation` runs it."""
  return train.train_and_evaluate(sweep_grid.apply(config, {**setting, "split": "validation"}),
                                  workdir)


def test_the_grid_program_gives_the_numbers_of_separate_runs(tmp_path, monkeypatch):
  config = _config()
  grid = {"gm.weight": [1.0, 100.0], "eval.n_synth_unseen": [10, 30], "eval.lr": [1e-3, 1e-2]}
  programs = []
  chunk = stage1.compiled_chunk

  def counting(spec, num_iterations, num_seeds):
    programs.append(num_seeds)
    return chunk(spec, num_iterations, num_seeds)

  monkeypatch.setattr(stage1, "compiled_chunk", counting)
  summaries = sweep.run_grid(config, grid, str(tmp_path / "grid"), split="validation")
  # Both β values and both seeds in every stage-1 call (num_parallel_seeds=1:
  # a program per seed, each holding both settings).
  assert programs and set(programs) == {2}
  assert [s["setting"] for s in summaries] == sweep_grid.combinations(grid)
  assert all(s["data"]["num_seen"] == 5 for s in summaries)  # the validation split
  # The settings matter (at this budget u, and so H, may be 0 throughout).
  by_setting = {(s["metrics"]["gzsl_s"]["mean"], s["metrics"]["ausuc"]["mean"])
                for s in summaries}
  assert len(by_setting) == len(summaries)
  # Two separate runs that between them take every value of every field.
  for k in (0, len(summaries) - 1):
    summary = summaries[k]
    alone = _separate_run(config, summary["setting"], str(tmp_path / f"alone_{k}"))
    for name in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "ausuc"):
      np.testing.assert_allclose(summary["metrics"][name]["per_seed"],
                                 alone["metrics"][name]["per_seed"], atol=1e-3,
                                 err_msg=f"{summary['setting']} {name}")


def test_a_grid_split_over_two_devices_gives_the_numbers_of_one(tmp_path):
  config = _config(seeds=(1,))
  grid = {"gm.weight": [1.0, 100.0]}
  one = sweep.run_grid(config, grid, str(tmp_path / "one"), split="validation")
  two = sweep.run_grid(config, grid, str(tmp_path / "two"), split="validation",
                       mesh=parallel.make_mesh(2))
  for a, b in zip(one, two):
    for name in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"):
      np.testing.assert_allclose(a["metrics"][name]["per_seed"], b["metrics"][name]["per_seed"],
                                 atol=1e-3, err_msg=f"{a['setting']} {name}")


# --------------------------------------------------------------------------
# The whole sweep: resume, extension, stops.


def _count_stage1_calls(monkeypatch):
  calls = []
  chunk = stage1.compiled_chunk

  def counting(spec, num_iterations, num_seeds):
    compiled = chunk(spec, num_iterations, num_seeds)

    def call(*args):
      calls.append(num_seeds)
      return compiled(*args)

    return call

  monkeypatch.setattr(stage1, "compiled_chunk", counting)
  return calls


def test_a_rerun_trains_nothing_and_a_new_value_trains_only_itself(tmp_path, monkeypatch):
  config = _config(seeds=(1,))
  calls = _count_stage1_calls(monkeypatch)
  first = sweep.sweep(config, {"gm.weight": [1.0, 100.0]}, tmp_path)
  assert len(calls) == 2 + 2  # validation: one program of 2 settings x 2 calls; test: 2 calls
  assert calls[:2] == [2, 2]
  files = json.loads((tmp_path / sweep_report.JSON_FILE).read_text())
  assert files["choice"] == first["choice"]
  assert (tmp_path / sweep_report.MARKDOWN_FILE).is_file()
  assert (tmp_path / "plots" / sweep_report.PLOT_FILE).is_file()

  calls.clear()
  again = sweep.sweep(config, {"gm.weight": [1.0, 100.0]}, tmp_path)
  assert calls == []
  assert again["validation"] == first["validation"] and again["test"] == first["test"]

  calls.clear()
  extended = sweep.sweep(config, {"gm.weight": [1.0, 100.0, 10.0],
                                  "eval.n_synth_unseen": [10, 20]}, tmp_path)
  # Only gm.weight=10 trains on validation; the other two are restored from
  # their final checkpoints for eval.n_synth_unseen=20.
  assert calls[:2] == [1, 1]
  for k, before in zip((0, 2), first["validation"]):  # n_synth_unseen=10 is the config's
    assert extended["validation"][k]["setting"]["gm.weight"] == before["setting"]["gm.weight"]
    for name, entry in before["metrics"].items():
      np.testing.assert_allclose(extended["validation"][k]["metrics"][name]["per_seed"],
                                 entry["per_seed"], atol=1e-3, err_msg=name)


def test_a_stopped_sweep_resumes_to_the_uninterrupted_numbers(tmp_path, monkeypatch):
  config = _config(seeds=(1,))
  grid = {"gm.weight": [1.0, 100.0], "generator.hidden_dims": [(8,), (6,)]}
  whole = sweep.run_grid(config, grid, str(tmp_path / "whole"), split="validation")
  calls = _count_stage1_calls(monkeypatch)
  original = stage1.compiled_chunk

  def stopping(spec, num_iterations, num_seeds):
    compiled = original(spec, num_iterations, num_seeds)

    def call(*args):
      if len(calls) == 3:  # in the second program's last call (hidden_dims=(6,))
        preemption.request_stop()
      return compiled(*args)

    return call

  monkeypatch.setattr(stage1, "compiled_chunk", stopping)
  with pytest.raises(preemption.Interrupted) as stopped:
    sweep.run_grid(config, grid, str(tmp_path / "stopped"), split="validation")
  message = str(stopped.value)
  assert "still to run: gm.weight=1, generator.hidden_dims=(6,), seed 1;" in message
  monkeypatch.setattr(stage1, "compiled_chunk", original)
  resumed = sweep.run_grid(config, grid, str(tmp_path / "stopped"), split="validation")
  for a, b in zip(whole, resumed):
    assert a["setting"] == b["setting"]
    assert a["metrics"] == b["metrics"]


def test_bad_metric_and_invalid_combinations_are_refused_before_training(tmp_path):
  with pytest.raises(ConfigError, match="--metric: expected one of zsl_t1, gzsl_u"):
    sweep.sweep(_config(), {"gm.weight": [1.0]}, tmp_path, metric="accuracy")
  with pytest.raises(ConfigError, match=r"--sweep: eval.n_synth_unseen=-5: .*eval.n_synth_unseen"):
    sweep.sweep(_config(), {"eval.n_synth_unseen": [10, -5]}, tmp_path)
  assert not (tmp_path / sweep.VALIDATION_DIR).exists()


# --------------------------------------------------------------------------
# The binary.


def _binary(*args):
  return subprocess.run([sys.executable, "-m", "experiments.sweep", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=600, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


TINY_FLAGS = ["--config=experiments/configs/digits.py:smoke", "--config.train.num_iterations=4",
              "--config.train.iterations_per_call=2", "--config.train.checkpoint_every=2",
              "--config.train.log_every=2", "--config.generator.hidden_dims=(8,)",
              "--config.critic.hidden_dims=(8,)", "--config.eval.epochs=2"]


def test_the_binary_lists_how_each_field_trains():
  lines = sweep_grid.describe({"gm.weight": [1.0, 100.0], "eval.lr": [0.1, 0.01],
                                "eval.n_synth_unseen": [10, 20],
                                "generator.hidden_dims": [(8,)]}).splitlines()
  assert lines[0].startswith("gm.weight = 1, 100: stage 1, traced (vmapped with the seeds")
  assert lines[1].startswith("eval.lr = 0.1, 0.01: stage 2, traced (the values' final "
                             "classifiers train as one stage-2 program")
  assert lines[2].startswith("eval.n_synth_unseen = 10, 20: stage 2 (evaluated from the same "
                             "generators")
  assert lines[3].startswith("generator.hidden_dims = (8,): separate programs (changes shapes")
  assert lines[4] == "8 combinations"


def test_the_binary_says_how_fields_train_and_writes_the_report(tmp_path):
  result = _binary(*TINY_FLAGS, f"--workdir={tmp_path}", "--sweep=gm.weight=1,100",
                   "--metric=zsl_t1")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "gm.weight = 1, 100: stage 1, traced (vmapped with the seeds" in result.stdout
  assert "2 combinations" in result.stdout
  report = (tmp_path / sweep_report.MARKDOWN_FILE).read_text()
  assert report in result.stdout and "ZSL T1 chosen on the validation split" in report
  written_json = json.loads((tmp_path / sweep_report.JSON_FILE).read_text())
  assert written_json["metric"] == "zsl_t1"
  # experiments.plot on the sweep: sweep.png and each run's figures where its files are.
  written, _ = workdir_plots.plot_workdir(str(tmp_path), projections=("pca",))
  relative = {os.path.relpath(p, tmp_path) for p in written}
  chosen = sweep_grid.directory_name(written_json["choice"]["setting"])
  assert {"plots/sweep.png", "validation/gm.weight=1/plots/training.png",
          "validation/gm.weight=100/base/plots/evaluation.png",
          f"test/{chosen}/plots/evaluation.png"} <= relative, sorted(relative)


@pytest.mark.parametrize("flags,message", [
    (["--sweep=seeds=(1,),(2,)"], "error: --sweep: seeds: the sweep sets it itself"),
    (["--sweep=gm.weight=1", "--runs_per_program=0"], "error: --runs_per_program: expected a "
     "positive integer, found 0"),
    (["--sweep=eval.n_synth_unseen=5,-1"], "error: --sweep: eval.n_synth_unseen=-1:"),
])
def test_the_binary_exits_2_with_one_line_on_bad_input(tmp_path, flags, message):
  result = _binary(*TINY_FLAGS, f"--workdir={tmp_path}", *flags)
  assert result.returncode == 2, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith(message), result.stderr[-3000:]


def test_overwrite_removes_only_what_a_sweep_writes(tmp_path):
  for name in ("validation/gm.weight=1/config.json", "test/x/results.json", "oracle/a/b",
               "sweep.json", "sweep.md", "plots/sweep.png", "plots/mine.png", "notes.txt"):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("x")
  sweep._remove_outputs(str(tmp_path))  # pylint: disable=protected-access
  left = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
  assert left == ["notes.txt", "plots/mine.png"]
