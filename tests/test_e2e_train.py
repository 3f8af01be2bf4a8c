"""End to end: the README's main command, as a user runs it, on a tiny budget.

Three real subprocesses of `python -m experiments.train --config=
experiments/configs/digits.py` (cwd = the repository root, this
interpreter), each paying JAX's start-up and compilation:

1. a straight run of two generator seeds into a fresh workdir;
2. a copy of that workdir put back into the state a crash in seed 2's
   stage 1 leaves (seed 2's newest checkpoint step, its result, its eval
   files and the run's summaries deleted), then the same command again: it
   must resume seed 2 from the older checkpoint and reproduce the straight
   run bit for bit;
3. the same command on another copy of the finished workdir: it must train
   nothing and print and write the same results.

The expectations come from the documentation (README.md, docs/runs.md,
gmn_jax/train.py's docstring) and from independent recomputation with
numpy, never from the code under test.

Everything is one test function on purpose: the suite runs under
pytest-xdist (`-n 2`, default load scheduling), which may send the tests of
one module to both workers, and a module-scoped fixture would then launch
the three processes twice. The checks are separate functions, so a failure's
traceback names the check that failed.
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = (1, 2)
NUM_ITERATIONS = 30
CHECKPOINT_EVERY = 10
EPOCHS = 2
CLASSIFIER_SEEDS = 2
ARGS = (
    "--config=experiments/configs/digits.py",
    f"--config.train.num_iterations={NUM_ITERATIONS}",
    "--config.train.iterations_per_call=10",
    f"--config.train.checkpoint_every={CHECKPOINT_EVERY}",
    "--config.train.log_every=10",
    f"--config.eval.epochs={EPOCHS}",
    f"--config.eval.num_classifier_seeds={CLASSIFIER_SEEDS}",
    f"--config.seeds=({SEEDS[0]},{SEEDS[1]})",
)
TIMEOUT_S = 300  # per launch; each takes about 12 s on two CPU cores
# Checkpoints at 10, 20, 30; two kept (docs/runs.md: max_to_keep=2).
KEPT_STEPS = [20, 30]
# The table's rows (README.md: ZSL T1 and GZSL u / s / H; every run also
# reports AUSUC and the test-split oracle H cal.*) and their results.json names.
TABLE_ROWS = (("ZSL T1", "zsl_t1"), ("GZSL u", "gzsl_u"), ("GZSL s", "gzsl_s"),
              ("GZSL H", "gzsl_h"), ("AUSUC", "ausuc"), ("H cal.*", "oracle_calibrated_gzsl_h"))
# Metrics in percent; oracle_calibration_gamma is a score offset, not a percentage.
NOT_PERCENT = {"oracle_calibration_gamma"}


def _env():
  """The user's environment: CPU, without the tests' four virtual devices."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  return env


def _tail(text, n=4000):
  return text[-n:] if text else "<empty>"


def _train(workdir):
  """Runs the main command; fails the test (with the output's tail) unless status 0."""
  command = [sys.executable, "-m", "experiments.train", *ARGS, f"--workdir={workdir}"]
  started = time.perf_counter()
  try:
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=TIMEOUT_S, check=False)
  except subprocess.TimeoutExpired as error:
    out = error.stdout.decode() if isinstance(error.stdout, bytes) else error.stdout
    err = error.stderr.decode() if isinstance(error.stderr, bytes) else error.stderr
    pytest.fail(f"{' '.join(command)} ran past {TIMEOUT_S} s\nstdout:\n{_tail(out)}\n"
                f"stderr:\n{_tail(err)}")
  seconds = time.perf_counter() - started
  if result.returncode != 0:
    pytest.fail(f"{' '.join(command)} exited {result.returncode}\nstdout:\n"
                f"{_tail(result.stdout)}\nstderr:\n{_tail(result.stderr)}")
  return {"stdout": result.stdout, "stderr": result.stderr, "seconds": seconds,
          "results": _read_json(os.path.join(workdir, "results.json")), "workdir": workdir}


def _read_json(path):
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def _read_jsonl(path):
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in f if line.strip()]


def _without_wall_clock(records):
  return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


def _steps(checkpoint_dir):
  """The saved steps: the integer-named sub-directories (gmn_jax/checkpoint.py)."""
  return sorted(int(name) for name in os.listdir(checkpoint_dir) if name.isdigit())


def _snapshot(workdir):
  """{relative path: (size, mtime_ns)} of every file under workdir."""
  files = {}
  for root, _, names in os.walk(workdir):
    for name in names:
      path = os.path.join(root, name)
      info = os.stat(path)
      files[os.path.relpath(path, workdir)] = (info.st_size, info.st_mtime_ns)
  return files


def _launch_all(base):
  """The three launches; the straight run's workdir itself is never rerun."""
  straight_dir = str(base / "straight")
  straight = _train(straight_dir)

  # A crash in seed 2's stage 1 after its checkpoint 20 (and the metrics line
  # of step 30, which is written before checkpoint 30): seed 1 finished, seed 2
  # has no checkpoint 30, no result and no eval files, the run no summaries.
  crashed_dir = str(base / "crashed")
  shutil.copytree(straight_dir, crashed_dir)
  seed2 = os.path.join(crashed_dir, f"seed_{SEEDS[1]}")
  for name in ("result.json", "samples.npz"):
    os.remove(os.path.join(seed2, name))
  shutil.rmtree(os.path.join(seed2, "eval"))
  for name in ("results.json", "metrics.jsonl"):
    os.remove(os.path.join(crashed_dir, name))
  checkpoints = os.path.join(crashed_dir, "checkpoints", f"seed_{SEEDS[1]}")
  shutil.rmtree(os.path.join(checkpoints, str(KEPT_STEPS[-1])))
  assert _steps(checkpoints) == KEPT_STEPS[:-1]
  crashed_seed1 = _snapshot(os.path.join(crashed_dir, f"seed_{SEEDS[0]}"))
  resumed = _train(crashed_dir)
  resumed["seed1_before"] = crashed_seed1

  finished_dir = str(base / "finished")
  shutil.copytree(straight_dir, finished_dir)
  before = _snapshot(finished_dir)
  rerun = _train(finished_dir)
  rerun["before"] = before
  print(f"\nlaunch seconds: straight {straight['seconds']:.1f}, resumed "
        f"{resumed['seconds']:.1f}, finished rerun {rerun['seconds']:.1f}")
  return {"straight": straight, "resumed": resumed, "rerun": rerun}


def _check_entry(name, entry):
  assert set(entry) >= {"mean", "std", "per_seed"}, name
  values = entry["per_seed"]
  assert len(values) == len(SEEDS), name
  assert all(isinstance(v, float) and math.isfinite(v) for v in values), (name, values)
  if name not in NOT_PERCENT:
    # float32 percentages: 100 may come out a hair above.
    assert all(0.0 <= v <= 100.0 + 1e-4 for v in values), (name, values)
  assert entry["mean"] == pytest.approx(float(np.mean(np.array(values, np.float64))),
                                        rel=1e-12, abs=1e-12), name
  assert entry["std"] == pytest.approx(float(np.std(np.array(values, np.float64), ddof=0)),
                                       rel=1e-9, abs=1e-12), name


def _check_table(runs):
  straight = runs["straight"]
  results = straight["results"]
  lines = straight["stdout"].splitlines()
  header = next(i for i, line in enumerate(lines) if line.split() == ["metric", "mean", "±",
                                                                         "std", "per", "seed"])
  title = lines[header - 1]
  assert " on digits, 2 generator seeds (1, 2)" in title, title
  assert "(cwgan_gm)" in title and "mean ± std over seeds" in title, title
  rows = {}
  for line in lines[header + 1:]:
    match = re.fullmatch(r"(.+?)\s+(-?\d+\.\d\d) ± (\d+\.\d\d)\s+((?:-?\d+\.\d\d ?)+)", line)
    if match:
      rows[match.group(1)] = match
  assert [label for label, _ in TABLE_ROWS] == [label for label in rows
                                                if label in dict(TABLE_ROWS)], rows.keys()
  for label, name in TABLE_ROWS:
    entry = results["metrics"][name]
    match = rows[label]
    assert float(match.group(2)) == pytest.approx(entry["mean"], abs=0.005 + 1e-9), label
    assert float(match.group(3)) == pytest.approx(entry["std"], abs=0.005 + 1e-9), label
    printed = [float(v) for v in match.group(4).split()]
    assert printed == pytest.approx(entry["per_seed"], abs=0.005 + 1e-9), label
  assert lines[-1] == f"results: {straight['workdir']}/results.json"


def _check_results_json(runs):
  results = runs["straight"]["results"]
  assert set(results) >= {"dataset", "method", "paper_row", "seeds", "metrics", "per_seed",
                          "timings", "config"}
  assert results["dataset"] == "digits" and results["method"] == "cwgan_gm"
  assert results["seeds"] == list(SEEDS)
  assert results["config"]["train.num_iterations"] == NUM_ITERATIONS
  assert results["config"]["eval.epochs"] == EPOCHS
  assert results["config"]["seeds"] == list(SEEDS)
  metrics = results["metrics"]
  assert set(metrics) >= {name for _, name in TABLE_ROWS}
  for name, entry in metrics.items():
    _check_entry(name, entry)
  assert [r["seed"] for r in results["per_seed"]] == list(SEEDS)
  for index, seed_result in enumerate(results["per_seed"]):
    for name, entry in metrics.items():
      assert seed_result["metrics"][name] == entry["per_seed"][index], (name, index)
    per_classifier = seed_result["classifier_seeds"]
    for name, values in per_classifier.items():
      assert len(values) == CLASSIFIER_SEEDS, name
      # The mean over classifier seeds is taken in float32.
      assert seed_result["metrics"][name] == pytest.approx(float(np.mean(values)),
                                                           rel=1e-6), name
    # H is the harmonic mean of u and s, per final classifier.
    for u, s, h in zip(per_classifier["gzsl_u"], per_classifier["gzsl_s"],
                       per_classifier["gzsl_h"]):
      assert h == pytest.approx(2 * u * s / (u + s) if u + s else 0.0, rel=1e-4, abs=1e-6)
    assert all(len(curve) == EPOCHS for curve in seed_result["curves"].values())
    assert seed_result["timings"]["stage1_start_iteration"] == 0


def _check_workdir_files(runs):
  workdir, results = runs["straight"]["workdir"], runs["straight"]["results"]
  stored = _read_json(os.path.join(workdir, "config.json"))
  config = stored["config"]
  assert config == results["config"]
  assert f"--workdir={workdir}" in stored["provenance"]["command"]
  assert config["train.checkpoint_every"] == CHECKPOINT_EVERY
  summary_lines = _read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  assert [r["seed"] for r in summary_lines] == list(SEEDS)
  for line, seed_result in zip(summary_lines, results["per_seed"]):
    assert line["final/gzsl_h"] == seed_result["metrics"]["gzsl_h"]
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  for index, seed in enumerate(SEEDS):
    seed_dir = os.path.join(workdir, f"seed_{seed}")
    assert _read_json(os.path.join(seed_dir, "result.json")) == results["per_seed"][index]
    stage1 = _read_jsonl(os.path.join(seed_dir, "metrics.jsonl"))
    assert [r["step"] for r in stage1] == [10, 20, 30]
    assert all(math.isfinite(v) for r in stage1 for v in r.values())
    assert os.listdir(os.path.join(seed_dir, "tensorboard"))
    eval_log = _read_jsonl(os.path.join(seed_dir, "eval", "metrics.jsonl"))
    assert [r["step"] for r in eval_log] == list(range(1, EPOCHS + 1))
    with np.load(os.path.join(seed_dir, "samples.npz")) as samples:
      assert samples["generated_features"].shape[0] == samples["generated_labels"].shape[0] > 0
      assert np.all(np.isfinite(samples["generated_features"]))
    checkpoints = os.path.join(workdir, "checkpoints", f"seed_{seed}")
    assert _steps(checkpoints) == KEPT_STEPS
    for step in KEPT_STEPS:
      assert {"state", "extra"} <= set(os.listdir(os.path.join(checkpoints, str(step))))


def _check_resume_after_a_crash(runs):
  straight, resumed = runs["straight"], runs["resumed"]
  got, want = resumed["results"], straight["results"]
  # Seed 2 really resumed stage 1 from the older checkpoint; seed 1 was read back.
  assert f"seed {SEEDS[1]}: resuming stage 1 from iteration {KEPT_STEPS[0]}" in resumed["stderr"]
  assert f"seed {SEEDS[0]}: already finished" in resumed["stderr"]
  assert got["per_seed"][1]["timings"]["stage1_start_iteration"] == KEPT_STEPS[0]
  assert _snapshot(os.path.join(resumed["workdir"], f"seed_{SEEDS[0]}")) == \
      resumed["seed1_before"]
  # Exact equality of every float: the metrics and their per-seed values.
  assert got["metrics"] == want["metrics"]
  for name in want["metrics"]:
    assert got["metrics"][name]["per_seed"] == want["metrics"][name]["per_seed"], name
  for key in ("metrics", "classifier_seeds", "curves", "seen_unseen_curves"):
    assert got["per_seed"][1][key] == want["per_seed"][1][key], key
  # The stage-1 log: the crashed attempt's line of step 30 was replaced by the
  # resumed run's, which equals the straight run's.
  logs = [_without_wall_clock(_read_jsonl(os.path.join(run["workdir"], f"seed_{SEEDS[1]}",
                                                       "metrics.jsonl")))
          for run in (straight, resumed)]
  assert [r["step"] for r in logs[1]] == [10, 20, 30]
  assert logs[1] == logs[0]
  # The final generators are the same: identical generated features.
  samples = [np.load(os.path.join(run["workdir"], f"seed_{SEEDS[1]}", "samples.npz"))
             for run in (straight, resumed)]
  np.testing.assert_array_equal(samples[1]["generated_features"],
                                samples[0]["generated_features"])
  checkpoints = os.path.join(resumed["workdir"], "checkpoints", f"seed_{SEEDS[1]}")
  assert _steps(checkpoints) == KEPT_STEPS


def _check_rerun_of_a_finished_workdir(runs):
  straight, rerun = runs["straight"], runs["rerun"]
  for seed in SEEDS:
    assert f"seed {seed}: already finished" in rerun["stderr"]
    assert f"seed {seed}: resuming" not in rerun["stderr"]
  assert f"step 10/{NUM_ITERATIONS}" not in rerun["stderr"]  # no progress lines
  after = _snapshot(rerun["workdir"])
  # No checkpoint, stage-1 log or seed result was written again.
  untouched = [path for path in rerun["before"]
               if path.startswith("checkpoints") or path.startswith("seed_")]
  assert untouched and all(after.get(path) == rerun["before"][path] for path in untouched)
  # Nothing disappeared, but for TensorBoard files replaced one for one (a
  # rerun rewrites the run-level summary, and adds no event file).
  is_event = lambda path: "tfevents" in path
  assert {p for p in after if not is_event(p)} >= {p for p in rerun["before"] if not is_event(p)}
  event_dirs = lambda files: sorted(os.path.dirname(p) for p in files if is_event(p))
  assert event_dirs(after) == event_dirs(rerun["before"])
  # Equal but for when and by which command it was written.
  assert {**rerun["results"], "provenance": None} == {**straight["results"], "provenance": None}
  assert rerun["stdout"].replace(rerun["workdir"], "W") == \
      straight["stdout"].replace(straight["workdir"], "W")


def test_main_command_end_to_end(tmp_path):
  """Exit 0, table, results.json, workdir files; crash + resume and a finished
  rerun reproduce the run bit for bit."""
  runs = _launch_all(tmp_path)
  _check_table(runs)
  _check_results_json(runs)
  _check_workdir_files(runs)
  _check_resume_after_a_crash(runs)
  _check_rerun_of_a_finished_workdir(runs)
