"""Devices and hosts: the ('data',) mesh, global arrays and multi-host start-up.

Data parallelism is plain `jax.jit` over global arrays: the training state
and the dataset are replicated on every device of a one-axis mesh, and the
batches drawn inside the step are constrained to be split over the 'data'
axis (`constrain_batch`); XLA's sharding propagation then runs each device on
its share of every batch and inserts the all-reduces of the gradients. No
per-device code (`shard_map`, `pmap`) is needed.

Auto, not Explicit, mesh axes (a deliberate choice). Since JAX 0.10,
`jax.make_mesh` makes Explicit axes by default: shardings become part of
array types, so the step would need `jax.set_mesh` around every gradient of a
sharded batch and an explicit `out_sharding` at every gather of a replicated
array with sharded indices (`.at[idx].get(out_sharding=...)`). The training
step is written as single-device code whose only sharding statements are the
batch constraints, and on Auto axes XLA decides the rest; the program and its
results are the same on every JAX version we support. `make_mesh` here
therefore always asks for `AxisType.Auto`.

Multi-host is JAX's own runtime: `initialize_multihost` calls
`jax.distributed.initialize()` once per process before any computation;
every process then sees all devices of all processes, builds the same mesh
and turns its host data into global arrays with `make_global_array`
(`jax.make_array_from_process_local_data`). Only the primary process
(`is_primary()`, process 0) writes files.
"""

import os
from typing import Any, Optional, Sequence

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from gmn_jax.errors import ConfigError

DATA_AXIS = "data"

# Environment variables read by `initialize_multihost` (flags override them).
MULTIHOST_ENV = "GMN_MULTIHOST"
COORDINATOR_ENV = "GMN_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "GMN_NUM_PROCESSES"
PROCESS_ID_ENV = "GMN_PROCESS_ID"


def make_mesh(num_devices: Optional[int] = None,
              devices: Optional[Sequence[Any]] = None) -> jax.sharding.Mesh:
  """A one-axis ('data',) mesh with an Auto axis (see the module docstring).

  Args:
    num_devices: how many devices to use (the first ones of `jax.devices()`);
      None uses all of them (of all processes, in a multi-host run).
    devices: the devices to use instead (overrides num_devices).

  Returns:
    The mesh.

  Raises:
    ConfigError: when num_devices is not between 1 and the number available.
  """
  if devices is None:
    available = jax.devices()
    if num_devices is None:
      num_devices = len(available)
    if isinstance(num_devices, bool) or not 1 <= int(num_devices) <= len(available):
      raise ConfigError(f"number of devices: expected 1..{len(available)} (the devices JAX "
                        f"sees), found {num_devices!r}")
    devices = available[:int(num_devices)]
  devices = list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,),
                       axis_types=(jax.sharding.AxisType.Auto,), devices=devices)


def replicated_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  """The sharding that puts a full copy of an array on every device of mesh.

  Args:
    mesh: the mesh.

  Returns:
    `NamedSharding(mesh, P())`.
  """
  return NamedSharding(mesh, P())


def batch_sharding(mesh: jax.sharding.Mesh, axis: int = 0) -> NamedSharding:
  """The sharding that splits one axis of an array over the 'data' axis.

  Args:
    mesh: the mesh.
    axis: which array axis is split (the others are replicated).

  Returns:
    `NamedSharding(mesh, P(None, ..., 'data'))` with 'data' at position axis.
  """
  return NamedSharding(mesh, P(*([None] * axis), DATA_AXIS))


def current_mesh() -> Optional[jax.sharding.AbstractMesh]:
  """The mesh set by `jax.set_mesh` (or `data_parallel`) around the trace, if any.

  Returns:
    The abstract mesh, or None outside any mesh context.
  """
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else mesh


def data_parallel(mesh: jax.sharding.Mesh):
  """A context in which jitted training splits its batches over mesh's 'data' axis.

  Calls of a jitted step inside it trace `constrain_batch` with this mesh
  (the mesh is part of jit's cache key, so the same function compiles once
  per mesh). Equivalent to `jax.set_mesh(mesh)`.

  Args:
    mesh: a mesh from `make_mesh`.

  Returns:
    The context manager.
  """
  return jax.set_mesh(mesh)


def constrain_batch(x: jax.Array, axis: int = 0,
                    mesh: Optional[jax.sharding.Mesh] = None) -> jax.Array:
  """Inside a jitted function: asks XLA to split axis `axis` of x over 'data'.

  The mesh is the one given, else the context's (`data_parallel`). A no-op
  without a mesh with a 'data' axis, on a one-device mesh, or when the axis
  is not divisible by the number of devices (that array is then computed
  replicated), so single-device programs compile exactly as before. Values
  never depend on the sharding.

  Args:
    x: an array with a batch axis.
    axis: the batch axis of x.
    mesh: the mesh; None uses the context's.

  Returns:
    x, with a sharding constraint attached where one applies.
  """
  if mesh is None:
    mesh = current_mesh()
  if mesh is None or DATA_AXIS not in mesh.axis_names:
    return x
  size = mesh.shape[DATA_AXIS]
  if size == 1 or x.shape[axis] % size:
    return x
  spec = P(*([None] * axis), DATA_AXIS)
  if isinstance(mesh, jax.sharding.Mesh):
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
  return jax.lax.with_sharding_constraint(x, spec)


def _is_key_array(x) -> bool:
  return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def make_global_array(local_array, mesh: jax.sharding.Mesh,
                      spec: P = P()) -> jax.Array:
  """A global array from this process's part of it.

  With `spec=P()` (replicated) every process passes the whole array (the
  same values); with `P('data')` each process passes its own consecutive
  slice of the leading axis, in process order.

  Args:
    local_array: a numpy (or addressable jax) array, or a typed PRNG key
      array.
    mesh: the (possibly multi-process) mesh.
    spec: the partition spec of the global array.

  Returns:
    The global `jax.Array` laid out by `NamedSharding(mesh, spec)`.
  """
  sharding = NamedSharding(mesh, spec)
  if _is_key_array(local_array):
    impl = jax.random.key_impl(local_array)
    data = make_global_array(np.asarray(jax.random.key_data(local_array)), mesh, spec)
    return jax.random.wrap_key_data(data, impl=impl)
  return jax.make_array_from_process_local_data(sharding, np.asarray(local_array))


def replicate(tree, mesh: jax.sharding.Mesh):
  """Puts a full copy of every leaf of a pytree on every device of mesh.

  Works in a multi-host run too (every process must pass the same values).

  Args:
    tree: a pytree of numpy arrays, jax arrays or typed PRNG keys.
    mesh: the mesh.

  Returns:
    The same pytree of replicated global arrays.
  """
  return jax.tree_util.tree_map(lambda x: make_global_array(x, mesh, P()), tree)


def _env_int(name: str) -> Optional[int]:
  value = os.environ.get(name)
  if value is None or value == "":
    return None
  try:
    return int(value)
  except ValueError:
    raise ConfigError(f"environment variable {name}: expected an integer, found "
                      f"{value!r}") from None


def multihost_requested(flag: Optional[bool] = None) -> bool:
  """Whether this run is multi-host: the flag if given, else GMN_MULTIHOST=1.

  Args:
    flag: the value of a `--multihost` flag, or None when not given.

  Returns:
    True for a multi-host run.
  """
  if flag is not None:
    return bool(flag)
  return os.environ.get(MULTIHOST_ENV, "").strip().lower() in ("1", "true", "yes")


def initialize_multihost(enabled: Optional[bool] = None, *,
                         coordinator_address: Optional[str] = None,
                         num_processes: Optional[int] = None,
                         process_id: Optional[int] = None,
                         initialization_timeout: int = 300) -> bool:
  """Joins this process to a multi-host JAX run (call before any computation).

  Arguments left as None come from the environment (GMN_COORDINATOR_ADDRESS,
  GMN_NUM_PROCESSES, GMN_PROCESS_ID); when all three are absent,
  `jax.distributed.initialize()` detects them itself (Cloud TPU, Slurm,
  Open MPI, Kubernetes).

  Args:
    enabled: whether to initialise; None reads GMN_MULTIHOST.
    coordinator_address: "host:port" of process 0's coordinator service.
    num_processes: how many processes take part.
    process_id: this process's index.
    initialization_timeout: seconds to wait for the other processes.

  Returns:
    True when the distributed runtime is (now) initialised, False for a
    single-process run.

  Raises:
    ConfigError: a malformed environment variable.
  """
  if not multihost_requested(enabled):
    return False
  if jax.distributed.is_initialized():
    return True
  coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ENV) or None
  if num_processes is None:
    num_processes = _env_int(NUM_PROCESSES_ENV)
  if process_id is None:
    process_id = _env_int(PROCESS_ID_ENV)
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id,
                             initialization_timeout=initialization_timeout)
  return True


def sync_processes(name: str) -> None:
  """Waits until every process of a multi-host run reaches this point.

  A no-op in a single-process run.

  Args:
    name: a label, the same in every process.
  """
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def is_primary() -> bool:
  """Whether this process writes logs, summaries, checkpoints and results.

  Returns:
    True on process 0 (always, in a single-process run).
  """
  return jax.process_index() == 0
