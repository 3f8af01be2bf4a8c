"""Long runs, as a user lives with them: heartbeats, stops within seconds, faults survived.

Real subprocesses of the main binary on the embedded digits (one seed, one
long host call of stage 1), real signals and real files:

* the first heartbeat comes as soon as the compiled call runs, and a SIGINT
  then stops the call within seconds (not at its end), checkpoints, and a
  rerun resumes to the straight run's numbers bit for bit; a second Ctrl-C
  exits at once without a traceback, and the workdir still resumes;
* a damaged newest checkpoint costs one warning line and the run ends with
  the straight run's numbers; with every checkpoint damaged a launch ends
  with one line naming the directory and status 2;
* a second launch on a live workdir is refused within seconds, naming the
  workdir and the live process; a lock left by a killed process blocks
  nothing (the lock a launch takes first is then granted).

The first takes two minutes of real processes and is marked slow (outside
the default run and CI: `python -m pytest -m slow`): test_preemption covers
a stop inside a call and its exact resume in process, a real SIGTERM (then
kill -9) and resume in subprocesses, and the second Ctrl-C.
"""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from gmn_jax import workdir as workdirs

REPO = pathlib.Path(__file__).resolve().parents[1]
ITERATIONS = 600  # one host call of 2-5 s on a 2-core CPU
COMMAND = [sys.executable, "-m", "experiments.train", "--config=experiments/configs/digits.py",
           "--config.seeds=(1,)", f"--config.train.num_iterations={ITERATIONS}",
           f"--config.train.iterations_per_call={ITERATIONS}",
           f"--config.train.checkpoint_every={ITERATIONS}", "--config.train.log_every=300",
           "--config.eval.epochs=2", "--config.eval.num_classifier_seeds=1"]
TIMEOUT_S = 300


def _env(tmp_path):
  # The launches share compilations through JAX's persistent cache.
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
              JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
              XLA_FLAGS=" ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                 if "device_count" not in f))


def _run(tmp_path, workdir, *extra):
  result = subprocess.run([*COMMAND, f"--workdir={workdir}", *extra], cwd=REPO,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=TIMEOUT_S)
  return result


def _start(tmp_path, workdir):
  return subprocess.Popen([*COMMAND, f"--workdir={workdir}"], cwd=REPO, env=_env(tmp_path),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_line(proc, needle, timeout=TIMEOUT_S):
  """Reads the process's stderr until a line holds `needle`; returns the lines read."""
  lines, deadline = [], time.monotonic() + timeout
  while time.monotonic() < deadline:
    line = proc.stderr.readline()
    if not line:
      break
    lines.append(line)
    if needle in line:
      return lines
  proc.kill()
  raise AssertionError(f"no line with {needle!r} in:\n{''.join(lines)[-3000:]}")


def _metrics(workdir):
  return json.loads((pathlib.Path(workdir) / "results.json").read_text())["metrics"]


def _ok(result):
  assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-3000:])
  return result


@pytest.mark.slow
def test_heartbeat_then_a_stop_within_seconds_then_an_exact_resume(tmp_path):
  straight = tmp_path / "straight"
  _ok(_run(tmp_path, straight))

  # The first heartbeat comes right after compilation, from inside the call.
  workdir = tmp_path / "stopped"
  proc = _start(tmp_path, workdir)
  _wait_for_line(proc, f"seed 1: stage 1: iteration 1/{ITERATIONS}")
  signalled = time.monotonic()
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=TIMEOUT_S)
  stop_s = time.monotonic() - signalled
  assert proc.returncode == 130, stderr[-3000:]
  lines = [l for l in stderr.splitlines() if l.startswith("interrupted:")]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
  assert "at generator iteration " in lines[0], stderr[-3000:]
  stopped_at = int(lines[0].split("at generator iteration ")[1].split()[0])
  assert 1 <= stopped_at < ITERATIONS  # inside the one call, not at its end
  assert "still to run: seed 1;" in lines[0]
  assert stop_s < 30, stop_s

  # The rerun resumes there; a second Ctrl-C then exits at once (one line,
  # no traceback), and the workdir still resumes, to the straight numbers.
  proc = _start(tmp_path, workdir)
  lines = _wait_for_line(proc, f"seed 1: stage 1: iteration {stopped_at + 1}/{ITERATIONS}")
  assert any(f"resuming stage 1 from iteration {stopped_at}" in l for l in lines), lines
  proc.send_signal(signal.SIGINT)
  proc.send_signal(signal.SIGINT)
  _, stderr = proc.communicate(timeout=TIMEOUT_S)
  assert proc.returncode == 130 and "Traceback" not in stderr, stderr[-3000:]
  assert len([l for l in stderr.splitlines() if l.startswith("interrupted:")]) == 1
  _ok(_run(tmp_path, workdir))
  assert _metrics(workdir) == _metrics(straight)


def _damage(step_dir: pathlib.Path) -> None:
  """Truncates the array data of a checkpoint step, as a crash or a full disk would."""
  files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.stat().st_size > 64]
  assert files, list(step_dir.rglob("*"))
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(path.stat().st_size // 3)


def test_a_damaged_checkpoint_and_a_second_launch_are_survived(tmp_path):
  straight = tmp_path / "straight"
  _ok(_run(tmp_path, straight, "--config.train.checkpoint_every=300"))

  # The newest of the two kept steps (300, 600) is damaged; the seed's result
  # is gone, as after a crash right after stage 1.
  workdir = tmp_path / "crashed"
  shutil.copytree(straight, workdir)
  checkpoints = workdir / "checkpoints" / "seed_1"
  assert sorted((p.name for p in checkpoints.iterdir() if p.name.isdigit()), key=int) == [
      "300", "600"]
  _damage(checkpoints / "600")
  for name in ("results.json", "seed_1/result.json"):
    (workdir / name).unlink()
  relaunch = _ok(_run(tmp_path, workdir, "--config.train.checkpoint_every=300"))
  warnings = [l for l in relaunch.stderr.splitlines() if "found a damaged one" in l]
  assert len(warnings) == 1 and f"{checkpoints / '600'}" in warnings[0], relaunch.stderr[-3000:]
  assert "resuming stage 1 from iteration 300" in relaunch.stderr
  assert "Traceback" not in relaunch.stderr
  assert _metrics(workdir) == _metrics(straight)

  # Every checkpoint damaged: one short line naming the directory, status 2.
  for step in ("300", "600"):
    _damage(checkpoints / step)
  (workdir / "seed_1" / "result.json").unlink()
  failed = _run(tmp_path, workdir, "--config.train.checkpoint_every=300")
  assert failed.returncode == 2, failed.stderr[-3000:]
  errors = [l for l in failed.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and "Traceback" not in failed.stderr, failed.stderr[-3000:]
  assert str(workdir / "checkpoints") in errors[0] and "only damaged ones" in errors[0]
  assert len(errors[0]) < 400, errors[0]

  # A second launch on a live workdir is refused within seconds.
  live = tmp_path / "live"
  proc = _start(tmp_path, live)
  try:
    _wait_for_line(proc, f"seed 1: stage 1: iteration 1/{ITERATIONS}")
    started = time.monotonic()
    second = _run(tmp_path, live)
    assert time.monotonic() - started < 60
    assert second.returncode == 2, second.stderr[-3000:]
    errors = [l for l in second.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1, second.stderr[-3000:]
    assert f"{live}: in use by process {proc.pid}" in errors[0]
  finally:
    proc.kill()  # kill -9: its lock must not block the next launch
    proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert str(proc.pid) in (live / workdirs.LOCK_FILE).read_text()  # the dead holder's file
  with workdirs.lock(str(live)):  # what a launch takes first: not refused
    assert str(os.getpid()) in (live / workdirs.LOCK_FILE).read_text()
