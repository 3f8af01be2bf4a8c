"""Preemption: SIGTERM / SIGINT stop at a chunk boundary, kill -9 stays resumable.

Every interrupted-then-resumed run must end with the same final parameters
and results as an uninterrupted run of the same config. The in-process tests
send this process a real signal during a chosen host call; the subprocess
test sends SIGTERM, then SIGKILL, to a training process and resumes it.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import jax
import numpy as np
import pytest

from experiments import cli
from gmn_jax import checkpoint
from gmn_jax import errors
from gmn_jax import models
from gmn_jax import preemption
from gmn_jax import specs
from gmn_jax import stage1
from gmn_jax import train
from gmn_jax import train_state
from gmn_jax import workdir as workdirs
from gmn_jax.data.dataset import ZSLDataset
from test_train_support import tiny_config, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
# 8 iterations in chunks of 2, a checkpoint after every chunk.
OVERRIDES = {"train.num_iterations": 8}
SEED = 3


def _config():
  return tiny_config(seeds=(SEED,), **OVERRIDES)


def _final_state(workdir):
  """The train state of the final checkpoint of seed SEED."""
  config, dataset = _config(), tiny_dataset()
  spec = specs.train_spec(config, dataset)
  template = train_state.init_train_state(
      jax.random.key(0), spec, train_state.make_train_data(dataset, spec))
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", f"seed_{SEED}")) as ckpt:
    assert ckpt.latest_step() == config.train.num_iterations
    return ckpt.restore(template)[0]


def _final_params(workdir):
  return jax.tree_util.tree_leaves(_final_state(workdir))


def _assert_same_run(workdir, reference_dir):
  got = json.loads(open(os.path.join(workdir, "results.json")).read())
  want = json.loads(open(os.path.join(reference_dir, "results.json")).read())
  assert got["metrics"] == want["metrics"]
  assert got["per_seed"][0]["curves"] == want["per_seed"][0]["curves"]
  for x, y in zip(_final_params(workdir), _final_params(reference_dir)):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
  """An uninterrupted run of the config, the reference of every test."""
  workdir = tmp_path_factory.mktemp("straight")
  train.train_and_evaluate(_config(), workdir, dataset=tiny_dataset())
  return str(workdir)


def _stop_during_chunk(monkeypatch, number, signum, *, after=False):
  """Sends `signum` to this process as host call `number` starts (or ends).

  A real signal, caught by the handler train_and_evaluate installs; outside
  the main thread (where Python allows no handlers) the request is made
  directly, as the handler would. Sent as a call starts, it reaches the
  call's first report, after its first iteration: the call ends there.
  """
  real = stage1.compiled_chunk
  calls = []

  def patched(spec, length, num_seeds):
    fn = real(spec, length, num_seeds)

    def stop():
      if threading.current_thread() is threading.main_thread():
        os.kill(os.getpid(), signum)
      else:
        preemption.request_stop(signum)

    def wrapped(*args):
      calls.append(length)
      if len(calls) == number and not after:
        stop()
      out = fn(*args)
      if len(calls) == number and after:
        jax.block_until_ready(out)
        stop()
      return out

    return wrapped

  monkeypatch.setattr(stage1, "compiled_chunk", patched)
  return calls


def test_a_stop_checkpoints_at_the_chunk_boundary_and_resumes_exactly(
    tmp_path, monkeypatch, straight_run):
  calls = _stop_during_chunk(monkeypatch, 2, signal.SIGINT)
  with pytest.raises(preemption.Interrupted) as stopped:
    train.train_and_evaluate(_config(), tmp_path, dataset=tiny_dataset())
  assert stopped.value.exit_code == 130 and stopped.value.signum == signal.SIGINT
  # Call 2 (iterations 2-4) stopped after its first iteration, in the call.
  assert "SIGINT at generator iteration 3 of 8 (seed 3)" in str(stopped.value)
  assert "still to run: seed 3;" in str(stopped.value)
  assert len(calls) == 2  # nothing ran after the stop
  with checkpoint.Checkpointer(tmp_path / "checkpoints" / f"seed_{SEED}") as ckpt:
    assert ckpt.latest_step() == 3
  assert not (tmp_path / "results.json").exists()
  assert preemption.requested_signal() is None  # the request ended with the run
  monkeypatch.undo()
  resumed = train.train_and_evaluate(_config(), tmp_path, dataset=tiny_dataset())
  assert resumed["per_seed"][0]["timings"]["stage1_start_iteration"] == 3
  _assert_same_run(str(tmp_path), straight_run)


def test_a_stop_between_checkpoints_saves_an_extra_one(tmp_path, monkeypatch, straight_run):
  # With checkpoints every 4 iterations a stop inside the first call (after
  # iteration 1) must still save iteration 1; the resumed run's calls then
  # start there and end at the periodic checkpoints.
  config = tiny_config(seeds=(SEED,), **OVERRIDES, **{"train.checkpoint_every": 4})
  _stop_during_chunk(monkeypatch, 1, signal.SIGTERM)
  with pytest.raises(preemption.Interrupted, match="iteration 1 of 8") as stopped:
    train.train_and_evaluate(config, tmp_path, dataset=tiny_dataset())
  assert stopped.value.exit_code == 143
  with checkpoint.Checkpointer(tmp_path / "checkpoints" / f"seed_{SEED}") as ckpt:
    assert ckpt.all_steps() == [1]
  monkeypatch.undo()
  train.train_and_evaluate(config, tmp_path, dataset=tiny_dataset())
  # checkpoint_every changes only when states are saved, not what is computed.
  _assert_same_run(str(tmp_path), straight_run)


def test_a_stop_after_the_last_chunk_skips_stage_2_until_the_rerun(
    tmp_path, monkeypatch, straight_run):
  _stop_during_chunk(monkeypatch, 4, signal.SIGTERM, after=True)  # once the last call ended
  with pytest.raises(preemption.Interrupted, match="after stage 1 of seed 3"):
    train.train_and_evaluate(_config(), tmp_path, dataset=tiny_dataset())
  assert not (tmp_path / f"seed_{SEED}" / "result.json").exists()
  monkeypatch.undo()
  train.train_and_evaluate(_config(), tmp_path, dataset=tiny_dataset())
  _assert_same_run(str(tmp_path), straight_run)


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                    reason="signal handlers need the main thread")
def test_signal_handlers_record_the_request_and_restore_the_previous_ones():
  previous = signal.getsignal(signal.SIGTERM)
  with preemption.StopOnSignal():
    with preemption.StopOnSignal():  # nested: one shared request
      os.kill(os.getpid(), signal.SIGTERM)
    assert preemption.requested_signal() == signal.SIGTERM
    assert preemption.should_stop()
  assert preemption.requested_signal() is None
  assert signal.getsignal(signal.SIGTERM) is previous
  with preemption.StopOnSignal():
    os.kill(os.getpid(), signal.SIGINT)
    assert preemption.requested_signal() == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
      os.kill(os.getpid(), signal.SIGINT)


_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {tests!r})
    from gmn_jax import preemption, stage1, train
    from experiments import train as binary
    from test_train_support import tiny_config, tiny_dataset

    # Send a real signal to this process at host call SIGNAL_AT (0: never).
    real, calls = stage1.compiled_chunk, []
    def patched(spec, length, num_seeds):
      fn = real(spec, length, num_seeds)
      def wrapped(*args):
        calls.append(length)
        if len(calls) == int(os.environ["SIGNAL_AT"]):
          os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL"]))
        return fn(*args)
      return wrapped
    stage1.compiled_chunk = patched
    config = tiny_config(seeds=({seed},), **{overrides!r})
    try:
      train.train_and_evaluate(config, sys.argv[1], dataset=tiny_dataset())
    except preemption.Interrupted as interrupted:
      binary.stop(interrupted)
    """)


# Three fresh processes sharing a compilation cache: about 40 s.
def test_real_sigterm_then_kill_9_then_resume_equals_straight_run(tmp_path, straight_run):
  script = tmp_path / "run.py"
  script.write_text(_SCRIPT.format(tests=TESTS, seed=SEED, overrides=OVERRIDES))
  workdir = tmp_path / "w"
  # The three processes share compilations through JAX's persistent cache.
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

  def run(signal_name, at):
    return subprocess.run([sys.executable, str(script), str(workdir)], cwd=REPO,
                          env=dict(env, SIGNAL=signal_name, SIGNAL_AT=str(at)),
                          capture_output=True, text=True, timeout=300)

  first = run("SIGTERM", 1)  # as host call 1 starts: stop after iteration 1
  assert first.returncode == 143, first.stderr[-3000:]
  lines = [l for l in first.stderr.splitlines() if l.startswith("interrupted:")]
  assert len(lines) == 1 and "SIGTERM at generator iteration 1 of 8" in lines[0]
  assert "Traceback" not in first.stderr
  # Resumed at 1, killed without warning at the start of its second call
  # (iterations 2-4), while the checkpoint of 2 may still be being written.
  second = run("SIGKILL", 2)
  assert second.returncode == -signal.SIGKILL, second.stderr[-3000:]
  assert not (workdir / "results.json").exists()
  third = run("SIGTERM", 0)
  assert third.returncode == 0, third.stderr[-3000:]
  _assert_same_run(str(workdir), straight_run)


# --------------------------------------------------------------------------
# A calibration gamma from a validation run (same tiny programs as above).


def test_a_validation_gamma_adds_honest_calibrated_metrics(tmp_path, straight_run):
  validation = tmp_path / "validation"
  validation.mkdir()
  (validation / "results.json").write_text(json.dumps({
      "config": {"split": "validation"},
      "metrics": {"oracle_calibration_gamma": {"mean": 0.25, "std": 0.1,
                                               "per_seed": [0.15, 0.35]}}}))
  gamma = workdirs.calibration_gamma_from(validation)
  assert gamma == 0.25
  results = train.train_and_evaluate(_config(), tmp_path / "run", dataset=tiny_dataset(),
                                     calibration_gamma=gamma)
  straight = json.loads(open(os.path.join(straight_run, "results.json")).read())
  for name in ("gzsl_h", "ausuc", "oracle_calibrated_gzsl_h"):
    assert results["metrics"][name] == straight["metrics"][name]  # unchanged
  assert results["metrics"]["calibration_gamma"]["mean"] == 0.25
  assert "calibrated_gzsl_h" not in straight["metrics"]
  # Never above the oracle, which picks the best gamma on these very labels.
  for got, best in zip(results["per_seed"][0]["classifier_seeds"]["calibrated_gzsl_h"],
                       results["per_seed"][0]["classifier_seeds"]["oracle_calibrated_gzsl_h"]):
    assert got <= best + 1e-6
  assert "H cal." in cli.format_results_table(results)
  # Another gamma re-evaluates the finished seed (stage 2 only), never mixes.
  again = train.train_and_evaluate(_config(), tmp_path / "run", dataset=tiny_dataset(),
                                   calibration_gamma=0.5)
  assert again["metrics"]["calibration_gamma"]["per_seed"] == [0.5]
  assert again["per_seed"][0]["timings"]["stage1_start_iteration"] == 8  # nothing retrained
  for name in ("gzsl_h", "ausuc", "oracle_calibrated_gzsl_h"):
    assert again["metrics"][name] == straight["metrics"][name]
  without = train.train_and_evaluate(_config(), tmp_path / "run", dataset=tiny_dataset())
  assert "calibration_gamma" not in without["metrics"]
  assert without["metrics"] == straight["metrics"]


@pytest.mark.parametrize("content, error, needle", [
    ({"config": {"split": "test"}, "metrics": {"oracle_calibration_gamma": {"mean": 1.0}}},
     "ConfigError", "test-set selection"),
    ({"config": {"split": "validation"}, "metrics": {}}, "DataError", "older version"),
    (None, "DataError", "no such file"),
])
def test_calibration_gamma_from_refuses_other_runs(tmp_path, content, error, needle):
  if content is not None:
    (tmp_path / "results.json").write_text(json.dumps(content))
  with pytest.raises(getattr(errors, error), match=needle):
    workdirs.calibration_gamma_from(tmp_path)


def test_stage_2_writes_real_and_generated_samples_for_the_plots(straight_run):
  dataset = tiny_dataset()  # unseen classes 1, 3, 5 with 5 test rows each
  with np.load(os.path.join(straight_run, f"seed_{SEED}", "samples.npz")) as samples:
    samples = dict(samples)
  # At most 5 classes and 200 rows per class: here all 3 unseen classes, 5 rows each.
  np.testing.assert_array_equal(samples["class_ids"], [1, 3, 5])
  np.testing.assert_array_equal(samples["class_names"], ["1", "3", "5"])  # no names: the ids
  labels = np.repeat([1, 3, 5], 5)
  np.testing.assert_array_equal(samples["real_labels"], labels)
  np.testing.assert_array_equal(samples["generated_labels"], labels)
  for class_id in (1, 3, 5):
    np.testing.assert_array_equal(
        samples["real_features"][samples["real_labels"] == class_id],
        dataset.test_unseen_features[dataset.test_unseen_labels == class_id][:200])
  # The generated features, drawn again from the final checkpoint's generator
  # with the documented key: fold_in(seed_keys(seed).eval, 1), chunk i of at
  # most 4096 rows with fold_in(key, i) (here one chunk).
  generator = _final_state(straight_run).generator
  module = specs.train_spec(_config(), dataset).generator.clone(dtype=jax.numpy.float32)
  key = jax.random.fold_in(train_state.seed_keys(SEED).eval, 1)
  want = np.concatenate([
      np.asarray(models.generate(module, generator, dataset.class_embeddings[chunk],
                                 jax.random.fold_in(key, i)))
      for i, chunk in enumerate(np.array_split(labels, range(4096, labels.size, 4096)))])
  assert want.shape == (15, dataset.feature_dim) and np.std(want) > 1e-3
  np.testing.assert_allclose(samples["generated_features"], want, rtol=1e-5, atol=1e-6)


def _shifted_embeddings(params, embeddings, key):
  """A `synthesis.SampleFn` for write_samples: embeddings @ params + noise."""
  return embeddings @ params + jax.random.normal(key, (embeddings.shape[0], params.shape[1]))


def test_write_samples_keeps_five_spread_classes_and_200_rows_each(tmp_path):
  # 7 unseen classes (odd ids 1..13); class 3 has 230 test rows, the others 4.
  rng = np.random.default_rng(0)
  unseen = np.arange(1, 14, 2, dtype=np.int32)
  seen = np.arange(0, 14, 2, dtype=np.int32)
  counts = {int(c): 230 if c == 3 else 4 for c in unseen}
  test_labels = rng.permutation(np.concatenate([np.full(n, c) for c, n in counts.items()]))
  test_labels = test_labels.astype(np.int32)
  embeddings = rng.normal(size=(14, 3)).astype(np.float32)
  dataset = ZSLDataset(
      name="wide", split="test", train_features=rng.random((14, 2), np.float32),
      train_labels=np.repeat(seen, 2), test_seen_features=rng.random((7, 2), np.float32),
      test_seen_labels=seen, test_unseen_features=rng.random((test_labels.size, 2), np.float32),
      test_unseen_labels=test_labels, class_embeddings=embeddings, seen_classes=seen,
      unseen_classes=unseen)
  params = rng.normal(size=(3, 2)).astype(np.float32)
  key = jax.random.key(4)
  path = tmp_path / "seed_1" / "samples.npz"
  # The defaults: 5 classes, 200 rows each.
  workdirs.write_samples(str(path), _shifted_embeddings, params, dataset, key)
  with np.load(path) as samples:
    samples = dict(samples)
  # Five of the seven, spread over the list: positions 0, 2, 3, 4, 6
  # (linspace(0, 6, 5) = 0, 1.5, 3, 4.5, 6 rounded half to even).
  np.testing.assert_array_equal(samples["class_ids"], [1, 5, 7, 9, 13])
  labels = np.repeat([1, 5, 7, 9, 13], 4)
  np.testing.assert_array_equal(samples["real_labels"], labels)
  np.testing.assert_array_equal(samples["generated_labels"], labels)
  for class_id in (1, 5, 7, 9, 13):
    np.testing.assert_array_equal(samples["real_features"][samples["real_labels"] == class_id],
                                  dataset.test_unseen_features[test_labels == class_id])
  want = embeddings[labels] @ params + np.asarray(
      jax.random.normal(jax.random.fold_in(key, 0), (labels.size, 2)))
  np.testing.assert_allclose(samples["generated_features"], want, rtol=1e-5, atol=1e-6)
  # With class 3 among them: its first 200 rows, in the order of the test set.
  workdirs.write_samples(str(path), _shifted_embeddings, params, dataset, key, num_classes=7)
  with np.load(path) as samples:
    samples = dict(samples)
  np.testing.assert_array_equal(samples["class_ids"], unseen)
  np.testing.assert_array_equal(np.bincount(samples["real_labels"], minlength=14)[unseen],
                                [4, 200, 4, 4, 4, 4, 4])
  np.testing.assert_array_equal(samples["real_features"][samples["real_labels"] == 3],
                                dataset.test_unseen_features[test_labels == 3][:200])
  np.testing.assert_array_equal(samples["generated_labels"], samples["real_labels"])
