"""Tests for the check_data binary (run as a subprocess, as a user would)."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.io

from experiments import check_data
from gmn_jax.data.xlsa17 import load_xlsa17

_REPO = pathlib.Path(__file__).resolve().parents[1]


def _write_dataset(directory, num_classes=5, per_class=6, seen=3):
  """A valid directory: classes < `seen` split 4 trainval + 2 test_seen."""
  directory.mkdir()
  labels = np.repeat(np.arange(num_classes), per_class)
  index = np.arange(labels.size)
  is_seen = labels < seen
  in_trainval = is_seen & (index % per_class < 4)
  loc = lambda mask: (np.flatnonzero(mask) + 1).reshape(-1, 1).astype(np.uint16)
  scipy.io.savemat(directory / "res101.mat",
                   {"features": np.random.default_rng(0).random((12, labels.size)),
                    "labels": (labels + 1).reshape(-1, 1)})
  scipy.io.savemat(directory / "att_splits.mat",
                   {"att": np.random.default_rng(1).random((7, num_classes)) + 0.1,
                    "trainval_loc": loc(in_trainval), "test_seen_loc": loc(is_seen & ~in_trainval),
                    "test_unseen_loc": loc(~is_seen)})
  return directory


def _run(*flags):
  return subprocess.run([sys.executable, "-m", "experiments.check_data", *flags], cwd=_REPO,
                        capture_output=True, text=True, timeout=120, check=False)


def test_summary_counts(tmp_path):
  summary = check_data.summarize(load_xlsa17(_write_dataset(tmp_path / "toy")))
  lines = summary.splitlines()
  assert "N=30 in the three splits, feature dim D=12" in lines[1]
  assert "source att, dim K=7, 5 classes" in lines[2]
  assert "3 seen, 2 unseen" in lines[3]
  assert lines[4].split() == ["train", "12", "examples,", "3", "classes,", "4-4", "per", "class"]
  assert "6 examples, 3 classes, 2-2 per class" in lines[5]
  assert "12 examples, 2 classes, 6-6 per class" in lines[6]


def test_valid_directory_exits_0(tmp_path):
  result = _run(f"--data_dir={_write_dataset(tmp_path / 'toy')}", "--split=validation")
  assert result.returncode == 0, result.stderr
  assert "dataset       toy (split mode validation)" in result.stdout
  assert "1 of 3 seen classes" in result.stderr  # the synthesised split is logged


@pytest.mark.parametrize("breakage, expected", [
    ("zero_based_loc", "att_splits.mat [trainval_loc]: expected 1-based (MATLAB) indices"),
    ("bad_embedding_name",
     "[embedding]: expected one of att, sent, binary, att+sent, found 'glove'"),
], ids=["zero_based_loc", "bad_embedding_name"])
def test_broken_input_exits_2_with_one_line(tmp_path, breakage, expected):
  directory = _write_dataset(tmp_path / "toy")
  flags = [f"--data_dir={directory}"]
  if breakage == "zero_based_loc":
    splits = {key: value for key, value in scipy.io.loadmat(directory / "att_splits.mat").items()
              if not key.startswith("__")}
    splits["trainval_loc"] = splits["trainval_loc"] - 1
    scipy.io.savemat(directory / "att_splits.mat", splits)
  else:
    flags.append("--embedding=glove")
  result = _run(*flags)
  assert result.returncode == 2
  assert result.stdout == ""
  assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
  assert expected in result.stderr


def test_loading_path_does_not_import_jax():
  code = ("import sys, experiments.check_data, gmn_jax.data.registry; "
          "print(sorted(m for m in ('jax', 'sklearn', 'flax') if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], cwd=_REPO, capture_output=True, text=True,
                          timeout=120, check=True)
  assert result.stdout.strip() == "[]"
