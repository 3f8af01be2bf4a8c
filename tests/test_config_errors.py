"""Bad configs fail before any compilation, in one line, with exit status 2.

Every case runs the training binary's own flag parser and main function and
checks: exit status 2, exactly one line on stderr that names the offending
field, no traceback, and that JAX compiled nothing (so the user waits for no
compilation before being told). The binaries define absl flags globally
(experiments.train and experiments.ablation both define --config), so the
cases run in one helper process that imports experiments.train alone.
"""

import json
import os
import platform
import shlex
import subprocess
import sys
import textwrap

import jax
import jaxlib
import pytest

from experiments.configs import digits
import gmn_jax
from gmn_jax import config as gmn_config
from gmn_jax import config_utils
from gmn_jax import workdir as workdirs
from gmn_jax.errors import ConfigError
from test_train_support import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "--config=experiments/configs/digits.py"

# Runs each case (a list of arguments) through parse_flags and main, and
# counts JAX compilations meanwhile.
_DRIVER = textwrap.dedent("""
    import contextlib, io, json, sys
    cases_path, outcomes_path = sys.argv[1:3]
    from absl import flags
    import jax
    from experiments import train as binary
    if hasattr(binary, "define_flags"):  # flags defined only when run as a program
      binary.define_flags()

    compilations, recording = [], []
    def on_event(name, *args, **kwargs):
      if recording and "/compile/" in name:
        compilations.append(name)
    jax.monitoring.register_event_duration_secs_listener(on_event)

    def run(args):
      argv = ["train", *args]
      sys.argv = argv  # config_flags reads the overrides from sys.argv
      for name in [n for n in flags.FLAGS if n.startswith("config.")]:
        delattr(flags.FLAGS, name)  # one flag per overridden field: forget them
      flags.FLAGS.unparse_flags()
      stderr, code = io.StringIO(), 0
      compilations.clear()
      recording.append(True)
      try:
        with contextlib.redirect_stderr(stderr):
          binary.main(binary.parse_flags(argv))
      except SystemExit as exit_:
        code = exit_.code
      finally:
        recording.clear()
      return {"code": code, "stderr": stderr.getvalue(), "compiles": len(compilations)}

    recording.append(True)
    jax.jit(lambda x: x * 7 - 2)(3.0)  # the probe must see a compilation
    recording.clear()
    out = {"probe": len(compilations)}
    cases = json.load(open(cases_path))
    out.update({key: run(args) for key, args in cases.items()})
    json.dump(out, open(outcomes_path, "w"))
    """)

BAD_OVERRIDES = [
    # Unknown or mistyped keys, with the closest known field suggested.
    ("--config.gm.wieght=1", "config.gm.wieght is not a known field (did you mean "
                             "config.gm.weight?)"),
    ("--config.trian.batch_size=8", "config.trian is not a known field"),
    ("--config.eval.epoch=3", "config.eval.epoch is not a known field (did you mean "
                              "config.eval.epochs?)"),
    # Wrong types, said in plain words.
    ("--config.train.batch_size=abc", "error: --config.train.batch_size: expected an int, "
                                      "found 'abc'\n"),
    ("--config.gm.weight=strong", "error: --config.gm.weight: expected a float, "
                                  "found 'strong'\n"),
    ("--config.train.class_balanced=maybe", "error: --config.train.class_balanced: expected "
                                            "true or false, found 'maybe'\n"),
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
]
PRESETS = "experiments/configs/{apy,awa1,awa2,cub,digits,flo,sun}.py"
BAD_COMMAND_LINES = [
    ([DIGITS], "--workdir"),
    (["--workdir=/tmp/x"], "--config"),
    (["--config=experiments/configs/nope.py", "--workdir=/tmp/x"],
     f"error: --config: no such config file experiments/configs/nope.py (the presets are "
     f"{PRESETS})\n"),
    (["--config=experiments/configs/nope.py:smoke", "--workdir=/tmp/x"],
     "no such config file experiments/configs/nope.py "),
    (["--config=experiments/configs/awa1.py:fast", "--workdir=/tmp/x"],
     "error: --config=experiments/configs/awa1.py:fast: unknown config argument 'fast' "
     "(expected nothing or :smoke)\n"),
    ([DIGITS, "--workdir=/tmp/x", "extra"], "expected only flags"),
    ([DIGITS, "--workdir=/tmp/x", "--calibration_gamma_from=/no/such/run"], "results.json"),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
  """{case: {"code", "stderr", "compiles"}} of every case, run in one process."""
  base = tmp_path_factory.mktemp("config_errors")
  cases = {f"override{i}": [DIGITS, override, f"--workdir={base / f'o{i}'}"]
           for i, (override, _) in enumerate(BAD_OVERRIDES)}
  cases.update({f"command{i}": args for i, (args, _) in enumerate(BAD_COMMAND_LINES)})
  cases["two_problems"] = [DIGITS, "--config.train.batch_size=-3", "--config.eval.momentum=1.5",
                           f"--workdir={base / 'two'}"]
  (base / "file").write_text("x")
  cases["workdir_is_a_file"] = [DIGITS, f"--workdir={base / 'file'}"]
  (base / "raises.py").write_text("from gmn_jax import config\n\nX = config.no_such_name\n")
  cases["config_raises"] = [f"--config={base / 'raises.py'}", f"--workdir={base / 'r'}"]
  (base / "no_arg.py").write_text("from gmn_jax import config\n\n"
                                  "def get_config():\n  return config.get_base_config()\n")
  cases["config_takes_no_argument"] = [f"--config={base / 'no_arg.py'}:smoke",
                                       f"--workdir={base / 'n'}"]
  # A preset's default data_dir (data/xlsa17/CUB) before download_data ran.
  cases["no_data"] = ["--config=experiments/configs/cub.py",
                      f"--config.data_dir={base / 'data' / 'xlsa17' / 'CUB'}",
                      f"--workdir={base / 'd'}"]
  other = base / "other"
  workdirs.prepare(digits.get_config(), str(other))  # seeds (1, 67, 99)
  cases["other_config"] = [DIGITS, "--config.gm.weight=5.0", "--config.seeds=(1,)",
                           f"--workdir={other}"]
  (base / "cases.json").write_text(json.dumps(cases))
  (base / "driver.py").write_text(_DRIVER)
  result = subprocess.run(
      [sys.executable, str(base / "driver.py"), str(base / "cases.json"),
       str(base / "outcomes.json")], cwd=REPO, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((base / "outcomes.json").read_text())
  # Precondition of every "compiles == 0" below: the driver's listener does
  # count compilations (a jitted probe ran before the cases).
  assert results["probe"] > 0, results["probe"]
  return base, results


def assert_one_line_exit_2(outcome, needle):
  assert outcome["code"] == 2, outcome
  stderr = outcome["stderr"]
  assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
  assert needle in stderr and "Traceback" not in stderr, stderr
  assert outcome["compiles"] == 0


@pytest.mark.parametrize("index", range(len(BAD_OVERRIDES)),
                         ids=[o.split("=")[0][2:] for o, _ in BAD_OVERRIDES])
def test_bad_config_fails_in_one_line_before_compiling(outcomes, index):
  base, results = outcomes
  assert_one_line_exit_2(results[f"override{index}"], BAD_OVERRIDES[index][1])
  assert not (base / f"o{index}").exists()  # nothing was written


def test_every_problem_is_named_in_the_one_line(outcomes):
  outcome = outcomes[1]["two_problems"]
  assert_one_line_exit_2(outcome, "config.train.batch_size")
  assert "config.eval.momentum" in outcome["stderr"]


@pytest.mark.parametrize("index", range(len(BAD_COMMAND_LINES)))
def test_bad_command_lines_fail_in_one_line(outcomes, index):
  assert_one_line_exit_2(outcomes[1][f"command{index}"], BAD_COMMAND_LINES[index][1])


def test_a_config_file_that_raises_is_named_with_its_error_and_line(outcomes):
  base, results = outcomes
  assert_one_line_exit_2(
      results["config_raises"],
      f"error: --config: {base / 'raises.py'}, line 3 raised AttributeError: module "
      "'gmn_jax.config' has no attribute 'no_such_name'\n")
  assert_one_line_exit_2(
      results["config_takes_no_argument"],
      f"error: --config={base / 'no_arg.py'}:smoke: {base / 'no_arg.py'} raised TypeError: "
      "get_config() takes 0 positional arguments but 1 was given\n")


def test_a_missing_data_dir_says_how_to_get_the_data(outcomes):
  base, results = outcomes
  parent = base / "data" / "xlsa17"
  outcome = results["no_data"]
  assert_one_line_exit_2(outcome, "error: config.data_dir: expected an existing directory or "
                                  "a value starting with 'builtin:', found '")  # (cut at 60)
  assert outcome["stderr"].endswith(
      f" (get the benchmark with python -m experiments.download_data --dataset=CUB "
      f"--out={parent}, or write stand-in data with python -m experiments.make_synthetic "
      "--preset=CUB --out_dir=DIR, or name the directory with --config.data_dir=DIR)\n")


def test_a_workdir_that_is_a_file_is_refused(outcomes):
  assert_one_line_exit_2(outcomes[1]["workdir_is_a_file"], "a directory (the workdir)")


def test_a_workdir_of_another_config_is_refused_with_the_differing_fields(outcomes):
  base, results = outcomes
  outcome = results["other_config"]
  weight = json.dumps(digits.get_config().gm.weight)
  assert_one_line_exit_2(outcome, f"gm.weight: {weight} -> 5.0")
  # Other seeds extend a run: they are not among the differences.
  assert "seeds" not in outcome["stderr"].split("differing fields:")[1].split(")")[0]
  assert "--overwrite" in outcome["stderr"]
  stored = json.loads((base / "other" / "config.json").read_text())
  assert stored["config"] == config_utils.config_fingerprint(digits.get_config())  # untouched


def test_fields_that_only_change_reporting_may_differ_on_resume(tmp_path):
  workdirs.prepare(tiny_config(), str(tmp_path))  # train.log_every = 1
  workdirs.prepare(tiny_config(**{"train.log_every": 3}), str(tmp_path))
  stored = json.loads((tmp_path / "config.json").read_text())["config"]
  assert stored["train.log_every"] == 3  # the resumed run's value is recorded
  # A field that changes the training still refuses.
  with pytest.raises(ConfigError, match="gm.weight"):
    workdirs.prepare(tiny_config(**{"train.log_every": 3, "gm.weight": 3.0}), str(tmp_path))


def test_a_workdir_resumes_across_gm_implementations_and_from_before_the_field(tmp_path):
  workdirs.prepare(tiny_config(**{"gm.implementation": "autodiff"}), str(tmp_path))
  workdirs.prepare(tiny_config(**{"gm.implementation": "gram"}), str(tmp_path))
  # A workdir written before gm.implementation existed (and before
  # config.json held provenance: the bare fingerprint).
  stored = json.loads((tmp_path / "config.json").read_text())["config"]
  del stored["gm.implementation"]
  (tmp_path / "config.json").write_text(json.dumps(stored))
  workdirs.prepare(tiny_config(), str(tmp_path))
  # Any other GM field still refuses.
  with pytest.raises(ConfigError, match="gm.weight"):
    workdirs.prepare(tiny_config(**{"gm.weight": 3.0}), str(tmp_path))


def test_a_workdir_from_before_added_fields_resumes_at_their_defaults(tmp_path):
  def is_added(field):  # the fields issue 15 added to the schema
    return (field.split(".")[0] in ("regressor", "mmd", "cvae") or field.startswith("eval.real_only.")
            or field in ("train.sampling", "eval.margin"))

  base = gmn_config.get_base_config()
  config = tiny_config()
  # tiny_config shrinks some of them; an old workdir has them at no value.
  config.update_from_flattened_dict({
      f: base[f.split(".")[0]][f.split(".")[1]]
      for f in config_utils.config_fingerprint(config) if is_added(f) and f.count(".") == 1})
  workdirs.prepare(config, str(tmp_path))
  stored = json.loads((tmp_path / "config.json").read_text())["config"]
  old = {f: v for f, v in stored.items() if not is_added(f)}
  assert len(old) < len(stored) and "train.sampling" not in old
  (tmp_path / "config.json").write_text(json.dumps(old))
  workdirs.prepare(config, str(tmp_path))  # the defaults: what the old code did
  (tmp_path / "config.json").write_text(json.dumps(old))
  config.train.sampling = "reference"
  with pytest.raises(ConfigError, match=r'train\.sampling: "iid" -> "reference"'):
    workdirs.prepare(config, str(tmp_path))


def test_a_workdir_written_with_the_retired_selection_field_resumes(tmp_path):
  # eval.selection left the schema; "last" meant what every run does now.
  # Like any eval.* field it decides only stage 2, so no value of it refuses.
  workdirs.prepare(tiny_config(), str(tmp_path))
  stored = json.loads((tmp_path / "config.json").read_text())["config"]
  for value in ("last", "validation"):
    (tmp_path / "config.json").write_text(json.dumps({**stored, "eval.selection": value}))
    previous = workdirs.prepare(tiny_config(), str(tmp_path))
    assert ("eval.selection" in previous) == (value != "last")


def test_provenance_is_recorded_beside_the_config(tmp_path):
  workdirs.prepare(tiny_config(), str(tmp_path))
  provenance = json.loads((tmp_path / "config.json").read_text())["provenance"]
  assert provenance["python"] == platform.python_version()
  assert provenance["jax"] == jax.__version__ and provenance["jaxlib"] == jaxlib.__version__
  assert provenance["gmn_jax"] == gmn_jax.__version__
  assert provenance["devices"]["count"] == jax.device_count() == 4  # the tests' CPU devices
  assert provenance["devices"]["platform"] == "cpu"
  assert provenance["command"] == shlex.join(sys.argv)
  git = provenance["git"]
  repo_head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                             text=True, check=False)
  if repo_head.returncode == 0:  # a checkout: the commit of the code under test
    assert git["commit"] == repo_head.stdout.strip() and isinstance(git["dirty"], bool)
  else:
    assert git is None
