"""The benchmark's data shapes, FLOP counts and command line."""

import os
import subprocess
import sys

import jax
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


def _cost_analysis_missing_on_the_device(monkeypatch, missing, *, cpu_too=False):
  """Makes `Lowered.cost_analysis` return `missing` as the CUDA plugin does.

  The CPU lowering (arguments placed by `benchmark.cpu_abstract_args`) keeps
  the real analysis unless cpu_too.

  Returns:
    The list of the sources of the analyses asked for ("device" or "cpu").
  """
  real = jax.stages.Lowered.cost_analysis
  real_abstract = benchmark.cpu_abstract_args
  asked, lowering_for_cpu = [], []

  def abstract(args):
    lowering_for_cpu.append(True)
    return real_abstract(args)

  def cost_analysis(lowered):
    source = "cpu" if lowering_for_cpu else "device"
    lowering_for_cpu.clear()
    asked.append(source)
    return missing if source == "device" or cpu_too else real(lowered)

  monkeypatch.setattr(benchmark, "cpu_abstract_args", abstract)
  monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", cost_analysis)
  return asked


def test_cpu_abstract_args_keep_shapes_and_sit_on_a_cpu_device():
  spec, state, data, hyper = _spec(2)
  abstract_state, number = benchmark.cpu_abstract_args([state, 3.0])
  leaves = jax.tree_util.tree_leaves(abstract_state)
  assert len(leaves) == len(jax.tree_util.tree_leaves(state)) and number == 3.0
  for leaf, real in zip(leaves, jax.tree_util.tree_leaves(state)):
    assert isinstance(leaf, jax.ShapeDtypeStruct)
    assert (leaf.shape, leaf.dtype) == (real.shape, real.dtype)
    assert leaf.sharding.device_set == {jax.devices("cpu")[0]}


@pytest.mark.parametrize("missing", [{}, None, [], [{"bytes accessed": 1.0}]],
                         ids=["empty", "none", "empty_list", "no_flops_entry"])
def test_iteration_count_comes_from_the_cpu_lowering_when_the_device_has_none(
    monkeypatch, missing):
  spec, state, data, hyper = _spec(3)
  key = jax.random.key(1)
  expected = benchmark.xla_iteration_flops(spec, state, data, hyper, key)
  assert expected["source"] == "xla"
  asked = _cost_analysis_missing_on_the_device(monkeypatch, missing)
  counts = benchmark.xla_iteration_flops(spec, state, data, hyper, key)
  assert asked == ["device", "cpu", "device", "cpu"]
  assert counts["source"] == "xla_cpu_lowering"
  for name in ("train_iteration", "critic_step", "per_iteration"):
    # (A FLOP or two may differ: the CPU lowering sees committed arguments.)
    assert counts[name] == pytest.approx(expected[name], rel=1e-4)
  flop, source = benchmark.iteration_flop_count(
      {"xla": counts, "analytic": benchmark.analytic_iteration_flops(spec)})
  assert (flop, source) == (counts["per_iteration"], "xla_cpu_lowering")


@pytest.mark.parametrize("missing", [{}, None])
def test_iteration_count_falls_back_to_the_analytic_one(monkeypatch, missing):
  spec, state, data, hyper = _spec(3)
  _cost_analysis_missing_on_the_device(monkeypatch, missing, cpu_too=True)
  counts = benchmark.xla_iteration_flops(spec, state, data, hyper, jax.random.key(1))
  assert counts["per_iteration"] is None and counts["source"] is None
  analytic = benchmark.analytic_iteration_flops(spec)
  flop, source = benchmark.iteration_flop_count({"xla": counts, "analytic": analytic})
  assert (flop, source) == (analytic["per_iteration"], "analytic")


def test_components_record_where_their_counts_came_from(monkeypatch):
  config = tiny_config(**{"train.batch_size": 16, "gm.real_per_class": 4})
  dataset = tiny_dataset(feature_dim=32, embedding_dim=8)
  spec = train_state.make_train_spec(config, dataset)
  hyper = train_state.make_hyperparameters(config)
  analytic = benchmark.analytic_iteration_flops(spec)
  expected = {"critic_step": analytic["critic_step"],
              "generator_step": analytic["generator_step"] + analytic["gm"],
              "gm_only": analytic["gm"]}
  calls = {"with_xla": ({}, "xla"), "no_device_count": ({"missing": {}}, "xla_cpu_lowering"),
           "no_count_at_all": ({"missing": None, "cpu_too": True}, "analytic")}
  flops = {}
  for name, (patch, source) in calls.items():
    with monkeypatch.context() as patched:
      if patch:
        _cost_analysis_missing_on_the_device(patched, **patch)
      parts = benchmark.time_components(spec, dataset, hyper, repeats=1, matmul_size=32)
    assert set(parts) == set(expected)
    for part_name, part in parts.items():
      assert part["flop_source"] == source, (name, part_name)
      assert np.isfinite([part["flop"], part["fraction_wall"], part["fraction_cpu_time"]]).all()
    flops[name] = {n: p["flop"] for n, p in parts.items()}
  assert flops["no_device_count"] == pytest.approx(flops["with_xla"], rel=1e-4)
  assert flops["no_count_at_all"] == expected
  # XLA counts more than the matrix products, but of the same order.
  for part_name, flop in flops["with_xla"].items():
    assert 1.0 <= flop / expected[part_name] < 2.0, part_name


def _results(flop_source, fraction):
  chunk = {"size": 64, "flops": 1e9, "flops_per_cpu_s": 1e9}
  return {
      "config": {"dataset": "CUB", "method": "cwgan_gm", "embedding": "att", "precision": "float32"},
      "machine": {"device_kind": "cpu", "backend": "cpu", "cpu_count": 2, "load_average": None,
                  "jax_version": jax.__version__},
      "ms_per_iteration": 2.0, "compile_s": 1.0, "flop_per_iteration": 1.2e11,
      "flop_source": flop_source, "analytic_flop_per_iteration": 1.2e11,
      "achieved_flops": 6e13, "matmul": {"size": 64, "flops_next_to_chunks": 1e14, **chunk},
      "fraction_of_matmul_peak": fraction, "fraction_of_matmul_peak_cpu_time": 0.25,
      "num_iterations": 100, "projected_full_run_s": 0.2,
      "peak_memory_stage1": {"bytes": 2**20, "source": "device"},
      "peak_memory": {"bytes": 2**21, "source": "device"},
      "components": {"gm_only": {"ms": 0.9, "cpu_ms": 0.5, "flop": 3.5e10,
                                 "flop_source": flop_source, "fraction_wall": fraction,
                                 "fraction_cpu_time": 0.5}},
  }


def test_table_names_the_flop_source_and_never_prints_nan():
  table = benchmark.format_table(_results("xla_cpu_lowering", 0.6))
  assert "GFLOP / iteration (xla_cpu_lowering)" in table
  assert "gm_only: ms / GFLOP (xla_cpu_lowering) / wall / CPU" in table
  assert "60.0%" in table and "0.9 / 35.0 / 60% / 50%" in table
  table = benchmark.format_table(_results("analytic", float("nan")))
  assert "GFLOP / iteration (analytic)" in table and "(analytic) / wall" in table
  assert "nan" not in table.lower()
  assert "n/a" in table


@pytest.mark.parametrize("fraction, text", [(0.1234, "12.3%"), (None, "n/a"),
                                            (float("nan"), "n/a"), (float("inf"), "n/a")])
def test_percent(fraction, text):
  assert benchmark.percent(fraction) == text


def test_binary_rejects_unknown_scaling_rows_in_one_line():
  result = subprocess.run(
      [sys.executable, "-m", "experiments.benchmark", "--config=experiments/configs/cub.py",
       "--scaling=seeds,colours"], cwd=REPO, capture_output=True, text=True, timeout=120,
      check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "--scaling" in lines[0] and "colours" in lines[0]
  assert "Traceback" not in result.stderr
