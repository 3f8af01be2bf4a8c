"""Stage 1: train a group of S >= 1 generator seeds as one program.

The S seeds' states are stacked on a leading seed axis (`gmn_jax.seed_axis`;
S = 1 is a stack of one) and every host call runs one jitted `lax.scan` of
`Schedule.iterations_per_call` generator iterations for all of them
(`compiled_chunk`). Around those calls this module:

* resumes from the checkpoints (`workdir/checkpoints/seed_<s>/`, each holding
  its seed's unstacked state, so runs with another group size resume them);
  the restore template comes from `jax.eval_shape`, nothing is initialised
  to be thrown away;
* checkpoints every `checkpoint_every` iterations and at the end (calls end
  at every checkpoint, so a resumed run makes the same calls as the tail of
  an uninterrupted one, and gives the same result bit for bit);
* writes each seed's per-iteration scalars as `log_every`-window means to its
  metrics.jsonl and TensorBoard;
* stops with `NonFiniteLossError` before anything non-finite is saved, and
  on a stop signal (`preemption`) after saving a checkpoint.

Each call donates the state buffers it is given and returns, with the new
state and the metrics, whether every parameter is still finite, so one
transfer per call brings back all the host needs.

With a mesh (`parallel.make_mesh`), data, hyperparameters, keys and states
are replicated global arrays and the chunks run inside
`parallel.data_parallel(mesh)`, which splits the batches over its 'data'
axis; in a multi-host run every process makes the same calls in lockstep
(the checkpointer is collective; only process 0 writes metrics).
"""

import contextlib
import dataclasses
import functools
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from gmn_jax import checkpoint
from gmn_jax import errors
from gmn_jax import metric_writers
from gmn_jax import parallel
from gmn_jax import preemption
from gmn_jax import progress
from gmn_jax import seed_axis
from gmn_jax import train_state
from gmn_jax import train_step
from gmn_jax.specs import Hyperparameters, Schedule, TrainSpec


class NonFiniteLossError(errors.GMNError):
  """A training scalar became NaN or infinite; the run stopped."""


@dataclasses.dataclass
class SeedResult:
  """Stage 1 of one seed.

  Attributes:
    seed: the generator seed.
    state: its final `TrainState` (host numpy leaves).
    start_iteration: the iteration this call resumed from (0: from scratch).
    seconds: the group's wall time divided by its size (this seed's share).
    ms_per_iteration: median ms per iteration of the calls after the first
      (which includes compilation), divided by the group size; None when no
      call ran.
    first_call_s: the first call's wall time (with compilation), or None.
    parallel_seeds: the group size S.
  """

  seed: int
  state: Any
  start_iteration: int
  seconds: float
  ms_per_iteration: Optional[float]
  first_call_s: Optional[float]
  parallel_seeds: int


def chunk_lengths(start: int, schedule: Schedule) -> List[int]:
  """Iterations per host call from `start` on; calls end at every checkpoint.

  Args:
    start: iterations already done.
    schedule: the run's schedule.

  Returns:
    The lengths of the remaining calls, in order. A resumed run (start at a
    checkpoint) gets the same calls as the tail of an uninterrupted run.
  """
  lengths, it = [], start
  while it < schedule.num_iterations:
    period = schedule.checkpoint_every
    next_checkpoint = min((it // period + 1) * period, schedule.num_iterations)
    length = min(schedule.iterations_per_call, next_checkpoint - it)
    lengths.append(length)
    it += length
  return lengths


def log_rows(chunk_metrics: Dict[str, np.ndarray], first_iteration: int, log_every: int):
  """(step, window means) at every multiple of log_every inside a chunk.

  Row i of the chunk is iteration first_iteration + i (0-based), after which
  first_iteration + i + 1 iterations are done; that count is the step. Each
  logged value is the mean over the iterations since the previous log step
  (or the chunk's start).

  Args:
    chunk_metrics: {name: (length,) values} of one seed.
    first_iteration: the chunk's first iteration.
    log_every: the window.

  Returns:
    [(step, {name: mean}), ...].
  """
  length = len(next(iter(chunk_metrics.values())))
  rows, window_start = [], 0
  for i in range(length):
    step = first_iteration + i + 1
    if step % log_every == 0:
      rows.append((step, {name: float(np.mean(values[window_start:i + 1]))
                          for name, values in chunk_metrics.items()}))
      window_start = i + 1
  return rows


def first_non_finite(chunk_metrics: Dict[str, np.ndarray]):
  """(row, name, value) of a seed's first non-finite scalar in a chunk, or None.

  Args:
    chunk_metrics: {name: (length,) values} of one seed.

  Returns:
    The earliest offending row and its metric, or None when all are finite.
  """
  first = None
  for name in sorted(chunk_metrics):
    values = chunk_metrics[name]
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size and (first is None or bad[0] < first[0]):
      first = (int(bad[0]), name, float(values[bad[0]]))
  return first


@functools.lru_cache(maxsize=16)
def compiled_chunk(spec: TrainSpec, num_iterations: int, num_seeds: int) -> Callable:
  """The jitted chunk of `num_iterations` iterations over a seed axis of S.

  Args:
    spec: the run's settings.
    num_iterations: iterations per call.
    num_seeds: S.

  Returns:
    `chunk(states, data, hyper, train_keys, first_iteration) -> (states,
    metrics, finite)`: states and train_keys carry a leading axis of S (the
    states are donated), data and hyper are shared, `first_iteration` is the
    int32 iteration every seed is at; every metric has shape (S,
    num_iterations) and `finite` shape (S,).
  """
  chunk = train_step.make_chunk_fn(spec, num_iterations)
  return jax.jit(seed_axis.over_seeds(chunk, num_seeds, (0, None, None, 0, None)),
                 donate_argnums=0)


def init_states(spec: TrainSpec, data: train_state.TrainData,
                init_keys: jax.Array) -> train_state.TrainState:
  """Initial states of S seeds, stacked (L_CLS pretraining included).

  Args:
    spec: the run's settings.
    data: the training data (device arrays).
    init_keys: (S,) stacked init keys (`train_state.seed_keys(s).init`).

  Returns:
    The stacked `TrainState` (leading axis S).
  """
  init = functools.partial(train_state.init_train_state, spec=spec, data=data)
  return seed_axis.over_seeds(lambda key: init(key), init_keys.shape[0], (0,))(init_keys)


def _placed(tree, mesh):
  """Replicated global arrays on mesh, or arrays on the default device."""
  if mesh is None:
    # Restored arrays come back committed to their device; committing fresh
    # ones too lets a resumed run reuse the compiled chunk.
    return jax.tree.map(lambda x: jax.device_put(x, jax.local_devices()[0]), tree)
  return parallel.replicate(jax.device_get(tree), mesh)


def _start_step(checkpointers: Sequence[checkpoint.Checkpointer]) -> int:
  """The iteration every seed of the group can resume from (0: start afresh).

  The seeds are saved one after another at the same iterations, so a crash
  between two saves leaves their latest steps one period apart; the group
  resumes from the oldest latest step, which every seed still keeps.
  """
  latest = [c.latest_step() for c in checkpointers]
  if any(step is None for step in latest):
    return 0
  start = min(latest)
  if not all(start in c.all_steps() for c in checkpointers):
    return 0
  return start


def _restore(spec, data, seeds, checkpointers, start):
  """The group's stacked state restored at `start`, from abstract templates."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shapes = jax.eval_shape(functools.partial(train_state.init_train_state, spec=spec, data=data),
                          train_state.seed_keys(0).init)
  template = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          shapes)
  states = []
  for seed, checkpointer in zip(seeds, checkpointers):
    state, _ = checkpointer.restore(template, step=start)
    if int(state.iteration) != start:
      raise errors.DataError(checkpointer.directory, f"{start}/iteration", f"iteration {start}",
                             int(state.iteration))
    states.append(state)
  logging.info("seed%s %s: resuming stage 1 from iteration %d", "s" if len(seeds) > 1 else "",
               ", ".join(map(str, seeds)), start)
  return seed_axis.stack(states)


def _non_finite_error(seed, checkpointer, bad, first_iteration, num_iterations):
  row, name, value = bad
  latest = checkpointer.latest_step()
  kept = ("no checkpoint was written yet" if latest is None else
          f"keeping the last finite checkpoint (iteration {latest}) in {checkpointer.directory}")
  return NonFiniteLossError(
      f"seed {seed}: {name} became {value} at generator iteration {first_iteration + row + 1} "
      f"of {num_iterations}; the run stopped, {kept}. Lower the learning rates or the loss "
      "weights.")


def train_generators(spec: TrainSpec, data: train_state.TrainData, hyper: Hyperparameters, *,
                     seeds: Sequence[int], schedule: Schedule, checkpoint_dirs: Sequence[str],
                     metrics_dirs: Optional[Sequence[Optional[str]]] = None,
                     mesh: Optional[jax.sharding.Mesh] = None) -> List[SeedResult]:
  """Stage 1 for a group of seeds in one program, resuming from checkpoints.

  Args:
    spec: the run's settings.
    data: the training data (numpy or device arrays).
    hyper: the numeric settings.
    seeds: the generator seeds of the group (S >= 1).
    schedule: iterations, calls, checkpoints and metric windows.
    checkpoint_dirs: one orbax directory per seed.
    metrics_dirs: one metrics directory per seed (None entries or None: no
      metrics); written by the primary process only.
    mesh: a ('data',) mesh for data parallelism (and multi-host), or None for
      the default device.

  Returns:
    One `SeedResult` per seed, in the order of `seeds`.

  Raises:
    NonFiniteLossError: when a scalar of any seed becomes NaN or infinite;
      the checkpoints hold the last finite states.
    preemption.Interrupted: on a stop signal (after saving every seed).
  """
  seeds = [int(s) for s in seeds]
  num_seeds = len(seeds)
  metrics_dirs = list(metrics_dirs) if metrics_dirs is not None else [None] * num_seeds
  keys = [train_state.seed_keys(seed) for seed in seeds]
  # The initial states are made on one device (the mesh gets copies of them).
  local_data = _placed(data, None)
  data = local_data if mesh is None else _placed(data, mesh)
  hyper = _placed(hyper, mesh)
  train_keys = _placed(jnp.stack([k.train for k in keys]), mesh)
  context = (lambda: parallel.data_parallel(mesh)) if mesh is not None else contextlib.nullcontext
  started = time.perf_counter()
  timings = []
  with contextlib.ExitStack() as stack:
    checkpointers = [stack.enter_context(checkpoint.Checkpointer(d, max_to_keep=2))
                     for d in checkpoint_dirs]
    start = _start_step(checkpointers)
    if start == 0:
      states = init_states(spec, local_data, jnp.stack([k.init for k in keys]))
    else:
      states = _restore(spec, local_data, seeds, checkpointers, start)
    states = _placed(states, mesh)
    writers = [metric_writers.MetricWriter(d, resume_step=start)
               if d is not None and parallel.is_primary() else None for d in metrics_dirs]
    logger = progress.ProgressLogger(schedule.num_iterations, log_every=schedule.log_every,
                                     initial_step=start)

    def save_all(it):
      for i, (seed, checkpointer) in enumerate(zip(seeds, checkpointers)):
        checkpointer.save(it, seed_axis.unstack(states, i), extra={"seed": seed, "iteration": it})

    try:
      it = start
      for length in chunk_lengths(start, schedule):
        chunk = compiled_chunk(spec, length, num_seeds)
        call_started = time.perf_counter()
        with context():
          states, chunk_metrics, finite = chunk(states, data, hyper, train_keys,
                                                jnp.int32(it))
        chunk_metrics, finite = jax.device_get((chunk_metrics, finite))
        elapsed = time.perf_counter() - call_started
        timings.append((length, elapsed))
        for i, seed in enumerate(seeds):
          seed_metrics = {k: np.asarray(v[i]) for k, v in chunk_metrics.items()}
          bad = first_non_finite(seed_metrics)
          if bad is None and not finite[i]:
            bad = (length - 1, "parameters", float("nan"))
          if bad is not None:
            raise _non_finite_error(seed, checkpointers[i], bad, it, schedule.num_iterations)
          if writers[i] is not None:
            for step, window in log_rows(seed_metrics, it, schedule.log_every):
              writers[i].write_scalars(step, {**{f"train/{k}": v for k, v in window.items()},
                                              "steps_per_sec": length / elapsed})
        it += length
        logger.update(it, {k: float(v[0, -1]) for k, v in chunk_metrics.items()})
        if it % schedule.checkpoint_every == 0 or it == schedule.num_iterations:
          save_all(it)
        if it < schedule.num_iterations and preemption.should_stop():
          save_all(it)  # A no-op when this chunk ended at a periodic checkpoint.
          for checkpointer in checkpointers:
            checkpointer.wait()
          raise preemption.Interrupted(
              preemption.requested_signal(),
              f"at generator iteration {it} of {schedule.num_iterations} (seed"
              f"{'s' if num_seeds > 1 else ''} {', '.join(map(str, seeds))}), after saving "
              "a checkpoint")
      for checkpointer in checkpointers:
        checkpointer.wait()
    finally:
      logger.close()
      for writer in writers:
        if writer is not None:
          writer.close()
  seconds = (time.perf_counter() - started) / num_seeds
  steady = [1000.0 * s / n for n, s in timings[1:]] or [1000.0 * s / n for n, s in timings]
  ms = float(np.median(steady)) / num_seeds if steady else None
  host_states = jax.device_get(states)
  return [SeedResult(seed=seed, state=seed_axis.unstack(host_states, i), start_iteration=start,
                     seconds=seconds, ms_per_iteration=ms,
                     first_call_s=timings[0][1] if timings else None, parallel_seeds=num_seeds)
          for i, seed in enumerate(seeds)]
