"""Tests of gmn_jax.checkpoint: round trips, shardings, keys, atomicity."""

import dataclasses
import functools
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gmn_jax import errors
from gmn_jax.checkpoint import Checkpointer


class TrainState(NamedTuple):
  params: dict
  opt: tuple
  key: jax.Array
  raw_key: jax.Array
  step: np.ndarray


def make_state(seed: int, num_seeds: int | None = None,
               impl: str = "threefry2x32") -> TrainState:
  """A small state; with num_seeds, every leaf has a leading seeds axis."""
  rng = np.random.default_rng(seed)
  lead = () if num_seeds is None else (num_seeds,)
  if num_seeds is None:
    key = jax.random.key(seed, impl=impl)
    raw = jax.random.PRNGKey(seed + 1)
  else:
    key = jax.random.split(jax.random.key(seed, impl=impl), num_seeds)
    raw = jax.random.split(jax.random.PRNGKey(seed + 1), num_seeds)
  return TrainState(
      params={
          "generator": {"w": jnp.asarray(rng.normal(size=lead + (5, 3)),
                                         jnp.float32),
                        "b": jnp.asarray(rng.normal(size=lead + (3,)),
                                         jnp.bfloat16)},
          "critic": [jnp.asarray(rng.normal(size=lead + (4,)), jnp.float32)],
      },
      opt=(jnp.asarray(rng.integers(0, 9, size=lead + (2,)), jnp.int32),),
      key=key,
      raw_key=raw,
      step=np.asarray(seed, np.int32),
  )


def assert_states_equal(a: TrainState, b: TrainState) -> None:
  """Equal structure, dtypes (key impls included) and values."""
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      assert jax.random.key_impl(x) == jax.random.key_impl(y)
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    np.testing.assert_array_equal(np.asarray(x, np.float32),
                                  np.asarray(y, np.float32))


@pytest.mark.parametrize("impl", ["threefry2x32", "rbg"])
@pytest.mark.parametrize("num_seeds", [None, 3])
def test_round_trip_restores_values_keys_and_extra(tmp_path, impl, num_seeds):
  state = make_state(7, num_seeds, impl)
  with Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(10, state, extra={"epoch": 3, "hash": "abc", "x": [1.5]})
    ckpt.wait()
    assert ckpt.latest_step() == 10
    template = make_state(0, num_seeds, impl)  # Same structure, other values.
    restored, extra = ckpt.restore(template)
  assert isinstance(restored, TrainState)
  assert_states_equal(restored, state)
  assert extra == {"epoch": 3, "hash": "abc", "x": [1.5]}
  # A restored typed key draws the same numbers as the saved one.
  np.testing.assert_array_equal(
      jax.random.uniform(restored.key if num_seeds is None
                         else restored.key[1], (4,)),
      jax.random.uniform(state.key if num_seeds is None else state.key[1],
                         (4,)))


def test_restore_from_a_fresh_process_object_and_abstract_template(tmp_path):
  state = make_state(3)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
  abstract = jax.eval_shape(lambda: make_state(0))
  with Checkpointer(tmp_path) as reopened:
    restored, extra = reopened.restore(abstract)
  assert extra == {}
  assert_states_equal(restored, state)


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["params", "keys"], meta_fields=["label"])
@dataclasses.dataclass
class DataclassState:
  params: dict
  keys: jax.Array
  label: str = "run"


def test_registered_dataclass_state_round_trips(tmp_path):
  state = DataclassState({"w": jnp.arange(3.0)},
                         jax.random.split(jax.random.key(2), 4))
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
    restored, _ = ckpt.restore(
        DataclassState({"w": jnp.zeros(3)},
                       jax.random.split(jax.random.key(0), 4)))
  assert isinstance(restored, DataclassState)
  np.testing.assert_array_equal(restored.params["w"], [0.0, 1.0, 2.0])
  np.testing.assert_array_equal(jax.random.key_data(restored.keys),
                                jax.random.key_data(state.keys))


def test_restore_places_arrays_on_the_template_sharding(tmp_path):
  mesh = jax.make_mesh((4,), ("data",))
  replicated = NamedSharding(mesh, P())
  by_seed = NamedSharding(mesh, P("data"))
  state = make_state(5, num_seeds=4)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(2, state)
    # Replicated: every leaf whole on each of the four devices.
    template = jax.tree.map(
        lambda x: jax.device_put(x, replicated)
        if isinstance(x, jax.Array) else x, make_state(0, num_seeds=4))
    restored, _ = ckpt.restore(template)
    for leaf in jax.tree.leaves(restored):
      if isinstance(leaf, jax.Array):
        assert leaf.sharding.is_equivalent_to(replicated, leaf.ndim)
        assert len(leaf.addressable_shards) == 4
    assert_states_equal(restored, state)
    # The seeds axis split over devices, from an abstract template.
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=by_seed)
        if isinstance(x, jax.Array) else x, make_state(0, num_seeds=4))
    restored, _ = ckpt.restore(abstract)
    w = restored.params["generator"]["w"]
    assert w.sharding.is_equivalent_to(by_seed, w.ndim)
    assert w.addressable_shards[0].data.shape == (1, 5, 3)
    assert restored.key.sharding.is_equivalent_to(by_seed, 1)
    assert_states_equal(restored, state)


def test_without_sharding_restores_replicated_on_all_devices(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, {"w": jnp.arange(4.0)})
    restored, _ = ckpt.restore({"w": jax.ShapeDtypeStruct((4,), jnp.float32)})
  assert len(restored["w"].sharding.device_set) == jax.device_count()
  np.testing.assert_array_equal(restored["w"], np.arange(4.0))


def test_max_to_keep_and_restoring_an_older_step(tmp_path):
  with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for step in (1, 2, 3, 4):
      ckpt.save(step, {"v": jnp.full((2,), float(step))}, extra={"s": step})
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
    restored, extra = ckpt.restore({"v": jnp.zeros(2)}, step=3)
    assert extra == {"s": 3}
    np.testing.assert_array_equal(restored["v"], [3.0, 3.0])
    with pytest.raises(errors.DataError, match=r"step 1, found steps \[3, 4\]"):
      ckpt.restore({"v": jnp.zeros(2)}, step=1)
  assert sorted(os.listdir(tmp_path)) == ["3", "4"]


def test_saving_an_existing_step_is_a_no_op(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.save(5, {"v": jnp.ones(2)}, extra={"a": 1})
    ckpt.wait()
    assert not ckpt.save(5, {"v": jnp.zeros(2)}, extra={"a": 2})
    restored, extra = ckpt.restore({"v": jnp.zeros(2)})
  assert extra == {"a": 1}
  np.testing.assert_array_equal(restored["v"], [1.0, 1.0])


def test_state_buffers_may_be_freed_as_soon_as_save_returns(tmp_path):
  # A training loop donates the state to the next step right after saving.
  values = jnp.arange(100_000.0)
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, {"v": values})
    values.delete()
    ckpt.wait()
    restored, _ = ckpt.restore({"v": jnp.zeros(100_000)})
  np.testing.assert_array_equal(restored["v"], np.arange(100_000.0))


def test_extra_must_be_a_json_dict(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(TypeError, match="JSON"):
      ckpt.save(1, {"v": jnp.ones(2)}, extra={"a": np.float32(1)})
    with pytest.raises(TypeError, match="dict"):
      ckpt.save(1, {"v": jnp.ones(2)}, extra=[1])
    assert ckpt.latest_step() is None


def test_leftover_temporary_directory_is_ignored_and_removed(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(3, {"v": jnp.ones(2)})
  # What a save of step 9 killed mid-write leaves: a complete-looking copy
  # under orbax's temporary name, never renamed into place.
  leftover = tmp_path / "9.orbax-checkpoint-tmp"
  shutil.copytree(tmp_path / "3", leftover)
  (tmp_path / "12.orbax-checkpoint-tmp-1700000001").mkdir()
  with Checkpointer(tmp_path) as ckpt:
    assert ckpt.latest_step() == 3
    assert ckpt.all_steps() == [3]
    restored, _ = ckpt.restore({"v": jnp.zeros(2)})
    np.testing.assert_array_equal(restored["v"], [1.0, 1.0])
    # The next save clears what interrupted saves left behind.
    ckpt.save(4, {"v": jnp.ones(2)})
  assert sorted(os.listdir(tmp_path)) == ["3", "4"]


_KILLED_SAVER = textwrap.dedent("""
    import os, sys
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax.numpy as jnp
    from gmn_jax.checkpoint import Checkpointer
    ckpt = Checkpointer(sys.argv[1], max_to_keep=3)
    for step in range(1, 1000):
      # 16 MB per step, so that a save takes long enough to be interrupted.
      ckpt.save(step, {"v": jnp.full((4_000_000,), float(step))},
                extra={"step": step})
      if step == 2:
        ckpt.wait()
        print("saved", flush=True)
""")


def test_kill_9_during_saves_leaves_a_restorable_latest_step(tmp_path):
  directory = tmp_path / "ckpt"
  proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVER, str(directory)],
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True)
  try:
    assert proc.stdout.readline().strip() == "saved"
    time.sleep(0.3)  # Let it get into the middle of later saves.
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  with Checkpointer(directory, max_to_keep=3) as ckpt:
    step = ckpt.latest_step()
    assert step is not None and step >= 2
    restored, extra = ckpt.restore({"v": jnp.zeros(4_000_000)})
  assert extra == {"step": step}
  np.testing.assert_array_equal(np.asarray(restored["v"])[[0, -1]],
                                [step, step])


def test_directory_that_is_a_file_is_a_data_error(tmp_path):
  path = tmp_path / "checkpoints"
  path.write_text("not a directory")
  with pytest.raises(errors.DataError, match="expected a directory"):
    Checkpointer(path)


def test_empty_directory_has_nothing_to_restore(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(errors.DataError, match="at least one checkpoint"):
      ckpt.restore({"v": jnp.zeros(2)})


def test_unreadable_step_directory_is_a_data_error(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, {"v": jnp.ones(2)})
  (tmp_path / "5").mkdir()
  (tmp_path / "5" / "garbage.bin").write_bytes(b"\x00\x01")
  with Checkpointer(tmp_path) as ckpt:
    with pytest.raises(errors.DataError) as info:
      ckpt.restore({"v": jnp.zeros(2)}, step=5)
    assert info.value.path == str(tmp_path / "5")
    assert "\n" not in str(info.value)
    # The good step is still there.
    restored, _ = ckpt.restore({"v": jnp.zeros(2)}, step=1)
    np.testing.assert_array_equal(restored["v"], [1.0, 1.0])


def test_template_that_does_not_match_is_a_data_error(tmp_path):
  with Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, {"gen": {"w": jnp.ones((3, 4))}, "n": jnp.ones(2)})
    ckpt.wait()
    with pytest.raises(errors.DataError,
                       match=r"\[state/gen/w\]: expected float32\(3, 5\)"
                       r" as in the template, found float32\(3, 4\)"):
      ckpt.restore({"gen": {"w": jnp.zeros((3, 5))}, "n": jnp.ones(2)})
    with pytest.raises(errors.DataError,
                       match=r"missing: \['gen/b'\].*template: \['n'\]"):
      ckpt.restore({"gen": {"w": jnp.zeros((3, 4)), "b": jnp.zeros(2)}})
