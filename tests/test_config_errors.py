"""Bad configs fail before any compilation, in one line, with exit status 2.

Every case runs the training binary's own flag parser and main function in
this process (no subprocess) and checks: exit status 2, exactly one line on
stderr that names the offending field, no traceback, and that JAX compiled
nothing (so the user waits for no compilation before being told).
"""

import contextlib
import io
import json
import sys

from absl import flags
import jax
import pytest

from experiments import train as binary
from experiments.configs import digits
from gmn_jax import config_utils
from gmn_jax import train
from test_train_support import tiny_config

DIGITS = "--config=experiments/configs/digits.py"

_compilations = []
_recording = []


def _on_event(name, *args, **kwargs):  # pylint: disable=unused-argument
  if _recording and "/compile/" in name:
    _compilations.append(name)


jax.monitoring.register_event_duration_secs_listener(_on_event)


def run_binary(*args, monkeypatch):
  """Runs experiments.train's parser and main; returns (exit code, stderr, #compiles)."""
  argv = ["train", *args]
  # config_flags reads the overrides from sys.argv and defines one flag per
  # overridden field; forget those of the previous case.
  monkeypatch.setattr(sys, "argv", argv)
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  stderr = io.StringIO()
  _compilations.clear()
  _recording.append(True)
  code = 0
  try:
    with contextlib.redirect_stderr(stderr):
      binary.main(binary.parse_flags(argv))
  except SystemExit as exit_:
    code = exit_.code
  finally:
    _recording.clear()
  return code, stderr.getvalue(), len(_compilations)


def test_the_compilation_probe_sees_compilations():
  _compilations.clear()
  _recording.append(True)
  jax.jit(lambda x: x * 7 - 2)(3.0)
  _recording.clear()
  assert _compilations


@pytest.mark.parametrize("override, needle", [
    # Unknown or mistyped keys, with the closest known field suggested.
    ("--config.gm.wieght=1", "config.gm.wieght is not a known field (did you mean "
                             "config.gm.weight?)"),
    ("--config.trian.batch_size=8", "config.trian is not a known field"),
    ("--config.eval.epoch=3", "config.eval.epoch is not a known field (did you mean "
                              "config.eval.epochs?)"),
    # Wrong types.
    ("--config.train.batch_size=abc", "config.train.batch_size"),
    ("--config.gm.weight=strong", "config.gm.weight"),
    ("--config.seeds=(1,'a')", "config.seeds"),
    # Impossible values.
    ("--config.train.batch_size=-3", "config.train.batch_size: expected a positive integer"),
    ("--config.generator.hidden_dims=(0,)", "config.generator.hidden_dims"),
    ("--config.eval.epochs=0", "config.eval.epochs"),
    ("--config.train.lr_generator=-0.1", "config.train.lr_generator"),
    ("--config.eval.lr_decay=1.5", "config.eval.lr_decay"),
    ("--config.seeds=(1,1)", "config.seeds"),
    ("--config.gm.granularity=cell", "config.gm.granularity"),
    ("--config.method=gmn", "config.method"),
    # Needs the data: more GM classes per iteration than seen classes.
    ("--config.gm.num_classes=50", "config.gm.num_classes: expected at most the 7 seen "
                                   "classes, found 50"),
    ("--config.data_dir=/no/such/dir", "config.data_dir: expected an existing directory"),
])
def test_bad_config_fails_in_one_line_before_compiling(override, needle, tmp_path,
                                                       monkeypatch):
  code, stderr, compiles = run_binary(DIGITS, override, f"--workdir={tmp_path}",
                                      monkeypatch=monkeypatch)
  assert code == 2, stderr
  assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
  assert needle in stderr and "Traceback" not in stderr
  assert compiles == 0
  assert not (tmp_path / "config.json").exists()  # nothing was written


def test_every_problem_is_named_in_the_one_line(tmp_path, monkeypatch):
  code, stderr, _ = run_binary(DIGITS, "--config.train.batch_size=-3",
                               "--config.eval.momentum=1.5", f"--workdir={tmp_path}",
                               monkeypatch=monkeypatch)
  assert code == 2
  assert "config.train.batch_size" in stderr and "config.eval.momentum" in stderr
  assert stderr.count("\n") == 1


@pytest.mark.parametrize("args, needle", [
    ([DIGITS], "--workdir"),
    (["--workdir=/tmp/x"], "--config"),
    (["--config=experiments/configs/nope.py", "--workdir=/tmp/x"], "nope.py"),
    ([DIGITS, "--workdir=/tmp/x", "extra"], "expected only flags"),
    ([DIGITS, "--workdir=/tmp/x", "--calibration_gamma_from=/no/such/run"], "results.json"),
])
def test_bad_command_lines_fail_in_one_line(args, needle, monkeypatch):
  code, stderr, compiles = run_binary(*args, monkeypatch=monkeypatch)
  assert code == 2 and stderr.count("\n") == 1 and needle in stderr, stderr
  assert compiles == 0


def test_a_workdir_that_is_a_file_is_refused(tmp_path, monkeypatch):
  target = tmp_path / "file"
  target.write_text("x")
  code, stderr, compiles = run_binary(DIGITS, f"--workdir={target}", monkeypatch=monkeypatch)
  assert code == 2 and "a directory (the workdir)" in stderr and compiles == 0


def test_a_workdir_of_another_config_is_refused_with_the_differing_fields(tmp_path,
                                                                          monkeypatch):
  config = digits.get_config()  # seeds (1, 67, 99)
  train.prepare_workdir(config, str(tmp_path))
  before = (tmp_path / "config.json").read_text()
  code, stderr, compiles = run_binary(DIGITS, "--config.gm.weight=5.0", "--config.seeds=(1,)",
                                      f"--workdir={tmp_path}", monkeypatch=monkeypatch)
  assert code == 2 and compiles == 0 and stderr.count("\n") == 1
  assert f"gm.weight: {json.dumps(config.gm.weight)} -> 5.0" in stderr
  assert "seeds: [1, 67, 99] -> [1]" in stderr
  assert "--overwrite" in stderr
  assert (tmp_path / "config.json").read_text() == before  # untouched


def test_fields_that_only_change_reporting_may_differ_on_resume(tmp_path):
  train.prepare_workdir(tiny_config(), str(tmp_path))
  train.prepare_workdir(tiny_config(**{"train.log_every": 3}), str(tmp_path))
  stored = json.loads((tmp_path / "config.json").read_text())
  assert config_utils.diff_configs(stored, config_utils.config_fingerprint(
      tiny_config(**{"train.log_every": 3}))) == []
