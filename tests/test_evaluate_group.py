"""Grouped stage 2: G generators' final classifiers trained in one program.

`evaluate.evaluate_generators` with G generators must give, for every
generator, what it gives for that generator alone (G = 1, traced without the
outer vmap) with its own key, and `train.train_and_evaluate` with
num_parallel_seeds > 1 (which uses it) must give the results of one seed at
a time, also after an interruption between the stages.
"""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest

from gmn_jax import evaluate
from gmn_jax import final_classifier
from gmn_jax import metric_writers
from gmn_jax import synthesis
from gmn_jax.errors import ConfigError
from gmn_jax import train
from gmn_jax import workdir as workdirs
from gmn_jax.errors import ConfigError
from test_final_classifier import EMBEDDING_DIM, EVAL_CHUNK, FEATURE_DIM, SPEC, make_dataset
from test_train_support import tiny_config, tiny_dataset

NUM_GENERATORS = 3
# Vmapping over generators may round products differently in the last bits
# (XLA picks batched kernels); after 3 epochs of SGD that stays below 1e-5
# relative. Another generator's or key's classifier differs by orders more
# (checked below), so these tolerances still catch a swap.
PARAM_TOLERANCE = dict(rtol=1e-5, atol=1e-6)
METRIC_TOLERANCE = dict(rtol=1e-5, atol=1e-4)


def linear_sampler(params, embeddings, key):
  """A small test-local generator (a `synthesis.SampleFn`): ReLU(a W + b + noise)."""
  noise = jax.random.normal(key, (embeddings.shape[0], params["w"].shape[1]))
  return jax.nn.relu(embeddings @ params["w"] + params["b"] + noise)


def _generators(num=NUM_GENERATORS):
  """Parameters of `num` differently drawn generators of one architecture."""
  rngs = [np.random.default_rng(100 + g) for g in range(num)]
  return [{"w": rng.normal(size=(EMBEDDING_DIM, FEATURE_DIM)).astype(np.float32),
           "b": rng.normal(size=(FEATURE_DIM,)).astype(np.float32)} for rng in rngs]


def _keys(num=NUM_GENERATORS):
  return [jax.random.fold_in(jax.random.key(7), g) for g in range(num)]


def _assert_results_close(got, want):
  for name in want.params:
    np.testing.assert_allclose(got.params[name], want.params[name], err_msg=name,
                               **PARAM_TOLERANCE)
  assert set(got.curves) == set(want.curves)
  for name, values in want.curves.items():
    np.testing.assert_allclose(got.curves[name], values, err_msg=name, **METRIC_TOLERANCE)
  assert set(got.last) == set(want.last)
  for name, values in want.last.items():
    np.testing.assert_allclose(got.last[name], values, err_msg=name, **METRIC_TOLERANCE)
  assert got.split == want.split
  for a, b in zip(got.seen_unseen_curves, want.seen_unseen_curves):
    np.testing.assert_allclose(a.unseen, b.unseen, **METRIC_TOLERANCE)
    np.testing.assert_allclose(a.seen, b.seen, **METRIC_TOLERANCE)


# The two settings cover both classifiers and the seen-class top-up (7 real
# training examples per seen class: n_synth_seen=9 adds 2 synthetic ones).
SPECS = {"bilinear": dataclasses.replace(SPEC, classifier="bilinear"),
         "softmax_top_up": dataclasses.replace(SPEC, classifier="softmax", n_synth_seen=9)}


def _evaluate(params, dataset, spec, keys, **kwargs):
  return evaluate.evaluate_generators(linear_sampler, params, dataset, spec, keys,
                                      eval_chunk_size=EVAL_CHUNK, **kwargs)


def _alone(dataset, spec, **kwargs):
  """Each generator evaluated on its own (G = 1) with its own key."""
  return [_evaluate([params], dataset, spec, [key], **kwargs)[0]
          for params, key in zip(_generators(), _keys())]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_group_equals_each_generator_evaluated_alone(name):
  dataset, _ = make_dataset()
  spec = SPECS[name]
  generators, keys = _generators(), _keys()
  group = _evaluate(generators, dataset, spec, keys, calibration_gamma=0.5)
  assert len(group) == NUM_GENERATORS
  alone = _alone(dataset, spec, calibration_gamma=0.5)
  for got, want in zip(group, alone):
    _assert_results_close(got, want)
    assert got.params["kernel"].shape[0] == spec.num_classifier_seeds
  # A mixed-up generator or key would be caught: their classifiers differ far
  # beyond the tolerance.
  for i, j in ((0, 1), (1, 2)):
    gap = np.abs(group[i].params["kernel"] - alone[j].params["kernel"]).max()
    assert gap > 1e3 * PARAM_TOLERANCE["atol"], (i, j, gap)
  (swapped_key,) = _evaluate(generators[:1], dataset, spec, keys[1:2])
  assert np.abs(swapped_key.params["kernel"] - group[0].params["kernel"]).max() > 1e-3


def test_group_synthesises_with_each_generators_own_keys(monkeypatch):
  dataset, _ = make_dataset()
  spec = dataclasses.replace(SPEC, n_synth_seen=9)
  pooled = []

  def spy(seed_keys, features, labels, *args, **kwargs):
    del args, kwargs  # Only the inputs matter here; training is tested above.
    pooled.append((np.asarray(jax.random.key_data(seed_keys)), np.asarray(features),
                   np.asarray(labels)))
    return [None] * features.shape[0]

  monkeypatch.setattr(final_classifier, "train_final_classifiers", spy)
  monkeypatch.setattr(evaluate, "_concatenate_seeds", lambda parts: tuple(parts))
  generators, keys = _generators(2), _keys(2)
  seeds = spec.num_classifier_seeds
  assert evaluate.evaluate_generators(linear_sampler, generators, dataset, spec,
                                      keys) == [(None,) * seeds] * 2
  (seed_keys, features, labels), = pooled
  ids, counts = synthesis.synthetic_plan(dataset, spec)
  assert counts.sum() == 4 * 2 + 2 * spec.n_synth_unseen  # the top-up is synthesised
  # One training set per (generator, classifier seed), generator-major.
  assert features.shape[0] == 2 * seeds and seed_keys.shape[:2] == (2 * seeds, 1)
  for g, (params, key) in enumerate(zip(generators, keys)):
    synth_key, train_key = jax.random.split(key)
    classifier_keys = jax.random.key_data(jax.random.split(train_key, seeds))
    for s, pool_key in enumerate(jax.random.split(synth_key, seeds)):
      fake, fake_labels = synthesis.synthesize(linear_sampler, params, pool_key, ids,
                                               dataset.class_embeddings, counts)
      row = g * seeds + s
      np.testing.assert_array_equal(features[row],
                                    np.concatenate([dataset.train_features, fake]))
      np.testing.assert_array_equal(labels, np.concatenate([dataset.train_labels, fake_labels]))
      np.testing.assert_array_equal(seed_keys[row, 0], classifier_keys[s])
  assert not np.array_equal(features[0], features[1])
  assert not np.array_equal(features[0], features[seeds])


@pytest.mark.parametrize("num, size, bound, expected", [
    (5, 100, 250, [(0, 2), (2, 4), (4, 5)]),
    (3, 100, 10_000, [(0, 3)]),
    (3, 100, 50, [(0, 1), (1, 2), (2, 3)]),  # one set above the bound still runs
    (4, 100, 200, [(0, 2), (2, 4)]),
])
def test_generator_batches_bound_the_pooled_bytes(num, size, bound, expected):
  assert evaluate.generator_batches(num, size, bound) == expected


def test_a_group_over_the_memory_bound_is_split_with_the_same_results(monkeypatch):
  dataset, _ = make_dataset()
  spec = SPECS["bilinear"]
  sizes = []
  real_train = final_classifier.train_final_classifiers

  def spy(seed_keys, features, *args, **kwargs):
    sizes.append(features.shape[0])
    return real_train(seed_keys, features, *args, **kwargs)

  monkeypatch.setattr(final_classifier, "train_final_classifiers", spy)
  # One generator's pooled sets, one per classifier seed, fit; two do not.
  seeds = spec.num_classifier_seeds
  pooled_bytes = seeds * (dataset.train_labels.size + 2 * spec.n_synth_unseen) * FEATURE_DIM * 4
  split = _evaluate(_generators(), dataset, spec, _keys(), max_pooled_bytes=pooled_bytes + 1)
  assert sizes == [seeds] * 3
  monkeypatch.undo()
  for got, want in zip(split, _alone(dataset, spec)):
    _assert_results_close(got, want)


def test_bad_group_inputs_raise_clear_errors():
  dataset, _ = make_dataset()
  with pytest.raises(ConfigError, match="expected 2 PRNG keys"):
    _evaluate(_generators(2), dataset, SPEC, _keys(3))


# --------------------------------------------------------------------------
# train_and_evaluate with num_parallel_seeds > 1.

SEEDS = (3, 5)


def _comparable(results):
  """results.json without wall-clock timings, the parallelism setting and provenance."""
  out = json.loads(json.dumps(results))
  del out["timings"], out["config"]["num_parallel_seeds"], out["provenance"]
  for seed_result in out["per_seed"]:
    del seed_result["timings"]
  return out


def _assert_same_results(got, want):
  """Equal structure and keys; numbers equal to float tolerance."""
  got_leaves, got_tree = jax.tree_util.tree_flatten(_comparable(got))
  want_leaves, want_tree = jax.tree_util.tree_flatten(_comparable(want))
  assert got_tree == want_tree
  for a, b in zip(got_leaves, want_leaves):
    if isinstance(b, float):
      np.testing.assert_allclose(a, b, **METRIC_TOLERANCE)
    else:
      assert a == b


def _counting(calls):
  """`evaluate.evaluate_generators`, recording how many generators each call gets."""
  real = evaluate.evaluate_generators

  def spy(sample_fn, generator_params, *args, **kwargs):
    calls.append(len(generator_params))
    return real(sample_fn, generator_params, *args, **kwargs)

  return spy


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
  """A tiny run with num_parallel_seeds=2: (workdir, results, group sizes evaluated)."""
  workdir = tmp_path_factory.mktemp("grouped")
  calls = []
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(evaluate, "evaluate_generators", _counting(calls))
    results = train.train_and_evaluate(GROUP_CONFIG, workdir, dataset=tiny_dataset())
  return workdir, results, calls


GROUP_CONFIG = tiny_config("cwgan", seeds=SEEDS, num_parallel_seeds=2)


class _Crash(Exception):
  pass


def test_parallel_seeds_are_evaluated_in_one_call(grouped):
  workdir, results, calls = grouped
  assert calls == [2]
  assert json.loads((workdir / "results.json").read_text()) == json.loads(json.dumps(results))
  for index, seed in enumerate(SEEDS):
    assert results["per_seed"][index]["seed"] == seed
    assert results["per_seed"][index]["timings"]["parallel_seeds"] == 2
    assert (workdir / f"seed_{seed}" / workdirs.SAMPLES_FILE).is_file()
    records = metric_writers.read_jsonl(workdir / f"seed_{seed}" / "eval" /
                                              "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]


def test_grouped_stage_2_gives_the_results_of_one_seed_at_a_time(tmp_path, monkeypatch,
                                                                  grouped):
  # The same stage-1 generators (their final checkpoints, copied), then
  # num_parallel_seeds=1: each seed restores its generator and is evaluated
  # on its own (G = 1). (That grouped and separate stage 1 agree is
  # test_parallel_seeds' concern.)
  workdir, results, _ = grouped
  shutil.copytree(workdir / workdirs.CHECKPOINT_DIR, tmp_path / workdirs.CHECKPOINT_DIR)
  calls = []
  monkeypatch.setattr(evaluate, "evaluate_generators", _counting(calls))
  one_at_a_time = train.train_and_evaluate(tiny_config("cwgan", seeds=SEEDS), tmp_path,
                                           dataset=tiny_dataset())
  assert calls == [1, 1]
  assert [r["timings"]["stage1_start_iteration"] for r in one_at_a_time["per_seed"]] == [4, 4]
  assert [r["timings"]["parallel_seeds"] for r in one_at_a_time["per_seed"]] == [1, 1]
  _assert_same_results(results, one_at_a_time)
  # The two seeds' generators really differ.
  per_seed = results["metrics"]["gzsl_h"]["per_seed"]
  curves = [r["curves"]["train_loss"] for r in results["per_seed"]]
  assert per_seed[0] != per_seed[1] or curves[0] != curves[1]


def test_group_resumes_after_a_crash_between_the_stages(tmp_path, monkeypatch, grouped):

  def crash(*args, **kwargs):
    raise _Crash()

  real_group = evaluate.evaluate_generators
  monkeypatch.setattr(evaluate, "evaluate_generators", crash)
  with pytest.raises(_Crash):
    train.train_and_evaluate(GROUP_CONFIG, tmp_path, dataset=tiny_dataset())
  assert not list(tmp_path.glob("seed_*/result.json"))
  monkeypatch.setattr(evaluate, "evaluate_generators", real_group)
  resumed = train.train_and_evaluate(GROUP_CONFIG, tmp_path, dataset=tiny_dataset())
  # Stage 1 was restored from its final checkpoints, not repeated, and the
  # same programs ran on the same values: equal bit for bit.
  assert [r["timings"]["stage1_start_iteration"] for r in resumed["per_seed"]] == [4, 4]
  assert _comparable(resumed) == _comparable(grouped[1])

  # Finished seeds are not evaluated again; a new calibration gamma
  # re-evaluates the group (stage 2 only), still in one call.
  calls = []
  monkeypatch.setattr(evaluate, "evaluate_generators", _counting(calls))
  again = train.train_and_evaluate(GROUP_CONFIG, tmp_path, dataset=tiny_dataset())
  assert calls == [] and again["metrics"] == resumed["metrics"]
  calibrated = train.train_and_evaluate(GROUP_CONFIG, tmp_path, dataset=tiny_dataset(),
                                        calibration_gamma=0.25)
  assert calls == [2]
  assert calibrated["metrics"]["calibration_gamma"]["per_seed"] == [0.25, 0.25]
  assert [r["timings"]["stage1_start_iteration"] for r in calibrated["per_seed"]] == [4, 4]


def test_per_generator_optimiser_settings_equal_each_setting_alone():
  """Stage-2 settings that are traced (lr, weight decay, ...) train as one program."""
  dataset, _ = make_dataset()
  generators, keys = _generators(2), _keys(2)
  per_generator = [dataclasses.replace(SPEC, lr=0.05, weight_decay=1e-2),
                   dataclasses.replace(SPEC, lr=0.002, momentum=0.5)]
  group = _evaluate(generators, dataset, per_generator, keys)
  for params, key, spec, got in zip(generators, keys, per_generator, group):
    (want,) = _evaluate([params], dataset, spec, [key])
    _assert_results_close(got, want)
  # Evaluated with one shared spec instead, the first generator's classifiers differ.
  (shared,) = _evaluate(generators[:1], dataset, per_generator[1], keys[:1])
  assert np.abs(shared.params["kernel"] - group[0].params["kernel"]).max() > 1e-3


def test_per_generator_specs_may_not_differ_in_shapes():
  dataset, _ = make_dataset()
  other = [SPEC, dataclasses.replace(SPEC, n_synth_unseen=SPEC.n_synth_unseen + 1)]
  with pytest.raises(ConfigError, match=r"differing \['n_synth_unseen'\]"):
    _evaluate(_generators(2), dataset, other, _keys(2))
  with pytest.raises(ConfigError, match="one EvalSpec per generator"):
    _evaluate(_generators(2), dataset, [SPEC], _keys(2))
