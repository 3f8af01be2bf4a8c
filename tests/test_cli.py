"""experiments/cli.py and the binaries that share it: one-line errors, status 2."""

import json
import logging
import os
import subprocess
import sys
import types

from absl import logging as absl_logging
import pytest

from experiments import cli
from gmn_jax.errors import ConfigError
from gmn_jax.errors import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every absl binary under experiments/ except train, ablation and sweep (tested with theirs).
BINARIES = ("benchmark", "benchmarking.bench_gm", "benchmarking.gpu_aot", "check_data",
            "benchmarking.bench_sweep", "download_data", "make_synthetic", "plot", "synthesize",
            "synthetic_baseline")


def _run(module, *args):
  return subprocess.run([sys.executable, "-m", f"experiments.{module}", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_fail_prints_one_line_and_exits_2(capsys):
  with pytest.raises(SystemExit) as exit_info:
    cli.fail(DataError("a.mat", "labels", "a vector", "a\nmatrix"))
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "error: a.mat [labels]: expected a vector, found a matrix\n"


def test_reject_arguments_allows_the_program_name_only(capsys):
  cli.reject_arguments(["prog"])
  with pytest.raises(SystemExit) as exit_info:
    cli.reject_arguments(["prog", "x", "y"])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == "error: command line: expected only flags, found x y\n"


def test_load_config_names_the_example_when_the_flag_is_missing():
  holder = types.SimpleNamespace(value=None)  # What an unset config flag holds.
  with pytest.raises(ConfigError, match="--config: expected a config file such as "
                     "experiments/configs/cub.py, found nothing"):
    cli.load_config(holder, example="experiments/configs/cub.py")


def test_write_results_writes_whole_json_or_a_config_error(tmp_path, capsys):
  path = tmp_path / "results.json"
  cli.write_results(str(path), {"b": 1.5, "a": [1, 2]})
  assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1.5}
  assert capsys.readouterr().out == f"results: {path}\n"
  with pytest.raises(ConfigError, match="--json_out: cannot write .*missing"):
    cli.write_results(str(tmp_path / "missing" / "results.json"), {})


@pytest.mark.parametrize("module", BINARIES)
def test_binaries_reject_positional_arguments_in_one_line(module):
  result = _run(module, "stray")
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.splitlines() == [
      "error: command line: expected only flags, found stray"]


@pytest.mark.parametrize("module", ["check_data", "plot", "benchmark", "benchmarking.gpu_aot"])
def test_binaries_reject_unknown_flags_in_one_line(module):
  result = _run(module, "--colour=blue")
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "colour" in lines[0]


def _jax_record(level, msg, name="jax._src.xla_bridge"):
  return logging.LogRecord(name, level, "xla_bridge.py", 1, msg, None, None)


def test_the_probe_filter_drops_only_jax_info_about_missing_backends(monkeypatch):
  keep = cli._PlatformProbeFilter().filter  # pylint: disable=protected-access
  probe = "Unable to initialize backend 'tpu': INTERNAL: Failed to open libtpu.so"
  assert not keep(_jax_record(logging.INFO, probe))
  assert keep(_jax_record(logging.WARNING, probe))  # a real warning always shows
  assert keep(_jax_record(logging.INFO, "Initializing backend 'cpu'"))
  assert keep(_jax_record(logging.INFO, probe, name="my_module"))
  assert keep(_jax_record(logging.WARNING, "An NVIDIA GPU may be present on this machine, "
                          "but a CUDA-enabled jaxlib is not installed. Falling back to cpu."))
  monkeypatch.setattr(absl_logging, "get_verbosity", lambda: absl_logging.DEBUG)
  assert keep(_jax_record(logging.INFO, probe))  # --verbosity=1 shows everything


def test_a_binary_prints_no_backend_probe_lines_unless_asked(tmp_path):
  # Without JAX_PLATFORMS, JAX probes every backend it knows at its first use
  # of a device (--num_devices=0 asks for them all before the config fails).
  env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
  args = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/digits.py",
          "--num_devices=0", "--config.train.batch_size=-3", f"--workdir={tmp_path}"]
  runs = [subprocess.run(args + extra, cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=False, env=env) for extra in ([], ["--verbosity=1"])]
  quiet, verbose = runs
  assert quiet.returncode == verbose.returncode == 2, quiet.stderr[-2000:]
  assert quiet.stderr.splitlines() == [
      "error: config.train.batch_size: expected a positive integer, found -3"]
  if "Unable to initialize backend" not in verbose.stderr:
    pytest.skip("every backend JAX knows initialises on this machine")


@pytest.mark.parametrize("module", ["ablation", "sweep", "benchmark", "benchmarking.gpu_aot"])
def test_every_binary_with_a_config_names_a_missing_file_and_a_bad_argument(module):
  result = _run(module, "--config=experiments/configs/nope.py")
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.splitlines() == [
      "error: --config: no such config file experiments/configs/nope.py (the presets are "
      "experiments/configs/{apy,awa1,awa2,cub,digits,flo,sun}.py)"]
  result = _run(module, "--config=experiments/configs/digits.py:fast")
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.splitlines() == [
      "error: --config=experiments/configs/digits.py:fast: unknown config argument 'fast' "
      "(expected nothing or :smoke)"]
