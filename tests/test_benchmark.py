"""The benchmark's data shapes, FLOP counts and command line."""

import gzip
import json
import os
import shutil
import subprocess
import sys
import tarfile

import jax
import numpy as np
import pytest

from experiments import benchmark
# Aliased: a test below keeps its results in a local `flops`.
from experiments.benchmarking import flops as flop_counts
from experiments.benchmarking import probe_summary
from experiments.benchmarking import profiling
from experiments.benchmarking import shapes
from experiments.benchmarking import timing
from gmn_jax import config as gmn_config
from gmn_jax import specs
from gmn_jax import train_state
from gmn_jax.errors import ConfigError
from test_train_support import tiny_config, tiny_dataset

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cub_config(embedding):
  config = gmn_config.get_base_config()
  config.dataset, config.embedding = "CUB", embedding
  return config


@pytest.mark.parametrize("embedding, k", [("att", 312), ("att+sent", 1336)])
def test_benchmark_dataset_has_the_real_cub_shapes(embedding, k):
  dataset = shapes.benchmark_dataset(_cub_config(embedding))
  assert dataset.seen_classes.size == 150 and dataset.unseen_classes.size == 50
  assert dataset.train_features.shape == (7057, 2048)
  assert dataset.class_embeddings.shape == (200, k)


def test_benchmark_dataset_can_have_sun_many_seen_classes():
  dataset = shapes.benchmark_dataset(_cub_config("att"), num_seen=645)
  np.testing.assert_array_equal(dataset.seen_classes, np.arange(645))
  assert dataset.unseen_classes.size == 50 and dataset.class_embeddings.shape == (695, 312)
  assert set(np.unique(dataset.train_labels)) == set(range(645))
  assert dataset.test_unseen_labels.min() >= 645
  spec = specs.train_spec(_cub_config("att"), dataset)
  assert spec.num_seen == 645


def _spec(n_critic, **overrides):
  # Wide enough that matrix products dominate, as at real sizes.
  config = tiny_config(**{"train.n_critic": n_critic, "train.batch_size": 32,
                          "generator.hidden_dims": (128,), "critic.hidden_dims": (96,),
                          "generator.noise_dim": 32, "gm.real_per_class": 8, **overrides})
  dataset = tiny_dataset(feature_dim=256, embedding_dim=24)
  spec = specs.train_spec(config, dataset)
  data = train_state.make_train_data(dataset, spec)
  state = train_state.init_train_state(benchmark.jax.random.key(0), spec, data)
  return spec, state, data, specs.hyperparameters(config)


def test_xla_count_adds_the_critic_steps_that_the_loop_body_hides():
  key = benchmark.jax.random.key(1)
  counts = {n: flop_counts.xla_iteration_flops(*_spec(n), key) for n in (1, 3)}
  # XLA counts the scanned critic update once, whatever n_critic is; only
  # the draws and the fakes of the steps, made before the scan, grow with it
  # (one step's worth: a critic step less its update) ...
  generation = counts[1]["critic_step"] - counts[1]["critic_update"]
  assert generation > 0
  # (One pass over the stacked batches: a few element-wise FLOPs differ.)
  assert counts[3]["train_iteration"] - counts[1]["train_iteration"] == pytest.approx(
      2 * generation, rel=1e-2)
  # ... so the iteration adds the other n_critic - 1 updates.
  assert counts[3]["per_iteration"] == pytest.approx(
      counts[3]["train_iteration"] + 2 * counts[3]["critic_update"])
  assert counts[3]["per_iteration"] - counts[1]["per_iteration"] == pytest.approx(
      2 * counts[1]["critic_step"], rel=1e-2)


@pytest.mark.parametrize("implementation, classifier", [
    ("autodiff", "bilinear"), ("gram", "bilinear"), ("gram", "softmax")])
def test_analytic_count_agrees_with_xla(implementation, classifier):
  spec, state, data, hyper = _spec(3, **{"gm.implementation": implementation,
                                         "gm.classifier": classifier})
  xla = flop_counts.xla_iteration_flops(spec, state, data, hyper, benchmark.jax.random.key(1))
  analytic = flop_counts.analytic_iteration_flops(spec)
  # XLA also counts element-wise work, optimisers and sampling: a little more.
  assert 1.0 <= xla["critic_step"] / analytic["critic_step"] < 1.25
  assert 1.0 <= xla["per_iteration"] / analytic["per_iteration"] < 1.25


def test_gram_count_drops_cub_gm_work_by_the_thin_products():
  dataset = shapes.benchmark_dataset(_cub_config("att+sent"))
  gm = {}
  for implementation in ("autodiff", "gram"):
    config = _cub_config("att+sent")
    config.gm.implementation = implementation
    spec = specs.train_spec(config, dataset)
    gm[implementation] = flop_counts.analytic_iteration_flops(spec)["gm"]
  # 5 classes x (60 real + 120 fake) at D = 2048, K = 1336: the autodiff path
  # also forms the 5 x 3 D x K per-class gradients and their second-order pass
  # (about 10 GFLOP); the Gram path's extra matrices are small.
  assert 9e9 < gm["autodiff"] - gm["gram"] < 11e9


def _cost_analysis_missing_on_the_device(monkeypatch, missing, *, cpu_too=False):
  """Makes `Lowered.cost_analysis` return `missing` as the CUDA plugin does.

  The CPU lowering (arguments placed by `flop_counts.cpu_abstract_args`) keeps
  the real analysis unless cpu_too.

  Returns:
    The list of the sources of the analyses asked for ("device" or "cpu").
  """
  real = jax.stages.Lowered.cost_analysis
  real_abstract = flop_counts.cpu_abstract_args
  asked, lowering_for_cpu = [], []

  def abstract(args):
    lowering_for_cpu.append(True)
    return real_abstract(args)

  def cost_analysis(lowered):
    source = "cpu" if lowering_for_cpu else "device"
    lowering_for_cpu.clear()
    asked.append(source)
    return missing if source == "device" or cpu_too else real(lowered)

  monkeypatch.setattr(flop_counts, "cpu_abstract_args", abstract)
  monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", cost_analysis)
  return asked


def test_cpu_abstract_args_keep_shapes_and_sit_on_a_cpu_device():
  spec, state, data, hyper = _spec(2)
  abstract_state, number = flop_counts.cpu_abstract_args([state, 3.0])
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
  expected = flop_counts.xla_iteration_flops(spec, state, data, hyper, key)
  assert expected["source"] == "xla"
  asked = _cost_analysis_missing_on_the_device(monkeypatch, missing)
  counts = flop_counts.xla_iteration_flops(spec, state, data, hyper, key)
  assert asked == ["device", "cpu"] * 3
  assert counts["source"] == "xla_cpu_lowering"
  for name in ("train_iteration", "critic_step", "critic_update", "per_iteration"):
    # (A FLOP or two may differ: the CPU lowering sees committed arguments.)
    assert counts[name] == pytest.approx(expected[name], rel=1e-4)
  flop, source = flop_counts.iteration_flop_count(
      {"xla": counts, "analytic": flop_counts.analytic_iteration_flops(spec)})
  assert (flop, source) == (counts["per_iteration"], "xla_cpu_lowering")


@pytest.mark.parametrize("missing", [{}, None])
def test_iteration_count_falls_back_to_the_analytic_one(monkeypatch, missing):
  spec, state, data, hyper = _spec(3)
  _cost_analysis_missing_on_the_device(monkeypatch, missing, cpu_too=True)
  counts = flop_counts.xla_iteration_flops(spec, state, data, hyper, jax.random.key(1))
  assert counts["per_iteration"] is None and counts["source"] is None
  analytic = flop_counts.analytic_iteration_flops(spec)
  flop, source = flop_counts.iteration_flop_count({"xla": counts, "analytic": analytic})
  assert (flop, source) == (analytic["per_iteration"], "analytic")


def test_components_record_where_their_counts_came_from(monkeypatch):
  config = tiny_config(**{"train.batch_size": 16, "gm.real_per_class": 4})
  dataset = tiny_dataset(feature_dim=32, embedding_dim=8)
  spec = specs.train_spec(config, dataset)
  hyper = specs.hyperparameters(config)
  analytic = flop_counts.analytic_iteration_flops(spec)
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
      parts = timing.time_components(spec, dataset, hyper, repeats=1, matmul_size=32)
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


# --------------------------------------------------------------------------
# Profiles, HLO dumps and the GPU parallel-seeds probe.

# What `time_stage1` returns without profile or dump (its docstring's keys).
_STAGE1_KEYS = {"num_seeds", "iterations_per_chunk", "chunk_seconds", "chunk_cpu_seconds",
                "compile_s", "ms_per_iteration", "ms_per_iteration_per_seed",
                "cpu_ms_per_iteration", "analytic_flop_per_iteration"}


def _trace_events(path):
  with gzip.open(path, "rt", encoding="utf-8") as f:
    return json.load(f)["traceEvents"]


def test_profiled_and_dumped_stage1_keeps_its_timings(tmp_path):
  config = tiny_config(**{"train.n_critic": 1})
  dataset = tiny_dataset()
  spec = specs.train_spec(config, dataset)
  hyper = specs.hyperparameters(config)
  row = timing.time_stage1(spec, dataset, hyper, iterations=2, chunks=2,
                           profile_dir=str(tmp_path / "trace"),
                           dump_hlo_dir=str(tmp_path / "hlo"))
  # The profiled chunk adds entries, and no timed chunk.
  assert set(row) == _STAGE1_KEYS | {"profile", "hlo_dump"}
  assert len(row["chunk_seconds"]) == len(row["chunk_cpu_seconds"]) == 2
  assert all(t > 0 for t in row["chunk_seconds"]) and row["ms_per_iteration"] > 0
  # The dump holds the chunk program (its scan is a loop), and only it.
  files = row["hlo_dump"]["files"]
  assert len(files) == 1 and row["hlo_dump"]["dir"] == str(tmp_path / "hlo")
  text = open(files[0], encoding="utf-8").read()
  assert text.startswith("HloModule jit_chunk")
  assert probe_summary.hlo_summary(text)["ops"]["while"]["all"] >= 1
  profile = row["profile"]
  if "error" in profile:
    pytest.skip(f"jax.profiler cannot trace here: {profile['error']}")
  assert profile["dir"] == str(tmp_path / "trace") and profile["seconds"] > 0
  traces = [f for f in profile["files"] if f.endswith(".trace.json.gz")]
  assert traces and all(os.path.getsize(f) > 0 for f in profile["files"])
  assert set(profile["files"]) == set(profiling.trace_files(str(tmp_path / "trace")))
  # The chunk program's kernels are in the trace, named by their module.
  modules = {e.get("args", {}).get("hlo_module", "") for e in _trace_events(traces[0])
             if e.get("ph") == "X"}
  assert "jit_chunk" in modules, sorted(modules)[:20]


def test_a_profiler_failure_costs_the_trace_not_the_run(monkeypatch, tmp_path):
  def refuse(directory):
    raise RuntimeError("Only one trace may be collected at a time")

  monkeypatch.setattr(jax.profiler, "trace", refuse)
  result = profiling.profile_call(lambda: 1, str(tmp_path / "p"))
  assert result == {"dir": str(tmp_path / "p"),
                    "error": "RuntimeError: Only one trace may be collected at a time"}


@pytest.mark.parametrize("text, counts", [("1,2,4,8", [1, 2, 4, 8]), (" 2 ,1", [2, 1]),
                                          ("8", [8])])
def test_parse_counts(text, counts):
  assert benchmark.parse_counts(text, "seed_counts") == counts


@pytest.mark.parametrize("text", ["", "0", "1,-2", "1,two", "1.5"])
def test_parse_counts_rejects_anything_but_positive_integers(text):
  with pytest.raises(ConfigError, match="--seed_counts: expected comma-separated positive"):
    benchmark.parse_counts(text, "seed_counts")


def test_run_benchmark_rejects_bad_seed_counts_and_a_file_for_a_folder(tmp_path):
  common = dict(iterations=1, chunks=1, scaling=["seeds"], scaling_iterations=1,
                classifier_epochs=1, skip_classifier=True, matmul_size=8)
  with pytest.raises(ConfigError, match="--seed_counts"):
    benchmark.run_benchmark(tiny_config(), seed_counts=[1, 0], **common)
  a_file = tmp_path / "not_a_folder"
  a_file.write_text("x")
  for flag in ("profile_dir", "dump_hlo_dir"):
    with pytest.raises(ConfigError, match=f"--{flag}: expected a directory"):
      benchmark.run_benchmark(tiny_config(), **{flag: str(a_file)}, **common)


def test_point_names():
  assert profiling.point_name(None) == "main"
  assert profiling.point_name("seeds", 2) == "seeds_2"


def test_summary_reads_back_the_progress_lines():
  points = [{"row": "seeds", "value": 2, "ms_per_iteration": 3.4321, "cpu_ms_per_iteration": 0.75,
             "compile_s": 20.12},
            {"row": "batch", "value": 64, "ms_per_iteration": 1234.5,
             "cpu_ms_per_iteration": 2e-05, "compile_s": 1.0}]
  log = "noise\n" + "\n".join(benchmark.progress_line(p) for p in points) + "\nmore noise"
  assert probe_summary.timing_points_from_log(log) == [
      {"point": "seeds_2", "num_seeds": 2, "iterations": None, "ms": 3.432, "cpu_ms": 0.75,
       "profiled_ms": None},
      {"point": "batch_64", "num_seeds": 1, "iterations": None, "ms": 1234.0, "cpu_ms": 2e-05,
       "profiled_ms": None}]


# An optimised module in the shape XLA:GPU prints it: the command-buffer pass
# has outlined the loop (whose body holds two fusions and a custom call) and
# one fusion of the entry; another fusion and a conditional stay outside.
_HLO = """HloModule jit_chunk, is_scheduled=true, entry_computation_layout={(f32[4]{0})->f32[4]{0}}

%fused_a (p: f32[4]) -> f32[4] {
  %p = f32[4]{0} parameter(0)
  ROOT %n = f32[4]{0} negate(%p)
}

%body (t: (f32[4], s32[])) -> (f32[4], s32[]) {
  %t = (f32[4]{0}, s32[]) parameter(0)
  %x = f32[4]{0} get-tuple-element(%t), index=0
  %f1 = f32[4]{0} fusion(%x), kind=kLoop, calls=%fused_a
  %f2 = f32[4]{0} fusion(%f1), kind=kLoop, calls=%fused_a
  %g = (f32[4]{0}, s8[64]{0}) custom-call(%f2), custom_call_target="__cublas$gemm"
  %i = s32[] get-tuple-element(%t), index=1
  ROOT %r = (f32[4]{0}, s32[]) tuple(%f2, %i)
}

%cond (t: (f32[4], s32[])) -> pred[] {
  %t = (f32[4]{0}, s32[]) parameter(0)
  %i = s32[] get-tuple-element(%t), index=1
  %c = s32[] constant(100)
  ROOT %lt = pred[] compare(%i, %c), direction=LT
}

%command_buffer (p0: f32[4]) -> f32[4] {
  %p0 = f32[4]{0} parameter(0)
  %f0 = f32[4]{0} fusion(%p0), kind=kLoop, calls=%fused_a
  %z = s32[] constant(0)
  %init = (f32[4]{0}, s32[]) tuple(%f0, %z)
  %w = (f32[4]{0}, s32[]) while(%init), condition=%cond, body=%body
  ROOT %out = f32[4]{0} get-tuple-element(%w), index=0
}

%branch_a (p: f32[4]) -> f32[4] {
  ROOT %p = f32[4]{0} parameter(0)
}

ENTRY %main (x: f32[4]) -> f32[4] {
  %x = f32[4]{0} parameter(0)
  %cb = f32[4]{0} call(%x), to_apply=%command_buffer
  %k = s32[] constant(0)
  %b = f32[4]{0} conditional(%k, %cb), branch_computations={%branch_a, %branch_a}
  ROOT %last = f32[4]{0} fusion(%b), kind=kLoop, calls=%fused_a
}
"""


def test_hlo_summary_counts_what_command_buffers_reach():
  summary = probe_summary.hlo_summary(_HLO)
  assert summary["computations"] == 6 and summary["command_buffers"] == 1
  assert summary["ops"] == {
      "fusion": {"all": 4, "in_command_buffers": 3},
      "custom-call": {"all": 1, "in_command_buffers": 1},
      "while": {"all": 1, "in_command_buffers": 1},
      "conditional": {"all": 1, "in_command_buffers": 0},
      "call": {"all": 1, "in_command_buffers": 0}}
  assert summary["raw"] == {"command_buffer": 2, "call(": 2}  # "custom-call(" has one.
  # Without the pass, nothing is reached.
  plain = probe_summary.hlo_summary(_HLO.replace("command_buffer", "outlined"))
  assert plain["command_buffers"] == 0
  assert all(c["in_command_buffers"] == 0 for c in plain["ops"].values())
  assert plain["ops"]["fusion"]["all"] == 4


def test_called_computations_reads_every_calling_attribute():
  line = ("  %w = (f32[4]{0}) while(%t), condition=%cond.1, body=%body.2, "
          "metadata={op_name=\"x\"}")
  assert probe_summary.called_computations(line) == ["cond.1", "body.2"]
  line = "  %b = f32[4] conditional(%k, %x, %y), branch_computations={%a.1, %b-2}"
  assert probe_summary.called_computations(line) == ["a.1", "b-2"]
  assert probe_summary.called_computations("  %c = f32[] add(%a, %b)") == []


def _gpu_like_trace():
  """Two iterations: the host launches 4 kernels and 2 graphs, syncs once."""
  host, device = 7, 9
  meta = [{"ph": "M", "pid": host, "name": "process_name", "args": {"name": "/host:CPU"}},
          {"ph": "M", "pid": device, "name": "process_name",
           "args": {"name": "/device:GPU:0"}}]
  host_events = ([{"name": "cuLaunchKernelEx"}] * 3 + [{"name": "cudaLaunchKernel"}]
                 + [{"name": "cuGraphLaunch"}] * 2 + [{"name": "cuStreamSynchronize"}]
                 + [{"name": "cuMemcpyDtoHAsync"}]
                 + [{"name": "WARNING: CommandBuffer disabled when profiling"}]
                 + [{"name": "$builtins isinstance"}] * 9)
  events = [dict(e, ph="X", pid=host, tid=1, ts=0.0, dur=1.0) for e in host_events]
  meta += [{"ph": "M", "pid": device, "tid": 2, "name": "thread_name",
            "args": {"name": "Stream #13(Compute)"}},
           {"ph": "M", "pid": device, "tid": 3, "name": "thread_name",
            "args": {"name": "XLA Ops"}}]
  # The same kernels again, by HLO op: not counted twice.
  events += [{"ph": "X", "pid": device, "tid": 3, "name": "dot.1", "ts": 0.0, "dur": 40.0}]
  # Kernels busy 2 + 3 + 1 = 6 us over the span 10 .. 22 us.
  events += [{"ph": "X", "pid": device, "tid": 2, "name": "gemm", "ts": 10.0, "dur": 2.0},
             {"ph": "X", "pid": device, "tid": 2, "name": "fusion_1", "ts": 15.0, "dur": 3.0},
             {"ph": "X", "pid": device, "tid": 2, "name": "gemm", "ts": 21.0, "dur": 1.0},
             {"ph": "i", "pid": device, "tid": 2, "name": "marker", "ts": 30.0}]
  return {"traceEvents": meta + events}


def test_trace_summary_counts_launches_per_iteration():
  summary = probe_summary.trace_summary(_gpu_like_trace(), iterations=2, top=2)
  assert summary["per"] == "iteration"
  assert summary["host"] == {"kernel_launches": 2.0, "graph_launches": 1.0,
                             "synchronisations": 0.5, "copies": 0.5,
                             "command_buffer_notes": 0.5}
  assert summary["device_events"] == 1.5
  assert summary["device_busy_fraction"] == pytest.approx(6.0 / 12.0)
  # Python's own events are not what the host's launching does.
  assert summary["top_host"] == [("cuLaunchKernelEx", 3), ("cuGraphLaunch", 2)]
  assert summary["top_device"] == [("gemm", 2), ("fusion_1", 1)]
  totals = probe_summary.trace_summary(_gpu_like_trace())
  assert totals["per"] == "chunk" and totals["host"]["kernel_launches"] == 4.0


def _fake_results(ms_by_seeds, cpu_ms_by_seeds, iterations, profiled_s=None):
  def profile(s):
    return {} if profiled_s is None else {"profile": {"dir": "x", "seconds": profiled_s[s]}}
  return {"ms_per_iteration": ms_by_seeds[1], "cpu_ms_per_iteration": cpu_ms_by_seeds[1],
          "iterations_per_chunk": iterations, **profile(1),
          "scaling": [{"row": "seeds", "value": s, "num_seeds": s, "ms_per_iteration": ms,
                       "cpu_ms_per_iteration": cpu_ms_by_seeds[s],
                       "iterations_per_chunk": iterations, **profile(s)}
                      for s, ms in ms_by_seeds.items()]}


def _probe_folder(root):
  """A probe's working folder: default done, no_command_buffers cut short, profiled done."""
  root.mkdir(parents=True, exist_ok=True)
  (root / "default.json").write_text(json.dumps(
      _fake_results({1: 2.0, 2: 3.2}, {1: 0.04, 2: 0.75}, 100)))
  (root / "no_command_buffers.log").write_text(
      "machine: ...\n" + benchmark.progress_line(
          {"row": "seeds", "value": 1, "ms_per_iteration": 3.0, "cpu_ms_per_iteration": 2.5,
           "compile_s": 17.0}) + "\nTerminated\n")
  (root / "profiled.json").write_text(json.dumps(
      _fake_results({1: 2.5, 2: 4.0}, {1: 0.1, 2: 1.0}, 20, profiled_s={1: 0.1, 2: 0.2})))
  (root / "hlo" / "main").mkdir(parents=True)
  (root / "hlo" / "main" / "module_0001.jit_chunk.sm_9.0_gpu_after_optimizations.txt"
   ).write_text(_HLO)
  (root / "traces" / "seeds_2" / "plugins" / "profile" / "t").mkdir(parents=True)
  with gzip.open(root / "traces" / "seeds_2" / "plugins" / "profile" / "t" / "h.trace.json.gz",
                 "wt", encoding="utf-8") as f:
    json.dump(_gpu_like_trace(), f)
  return root


def _summary_lines(text, head):
  return [l.split() for l in text.splitlines() if l.split()[:1] == [head]]


def test_probe_summary_of_a_working_folder(tmp_path):
  text = probe_summary.summarize(str(_probe_folder(tmp_path / "run")))
  assert "default (default.json)" in text
  assert "no_command_buffers (no_command_buffers.log, run cut short)" in text
  # point, S, ms, x S=1, ms/seed, host CPU ms[, profiled ms]
  assert _summary_lines(text, "seeds_2")[0] == ["seeds_2", "2", "3.200", "1.60", "1.600",
                                                "0.750"]
  assert ["seeds_1", "1", "3.000", "1.00", "3.000", "2.500"] in _summary_lines(text, "seeds_1")
  # The profiled way: 0.2 s for a 20-iteration chunk is 10 ms per iteration.
  assert ["seeds_2", "2", "4.000", "1.60", "2.000", "1.000", "10.000"] in _summary_lines(
      text, "seeds_2")
  assert "1 command-buffer computations of 6" in text and "while 1/1" in text
  assert "fusion 3/4" in text
  # Per iteration of the profiled way's 20-iteration chunks.
  assert "kernel_launches 0.2, graph_launches 0.1" in text


def test_probe_summary_of_the_packed_folder_is_the_same(tmp_path):
  run = _probe_folder(tmp_path / "run")
  out = tmp_path / "out"
  out.mkdir()
  with tarfile.open(out / probe_summary.PACKED_RESULTS, "w:gz") as tar:
    for name in ("default.json", "no_command_buffers.log", "profiled.json"):
      tar.add(run / name, arcname=name)
  with tarfile.open(out / probe_summary.PACKED_HLO, "w:gz") as tar:
    tar.add(run / "hlo", arcname="hlo")
  shutil.copy(next((run / "traces").rglob("*.trace.json.gz")), out / "trace_seeds_2.json.gz")
  assert probe_summary.summarize_any(str(out)) == probe_summary.summarize(str(run))


def test_probe_summary_says_what_is_missing(tmp_path):
  text = probe_summary.summarize(str(tmp_path))
  for way in probe_summary.WAYS:
    assert f"{way}: not run" in text
  assert "none dumped" in text and "none written" in text


@pytest.mark.slow
def test_probe_script_runs_on_the_cpu_with_tiny_settings(tmp_path):
  out = tmp_path / "out"
  env = dict(os.environ, OUT=str(out), WORK=str(tmp_path / "work"),
             CONFIG="experiments/configs/apy.py", ITERATIONS="2", CHUNKS="1", SEEDS="1,2",
             PROFILE_ITERATIONS="2", DEADLINE="400", PYTHON=sys.executable)
  env.pop("XLA_FLAGS", None)
  result = subprocess.run(
      ["bash", "experiments/benchmarking/gpu_parallel_seeds_probe.sh",
       "--config.generator.hidden_dims=(16,)", "--config.critic.hidden_dims=(16,)",
       "--config.train.batch_size=8", "--config.train.n_critic=1",
       "--config.gm.real_per_class=2", "--config.gm.num_classes=2", "--matmul_size=64"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=450, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  # Flat, few files: what a device run brings back.
  assert sorted(p.name for p in out.iterdir()) == [
      "probe.log", "probe_hlo.tar.gz", "probe_results.tar.gz", "summary.txt",
      "trace_seeds_1.json.gz", "trace_seeds_2.json.gz"]
  assert "no_command_buffers: skipped (backend cpu" in (out / "probe.log").read_text()
  text = (out / "summary.txt").read_text()
  # The packed folder holds all of it but the main setting's trace (S = 1
  # again), so its summary says the same, less those lines.
  packed = probe_summary.summarize_any(str(out)).splitlines()
  assert set(packed) <= set(text.splitlines()) and len(packed) == len(text.splitlines()) - 3
  assert "default (default.json)" in text and "profiled (profiled.json)" in text
  assert "no_command_buffers: not run" in text
  assert len(_summary_lines(text, "seeds_2")) == 4  # default, profiled, HLO, trace.
  assert "main       jit_chunk:" in text


@pytest.mark.slow
def test_the_gpu_table1_script_runs_every_step_with_tiny_settings(tmp_path):
  # The mechanics of experiments/benchmarking/gpu_table1.sh on a CPU
  # (SMALL=1: tiny networks, 2 iterations, 1 epoch; about 2 minutes).
  # pylint: disable=g-import-not-at-top
  import subprocess
  import sys
  # pylint: enable=g-import-not-at-top
  pytest.importorskip("torch")
  out = tmp_path / "out"
  env = dict(os.environ, OUT=str(out), SMALL="1", DEADLINE="500", PYTHON=sys.executable,
             T1_DATASETS="cub")
  subprocess.run(["bash", "experiments/benchmarking/gpu_table1.sh"], cwd=REPO, env=env,
                 check=True, timeout=600, capture_output=True)
  for name in ("bench_cub.json", "torch_cub.json", "table1_cub.json", "summary.txt"):
    assert (out / name).exists(), name
  summary = (out / "summary.txt").read_text()
  for needle in ("4 seeds / 1 seed", "PyTorch / JAX, stage1", "Table 1 on CUB"):
    assert needle in summary, summary


def test_table1_summary_reads_the_targets_off_the_results(tmp_path):
  # pylint: disable=g-import-not-at-top
  import json
  from experiments.benchmarking import table1_summary
  # pylint: enable=g-import-not-at-top
  (tmp_path / "bench_cub.json").write_text(json.dumps({
      "machine": {"device_kind": "H100"}, "ms_per_iteration": 2.0, "num_iterations": 1000,
      "scaling": [{"row": "seeds", "value": 1, "ms_per_iteration": 2.0},
                  {"row": "seeds", "value": 4, "ms_per_iteration": 3.0}]}))
  (tmp_path / "torch_cub.json").write_text(json.dumps({"ratios": {"stage1": 12.5}}))
  for dataset, seconds in (("cub", 600), ("sun", 300), ("awa1", 1200)):
    (tmp_path / f"table1_{dataset}.json").write_text(json.dumps({
        "dataset": dataset.upper(), "measured_s": 60, "iterations": 300,
        "reference_iterations": 100000, "projected_s": seconds, "rows": [{}] * 6,
        "seeds": [1, 2, 3], "concurrent_rows": 3}))
  text = table1_summary.summarize(str(tmp_path))
  assert "1000 iterations: 0.0 min" in text  # 2 ms x 1000 = 2 s.
  assert "4 seeds / 1 seed: 1.50x (target <= 2.0): met" in text
  assert "PyTorch / JAX, stage1: 12.5x (target >= 10.0): met" in text
  # 10 + 5 + 20 minutes: over the 30-minute target.
  assert "Table 1, cub+sun+awa1: 35.0 min projected (target <= 30 min for the three): NOT met" \
      in text
  assert "torch_cub" not in text and "missing" not in text
