"""The benchmark's data shapes, FLOP counts and command line."""

import os
import subprocess
import sys

import numpy as np
import pytest

from experiments import benchmark
from gmn_jax import config as gmn_config
from gmn_jax import train_state
from test_train_support import tiny_config, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cub_config(embedding):
  config = gmn_config.get_base_config()
  config.dataset, config.embedding = "CUB", embedding
  return config


@pytest.mark.parametrize("embedding, k", [("att", 312), ("att+sent", 1336)])
def test_benchmark_dataset_has_the_real_cub_shapes(embedding, k):
  dataset = benchmark.benchmark_dataset(_cub_config(embedding))
  assert dataset.seen_classes.size == 150 and dataset.unseen_classes.size == 50
  assert dataset.train_features.shape == (7057, 2048)
  assert dataset.class_embeddings.shape == (200, k)


def test_benchmark_dataset_can_have_sun_many_seen_classes():
  dataset = benchmark.benchmark_dataset(_cub_config("att"), num_seen=645)
  np.testing.assert_array_equal(dataset.seen_classes, np.arange(645))
  assert dataset.unseen_classes.size == 50 and dataset.class_embeddings.shape == (695, 312)
  assert set(np.unique(dataset.train_labels)) == set(range(645))
  assert dataset.test_unseen_labels.min() >= 645
  spec = train_state.make_train_spec(_cub_config("att"), dataset)
  assert spec.num_seen == 645


def _spec(n_critic, **overrides):
  # Wide enough that matrix products dominate, as at real sizes.
  config = tiny_config(**{"train.n_critic": n_critic, "train.batch_size": 32,
                          "generator.hidden_dims": (128,), "critic.hidden_dims": (96,),
                          "generator.noise_dim": 32, "gm.real_per_class": 8, **overrides})
  dataset = tiny_dataset(feature_dim=256, embedding_dim=24)
  spec = train_state.make_train_spec(config, dataset)
  data = train_state.make_train_data(dataset, spec)
  state = train_state.init_train_state(benchmark.jax.random.key(0), spec, data)
  return spec, state, data, train_state.make_hyperparameters(config)


def test_xla_count_adds_the_critic_steps_that_the_loop_body_hides():
  key = benchmark.jax.random.key(1)
  counts = {n: benchmark.xla_iteration_flops(*_spec(n), key) for n in (1, 3)}
  # XLA counts the scanned critic step once, whatever n_critic is (up to the
  # few FLOPs of averaging the critic's metrics over its steps) ...
  assert counts[1]["train_iteration"] == pytest.approx(counts[3]["train_iteration"], rel=1e-5)
  # ... so the iteration adds the other n_critic - 1 steps.
  assert counts[3]["per_iteration"] == pytest.approx(
      counts[3]["train_iteration"] + 2 * counts[3]["critic_step"])
  assert counts[3]["per_iteration"] - counts[1]["per_iteration"] == pytest.approx(
      2 * counts[1]["critic_step"], rel=1e-4)


@pytest.mark.parametrize("implementation, classifier", [
    ("autodiff", "bilinear"), ("gram", "bilinear"), ("gram", "softmax")])
def test_analytic_count_agrees_with_xla(implementation, classifier):
  spec, state, data, hyper = _spec(3, **{"gm.implementation": implementation,
                                         "gm.classifier": classifier})
  xla = benchmark.xla_iteration_flops(spec, state, data, hyper, benchmark.jax.random.key(1))
  analytic = benchmark.analytic_iteration_flops(spec)
  # XLA also counts element-wise work, optimisers and sampling: a little more.
  assert 1.0 <= xla["critic_step"] / analytic["critic_step"] < 1.25
  assert 1.0 <= xla["per_iteration"] / analytic["per_iteration"] < 1.25


def test_gram_count_drops_cub_gm_work_by_the_thin_products():
  dataset = benchmark.benchmark_dataset(_cub_config("att+sent"))
  gm = {}
  for implementation in ("autodiff", "gram"):
    config = _cub_config("att+sent")
    config.gm.implementation = implementation
    spec = train_state.make_train_spec(config, dataset)
    gm[implementation] = benchmark.analytic_iteration_flops(spec)["gm"]
  # 5 classes x (60 real + 120 fake) at D = 2048, K = 1336: the autodiff path
  # also forms the 5 x 3 D x K per-class gradients and their second-order pass
  # (about 10 GFLOP); the Gram path's extra matrices are small.
  assert 9e9 < gm["autodiff"] - gm["gram"] < 11e9


def test_binary_rejects_unknown_scaling_rows_in_one_line():
  result = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--config=experiments/configs/cub.py",
       "--scaling=seeds,colours"], cwd=REPO, capture_output=True, text=True, timeout=120,
      check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "--scaling" in lines[0] and "colours" in lines[0]
  assert "Traceback" not in result.stderr
