"""The instruments every benchmark measurement uses.

A timer of wall and CPU time, the FLOP rate of a reference matrix product on
the default device, and the peak memory in use.
"""

import os
import resource
import statistics
import time
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp

# Every measurement records wall time and this process's CPU time (all its
# threads, `time.process_time`). On a machine shared with other jobs the wall
# time of everything stretches with the load; the FLOPs per CPU-second of the
# training step and of the reference matrix product are much less affected,
# so their ratio is the load-robust fraction (idle-spinning worker threads
# count as CPU time, which can only lower it). Child processes that fn waited
# for (e.g. a binary run per setting) add their CPU time.


def timed(fn: Callable[[], Any]):
  """(result, wall seconds, process CPU seconds) of fn(), blocking on its result.

  Args:
    fn: the call to time.

  Returns:
    (fn()'s result once ready, wall seconds, CPU seconds of all this process's
    threads and of the child processes fn waited for).
  """
  wall, cpu, children = time.perf_counter(), time.process_time(), _children_cpu()
  out = jax.block_until_ready(fn())
  return (out, time.perf_counter() - wall,
          time.process_time() - cpu + _children_cpu() - children)


def _children_cpu() -> float:
  times = os.times()
  return times.children_user + times.children_system


def matmul_rate(size: int, repeats: int = 5) -> Dict[str, float]:
  """FLOP/s of a square float32 `jnp` matrix product on the default device.

  Args:
    size: the side n of the (n, n) @ (n, n) product.
    repeats: timed calls (the median is taken).

  Returns:
    {"size", "seconds", "cpu_seconds", "flops": 2n³ / seconds,
    "flops_per_cpu_s": 2n³ / cpu_seconds}.
  """
  keys = jax.random.split(jax.random.key(0))
  a = jax.random.normal(keys[0], (size, size), jnp.float32)
  b = jax.random.normal(keys[1], (size, size), jnp.float32)
  product = _MATMUL
  jax.block_until_ready(product(a, b))
  runs = [timed(lambda: product(a, b))[1:] for _ in range(repeats)]
  wall = statistics.median(r[0] for r in runs)
  cpu = statistics.median(r[1] for r in runs)
  flop = 2.0 * size**3
  return {"size": size, "seconds": wall, "cpu_seconds": cpu, "flops": flop / wall,
          "flops_per_cpu_s": flop / max(cpu, 1e-9)}


_MATMUL = jax.jit(jnp.matmul)


def peak_memory() -> Dict[str, Any]:
  """The device's peak memory in use, or else the process's max resident set.

  Returns:
    {"bytes", "source": "device" | "process_max_rss"}.
  """
  stats = None
  try:
    stats = jax.devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None  # Backends without memory statistics (CPU) raise or return None.
  if stats and "peak_bytes_in_use" in stats:
    return {"bytes": int(stats["peak_bytes_in_use"]), "source": "device"}
  return {"bytes": int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024,
          "source": "process_max_rss"}
