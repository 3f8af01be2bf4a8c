"""Atomic, resumable checkpoints of a training state pytree (orbax underneath).

A checkpoint directory holds one sub-directory per saved step, each with two
items: `state` (the pytree of arrays, written by orbax's standard handler,
sharded arrays included) and `extra` (a small JSON dict: python-side counters,
a config fingerprint, ...). Orbax writes every step into a temporary
directory and renames it into place only once complete, so a process killed at
any moment (even `kill -9`) leaves the previous steps intact and never a
half-written "latest" step.

Typed PRNG key arrays (`jax.random.key`) are stored as their raw key data and
re-wrapped on restore with the implementation of the template's keys, so
states may mix typed keys, raw uint32 keys and ordinary arrays freely.
"""

import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from gmn_jax import errors

_STATE = "state"
_EXTRA = "extra"


def _is_typed_key(leaf) -> bool:
  """Whether a leaf (array or ShapeDtypeStruct) holds typed PRNG keys."""
  dtype = getattr(leaf, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _key_data_spec(leaf) -> tuple[jax.ShapeDtypeStruct, Any]:
  """The raw-data shape/dtype of a typed key leaf and its key implementation.

  Works for concrete key arrays and abstract ShapeDtypeStructs alike (the
  implementation is read while tracing, where both are accepted).

  Args:
    leaf: a typed key array or a ShapeDtypeStruct with a key dtype.

  Returns:
    (ShapeDtypeStruct of the uint32 key data, the key implementation).
  """
  impls = []

  def data_of(keys):
    impls.append(jax.random.key_impl(keys))
    return jax.random.key_data(keys)

  spec = jax.eval_shape(data_of, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
  return spec, impls[0]


def _default_sharding() -> jax.sharding.Sharding:
  """Replicated over every device (of every process): the state's layout."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("devices",))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def _restore_target(leaf):
  """The orbax restore target for one template leaf (see `restore`)."""
  if isinstance(leaf, (jax.Array, jax.ShapeDtypeStruct)):
    sharding = getattr(leaf, "sharding", None) or _default_sharding()
    if _is_typed_key(leaf):
      spec, _ = _key_data_spec(leaf)
      return jax.ShapeDtypeStruct(spec.shape, spec.dtype, sharding=sharding)
    return jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
  return leaf  # numpy arrays and python scalars restore as themselves.


def _path_str(path) -> str:
  """'params/w' for a jax key path (dicts, lists and NamedTuples alike)."""
  parts = []
  for entry in path:
    for attr in ("key", "name", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
    else:
      parts.append(str(entry))
  return "/".join(parts)


def _describe(leaf) -> str:
  """'float32(3, 4)' for an array-like leaf (or its orbax metadata)."""
  dtype = getattr(leaf, "dtype", None)
  shape = getattr(leaf, "shape", None)
  if dtype is None and shape is None:
    return type(leaf).__name__
  dtype_name = np.dtype(dtype).name if dtype is not None else "?"
  return f"{dtype_name}{tuple(shape) if shape is not None else ''}"


class DamagedCheckpointError(errors.DataError):
  """A checkpoint step exists but cannot be read (truncated or corrupted files)."""


def _damaged(step_dir: str, error: Exception) -> DamagedCheckpointError:
  """The one-line error of an unreadable step; orbax's own text is cut short."""
  text = " ".join(str(error).split())
  text = text if len(text) <= 120 else text[:117] + "..."
  return DamagedCheckpointError(step_dir, None, "a readable orbax checkpoint",
                                f"a damaged one ({type(error).__name__}: {text})")


class Checkpointer:
  """Saves and restores (state pytree, JSON extra) pairs by integer step.

  All processes of a multi-host run call every method; orbax makes only the
  primary process write the shared files.

  Example:
    ckpt = Checkpointer(workdir / "checkpoints")
    if ckpt.latest_step() is not None:
      state, extra = ckpt.restore(state)
    ...
    ckpt.save(step, state, extra={"epoch": 3})
    ckpt.close()
  """

  def __init__(self, directory, *, max_to_keep: int | None = 2):
    """Opens (creating when absent) a checkpoint directory.

    Args:
      directory: where the step sub-directories live.
      max_to_keep: how many most recent steps to keep (None keeps all).

    Raises:
      DataError: when `directory` exists but is not a directory.
    """
    self.directory = os.path.abspath(os.fspath(directory))
    if os.path.exists(self.directory) and not os.path.isdir(self.directory):
      raise errors.DataError(self.directory, None,
                             "a directory of orbax checkpoints",
                             "a file that is not a directory")
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep,
        create=True,
        # Leftovers of saves killed mid-write are deleted (before the next
        # save); they were never visible as steps anyway.
        cleanup_tmp_directories=True,
    )
    # Handlers given up front, so that a fresh process can read metadata
    # before its first save or restore.
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _EXTRA: ocp.JsonCheckpointHandler()})

  def latest_step(self) -> int | None:
    """Returns the newest complete step, or None when there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Returns every complete step kept, in increasing order."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state, *, extra: dict | None = None) -> bool:
    """Saves `state` and `extra` as `step` (asynchronously; see `wait`).

    The arrays are copied off the device before this returns, so the caller
    may donate or overwrite `state` right away.

    Args:
      step: the step number (a non-negative int).
      state: a pytree of jax arrays (typed PRNG keys allowed), numpy arrays or
        python scalars.
      extra: a JSON-serialisable dict stored beside the state (default {}).

    Returns:
      True when saved; False when `step` already exists (nothing is written:
      a deterministic run saves the same content twice, e.g. on a preemption
      signal right after a periodic save).

    Raises:
      TypeError: when `extra` is not a JSON-serialisable dict.
    """
    extra = {} if extra is None else extra
    if not isinstance(extra, dict):
      raise TypeError(f"extra must be a dict, got {type(extra).__name__}")
    try:
      json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as e:
      raise TypeError(f"extra must be JSON-serialisable: {e}") from e
    if step in self._manager.all_steps():
      return False
    storable = jax.tree.map(
        lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, state)
    return self._manager.save(
        int(step),
        args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(storable),
            _EXTRA: ocp.args.JsonSave(extra),
        }),
        force=True)  # The caller decides when to save, not orbax's policy.

  def restore(self, template, step: int | None = None):
    """Restores a step onto the structure, dtypes and shardings of `template`.

    Args:
      template: a pytree like the saved state: concrete arrays (e.g. a freshly
        initialised state) or jax.ShapeDtypeStructs. Each jax leaf is restored
        with the template leaf's sharding (replicated over all devices when it
        has none); typed key leaves come back as typed keys of the same
        implementation; numpy and python scalar leaves come back as such.
      step: the step to restore; the latest when None.

    Returns:
      (state, extra): the state with the template's tree structure, and the
      JSON dict saved with it.

    Raises:
      DamagedCheckpointError: when the step's files cannot be read.
      DataError: when there is no such step, or when its arrays do not match
        the template (a different configuration wrote it).
    """
    self._manager.wait_until_finished()  # A step still being written.
    if step is None:
      step = self.latest_step()
      if step is None:
        raise errors.DataError(self.directory, None, "at least one checkpoint",
                               "none")
    elif step not in self._manager.all_steps():
      raise errors.DataError(self.directory, None,
                             f"a checkpoint for step {step}",
                             f"steps {self.all_steps()}")
    step_dir = os.path.join(self.directory, str(step))
    self._check_matches(template, step, step_dir)
    targets = jax.tree.map(_restore_target, template)
    try:
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(**{
              _STATE: ocp.args.StandardRestore(targets),
              _EXTRA: ocp.args.JsonRestore(),
          }))
    except Exception as e:  # orbax raises many types for damaged files.
      raise _damaged(step_dir, e) from e

    def rewrap(template_leaf, leaf):
      if _is_typed_key(template_leaf):
        return jax.random.wrap_key_data(
            leaf, impl=_key_data_spec(template_leaf)[1])
      return leaf

    state = jax.tree.map(rewrap, template, restored[_STATE])
    extra = restored[_EXTRA]
    return state, ({} if extra is None else extra)

  def _check_matches(self, template, step: int, step_dir: str) -> None:
    """Raises DataError unless the stored arrays match the template's."""
    try:
      metadata = self._manager.item_metadata(step)
      stored = metadata[_STATE]
    except Exception as e:  # A damaged step: orbax's own errors vary.
      raise _damaged(step_dir, e) from e
    if stored is None:
      raise DamagedCheckpointError(step_dir, _STATE, "saved state arrays",
                             "no readable state item")
    stored = getattr(stored, "tree", stored)  # TreeMetadata in newer orbax.
    stored_leaves = {
        _path_str(p): leaf
        for p, leaf in jax.tree_util.tree_flatten_with_path(stored)[0]
    }
    expected = {}
    for p, leaf in jax.tree_util.tree_flatten_with_path(template)[0]:
      if _is_typed_key(leaf):
        leaf = _key_data_spec(leaf)[0]
      expected[_path_str(p)] = leaf
    missing = sorted(set(expected) - set(stored_leaves))
    unexpected = sorted(set(stored_leaves) - set(expected))
    if missing or unexpected:
      raise errors.DataError(
          step_dir, _STATE, f"the template's fields (missing: {missing})",
          f"different fields (not in the template: {unexpected})")
    for name, want in expected.items():
      have = stored_leaves[name]
      want_shape = tuple(np.shape(want))
      have_shape = getattr(have, "shape", None)
      if have_shape is not None and tuple(have_shape) != want_shape:
        raise errors.DataError(step_dir, f"{_STATE}/{name}",
                               f"{_describe(want)} as in the template",
                               _describe(have))

  def delete(self, step: int) -> None:
    """Deletes a saved step (e.g. a damaged one, before it is saved again).

    Args:
      step: a step among `all_steps()`.
    """
    self._manager.wait_until_finished()
    self._manager.delete(int(step))

  def wait(self) -> None:
    """Blocks until every pending asynchronous save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases orbax's resources."""
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
