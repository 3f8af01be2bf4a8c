"""Tests of gmn_jax.evaluate: stage 2 of generators (pooling, the real-only baseline), selection.

Grouped evaluation (G generators in one program, memory-bound batches,
train_and_evaluate) is tested in test_evaluate_group.
"""

import dataclasses

import jax
import numpy as np
import pytest

from gmn_jax import classifiers
from gmn_jax import evaluate
from gmn_jax import final_classifier
from gmn_jax import synthesis
from gmn_jax.errors import ConfigError
from test_final_classifier import (CURVE_NAMES, EMBEDDING_DIM, EVAL_CHUNK, FEATURE_DIM,
                                   NUM_CLASSES, SEEN, SPEC, UNSEEN, make_dataset, numpy_training,
                                   oracle_sampler)


def test_evaluate_generators_pools_synthetic_features_per_classifier_seed():
  dataset, truth = make_dataset()
  spec = dataclasses.replace(SPEC, classifier="softmax", num_classifier_seeds=2)
  key = jax.random.PRNGKey(0)
  (got,) = evaluate.evaluate_generators(oracle_sampler, [truth], dataset, spec, [key],
                                        eval_chunk_size=EVAL_CHUNK)
  # The same, step by step: classifier seed s trains on the real seen
  # features pooled with its own draw of the oracle's unseen features, every
  # class over all class columns, from the documented keys.
  synth_key, train_key = jax.random.split(key)
  pool_keys, classifier_keys = jax.random.split(synth_key, 2), jax.random.split(train_key, 2)
  pools = [synthesis.synthesize(oracle_sampler, truth, pool_keys[s], UNSEEN,
                                dataset.class_embeddings, spec.n_synth_unseen) for s in range(2)]
  assert not np.allclose(pools[0][0], pools[1][0])  # two draws, not one shared pool
  assert set(got.curves) == CURVE_NAMES
  for s, (fake, fake_labels) in enumerate(pools):
    (want,) = final_classifier.train_final_classifiers(
        classifier_keys[s:s + 1][None], np.concatenate([dataset.train_features, fake])[None],
        np.concatenate([dataset.train_labels, fake_labels]), dataset.class_embeddings,
        dataset, dataclasses.replace(spec, num_classifier_seeds=1), eval_chunk_size=EVAL_CHUNK)
    for name in CURVE_NAMES:
      np.testing.assert_allclose(got.curves[name][s], want.curves[name][0], rtol=1e-5,
                                 atol=1e-5, err_msg=f"{name}, classifier seed {s}")
    for name in want.last:
      np.testing.assert_allclose(got.last[name][s], want.last[name][0], rtol=1e-5, atol=1e-5)
  assert got.split == "test" and len(got.seen_unseen_curves) == 2
  # Without synthetic features a softmax never predicts an unseen class.
  (real_only,) = evaluate.evaluate_generators(oracle_sampler, None, dataset, spec, [key],
                                              eval_chunk_size=EVAL_CHUNK)
  assert got.last["gzsl_u"].min() > 0.0
  np.testing.assert_array_equal(real_only.curves["gzsl_u"], 0.0)


def test_evaluate_generators_real_only_bilinear_trains_on_seen_columns():
  dataset, _ = make_dataset()
  spec = dataclasses.replace(SPEC, num_classifier_seeds=1)
  key = jax.random.PRNGKey(0)
  # sample_fn is ignored without generators.
  (got,) = evaluate.evaluate_generators(None, None, dataset, spec, [key],
                                        eval_chunk_size=EVAL_CHUNK)
  # The float64 numpy SGD on the real seen features, logits over the seen
  # columns, from the documented keys: key -> (synthesis key, classifier
  # key) -> split(classifier key, 1 seed) -> (init key, shuffle key).
  (seed_key,) = jax.random.split(jax.random.split(key)[1], 1)
  init_key, shuffle_key = jax.random.split(seed_key)
  init_fn, _ = classifiers.get_classifier("bilinear")
  init = init_fn(init_key, feature_dim=FEATURE_DIM, embedding_dim=EMBEDDING_DIM,
                 num_classes=NUM_CLASSES)
  labels = dataset.train_labels
  batches = [tuple(np.asarray(a) for a in final_classifier.epoch_batches(
      jax.random.fold_in(shuffle_key, e), labels.size, spec.batch_size))
             for e in range(spec.epochs)]
  embeddings = dataset.class_embeddings.astype(np.float64)
  want, _, want_losses = numpy_training("bilinear", init, dataset.train_features, labels,
                                        embeddings, batches, spec, columns=SEEN)
  for k in want:
    np.testing.assert_allclose(got.params[k][0], want[k], rtol=2e-4, atol=1e-5, err_msg=k)
  np.testing.assert_allclose(got.curves["train_loss"][0], want_losses, rtol=1e-4)
  # Over all class columns the same data trains another classifier.
  all_columns, _, _ = numpy_training("bilinear", init, dataset.train_features, labels,
                                     embeddings, batches, spec)
  assert np.abs(all_columns["kernel"] - got.params["kernel"][0]).max() > 1e-3


def test_select_on_validation_refuses_test_results():
  def result(h, split):
    return final_classifier.FinalClassifierResult(
        last={"gzsl_h": np.array(h)}, curves={}, params=None, split=split)

  best = evaluate.select_on_validation(
      {100: result([40.0, 42.0], "validation"), 200: result([45.0, 44.0], "validation")})
  assert best == 200
  with pytest.raises(ConfigError, match="split 'validation'"):
    evaluate.select_on_validation({100: result([40.0], "validation"),
                                   200: result([50.0], "test")})
