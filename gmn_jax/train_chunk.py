"""Stage 1's chunk: many generator iterations of S seeds in one jitted loop.

`make_chunk_fn` builds the function that `stage1.compiled_chunk` jits: a
`lax.while_loop` over `train_step.train_iteration` (vmapped over the seed
axis, `gmn_jax.seed_axis`), metric buffers filled in place, an optional
ordered host callback that reports progress and can end the loop (a stop
request), and one finiteness check of the final parameters per seed, so
that one transfer per call brings back everything.
"""

import functools
from typing import Callable, Optional

import jax
from jax import lax
from jax.experimental import io_callback
import jax.numpy as jnp

from gmn_jax import seed_axis
from gmn_jax.specs import Hyperparameters, TrainSpec
from gmn_jax.train_state import TrainData, TrainState
from gmn_jax.train_step import train_iteration


def all_finite(tree) -> jax.Array:
  """Whether every floating-point value of a pytree is finite.

  Args:
    tree: a pytree of arrays (e.g. a `TrainState`).

  Returns:
    A boolean scalar.
  """
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_chunk_fn(spec: TrainSpec, num_iterations: int, num_seeds: int = 1,
                  report: Optional[Callable] = None) -> Callable:
  """The (unjitted) function running up to `num_iterations` iterations of S seeds.

  The seeds' states are stacked on a leading seed axis (`gmn_jax.seed_axis`;
  S = 1 is traced without vmap), and one loop runs their iterations
  together, so that a host callback inside it sees every seed and its answer
  can end the loop for all of them.

  Args:
    spec: the run's settings.
    num_iterations: the most iterations per call (static).
    num_seeds: S (static).
    report: optional host function `report(names, iterations_done, values)
      -> [stop, interval]`, called through an ordered `io_callback` with the
      sorted metric names, the int32 iteration count reached and the
      (num_metrics, S) float32 values of the iteration just done; it returns
      int32 [1 to end the loop after this iteration (a stop request) or 0,
      the number of iterations until its next call]. None compiles no
      callback.

  Returns:
    `chunk(states, data, hyper, train_keys, first_iteration, first_report)
    -> (states, metrics, finite, done)`: `hyper` holds scalars shared by
    every seed or (S,) arrays, a setting per seed (`seed_axis.shared_or_stacked`);
    `first_iteration` is the int32
    iteration every seed is at (it numbers the iterations) and
    `first_report` the int32 number of iterations before the first report
    (traced: changing it never recompiles; more than num_iterations: none);
    `metrics` holds {name: (num_iterations, S)} of which the first `done`
    rows are filled, `finite` (S,) says whether each seed's final parameters
    are all finite (so that one transfer per call brings back everything),
    `done` is the number of iterations run (num_iterations unless a report
    stopped the loop).
  """
  def chunk(states: TrainState, data: TrainData, hyper: Hyperparameters, train_keys,
            first_iteration, first_report):
    step = seed_axis.over_seeds(
        lambda state, data, hyper, key, iteration: train_iteration(
            spec, state, data, hyper, key, iteration),
        num_seeds, (0, None, seed_axis.shared_or_stacked(hyper, num_seeds), 0, None))
    metric_shapes = jax.eval_shape(step, states, data, hyper, train_keys, first_iteration)[1]
    names = tuple(sorted(metric_shapes))
    buffers = {name: jnp.zeros((num_iterations,) + leaf.shape, leaf.dtype)
               for name, leaf in metric_shapes.items()}

    def not_done(carry):
      offset, _, _, stop, _ = carry
      return (offset < num_iterations) & ~stop

    def body(carry):
      offset, states, buffers, _, next_report = carry
      states, metrics = step(states, data, hyper, train_keys, first_iteration + offset)
      buffers = {name: buffers[name].at[offset].set(value) for name, value in metrics.items()}
      offset = offset + 1
      stop = jnp.bool_(False)
      if report is not None:
        # One packed array: every callback argument costs a transfer.
        values = jnp.stack([metrics[name].astype(jnp.float32) for name in names])
        answer = lax.cond(
            offset == next_report,
            lambda: io_callback(functools.partial(report, names),
                                jax.ShapeDtypeStruct((2,), jnp.int32),
                                first_iteration + offset, values, ordered=True),
            lambda: jnp.array([0, 0], jnp.int32))
        stop = answer[0] > 0
        next_report = jnp.where(offset == next_report,
                                next_report + jnp.maximum(answer[1], 1), next_report)
      return offset, states, buffers, stop, next_report

    done, states, buffers, _, _ = lax.while_loop(
        not_done, body, (jnp.int32(0), states, buffers, jnp.bool_(False),
                         jnp.asarray(first_report, jnp.int32)))
    finite = seed_axis.over_seeds(all_finite, num_seeds, (0,))(states)
    return states, buffers, finite, done

  return chunk
