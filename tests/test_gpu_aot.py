"""Tests of the experiments.benchmarking.gpu_aot binary and its helpers.

It reads the dumps of tests/data/xla_gpu_dump (the program and its known
products are described in make_fixtures.py there and in test_gpu_dump.py).
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

from experiments.benchmarking import gpu_aot
from experiments.benchmarking import gpu_dump
from experiments.benchmarking import kernel_model as km
from gmn_jax.errors import ConfigError
from gmn_jax.errors import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "data", "xla_gpu_dump")
TRITON = os.path.join(FIXTURES, "triton")
CUBLAS = os.path.join(FIXTURES, "cublas")
FLOP_PER_ITERATION = 4 * 2 * (2 * 64 * 32 * 32) + 2 * 64 * 32 * 48  # 1,245,184.


def test_fit_recovers_the_bandwidth_and_latency_that_made_the_times():
  dumps = {1: gpu_dump.analyse_dump(TRITON), 2: gpu_dump.analyse_dump(CUBLAS)}
  truth = km.Device(373e12, 2.5e12, 2.0e-6, 132)
  measured = {s: km.model_time(d, truth).total * 1e3 for s, d in dumps.items()}
  fitted = gpu_aot.fit_device(dumps, measured, km.Device(373e12, 1e12, 0.0, 132))
  for s, d in dumps.items():
    assert km.model_time(d, fitted).total * 1e3 == pytest.approx(measured[s], rel=0.02)
  with pytest.raises(ConfigError, match="at least two"):
    gpu_aot.fit_device(dumps, {1: 1.0}, truth)


def _run(*flags):
  return subprocess.run([sys.executable, "-m", "experiments.benchmarking.gpu_aot", *flags],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)


def test_parse_measured():
  assert gpu_aot.parse_measured("1:2.14, 2:3.43") == {1: 2.14, 2: 3.43}
  for bad in ("1=2.0", "0:1.0", "2:-1", "x:1"):
    with pytest.raises(ConfigError, match="--measured_ms"):
      gpu_aot.parse_measured(bad)


def test_measured_from_a_benchmark_json(tmp_path):
  path = tmp_path / "bench.json"
  path.write_text('{"ms_per_iteration": 2.0, "scaling": [{"row": "seeds", "value": 2, '
                  '"ms_per_iteration": 3.0}, {"row": "batch", "value": 64, '
                  '"ms_per_iteration": 9.0}]}')
  assert gpu_aot.measured_from_json(str(path)) == {1: 2.0, 2: 3.0}
  path.write_text("{}")
  with pytest.raises(DataError, match="ms_per_iteration"):
    gpu_aot.measured_from_json(str(path))


def test_binary_analyses_dumps_and_fits_measured_times(tmp_path):
  shutil.copytree(TRITON, tmp_path / "main")  # The benchmark's name for S = 1.
  shutil.copytree(CUBLAS, tmp_path / "seeds_2")
  (tmp_path / "notes").mkdir()  # Folders without a dump are skipped.
  dumps = {1: gpu_dump.analyse_dump(TRITON), 2: gpu_dump.analyse_dump(CUBLAS)}
  truth = km.Device(373e12, 2.5e12, 2.0e-6, 132)
  measured = {s: km.model_time(d, truth).total * 1e3 for s, d in dumps.items()}
  out = tmp_path / "model.json"
  result = _run(f"--analyse_dir={tmp_path}", f"--json_out={out}", "--measured_ms=" + ",".join(
      f"{s}:{ms!r}" for s, ms in measured.items()))
  assert result.returncode == 0, result.stderr
  assert "fitted to the measured times" in result.stdout
  assert "| S = 1 | 32 | 16.0 |" in result.stdout
  rows = {r["program"]: r for r in json.loads(out.read_text())["rows"]}
  assert rows[1]["gflop_per_iteration"] == pytest.approx(FLOP_PER_ITERATION / 1e9)
  assert rows[2]["model_ms"] == pytest.approx(measured[2], rel=0.02)
  assert rows[1]["lower_bound_ms"] < rows[1]["model_ms"]
  # Without measurements the fixed bandwidth and latency are used.
  plain = _run(f"--analyse_dir={tmp_path}", "--bandwidth=1e12", "--launch_latency=1e-6")
  assert plain.returncode == 0, plain.stderr
  assert "model: 1.00 TB/s, 1.00 µs per launch" in plain.stdout


@pytest.mark.parametrize("flags,message", [
    ([], "exactly one of --out_dir"),
    (["--out_dir=a", "--analyse_dir=b"], "exactly one of --out_dir"),
    (["--analyse_dir=/nonexistent/folder"], "expected a folder"),
    (["--analyse_dir=."], "XLA:GPU dumps"),
    (["--analyse_dir=.", "--measured_ms=1=2"], "--measured_ms"),
    (["--analyse_dir=.", "--target_config=/nonexistent.txtpb"], "--target_config"),
    ([f"--analyse_dir={FIXTURES}", "--json_out=/nonexistent/folder/model.json"],
     "--json_out: cannot write"),
])
def test_binary_errors_are_one_line(flags, message):
  result = _run(*flags)
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def _has_cuda_plugin():
  if importlib.util.find_spec("jax_plugins") is None:
    return False
  return any(importlib.util.find_spec(f"jax_plugins.{name}") is not None
             for name in ("xla_cuda12", "xla_cuda13"))


@pytest.mark.skipif(_has_cuda_plugin(),
                    reason="the CUDA plugin is installed, so compiling would work")
def test_compiling_without_the_cuda_plugin_says_what_to_install(tmp_path):
  result = _run("--config=experiments/configs/digits.py", f"--out_dir={tmp_path / 'out'}",
                "--seed_counts=1", "--iterations=1")
  assert result.returncode == 2
  assert "jax[cuda12]" in result.stderr and result.stderr.startswith("error: ")


def test_existing_dump_folders_are_never_overwritten(tmp_path):
  (tmp_path / "seeds_1").mkdir()
  (tmp_path / "seeds_1" / "mine.txt").write_text("keep")
  result = _run("--config=experiments/configs/digits.py", f"--out_dir={tmp_path}",
                "--seed_counts=1", "--iterations=1")
  assert result.returncode == 2 and "never overwritten" in result.stderr
  assert (tmp_path / "seeds_1" / "mine.txt").read_text() == "keep"


def test_target_properties_are_read_from_the_target_config():
  with open(gpu_aot.DEFAULT_TARGET, encoding="utf-8") as f:
    text = f.read()
  assert gpu_aot.target_num_sms(text) == 132
  assert gpu_aot.target_peak_bandwidth(text) == pytest.approx(3.35232e12)
  assert math.isclose(gpu_aot.target_num_sms("core_count: 7"), 7)
