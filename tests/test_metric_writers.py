"""Tests of gmn_jax.metric_writers: JSON lines, TensorBoard, atomic JSON."""

import io
import json
import os
import pathlib
import struct

import jax.numpy as jnp
import numpy as np
import pytest

from gmn_jax import errors
from gmn_jax import metric_writers
from gmn_jax.metric_writers import MetricWriter


def read_tensorboard_events(directory: pathlib.Path) -> list:
  """Every Event in the event files under `directory`, in file order.

  An independent reader of the TFRecord framing: u64 length, u32 crc,
  payload, u32 crc (the checksums are not verified).
  """
  # Imported here, as the module under test does, to keep collection light.
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      payload = data[offset + 12:offset + 12 + length]
      offset += 12 + length + 4
      event = event_pb2.Event()
      event.ParseFromString(payload)
      events.append(event)
  return events


def scalar_points(events) -> list[tuple[str, int, float]]:
  """(tag, step, value) of every scalar summary, as TensorBoard shows them.

  Applies TensorBoard's purge rule: a SessionLog START at step s hides the
  earlier-written points with step >= s.
  """
  points = []
  for event in events:
    if event.HasField("session_log") and event.session_log.status == 1:
      points = [p for p in points if p[1] < event.step]
    for value in event.summary.value:
      points.append((value.tag, event.step, value.simple_value))
  return points


def test_write_scalars_appends_flushed_json_lines(tmp_path):
  writer = MetricWriter(tmp_path)
  writer.write_scalars(1, {"loss": jnp.float32(0.5), "n": np.int64(3),
                           "ok": True, "lr": 1e-4, "h": jnp.ones((1,))})
  # Readable before close: every line is flushed.
  text = (tmp_path / "metrics.jsonl").read_text()
  assert json.loads(text) == {"step": 1, "loss": 0.5, "n": 3, "ok": 1,
                              "lr": 1e-4, "h": 1.0}
  assert isinstance(json.loads(text)["n"], int)
  writer.write_scalars(2, {"loss": 0.25})
  writer.close()
  assert metric_writers.read_jsonl(tmp_path / "metrics.jsonl") == [
      {"step": 1, "loss": 0.5, "n": 3, "ok": 1, "lr": 1e-4, "h": 1.0},
      {"step": 2, "loss": 0.25},
  ]


def test_tensorboard_receives_every_scalar(tmp_path):
  with MetricWriter(tmp_path) as writer:
    writer.write_scalars(10, {"train/g_loss": 1.5, "eval/gzsl_h": 42.0})
    writer.write_scalars(20, {"train/g_loss": 0.75})
  points = scalar_points(read_tensorboard_events(tmp_path / "tensorboard"))
  assert sorted(points) == [("eval/gzsl_h", 10, 42.0),
                            ("train/g_loss", 10, 1.5),
                            ("train/g_loss", 20, 0.75)]


def test_disabled_writer_writes_nothing(tmp_path):
  with MetricWriter(tmp_path / "run", enabled=False) as writer:
    writer.write_scalars(1, {"loss": 1.0})
  assert not (tmp_path / "run").exists()


def test_bad_scalars_are_rejected(tmp_path):
  with MetricWriter(tmp_path) as writer:
    with pytest.raises(TypeError, match="'acc' must be a single number"):
      writer.write_scalars(1, {"acc": np.ones(3)})
    with pytest.raises(TypeError, match="'name'"):
      writer.write_scalars(1, {"name": "x"})
    with pytest.raises(ValueError, match="reserved"):
      writer.write_scalars(1, {"step": 3})
  with pytest.raises(ValueError, match="closed"):
    writer.write_scalars(2, {"loss": 1.0})
  assert (tmp_path / "metrics.jsonl").read_text() == ""


def run_steps(workdir, steps, resume_step=None):
  """Writes the metrics a deterministic run writes at `steps`."""
  with MetricWriter(workdir, resume_step=resume_step) as writer:
    for step in steps:
      writer.write_scalars(step, {"loss": 1.0 / step, "gm": step * 0.5})
      if step % 4 == 0:
        writer.write_scalars(step, {"eval/h": float(step)})


def test_resumed_run_metrics_equal_an_uninterrupted_runs(tmp_path):
  uninterrupted, resumed = tmp_path / "a", tmp_path / "b"
  run_steps(uninterrupted, range(1, 13))
  # The first attempt got to step 10 (its last checkpoint: step 8) and was
  # killed while writing a line.
  run_steps(resumed, range(1, 11))
  with open(resumed / "metrics.jsonl", "a") as f:
    f.write('{"step": 11, "lo')
  run_steps(resumed, range(9, 13), resume_step=8)
  assert ((resumed / "metrics.jsonl").read_text() ==
          (uninterrupted / "metrics.jsonl").read_text())
  # TensorBoard, with its purge rule applied, shows each step once, too.
  points_a = scalar_points(read_tensorboard_events(uninterrupted /
                                                   "tensorboard"))
  points_b = scalar_points(read_tensorboard_events(resumed / "tensorboard"))
  assert sorted(points_a) == sorted(points_b)
  assert len(points_a) == 12 * 2 + 3


def test_reopening_without_resume_repairs_a_cut_line_and_appends(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo')
  with MetricWriter(tmp_path) as writer:
    writer.write_scalars(2, {"loss": 0.5})
  assert metric_writers.read_jsonl(path) == [{"step": 1, "loss": 1.0},
                                             {"step": 2, "loss": 0.5}]


def test_read_jsonl_ignores_only_a_truncated_last_line(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text('{"step": 1}\n\n{"step": 2, "x": NaN}\n{"step": 3, "x": 1.')
  records = metric_writers.read_jsonl(path)
  assert [r["step"] for r in records] == [1, 2]
  assert np.isnan(records[1]["x"])
  # A complete last line without its newline is kept.
  path.write_text('{"step": 1}\n{"step": 2}')
  assert metric_writers.read_jsonl(path) == [{"step": 1}, {"step": 2}]
  path.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
  with pytest.raises(errors.DataError, match=r"\[line 2\]: expected a JSON"):
    metric_writers.read_jsonl(path)
  path.write_text('{"step": 1}\n[1, 2]\n')
  with pytest.raises(errors.DataError, match="found list"):
    metric_writers.read_jsonl(path)
  with pytest.raises(errors.DataError, match="no such file"):
    metric_writers.read_jsonl(tmp_path / "absent.jsonl")


def test_truncate_jsonl_after(tmp_path):
  path = tmp_path / "m.jsonl"
  assert metric_writers.truncate_jsonl_after(path, 3) == 0
  assert not path.exists()
  lines = [{"step": s, "v": s} for s in (1, 2, 3, 4, 5)] + [{"note": "x"}]
  path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"ste')
  assert metric_writers.truncate_jsonl_after(path, 3) == 2
  assert metric_writers.read_jsonl(path) == lines[:3] + [{"note": "x"}]
  assert path.read_text().endswith("\n")
  assert metric_writers.truncate_jsonl_after(path, 3) == 0
  assert [p.name for p in tmp_path.iterdir()] == ["m.jsonl"]


def test_write_json_atomic_replaces_whole_files(tmp_path):
  path = tmp_path / "results.json"
  metric_writers.write_json_atomic(path, {"a": [1, 2], "b": {"c": 0.5}})
  assert json.loads(path.read_text()) == {"a": [1, 2], "b": {"c": 0.5}}
  metric_writers.write_json_atomic(str(path), {"a": 3})
  assert json.loads(path.read_text()) == {"a": 3}
  assert os.listdir(tmp_path) == ["results.json"]


def test_write_json_atomic_failure_keeps_the_old_file(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  metric_writers.write_json_atomic(path, {"a": 1})
  with pytest.raises(TypeError):
    metric_writers.write_json_atomic(path, {"a": object()})
  # A crash between writing and renaming (here: fsync failing).
  def failing_fsync(fd):
    raise OSError("disk gone")
  monkeypatch.setattr(os, "fsync", failing_fsync)
  with pytest.raises(OSError, match="disk gone"):
    metric_writers.write_json_atomic(path, {"a": 2})
  assert json.loads(path.read_text()) == {"a": 1}
  assert os.listdir(tmp_path) == ["results.json"]


def test_drop_wall_clock_keeps_what_a_resumed_run_reproduces():
  records = [{"step": 1, "loss": 0.5, "steps_per_sec": 100.0},
             {"step": 1, "steps_per_sec": 90.0}]
  assert metric_writers.drop_wall_clock(records) == [{"step": 1, "loss": 0.5}]


def test_the_documented_resume_loop_writes_one_line_per_log_step(tmp_path):
  """docs/runs.md's loop, through the names it uses (metric_writers.ProgressLogger)."""
  now = [0.0]
  clock = lambda: now[0]

  def attempt(start, times, loss_offset, stop):
    writer = metric_writers.MetricWriter(tmp_path, resume_step=-1 if start == 0 else start)
    progress = metric_writers.ProgressLogger(6, log_every=2, writer=writer, initial_step=start,
                                             stream=io.StringIO(), clock=clock)
    for step in range(start + 1, stop + 1):
      now[0] = times[step]
      progress.update(step, {"loss": step + loss_offset})
    writer.close()

  now[0] = 0.0
  attempt(0, {1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0}, 0.5, stop=4)  # killed after step 4
  now[0] = 10.0  # resumed from the checkpoint of step 2
  attempt(2, {3: 10.5, 4: 11.0, 5: 11.25, 6: 11.5}, 0.25, stop=6)
  # Steps per second: 2 steps in 2 s; 2 in 1 s (from the resume); 2 in 0.5 s.
  assert metric_writers.read_jsonl(tmp_path / "metrics.jsonl") == [
      {"step": 2, "loss": 2.5, "steps_per_sec": 1.0},
      {"step": 4, "loss": 4.25, "steps_per_sec": 2.0},
      {"step": 6, "loss": 6.25, "steps_per_sec": 4.0},
  ]


def test_read_json_reads_what_write_json_atomic_wrote_and_names_bad_files(tmp_path):
  path = tmp_path / "results.json"
  metric_writers.write_json_atomic(path, {"a": [1, 2.5]})
  assert metric_writers.read_json(path) == {"a": [1, 2.5]}
  (tmp_path / "bad.json").write_text("{not json")
  for name, found in (("bad.json", "JSONDecodeError"), ("absent.json", "FileNotFoundError")):
    with pytest.raises(errors.DataError, match=f"{name}: expected a readable JSON file, found {found}"):
      metric_writers.read_json(tmp_path / name)


def event_file_names(directory: pathlib.Path) -> list[str]:
  return sorted(p.name for p in directory.glob("events.out.tfevents.*"))


def test_rewriting_from_scratch_replaces_the_event_file(tmp_path):
  """resume_step=-1 (a finished run's outputs) leaves one event file, however often."""
  for values in ((1.0, 2.0), (1.0, 2.0), (5.0, 6.0)):
    with MetricWriter(tmp_path, resume_step=-1) as writer:
      for step, value in enumerate(values):
        writer.write_scalars(step, {"final/h": value})
    names = event_file_names(tmp_path / "tensorboard")
    assert len(names) == 1
    # What TensorBoard shows is the last writer's points alone.
    assert scalar_points(read_tensorboard_events(tmp_path / "tensorboard")) == [
        ("final/h", step, value) for step, value in enumerate(values)]
  assert metric_writers.read_jsonl(tmp_path / "metrics.jsonl") == [
      {"step": 0, "final/h": 5.0}, {"step": 1, "final/h": 6.0}]
  # A writer that writes nothing after resume_step=-1 leaves no stale curve
  # (metrics.jsonl is empty, too).
  MetricWriter(tmp_path, resume_step=-1).close()
  assert event_file_names(tmp_path / "tensorboard") == []
  assert (tmp_path / "metrics.jsonl").read_text() == ""


def test_resuming_keeps_the_event_files_with_points_it_does_not_hide(tmp_path):
  # Attempt 1: steps 1-6, then killed; attempt 2 (from step 4): 5-8, killed
  # mid-record; attempt 3 resumes from step 8. A fourth file holds only
  # steps after 8 (a run killed after its checkpoint of step 8).
  run_steps(tmp_path, range(1, 7))
  run_steps(tmp_path, range(5, 9), resume_step=4)
  directory = tmp_path / "tensorboard"
  first, second = event_file_names(directory)
  with open(directory / second, "ab") as f:
    f.write(b"\x40\x00\x00\x00\x00\x00\x00\x00\x00\x00")  # a cut record
  with MetricWriter(tmp_path) as writer:  # a later attempt, not resumed
    writer.write_scalars(9, {"loss": 1.0 / 9})
  later = [n for n in event_file_names(directory) if n not in (first, second)]
  assert len(later) == 1
  removed = metric_writers.remove_superseded_event_files(directory, 8)
  assert [os.path.basename(p) for p in removed] == later
  assert event_file_names(directory) == [first, second]
  # Resuming from step 8 keeps both (they hold steps <= 8) and adds one.
  run_steps(tmp_path, range(9, 13), resume_step=8)
  assert len(event_file_names(directory)) == 3
  points = scalar_points(read_tensorboard_events(directory))
  run_steps(tmp_path / "uninterrupted", range(1, 13))
  assert sorted(points) == sorted(scalar_points(read_tensorboard_events(
      tmp_path / "uninterrupted" / "tensorboard")))
  # A fresh start (resume_step=-1) replaces all of them.
  run_steps(tmp_path, range(1, 3), resume_step=-1)
  assert len(event_file_names(directory)) == 1
  assert metric_writers.remove_superseded_event_files(tmp_path / "absent", -1) == []


def test_rerunning_a_finished_runs_outputs_adds_no_event_file(tmp_path):
  """workdir.write_summary / write_seed_outputs, run twice: the same files."""
  from gmn_jax import workdir as workdirs  # pylint: disable=g-import-not-at-top
  seed_results = [{"seed": s, "metrics": {"gzsl_h": 40.0 + s, "zsl_t1": 50.0 + s}}
                  for s in (1, 2)]
  curves = {"gzsl_h": np.array([10.0, 20.0, 30.0]), "zsl_t1": np.array([1.0, 2.0, 3.0])}

  def outputs():
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())

  def finish_run():
    for result in seed_results:
      workdirs.write_seed_outputs(str(tmp_path), result, curves)
    workdirs.write_summary(str(tmp_path), seed_results, {"metrics": {}})

  finish_run()
  first = outputs()
  assert sum("tfevents" in p for p in first) == 3  # the run's and two seeds' eval
  for _ in range(2):
    finish_run()
    after = outputs()
    assert len(after) == len(first)
    assert sum("tfevents" in p for p in after) == 3
  assert sorted(scalar_points(read_tensorboard_events(tmp_path / "tensorboard"))) == sorted(
      [("final/gzsl_h", 0, 41.0), ("final/zsl_t1", 0, 51.0), ("seed", 0, 1.0),
       ("final/gzsl_h", 1, 42.0), ("final/zsl_t1", 1, 52.0), ("seed", 1, 2.0)])
