"""Stage 1 for several seeds at once, on one device, a data mesh or many hosts.

`train_generators` is `train.train_generator` for a group of S generator
seeds trained in one program: the initial states of the S seeds are made by
one vmapped init, and every host call runs one jitted, vmapped `lax.scan`
over the stacked states (`jitted_parallel_chunk_fn`). Each seed keeps its
own PRNG streams (`train._seed_keys`), its own checkpoint directory (holding
that seed's unstacked state, exactly as a one-seed run writes it) and its
own metrics, so a group run is S separate runs done together: the results
equal those of S separate runs to float tolerance (vmapped products may
round differently), and checkpoints of one kind of run resume the other.

With a mesh (`parallel.make_mesh`), data, hyperparameters, keys and states
are replicated global arrays, the chunks run inside
`parallel.data_parallel(mesh)` so that batches are split over its 'data'
axis, and in a multi-host run every process executes the same calls in
lockstep (the checkpointer is collective; only process 0 writes metrics).
"""

import contextlib
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
from gmn_jax import train
from gmn_jax import train_state
from gmn_jax import train_step


@functools.lru_cache(maxsize=16)
def jitted_parallel_chunk_fn(spec: train_state.TrainSpec, num_iterations: int) -> Callable:
  """The chunk function vmapped over a leading seed axis, jitted and cached.

  Args:
    spec: the run's settings.
    num_iterations: iterations per call.

  Returns:
    `chunk(states, data, hyper, base_keys) -> (states, metrics)`: states and
    base_keys carry a leading axis of S seeds, data and hyper are shared,
    every metric has shape (S, num_iterations).
  """
  return jax.jit(jax.vmap(train_step.make_chunk_fn(spec, num_iterations),
                          in_axes=(0, None, None, 0)))


def stack_trees(trees: Sequence[Any]) -> Any:
  """Stacks pytrees of the same structure along a new leading axis.

  Args:
    trees: the pytrees (one per seed).

  Returns:
    One pytree whose leaves have a leading axis of len(trees).
  """
  return jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *trees)


def tree_slice(tree: Any, index: int) -> Any:
  """Row `index` of every leaf of a stacked pytree.

  Args:
    tree: a stacked pytree.
    index: the row.

  Returns:
    The unstacked pytree of that row.
  """
  return jax.tree_util.tree_map(lambda leaf: leaf[index], tree)


def init_train_states(spec: train_state.TrainSpec, data: train_state.TrainData,
                      init_keys: jax.Array) -> train_state.TrainState:
  """Initial states of S seeds in one vmapped call (L_CLS pretraining included).

  Args:
    spec: the run's settings.
    data: the training data.
    init_keys: (S,) stacked init keys.

  Returns:
    The stacked `TrainState` (leading axis S).
  """
  return jax.vmap(lambda key: train_state.init_train_state(key, spec, data))(init_keys)


def _placed(tree, mesh):
  """Replicated global arrays on mesh, or plain device arrays without one."""
  if mesh is None:
    return jax.device_put(tree)
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


def train_generators(spec: train_state.TrainSpec, data: train_state.TrainData,
                     hyper: train_state.Hyperparameters, *, seeds: Sequence[int],
                     num_iterations: int, iterations_per_call: int, checkpoint_every: int,
                     log_every: int, checkpoint_dirs: Sequence[str],
                     metrics_dirs: Optional[Sequence[Optional[str]]] = None,
                     mesh: Optional[jax.sharding.Mesh] = None) -> List[Dict[str, Any]]:
  """Stage 1 for a group of seeds in one program, resuming from checkpoints.

  Args:
    spec: the run's settings.
    data: the training data (numpy or device arrays).
    hyper: the numeric settings.
    seeds: the generator seeds of the group (S >= 1; S = 1 runs the plain,
      unvmapped chunk).
    num_iterations: total generator iterations.
    iterations_per_call: iterations per jitted call.
    checkpoint_every: checkpoint period in iterations (and at the end).
    log_every: metrics window in iterations.
    checkpoint_dirs: one orbax directory per seed.
    metrics_dirs: one metrics directory per seed (None entries or None: no
      metrics); written by the primary process only.
    mesh: a ('data',) mesh for data parallelism (and multi-host), or None for
      the default device.

  Returns:
    One dict per seed, as `train.train_generator`: {"state" (host numpy
    leaves), "start_iteration", "seconds" and "ms_per_iteration" (the group's
    wall time divided by S: each seed's share), "first_call_s",
    "parallel_seeds": S}.

  Raises:
    ConfigError: for an empty group or mismatched directory lists.
    NonFiniteLossError: when a scalar of any seed becomes NaN or infinite;
      the checkpoints hold the last finite states.
    preemption.Interrupted: on a stop signal (after saving every seed).
  """
  seeds = [int(s) for s in seeds]
  num_seeds = len(seeds)
  metrics_dirs = list(metrics_dirs) if metrics_dirs is not None else [None] * num_seeds
  if num_seeds < 1 or len(checkpoint_dirs) != num_seeds or len(metrics_dirs) != num_seeds:
    raise errors.ConfigError(
        f"train_generators: expected one checkpoint and metrics directory per seed for "
        f"{num_seeds} seeds, found {len(checkpoint_dirs)} and {len(metrics_dirs)}")
  vmapped = num_seeds > 1
  keys = [train._seed_keys(seed) for seed in seeds]  # pylint: disable=protected-access
  device_data = jax.device_put(data)
  if vmapped:
    templates = init_train_states(spec, device_data, jnp.stack([k[0] for k in keys]))
    train_keys = jnp.stack([k[1] for k in keys])
  else:
    templates = train_state.init_train_state(keys[0][0], spec, device_data)
    train_keys = keys[0][1]
  unstack = (lambda tree, i: tree_slice(tree, i)) if vmapped else (lambda tree, i: tree)
  data = _placed(data, mesh)
  hyper, train_keys = _placed(hyper, mesh), _placed(train_keys, mesh)
  context = (lambda: parallel.data_parallel(mesh)) if mesh is not None else contextlib.nullcontext
  started = time.perf_counter()
  timings = []
  with contextlib.ExitStack() as stack:
    checkpointers = [stack.enter_context(checkpoint.Checkpointer(d, max_to_keep=2))
                     for d in checkpoint_dirs]
    start = _start_step(checkpointers)
    if start == 0:
      state = templates
    else:
      restored = []
      for i, (seed, checkpointer) in enumerate(zip(seeds, checkpointers)):
        seed_state, _ = checkpointer.restore(unstack(templates, i), step=start)
        if int(seed_state.iteration) != start:
          raise errors.DataError(checkpoint_dirs[i], f"{start}/iteration",
                                 f"iteration {start}", int(seed_state.iteration))
        restored.append(seed_state)
      state = stack_trees(restored) if vmapped else restored[0]
      logging.info("seeds %s: resuming stage 1 from iteration %d", seeds, start)
    state = _placed(state, mesh)
    writers = [metric_writers.MetricWriter(d, resume_step=start)
               if d is not None and parallel.is_primary() else None for d in metrics_dirs]
    logger = progress.ProgressLogger(num_iterations, log_every=log_every, initial_step=start)

    def save_all(it):
      for i, (seed, checkpointer) in enumerate(zip(seeds, checkpointers)):
        checkpointer.save(it, unstack(state, i), extra={"seed": seed, "iteration": it})

    try:
      it = start
      for length in train.chunk_lengths(start, num_iterations, iterations_per_call,
                                        checkpoint_every):
        chunk = (jitted_parallel_chunk_fn(spec, length) if vmapped
                 else train_step.jitted_chunk_fn(spec, length))
        call_started = time.perf_counter()
        with context():
          state, chunk_metrics = chunk(state, data, hyper, train_keys)
        chunk_metrics = {k: np.asarray(v).reshape(num_seeds, length)
                         for k, v in jax.device_get(chunk_metrics).items()}
        elapsed = time.perf_counter() - call_started
        timings.append((length, elapsed))
        all_finite = train._all_finite  # pylint: disable=protected-access
        with context():
          finite = jax.vmap(all_finite)(state) if vmapped else all_finite(state)
        finite = np.asarray(jax.device_get(finite)).reshape(num_seeds)
        for i, seed in enumerate(seeds):
          seed_metrics = {k: v[i] for k, v in chunk_metrics.items()}
          bad = train._first_non_finite(seed_metrics)  # pylint: disable=protected-access
          if bad is None and not finite[i]:
            bad = (length - 1, "parameters", float("nan"))
          if bad is not None:
            row, name, value = bad
            latest = checkpointers[i].latest_step()
            kept = ("no checkpoint was written yet" if latest is None else
                    f"keeping the last finite checkpoint (iteration {latest}) in "
                    f"{checkpoint_dirs[i]}")
            raise train.NonFiniteLossError(
                f"seed {seed}: {name} became {value} at generator iteration {it + row + 1} "
                f"of {num_iterations}; the run stopped, {kept}. Lower the learning rates or "
                "the loss weights.")
          if writers[i] is not None:
            log_rows = train._log_rows  # pylint: disable=protected-access
            for step, window in log_rows(seed_metrics, it, log_every):
              writers[i].write_scalars(step, {**{f"train/{k}": v for k, v in window.items()},
                                              "steps_per_sec": length / elapsed})
        it += length
        logger.update(it, {k: float(v[0, -1]) for k, v in chunk_metrics.items()})
        if it % checkpoint_every == 0 or it == num_iterations:
          save_all(it)
        if it < num_iterations and preemption.should_stop():
          save_all(it)
          for checkpointer in checkpointers:
            checkpointer.wait()
          raise preemption.Interrupted(
              preemption.requested_signal(),
              f"at generator iteration {it} of {num_iterations} (seeds {seeds}), after "
              "saving their checkpoints")
      for checkpointer in checkpointers:
        checkpointer.wait()
    finally:
      logger.close()
      for writer in writers:
        if writer is not None:
          writer.close()
  seconds = time.perf_counter() - started
  steady = [1000.0 * s / n for n, s in timings[1:]] or [1000.0 * s / n for n, s in timings]
  ms = float(np.median(steady)) / num_seeds if steady else None
  host_state = jax.device_get(state)
  return [{"state": unstack(host_state, i), "start_iteration": start,
           "seconds": seconds / num_seeds, "ms_per_iteration": ms,
           "first_call_s": timings[0][1] if timings else None,
           "parallel_seeds": num_seeds} for i in range(num_seeds)]
