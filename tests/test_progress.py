"""Tests of gmn_jax.progress: when it logs, speed, ETA, formatting, the bar."""

import io
import math

import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import progress
from gmn_jax.progress import ProgressLogger


class FakeClock:
  """A clock the test advances by hand."""

  def __init__(self):
    self.now = 0.0

  def __call__(self) -> float:
    return self.now


class Terminal(io.StringIO):
  """A text stream that says it is a terminal."""

  def isatty(self) -> bool:
    return True


class RecordingWriter:

  def __init__(self):
    self.calls = []

  def write_scalars(self, step, scalars):
    self.calls.append((step, dict(scalars)))


@pytest.fixture
def logged(monkeypatch):
  """The lines the reporters emit (to the absl log or stderr)."""
  messages = []
  monkeypatch.setattr(progress, "emit", messages.append)
  return messages


def test_logs_when_a_multiple_of_log_every_is_crossed(logged):
  clock = FakeClock()
  logger = ProgressLogger(1000, log_every=100, stream=io.StringIO(),
                          clock=clock)
  logged_steps = []
  for step in (50, 100, 150, 250, 300, 999, 1000):
    clock.now += 1.0
    if logger.update(step, {"loss": 1.0}):
      logged_steps.append(step)
  assert logged_steps == [100, 250, 300, 999, 1000]
  assert len(logged) == 5


def test_speed_is_over_the_last_interval_and_eta_follows(logged):
  clock = FakeClock()
  writer = RecordingWriter()
  logger = ProgressLogger(1000, log_every=100, writer=writer,
                          stream=io.StringIO(), clock=clock)
  clock.now = 10.0  # Includes compilation: 100 steps in 10 s.
  logger.update(100, {"loss": jnp.float32(0.123456), "n": 3})
  assert logged[-1] == ("step 100/1000 (10.0%) | 10 it/s | ETA 1m30s | "
                        "loss=0.1235 n=3")
  clock.now = 13.0  # 150 steps in 3 s: 50 it/s, 750 steps left.
  logger.update(250, {"loss": 0.5})
  assert logger.steps_per_sec == pytest.approx(50.0)
  assert logged[-1] == "step 250/1000 (25.0%) | 50 it/s | ETA 15s | loss=0.5"
  assert writer.calls[0][0] == 100
  assert writer.calls[0][1]["steps_per_sec"] == pytest.approx(10.0)
  assert writer.calls[1] == (250, {"loss": 0.5, "steps_per_sec": 50.0})


def test_resumed_run_measures_from_its_initial_step(logged):
  clock = FakeClock()
  logger = ProgressLogger(10_000, log_every=1000, stream=io.StringIO(),
                          initial_step=5000, clock=clock)
  clock.now = 4.0
  assert logger.update(6000)
  assert logger.steps_per_sec == pytest.approx(250.0)
  assert logged[-1] == "step 6000/10000 (60.0%) | 250 it/s | ETA 16s"


def test_progress_bar_only_on_a_terminal(logged):
  del logged
  clock = FakeClock()
  plain = io.StringIO()
  logger = ProgressLogger(100, log_every=50, stream=plain, clock=clock)
  clock.now = 1.0
  logger.update(50)
  assert plain.getvalue() == ""

  terminal = Terminal()
  logger = ProgressLogger(100, log_every=50, stream=terminal, clock=clock)
  clock.now = 2.0
  logger.update(25)
  first = terminal.getvalue()
  assert first.startswith("\r[" + "#" * 8 + "." * 22 + "]")
  assert " 25.0% 25/100" in first and "it/s" not in first
  clock.now = 3.0
  logger.update(50)  # Logs: the bar is blanked first, then redrawn.
  after_log = terminal.getvalue()[len(first):]
  assert after_log.startswith("\r" + " " * (len(first) - 1) + "\r")
  # 50 steps since the logger started at t=1: 25 it/s, 50 steps left.
  assert "25 it/s" in after_log and "ETA 2s" in after_log
  clock.now = 4.0
  logger.update(100)
  assert terminal.getvalue().endswith("\n")
  assert "[" + "#" * 30 + "] 100.0% 100/100" in terminal.getvalue()


def test_bar_redraws_are_throttled(logged):
  del logged
  clock = FakeClock()
  terminal = Terminal()
  logger = ProgressLogger(10_000, log_every=5000, stream=terminal, clock=clock)
  for step in range(1, 101):
    clock.now += 0.01  # 100 updates over one second: 10 redraws.
    logger.update(step)
  assert terminal.getvalue().count("\r[") == 10


def test_format_duration():
  assert progress.format_duration(0) == "0s"
  assert progress.format_duration(42.4) == "42s"
  assert progress.format_duration(187) == "3m07s"
  assert progress.format_duration(3720) == "1h02m"
  assert progress.format_duration(math.inf) == "?"
  assert progress.format_duration(math.nan) == "?"


def test_format_scalars_is_compact():
  text = progress.format_scalars({
      "a": 12, "b": np.float32(0.0123456), "c": -123456.0, "d": math.nan,
      "e": jnp.array(2.5), "f": True, "g": np.int32(7)})
  assert text == "a=12 b=0.01235 c=-1.235e+05 d=nan e=2.5 f=True g=7"


def test_log_every_must_be_positive():
  with pytest.raises(ValueError, match="log_every"):
    ProgressLogger(10, log_every=0)


# --------------------------------------------------------------------------
# LiveProgress: heartbeats from inside a computation.


def test_live_progress_emits_a_heartbeat_at_the_first_report_and_then_every_period(logged):
  clock = FakeClock()
  live = progress.LiveProgress("seed 1: stage 1", 1000, start=100, heartbeat_s=30,
                               stream=io.StringIO(), clock=clock)
  emitted = []
  clock.now = 20.0  # compilation: before the first report
  for done, now in ((101, 20.0), (141, 30.0), (181, 40.0), (221, 50.0), (261, 60.0)):
    clock.now = now
    emitted.append(live.report(done, {"loss": done / 1000}))
  assert emitted == [True, False, False, True, False]  # at 20 s and 50 s
  assert len(logged) == 2
  # 4 it/s between the reports (the 20 s of compilation do not count):
  # (221 - 101) / 30 s, and 779 left at that speed.
  assert logged[1] == ("seed 1: stage 1: iteration 221/1000 (22.1%) | 4 it/s | ETA 3m15s | "
                       "loss=0.221")
  assert live.rate == (261 - 101) / 40.0


def test_live_progress_measures_each_call_anew(logged):
  clock = FakeClock()
  live = progress.LiveProgress("x", 100, heartbeat_s=1e9, stream=io.StringIO(), clock=clock)
  live.report(10)
  clock.now = 10.0
  live.report(20)
  assert live.rate == 1.0
  live.new_call()
  clock.now = 100.0  # the host's work and the next call's compilation
  live.report(21)
  assert math.isnan(live.rate)  # one report of this call: unknown yet
  clock.now = 101.0
  live.report(31)
  assert live.rate == 10.0 and live.eta_seconds() == (100 - 31) / 10.0


def test_live_progress_lines_clear_and_redraw_the_bar(logged):
  terminal = Terminal()
  clock = FakeClock()
  live = progress.LiveProgress("seeds 1, 2: stage 2", 50, unit="epoch", heartbeat_s=1e9,
                               stream=terminal, clock=clock)
  live.report(1, {"train_loss": 2.5})
  live.line("a line of the loop's")
  live.close()
  text = terminal.getvalue()
  assert "1/50" in text and text.endswith("\n")
  assert logged == ["seeds 1, 2: stage 2: epoch 1/50 (2.0%) | ? epochs/s | ETA ? | "
                    "train_loss=2.5", "a line of the loop's"]


def test_emit_uses_stderr_before_absl_flags_are_parsed(capsys, monkeypatch):
  monkeypatch.setattr(progress, "_absl_flags_parsed", lambda: False)
  progress.emit("seed 1: step 5/10")
  assert capsys.readouterr().err == "seed 1: step 5/10\n"
  logged = []
  monkeypatch.setattr(progress, "_absl_flags_parsed", lambda: True)
  monkeypatch.setattr(progress.logging, "info", lambda fmt, *args: logged.append(fmt % args))
  progress.emit("seed 1: step 10/10")
  assert logged == ["seed 1: step 10/10"] and capsys.readouterr().err == ""
