"""Times the benchmark's stages: stage-1 chunks, their parts, the final classifier.

Each timing runs the program the training uses, after compiling it, and
gives its FLOP rate as a fraction of the reference matrix product's
(`measure.matmul_rate`) timed next to it.
"""

import dataclasses
import functools
import statistics
import sys
import time
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from experiments.benchmarking import flops
from experiments.benchmarking import measure
from experiments.benchmarking import profiling
from gmn_jax import final_classifier
from gmn_jax import reference_batches
from gmn_jax import seed_axis
from gmn_jax import specs
from gmn_jax import stage1
from gmn_jax import step_terms
from gmn_jax import synthesis
from gmn_jax import train_state
from gmn_jax import critic_updates
from gmn_jax import train_step
from gmn_jax.data.dataset import ZSLDataset


def init_states(spec: specs.TrainSpec, data, num_seeds: int):
  """Initial states of seeds 0..num_seeds-1, stacked on a seed axis.

  Args:
    spec: the run's settings.
    data: the device `TrainData`.
    num_seeds: how many.

  Returns:
    (states, train keys), both with a leading seed axis (as `stage1` makes
    them).
  """
  keys = jax.random.split(jax.random.key(0), num_seeds)
  train_keys = jax.random.split(jax.random.key(1), num_seeds)
  return stage1.init_states(spec, data, keys), train_keys


def stage1_program(spec: specs.TrainSpec, num_iterations: int, num_seeds: int):
  """The jitted stage-1 chunk that training uses (`stage1.compiled_chunk`).

  Args:
    spec: the run's settings.
    num_iterations: generator iterations per call.
    num_seeds: independent runs per call.

  Returns:
    `program(states, data, hyper, keys, first_iteration, first_report) ->
    (states, metrics, finite, done)`; the states are donated.
  """
  return stage1.compiled_chunk(spec, num_iterations, num_seeds)


def time_stage1(spec: specs.TrainSpec, dataset: ZSLDataset, hyper, *, iterations: int,
                chunks: int, num_seeds: int = 1, count_flops: bool = False,
                matmul_size: Optional[int] = None, profile_dir: Optional[str] = None,
                dump_hlo_dir: Optional[str] = None) -> Dict[str, Any]:
  """Compiles and times stage 1 at one setting.

  Args:
    spec: the run's settings.
    dataset: the dataset.
    hyper: the `Hyperparameters`.
    iterations: generator iterations per timed call.
    chunks: timed calls (after one untimed warm-up call).
    num_seeds: seeds per call (vmapped).
    count_flops: also return XLA's FLOP count of one iteration.
    matmul_size: when given, the reference matrix product is timed (3
      calls) after every chunk, so that each chunk has a rate measured under
      the same load.
    profile_dir: when given, one more chunk runs after the timed ones (and
      their products) inside `jax.profiler.trace(profile_dir)`.
    dump_hlo_dir: when given, the compilation dumps the program's HLO there
      (`hlo_dump_options`); the dump's time counts in compile_s.

  Returns:
    {"ms_per_iteration" (wall, all seeds together), "cpu_ms_per_iteration",
    "ms_per_iteration_per_seed", "chunk_seconds", "chunk_cpu_seconds",
    "compile_s", "num_seeds", "iterations_per_chunk",
    "analytic_flop_per_iteration" (all seeds), with count_flops "flops":
    {"xla": ..., "analytic": ...}, with matmul_size "matmul_after_chunks",
    with profile_dir "profile" (`profile_call`), with dump_hlo_dir
    "hlo_dump": {"dir", "files" (`dumped_hlo_files`)}}; the profiled chunk
    is in none of the timings.
  """
  data = jax.device_put(train_state.make_train_data(dataset, spec))
  hyper = jax.device_put(hyper)
  states, keys = init_states(spec, data, num_seeds)
  program = stage1_program(spec, iterations, num_seeds)
  # The iteration number and the first report are traced: every timed call
  # runs the same program. The calls make no report to the host (training's,
  # about one a second, cost ~0.3 ms each: docs/benchmarks.md).
  args = (data, hyper, keys, jnp.int32(0), jnp.int32(iterations + 1))
  started = time.perf_counter()
  options = profiling.hlo_dump_options(dump_hlo_dir) if dump_hlo_dir else None
  compiled = program.lower(states, *args).compile(compiler_options=options)
  compile_s = time.perf_counter() - started
  states = jax.block_until_ready(compiled(states, *args))[0]
  walls, cpus, matmuls = [], [], []
  for _ in range(chunks):
    (states, metrics, _, _), wall, cpu = measure.timed(
        lambda: compiled(states, *args))
    walls.append(wall)
    cpus.append(cpu)
    if matmul_size:
      matmuls.append(measure.matmul_rate(matmul_size, repeats=3))
  flop_counts = None
  if count_flops:  # Before the profiled call, which donates the states.
    flop_counts = {"xla": flops.xla_iteration_flops(spec, seed_axis.unstack(states, 0), data,
                                                    hyper, keys[0]),
                   "analytic": flops.analytic_iteration_flops(spec)}
  profile = None
  if profile_dir:
    profile = profiling.profile_call(
        lambda: compiled(states, *args), profile_dir)
  if not all(np.isfinite(np.asarray(v)).all() for v in metrics.values()):
    # Random data may diverge; the timing is still valid, but say so.
    print("note: non-finite training metrics on the synthetic data", file=sys.stderr)
  ms = 1e3 * statistics.median(walls) / iterations
  row = {"num_seeds": num_seeds, "iterations_per_chunk": iterations,
         "chunk_seconds": walls, "chunk_cpu_seconds": cpus, "compile_s": compile_s,
         "ms_per_iteration": ms, "ms_per_iteration_per_seed": ms / num_seeds,
         "cpu_ms_per_iteration": 1e3 * statistics.median(cpus) / iterations,
         "analytic_flop_per_iteration":
             num_seeds * flops.analytic_iteration_flops(spec)["per_iteration"]}
  if matmul_size:
    row["matmul_after_chunks"] = matmuls
  if profile_dir:
    row["profile"] = profile
  if dump_hlo_dir:
    row["hlo_dump"] = {"dir": dump_hlo_dir, "files": profiling.dumped_hlo_files(dump_hlo_dir)}
  if count_flops:
    row["flops"] = flop_counts
  return row


def fractions_of_matmul(flop_per_iteration: float, row: Dict[str, Any]) -> Dict[str, float]:
  """The step's FLOP rate over the reference product's, by wall and CPU time.

  Args:
    flop_per_iteration: FLOPs of one iteration (all seeds of the row).
    row: from `time_stage1` with matmul_size given.

  Returns:
    {"wall": median over chunks of (chunk rate / the product's rate timed
    right after it), "cpu_time": the same with CPU-time rates, "achieved_flops":
    the median wall rate}.
  """
  n = row["iterations_per_chunk"]
  wall = [flop_per_iteration * n / t / m["flops"]
          for t, m in zip(row["chunk_seconds"], row["matmul_after_chunks"])]
  cpu = [flop_per_iteration * n / max(t, 1e-9) / m["flops_per_cpu_s"]
         for t, m in zip(row["chunk_cpu_seconds"], row["matmul_after_chunks"])]
  return {"wall": statistics.median(wall), "cpu_time": statistics.median(cpu),
          "achieved_flops": flop_per_iteration / (row["ms_per_iteration"] / 1e3)}


def time_components(spec: specs.TrainSpec, dataset: ZSLDataset, hyper, *,
                    repeats: int, matmul_size: int) -> Dict[str, Dict[str, float]]:
  """Where an iteration's time goes: its parts timed alone, with their FLOPs.

  Parts: one critic step; the generator step's value and gradient (with GM);
  GM's value and gradient w.r.t. the generator alone. Each is jitted alone,
  counted by XLA's cost analysis (`xla_flops`; the part's analytic count
  where XLA gives none) and timed (median of `repeats` calls, each followed
  by the reference product for its fraction).

  Args:
    spec: the run's settings.
    dataset: the dataset.
    hyper: the `Hyperparameters`.
    repeats: timed calls per part.
    matmul_size: the reference product's side.

  Returns:
    {part: {"ms", "cpu_ms", "flop", "flop_source" (one of `flops.FLOP_SOURCES`),
    "fraction_wall", "fraction_cpu_time"}}.
  """
  data = jax.device_put(train_state.make_train_data(dataset, spec))
  hyper = jax.device_put(hyper)
  state = train_state.init_train_state(jax.random.key(0), spec, data)
  key = jax.random.key(2)
  thetas = {}
  if spec.variant.gradient_matching:
    thetas, _ = spec.theta_sampler(hyper).sample(state.theta_sampler, key, state.iteration)
  critic_args = (hyper, state.critic, state.critic_opt, state.generator, data, key)
  if spec.sampling == "reference":
    # The parts as the run computes them: the iterators' draws, masked losses.
    batch, _ = train_step.draw_reference_generator_batch(spec, data, key, thetas,
                                                         state.batch_sampler)
    critic_args += (reference_batches.critic_batch(spec, data, state.batch_sampler.critic,
                                                   key)[1],)
  else:
    batch = train_step.draw_generator_batch(spec, data, key, thetas)
  analytic = flops.analytic_iteration_flops(spec)
  analytic_counts = {"critic_step": analytic["critic_step"],
                     "generator_step": analytic["generator_step"] + analytic["gm"],
                     "gm_only": analytic["gm"]}
  parts = {
      "critic_step": (functools.partial(critic_updates.critic_step, spec), critic_args),
      "generator_step": (jax.value_and_grad(train_step.generator_loss, has_aux=True),
                         (state.generator, spec, hyper, state.critic, state,
                          data, batch)),
  }
  if spec.variant.gradient_matching:
    parts["gm_only"] = (
        jax.value_and_grad(lambda g, d, b: step_terms.gradient_matching_loss(spec, g, d, b)),
        (state.generator, data, batch))
  out = {}
  for name, (fn, args) in parts.items():
    static = tuple(i for i, a in enumerate(args) if isinstance(a, specs.TrainSpec))
    jitted = jax.jit(fn, static_argnums=static)
    flop, source = flops.xla_flops(jitted, *args)
    if flop is None:
      flop, source = analytic_counts[name], "analytic"
    jax.block_until_ready(jitted(*args))
    walls, cpus, fractions, cpu_fractions = [], [], [], []
    for _ in range(repeats):
      _, wall, cpu = measure.timed(lambda: jitted(*args))  # pylint: disable=cell-var-from-loop
      matmul = measure.matmul_rate(matmul_size, repeats=3)
      walls.append(wall)
      cpus.append(cpu)
      fractions.append(flop / wall / matmul["flops"])
      cpu_fractions.append(flop / max(cpu, 1e-9) / matmul["flops_per_cpu_s"])
    out[name] = {"ms": 1e3 * statistics.median(walls), "cpu_ms": 1e3 * statistics.median(cpus),
                 "flop": flop, "flop_source": source,
                 "fraction_wall": statistics.median(fractions),
                 "fraction_cpu_time": statistics.median(cpu_fractions)}
  return out


def final_classifier_set(config: ml_collections.ConfigDict,
                         dataset: ZSLDataset) -> Tuple[np.ndarray, np.ndarray]:
  """The pooled training set the final-classifier timings train on (fixed seed).

  Real seen training features, then eval.n_synth_unseen random non-negative
  rows per unseen class (and seen classes topped up to eval.n_synth_seen).

  Args:
    config: the configuration.
    dataset: the dataset.

  Returns:
    (features (N, D) float32, labels (N,) int32 global ids).
  """
  counts = synthesis.synthetic_class_counts(dataset, config.eval.n_synth_unseen,
                                            config.eval.n_synth_seen)
  labels = np.concatenate([dataset.train_labels] + [np.full(n, c, np.int32)
                                                     for c, n in counts.items()])
  rng = np.random.default_rng(0)
  synthetic = np.abs(rng.standard_normal((labels.size - dataset.train_labels.size,
                                          dataset.feature_dim), np.float32))
  return np.concatenate([dataset.train_features, synthetic]), labels


def time_final_classifier(config: ml_collections.ConfigDict, dataset: ZSLDataset, *,
                          epochs: int) -> Dict[str, Any]:
  """Times the final classifier stage (all classifier seeds at once).

  The training set is the real seen features plus `eval.n_synth_unseen`
  random features per unseen class (and seen classes topped up to
  `eval.n_synth_seen`), as in stage 2 (`gmn_jax.evaluate`); it is evaluated
  on the test sets every epoch.

  Args:
    config: the configuration (its `eval` block).
    dataset: the dataset.
    epochs: epochs to time; the result is projected to `config.eval.epochs`.

  Returns:
    {"epochs_timed", "first_call_s" (includes compilation), "seconds",
    "projected_s" (for config.eval.epochs), "num_classifier_seeds",
    "num_train_rows"}.
  """
  features, labels = final_classifier_set(config, dataset)
  spec = dataclasses.replace(specs.eval_spec(config), epochs=epochs)

  def run():
    result = final_classifier.train_final_classifier(jax.random.key(0), features, labels,
                                                     dataset.class_embeddings, dataset, spec)
    return result.last

  started = time.perf_counter()
  jax.block_until_ready(run())
  first = time.perf_counter() - started
  started = time.perf_counter()
  jax.block_until_ready(run())
  seconds = time.perf_counter() - started
  return {"epochs_timed": epochs, "first_call_s": first, "seconds": seconds,
          "projected_s": seconds * config.eval.epochs / epochs,
          "epochs": int(config.eval.epochs),
          "num_classifier_seeds": int(config.eval.num_classifier_seeds),
          "num_train_rows": int(labels.size)}
