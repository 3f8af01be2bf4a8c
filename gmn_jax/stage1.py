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
import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

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
from gmn_jax import train_chunk
from gmn_jax import train_state
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


def window_rows(pending: Dict[str, List[np.ndarray]], values: Dict[str, np.ndarray],
                first_iteration: int, log_every: int, end: int):
  """(step, window means) at every log step a host call reaches.

  Row i of `values` is iteration first_iteration + i (0-based), after which
  first_iteration + i + 1 iterations are done; that count is the step. A
  log step is a multiple of `log_every`, or `end` (so a run shorter than
  `log_every` still logs its stage 1). Each logged value is the mean over
  the iterations since the previous log step, those of earlier calls
  included (`pending` carries them; a resumed run's first window starts at
  the resume).

  Args:
    pending: {name: [arrays]} of the current window's earlier values; updated.
    values: {name: (length,) values} of one seed in this call.
    first_iteration: the call's first iteration.
    log_every: the window.
    end: the run's last step.

  Returns:
    [(step, {name: mean}), ...].
  """
  length = len(next(iter(values.values())))
  rows, window_start = [], 0
  for i in range(length):
    step = first_iteration + i + 1
    if step % log_every == 0 or step == end:
      rows.append((step, {name: float(np.mean(np.concatenate(
          pending.get(name, []) + [np.asarray(v[window_start:i + 1], np.float64)])))
                          for name, v in values.items()}))
      pending.clear()
      window_start = i + 1
  for name, v in values.items():
    if window_start < length:
      pending.setdefault(name, []).append(np.asarray(v[window_start:], np.float64))
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


# How often, in seconds of training, a call reports to the host (progress,
# and whether to stop). The host sets the interval from the speed it
# measures between reports; a call's first report comes after its first
# iteration, so that the compilation before it never counts.
REPORT_PERIOD_S = 1.0
_MAX_INTERVAL = 1 << 20

# The group being trained: its reporter receives the chunks' device reports.
_live: Optional[progress.LiveProgress] = None
_single_process = True
_last_report: Optional[tuple] = None  # (time, iterations done) of this call's last report


def _device_report(names, done, values) -> np.ndarray:
  """The host side of a chunk's report: progress, a stop, the next interval.

  A stop request ends a single process's call after the reported
  iteration; a multi-host run stops only between calls, where
  `preemption.should_stop` makes every process agree.

  Args:
    names: the metric names, in the rows' order.
    done: iterations done.
    values: (num_metrics, S) values of the iteration just done.

  Returns:
    int32 [stop, iterations until the next report].
  """
  global _last_report
  done, now = int(done), time.monotonic()
  if _live is not None:
    _live.report(done, {name: float(row[0]) for name, row in zip(names, np.asarray(values))})
  interval = 1
  if _last_report is not None and now > _last_report[0] and done > _last_report[1]:
    rate = (done - _last_report[1]) / (now - _last_report[0])
    interval = int(min(max(round(REPORT_PERIOD_S * rate), 1), _MAX_INTERVAL))
  _last_report = (now, done)
  stop = _single_process and preemption.requested_signal() is not None
  return np.array([int(stop), interval], np.int32)


def _new_call() -> None:
  """Forgets the last report: a new call measures its speed anew."""
  global _last_report
  _last_report = None


@contextlib.contextmanager
def _reporting_to(live: Optional[progress.LiveProgress]):
  """Sends the device reports of the calls made inside to `live`."""
  global _live, _single_process
  _live, _single_process = live, jax.process_count() == 1
  _new_call()
  try:
    yield
  finally:
    _live = None


@functools.lru_cache(maxsize=16)
def compiled_chunk(spec: TrainSpec, num_iterations: int, num_seeds: int) -> Callable:
  """The jitted call of up to `num_iterations` iterations of S seeds.

  Args:
    spec: the run's settings.
    num_iterations: the most iterations per call.
    num_seeds: S.

  Returns:
    `chunk(states, data, hyper, train_keys, first_iteration, first_report)
    -> (states, metrics, finite, done)` of `train_chunk.make_chunk_fn`, with
    the device reports going to this module's `_device_report`; the states
    are donated.
  """
  chunk = train_chunk.make_chunk_fn(spec, num_iterations, num_seeds, report=_device_report)
  return jax.jit(chunk, donate_argnums=0)


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


def _common_steps(checkpointers) -> List[int]:
  """The steps every seed keeps, newest first (none when a seed has none)."""
  steps = [set(c.all_steps()) for c in checkpointers]
  return sorted(set.intersection(*steps), reverse=True) if all(steps) else []


def group_name(seeds: Sequence[int], names: Optional[Sequence[str]]) -> str:
  """How logs name a group of runs: "seed 1", "seeds 1, 2", or the runs' names."""
  if names is not None:
    return "; ".join(names)
  return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _restore(spec, data, named, checkpointers):
  """(start, stacked states) from the newest step every seed keeps and can read.

  The seeds are saved one after another at the same iterations, so a crash
  between two saves leaves their latest steps one period apart: the group
  resumes from the newest step all of them keep. A damaged step (truncated
  files, after a crash or a full disk) costs one warning line and is
  deleted; the next older common step is tried.

  Returns:
    (0, None) when some seed has no checkpoint, or none is common (start
    afresh); else the step and the stacked restored states.

  Raises:
    DataError: when every common step is damaged.
  """
  common = _common_steps(checkpointers)
  if not common:
    return 0, None
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  shapes = jax.eval_shape(functools.partial(train_state.init_train_state, spec=spec, data=data),
                          train_state.seed_keys(0).init)
  template = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
                          shapes)
  damaged = []
  for step in common:
    states = []
    for checkpointer in checkpointers:
      try:
        state, _ = checkpointer.restore(template, step=step)
      except checkpoint.DamagedCheckpointError as error:
        logging.warning("%s; trying an older checkpoint", error)
        damaged.append((checkpointer, step))
        break
      if int(state.iteration) != step:
        raise errors.DataError(checkpointer.directory, f"{step}/iteration", f"iteration {step}",
                               int(state.iteration))
      states.append(state)
    else:
      for checkpointer, bad_step in damaged:  # saved again when training gets there
        checkpointer.delete(bad_step)
      logging.info("%s: resuming stage 1 from iteration %d", named, step)
      return step, seed_axis.stack(states)
  raise errors.DataError(os.path.dirname(checkpointers[0].directory), None,
                         "a readable checkpoint to resume from",
                         f"only damaged ones (steps {', '.join(map(str, common))}); delete "
                         "those checkpoint directories to start afresh, or use --overwrite")


def _non_finite_error(name, checkpointer, bad, first_iteration, num_iterations):
  row, metric, value = bad
  latest = checkpointer.latest_step()
  kept = ("no checkpoint was written yet" if latest is None else
          f"keeping the last finite checkpoint (iteration {latest}) in {checkpointer.directory}")
  return NonFiniteLossError(
      f"{name}: {metric} became {value} at generator iteration {first_iteration + row + 1} "
      f"of {num_iterations}; the run stopped, {kept}. Lower the learning rates or the loss "
      "weights.")


def train_generators(spec: TrainSpec, data: train_state.TrainData,
                     hyper: Union[Hyperparameters, Sequence[Hyperparameters]], *,
                     seeds: Sequence[int], schedule: Schedule, checkpoint_dirs: Sequence[str],
                     metrics_dirs: Optional[Sequence[Optional[str]]] = None,
                     mesh: Optional[jax.sharding.Mesh] = None,
                     names: Optional[Sequence[str]] = None) -> List[SeedResult]:
  """Stage 1 for a group of runs in one program, resuming from checkpoints.

  A run is a generator seed, or (in a hyperparameter grid, `gmn_jax.sweep`)
  a seed with its own numeric settings: runs that share `spec` and differ
  in `hyper` train as one vmapped program, as seeds do.

  Args:
    spec: the runs' settings.
    data: the training data (numpy or device arrays).
    hyper: the numeric settings: one `Hyperparameters` shared by every run,
      or one per run.
    seeds: the generator seed of each run (S >= 1 runs; a seed may repeat
      when the runs' `hyper` differ).
    schedule: iterations, calls, checkpoints and metric windows.
    checkpoint_dirs: one orbax directory per seed.
    metrics_dirs: one metrics directory per seed (None entries or None: no
      metrics); written by the primary process only.
    mesh: a ('data',) mesh for data parallelism (and multi-host), or None for
      the default device.
    names: how logs and progress name each run (default "seed <s>").

  Returns:
    One `SeedResult` per run, in the order of `seeds`.

  Raises:
    NonFiniteLossError: when a scalar of any seed becomes NaN or infinite;
      the checkpoints hold the last finite states.
    preemption.Interrupted: on a stop signal (after saving every seed).
  """
  seeds = [int(s) for s in seeds]
  num_seeds = len(seeds)
  named = group_name(seeds, names)
  names = list(names) if names is not None else [f"seed {seed}" for seed in seeds]
  if not isinstance(hyper, Hyperparameters):  # one setting per run
    hyper = seed_axis.stack([jax.tree.map(np.float32, h) for h in hyper])
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
    start, states = _restore(spec, local_data, named, checkpointers)
    if states is None:
      states = init_states(spec, local_data, jnp.stack([k.init for k in keys]))
    states = _placed(states, mesh)
    primary = parallel.is_primary()
    writers = [metric_writers.MetricWriter(d, resume_step=start)
               if d is not None and primary else None for d in metrics_dirs]
    live = progress.LiveProgress(
        f"{named}: stage 1" + (f" (losses of {names[0]})" if num_seeds > 1 else ""),
        schedule.num_iterations, start=start) if primary else None
    windows = [{} for _ in seeds]  # each seed's values since its last log step

    def save_all(it):
      for i, (seed, checkpointer) in enumerate(zip(seeds, checkpointers)):
        checkpointer.save(it, seed_axis.unstack(states, i), extra={"seed": seed, "iteration": it})

    try:
      it = start
      with _reporting_to(live):
        for length in chunk_lengths(start, schedule):
          chunk = compiled_chunk(spec, length, num_seeds)
          _new_call()
          if live is not None:
            live.new_call()
          call_started = time.perf_counter()

          def call(states=states, it=it, chunk=chunk):
            with context():
              # The first report after the first iteration: compilation is over.
              states, *rest = chunk(states, data, hyper, train_keys, jnp.int32(it),
                                    jnp.int32(1))
            return states, jax.device_get(rest)  # one transfer: metrics, finiteness, count

          # On a worker thread, so that a stop request is recorded (and seen by
          # the call's next report) while the call runs.
          states, (chunk_metrics, finite, done) = preemption.interruptible_call(call)
          elapsed = time.perf_counter() - call_started
          done = int(done)
          timings.append((done, elapsed))
          for i, seed in enumerate(seeds):
            seed_metrics = {k: np.asarray(v[:done, i]) for k, v in chunk_metrics.items()}
            bad = first_non_finite(seed_metrics)
            if bad is None and not finite[i]:
              bad = (done - 1, "parameters", float("nan"))
            if bad is not None:
              raise _non_finite_error(names[i], checkpointers[i], bad, it, schedule.num_iterations)
            for step, means in window_rows(windows[i], seed_metrics, it, schedule.log_every,
                                           schedule.num_iterations):
              if writers[i] is not None:
                writers[i].write_scalars(step, {**{f"train/{k}": v for k, v in means.items()},
                                                "steps_per_sec": done / elapsed})
              if live is not None:  # the console shows what metrics.jsonl holds
                live.line(f"{names[i]}: step {step}/{schedule.num_iterations} | "
                          f"{done / elapsed:.4g} it/s | {progress.format_scalars(means)}")
          it += done
          stopped = done < length  # a stop request ended the call early
          if it % schedule.checkpoint_every == 0 or it == schedule.num_iterations:
            save_all(it)
          if stopped or (it < schedule.num_iterations and preemption.should_stop()):
            save_all(it)  # A no-op when this call ended at a periodic checkpoint.
            for checkpointer in checkpointers:
              checkpointer.wait()
            raise preemption.Interrupted(
                preemption.requested_signal(),
                f"at generator iteration {it} of {schedule.num_iterations} ({named}), after "
                "saving a checkpoint")
      for checkpointer in checkpointers:
        checkpointer.wait()
    finally:
      if live is not None:
        live.close()
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
