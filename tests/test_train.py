"""Tests of a run: resume equivalence, divergence, workdir checks, results.

All runs use the tiny config of test_train_support (one compilation of the
chunk shared by the tests of a worker, since the hyperparameters are traced).
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from gmn_jax import checkpoint
from gmn_jax import classifiers
from gmn_jax import evaluate
from gmn_jax import final_classifier
from gmn_jax import metric_writers
from gmn_jax import progress
from gmn_jax import specs
from gmn_jax import stage1
from gmn_jax import train
from gmn_jax import train_state
from gmn_jax import workdir as workdirs
from gmn_jax.errors import ConfigError
from test_final_classifier import numpy_scores, numpy_training
from test_metrics import numpy_gzsl
from test_train_support import tiny_config, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Interrupted(Exception):
  pass


def _final_state(workdir, config, dataset, seed):
  spec = specs.train_spec(config, dataset)
  data = train_state.make_train_data(dataset, spec)
  template = train_state.init_train_state(jax.random.key(0), spec, data)
  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints", f"seed_{seed}")) as ckpt:
    assert ckpt.latest_step() == config.train.num_iterations
    return ckpt.restore(template)[0]


def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path, monkeypatch):
  config, dataset = tiny_config(seeds=(3,)), tiny_dataset()
  straight = train.train_and_evaluate(config, tmp_path / "straight", dataset=dataset)

  # Interrupt the second run after its first host call (iteration 2 of 4,
  # just after the checkpoint at 2), as a crash or a kill would.
  real_chunk_fn = stage1.compiled_chunk
  calls = []

  def interrupting_chunk_fn(spec, length, num_seeds):
    fn = real_chunk_fn(spec, length, num_seeds)

    def wrapped(*args):
      if calls:
        raise _Interrupted()
      calls.append(length)
      return fn(*args)

    return wrapped

  monkeypatch.setattr(stage1, "compiled_chunk", interrupting_chunk_fn)
  with pytest.raises(_Interrupted):
    train.train_and_evaluate(config, tmp_path / "resumed", dataset=dataset)
  assert not (tmp_path / "resumed" / "results.json").exists()
  monkeypatch.setattr(stage1, "compiled_chunk", real_chunk_fn)
  resumed = train.train_and_evaluate(config, tmp_path / "resumed", dataset=dataset)

  assert resumed["per_seed"][0]["timings"]["stage1_start_iteration"] == 2
  assert resumed["metrics"] == straight["metrics"]
  assert resumed["per_seed"][0]["curves"] == straight["per_seed"][0]["curves"]
  a = _final_state(tmp_path / "straight", config, dataset, 3)
  b = _final_state(tmp_path / "resumed", config, dataset, 3)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  # The training metrics agree too (apart from wall-clock speed), each step once.
  logs = [metric_writers.drop_wall_clock(metric_writers.read_jsonl(
      tmp_path / run / "seed_3" / "metrics.jsonl")) for run in ("straight", "resumed")]
  assert logs[0] == logs[1]
  assert [r["step"] for r in logs[0]] == [1, 2, 3, 4]


def test_results_json_schema_and_rerun_skips_finished_seeds(tmp_path, monkeypatch):
  config, dataset = tiny_config(), tiny_dataset()
  results = train.train_and_evaluate(config, tmp_path, dataset=dataset)
  on_disk = json.loads((tmp_path / "results.json").read_text())
  assert on_disk["metrics"] == results["metrics"]
  assert on_disk["dataset"] == "tiny" and on_disk["method"] == "cwgan_gm"
  assert on_disk["seeds"] == [1, 2]
  assert set(on_disk["metrics"]) == {
      "zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "ausuc", "oracle_calibration_gamma",
      "oracle_calibrated_gzsl_u", "oracle_calibrated_gzsl_s", "oracle_calibrated_gzsl_h"}
  for name, entry in on_disk["metrics"].items():
    assert set(entry) == {"mean", "std", "per_seed"}
    assert len(entry["per_seed"]) == 2
    if name != "oracle_calibration_gamma":
      assert all(0 <= v <= 100 + 1e-4 for v in entry["per_seed"]), name  # float32 percent
    assert entry["mean"] == pytest.approx(np.mean(entry["per_seed"]))
    assert entry["std"] == pytest.approx(np.std(entry["per_seed"]))
  for seed_result in on_disk["per_seed"]:
    # Per classifier seed H = 2us/(u+s); the seed's metric is the mean over them.
    per_classifier = seed_result["classifier_seeds"]
    for u, s, h in zip(per_classifier["gzsl_u"], per_classifier["gzsl_s"],
                       per_classifier["gzsl_h"]):
      assert h == pytest.approx(2 * u * s / (u + s), rel=1e-4)
    for name, values in per_classifier.items():
      assert seed_result["metrics"][name] == pytest.approx(np.mean(values))
    assert len(seed_result["curves"]["gzsl_h"]) == config.eval.epochs
    assert len(seed_result["classifier_seeds"]["zsl_t1"]) == config.eval.num_classifier_seeds
  assert json.loads((tmp_path / "config.json").read_text())["config"]["gm.weight"] == 10.0
  assert len(metric_writers.read_jsonl(tmp_path / "metrics.jsonl")) == 2
  eval_log = metric_writers.read_jsonl(tmp_path / "seed_1" / "eval" / "metrics.jsonl")
  assert [r["step"] for r in eval_log] == [1, 2, 3]
  assert os.listdir(tmp_path / "seed_1" / "tensorboard")

  def no_training(*args, **kwargs):
    raise AssertionError("a finished seed was trained again")

  monkeypatch.setattr(stage1, "train_generators", no_training)
  monkeypatch.setattr(evaluate, "evaluate_generators", no_training)
  again = train.train_and_evaluate(config, tmp_path, dataset=dataset)
  assert again["metrics"] == results["metrics"]


def test_real_only_trains_no_generator(tmp_path):
  config, dataset = tiny_config("real_only", seeds=(1,)), tiny_dataset()
  results = train.train_and_evaluate(config, tmp_path, dataset=dataset)
  assert not (tmp_path / "checkpoints").exists()
  assert not (tmp_path / "seed_1" / "samples.npz").exists()
  assert "stage1_s" not in results["per_seed"][0]["timings"]
  assert results["paper_row"] == "real only"
  # Its classifiers are the reference's seen-only baseline: a float64 numpy
  # SGD on the real seen features with logits over the seen classes, from the
  # same initial parameters and shuffles. Keys: seed key -> seed_keys(1).eval
  # -> (synthesis key, classifier key) -> split(classifier key, 2 seeds) ->
  # (init key, shuffle key); epoch e shuffles with fold_in(shuffle key, e).
  spec = specs.eval_spec(config)
  assert (spec.classifier, spec.epochs, spec.num_classifier_seeds) == ("bilinear", 3, 2)
  _, classifier_key = jax.random.split(train_state.seed_keys(1).eval)
  features, labels = dataset.train_features, dataset.train_labels
  embeddings = dataset.class_embeddings.astype(np.float64)
  init_fn, _ = classifiers.get_classifier("bilinear")
  per_seed = results["per_seed"][0]
  want_curves = []
  for index, key in enumerate(jax.random.split(classifier_key, 2)):
    init_key, shuffle_key = jax.random.split(key)
    init = init_fn(init_key, feature_dim=dataset.feature_dim, embedding_dim=5, num_classes=9)
    batches = [tuple(np.asarray(a) for a in final_classifier.epoch_batches(
        jax.random.fold_in(shuffle_key, e), labels.size, spec.batch_size)) for e in range(3)]
    _, snapshots, losses = numpy_training("bilinear", init, features, labels, embeddings,
                                          batches, spec, columns=dataset.seen_classes)
    curves = [numpy_gzsl(
        numpy_scores("bilinear", p, dataset.test_unseen_features, embeddings),
        dataset.test_unseen_labels,
        numpy_scores("bilinear", p, dataset.test_seen_features, embeddings),
        dataset.test_seen_labels, dataset.seen_classes, dataset.unseen_classes)
              for p in snapshots]
    for name, value in curves[-1].items():  # the last epoch is reported
      assert per_seed["classifier_seeds"][name][index] == pytest.approx(value, rel=1e-5), name
    want_curves.append({**{name: [c[name] for c in curves] for name in curves[0]},
                        "train_loss": losses})
  assert set(per_seed["curves"]) == {"zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "train_loss"}
  for name, curve in per_seed["curves"].items():  # the mean over the classifier seeds
    np.testing.assert_allclose(curve, np.mean([c[name] for c in want_curves], axis=0),
                               rtol=1e-4, err_msg=name)


def test_non_finite_loss_stops_and_keeps_the_last_finite_checkpoint(tmp_path):
  config, dataset = tiny_config(), tiny_dataset()
  spec = specs.train_spec(config, dataset)
  data = train_state.make_train_data(dataset, spec)

  def run(hyper_config, num_iterations, **kwargs):
    schedule = specs.Schedule(num_iterations=num_iterations, iterations_per_call=2,
                              checkpoint_every=2, log_every=1)
    return stage1.train_generators(spec, data, specs.hyperparameters(hyper_config), seeds=[5],
                                   schedule=schedule, checkpoint_dirs=[str(tmp_path / "ckpt")],
                                   **kwargs)

  (good,) = run(config, 2)
  exploding = tiny_config(**{"train.lr_generator": 1e30, "train.lr_critic": 1e30})
  with pytest.raises(stage1.NonFiniteLossError) as error:
    run(exploding, 6, metrics_dirs=[str(tmp_path / "m")])
  message = str(error.value)
  assert "seed 5" in message and "generator iteration" in message
  assert "last finite checkpoint (iteration 2)" in message
  # The named loss and step are the first non-finite ones.
  step = int(message.split("generator iteration ")[1].split()[0])
  assert 3 <= step <= 6
  assert message.split(": ")[1].split(" became")[0] in {
      "critic_loss", "wasserstein", "gradient_penalty", "critic_grad_norm", "generator_loss",
      "adversarial_loss", "gm_loss", "generator_grad_norm", "parameters"}
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.all_steps() == [2]
    restored, _ = ckpt.restore(jax.tree.map(jax.numpy.asarray, good.state))
  for x, y in zip(jax.tree_util.tree_leaves(restored), jax.tree_util.tree_leaves(good.state)):
    np.testing.assert_array_equal(x, y)
  # Nothing non-finite reached the metrics file either.
  for record in metric_writers.read_jsonl(tmp_path / "m" / "metrics.jsonl"):
    assert all(np.isfinite(v) for v in record.values())


def test_workdir_with_another_config_is_refused_unless_overwrite(tmp_path):
  config = tiny_config()
  workdirs.prepare(config, str(tmp_path))
  (tmp_path / "results.json").write_text("{}")
  (tmp_path / "notes.txt").write_text("mine")
  workdirs.prepare(tiny_config(**{"train.log_every": 7}), str(tmp_path))  # report-only
  changed = tiny_config(**{"gm.weight": 3.0, "train.batch_size": 4})
  with pytest.raises(ConfigError) as error:
    workdirs.prepare(changed, str(tmp_path))
  assert "gm.weight: 10.0 -> 3.0" in str(error.value)
  assert "train.batch_size: 8 -> 4" in str(error.value)
  assert "--overwrite" in str(error.value)
  workdirs.prepare(changed, str(tmp_path), overwrite=True)
  assert not (tmp_path / "results.json").exists()
  assert (tmp_path / "notes.txt").read_text() == "mine"  # not ours: kept
  stored = json.loads((tmp_path / "config.json").read_text())["config"]
  assert stored["gm.weight"] == 3.0


@pytest.mark.parametrize("start, expected", [
    (0, [4, 1, 4, 1, 3]),
    (5, [4, 1, 3]),  # a resumed run repeats the uninterrupted run's tail
    (10, [3]),
    (13, []),
])
def test_chunk_lengths_end_at_checkpoints(start, expected):
  schedule = specs.Schedule(num_iterations=13, iterations_per_call=4, checkpoint_every=5,
                            log_every=1)
  assert stage1.chunk_lengths(start, schedule) == expected


def test_window_rows_average_each_window_across_calls_and_log_the_end():
  pending = {}
  first = stage1.window_rows(pending, {"loss": np.array([1.0, 2.0, 3.0])}, first_iteration=10,
                             log_every=4, end=17)
  assert first == [(12, {"loss": 1.5})]  # iterations 10 and 11 (0-based), steps 11 and 12
  # The next call continues the open window (iteration 12) and logs the run's end.
  second = stage1.window_rows(pending, {"loss": np.array([4.0, 5.0, 6.0, 7.0, 8.0])},
                              first_iteration=13, log_every=4, end=18)
  assert second == [(16, {"loss": 4.5}), (18, {"loss": 7.5})]  # (3+4+5+6)/4, (7+8)/2
  assert pending == {}


def _run_binary(*args, cwd=REPO):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, needle", [
    (["--config=experiments/configs/digits.py", "--config.data_dir=/no/such/dir"], "data_dir"),
    (["--config=experiments/configs/digits.py", "--config.method=gan"], "config.method"),
    (["--config=experiments/configs/digits.py", "--config.train.batch_size=abc"],
     "batch_size"),
    (["--config=experiments/configs/nope.py"], "nope.py"),
    (["--config=experiments/configs/digits.py", "--config.gm.wieght=1"], "gm.wieght"),
])
def test_binary_exits_2_with_one_line_on_bad_input(tmp_path, args, needle):
  result = _run_binary(*args, f"--workdir={tmp_path / 'w'}")
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and needle in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr


def test_binary_refuses_a_workdir_of_another_config(tmp_path):
  workdirs.prepare(tiny_config(), str(tmp_path))
  result = _run_binary("--config=experiments/configs/digits.py", f"--workdir={tmp_path}")
  assert result.returncode == 2
  assert "other stage-1 settings" in result.stderr and "Traceback" not in result.stderr


def test_a_finished_run_is_extended_without_retraining(tmp_path, monkeypatch, capfd):
  dataset = tiny_dataset()
  # As in a notebook: no absl flags parsed (another test may have parsed them).
  monkeypatch.setattr(progress, "_absl_flags_parsed", lambda: False)
  first = train.train_and_evaluate(tiny_config(seeds=(1,)), tmp_path, dataset=dataset)
  # Called from Python (no absl flags), the progress lines reach stderr.
  assert "seed 1: step 4/4 |" in capfd.readouterr().err
  trained = []
  real_train = stage1.train_generators

  def recording_train(*args, seeds, **kwargs):
    results = real_train(*args, seeds=seeds, **kwargs)
    trained.append([(r.seed, r.start_iteration) for r in results])
    return results

  monkeypatch.setattr(stage1, "train_generators", recording_train)
  # 1. A new seed trains; the finished one is read back, not touched.
  two = train.train_and_evaluate(tiny_config(seeds=(1, 2)), tmp_path, dataset=dataset)
  assert trained == [[(2, 0)]]
  assert two["per_seed"][0] == first["per_seed"][0]
  alone = train.train_and_evaluate(tiny_config(seeds=(2,)), tmp_path / "alone", dataset=dataset)
  assert two["metrics"]["zsl_t1"]["per_seed"][1] == alone["metrics"]["zsl_t1"]["per_seed"][0]
  # 2. Other stage-2 settings: both seeds are evaluated again from their
  # final checkpoints (stage 1 restored at its end, nothing trained).
  trained.clear()
  epochs = train.train_and_evaluate(tiny_config(seeds=(1, 2), **{"eval.epochs": 2}), tmp_path,
                                    dataset=dataset)
  assert trained == [[(1, 4)], [(2, 4)]]
  assert [len(r["curves"]["zsl_t1"]) for r in epochs["per_seed"]] == [2, 2]
  assert epochs["per_seed"][0]["stage2"]["eval.epochs"] == 2
  fresh = train.train_and_evaluate(tiny_config(seeds=(1,), **{"eval.epochs": 2}),
                                   tmp_path / "fresh", dataset=dataset)
  assert epochs["metrics"]["zsl_t1"]["per_seed"][0] == fresh["metrics"]["zsl_t1"]["per_seed"][0]
  # 3. A stage-1 field is still refused, with the difference named.
  with pytest.raises(ConfigError, match=r"gm\.weight: 10\.0 -> 3\.0"):
    train.train_and_evaluate(tiny_config(seeds=(1, 2), **{"gm.weight": 3.0}), tmp_path,
                             dataset=dataset)
  # results.json says where its numbers come from.
  provenance = json.loads((tmp_path / "results.json").read_text())["provenance"]
  assert provenance["jax"] == jax.__version__ and provenance["devices"]["count"] == 4


def test_a_run_shorter_than_log_every_logs_its_stage_1(tmp_path):
  train.train_and_evaluate(tiny_config(seeds=(1,), **{"train.log_every": 1000}), tmp_path,
                           dataset=tiny_dataset())
  rows = metric_writers.read_jsonl(tmp_path / "seed_1" / "metrics.jsonl")
  assert [r["step"] for r in rows] == [4]  # one window: all four iterations
