"""The ('data',) mesh, global arrays, batch constraints and multi-host settings."""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from gmn_jax import parallel
from gmn_jax.errors import ConfigError


def test_make_mesh_is_one_auto_data_axis():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data",)
  assert mesh.shape["data"] == 4
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
  assert parallel.make_mesh(2).devices.tolist() == jax.devices()[:2]


@pytest.mark.parametrize("bad", [0, 5, True])
def test_make_mesh_rejects_impossible_device_counts(bad):
  with pytest.raises(ConfigError, match=r"number of devices: expected 1\.\.4"):
    parallel.make_mesh(bad)


def test_replicate_puts_a_full_copy_everywhere_including_typed_keys():
  mesh = parallel.make_mesh()
  tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "key": jax.random.key(7),
          "step": np.int32(3)}
  out = parallel.replicate(tree, mesh)
  for name in ("w", "step"):
    assert out[name].sharding.is_fully_replicated
    assert len(out[name].sharding.device_set) == 4
    for shard in out[name].addressable_shards:
      np.testing.assert_array_equal(shard.data, tree[name])
  assert jax.dtypes.issubdtype(out["key"].dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(jax.random.key_data(out["key"]),
                                jax.random.key_data(tree["key"]))
  assert out["key"].sharding.is_fully_replicated


def test_make_global_array_splits_the_leading_axis_in_order():
  mesh = parallel.make_mesh()
  local = np.arange(16, dtype=np.float32).reshape(8, 2)
  out = parallel.make_global_array(local, mesh, P("data"))
  assert out.shape == (8, 2)
  shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start)
  for i, shard in enumerate(shards):
    np.testing.assert_array_equal(shard.data, local[2 * i:2 * i + 2])


def _loss_of_drawn_batch(w, x, key):
  """A gradient over a batch drawn inside the step, as the training step does."""
  indices = jax.random.randint(key, (8,), 0, x.shape[0])
  batch = parallel.constrain_batch(x[indices])
  return jax.grad(lambda w: jnp.sum(jnp.tanh(batch @ w)))(w), batch


def test_constrain_batch_splits_the_batch_and_keeps_the_values():
  step = jax.jit(_loss_of_drawn_batch)
  w = jnp.linspace(-1.0, 1.0, 6).reshape(3, 2)
  x = jnp.arange(30.0).reshape(10, 3) / 30.0
  key = jax.random.key(0)
  expected, _ = step(w, x, key)
  single_hlo = step.lower(w, x, key).compile().as_text()
  with parallel.data_parallel(parallel.make_mesh()):
    got, batch = step(w, x, key)
    hlo = step.lower(w, x, key).compile().as_text()
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
  # The batch really is split, and XLA sums the partial gradients.
  assert batch.sharding.spec[0] == "data"
  assert batch.addressable_shards[0].data.shape == (2, 3)
  assert "all-reduce" in hlo and "all-reduce" not in single_hlo


def test_constrain_batch_is_a_no_op_without_a_mesh_or_when_indivisible():
  x = jnp.ones((6, 3))
  assert parallel.constrain_batch(x) is x  # No mesh in context.
  mesh = parallel.make_mesh()
  assert parallel.constrain_batch(x, mesh=mesh) is x  # 6 rows on 4 devices.
  assert parallel.constrain_batch(x, mesh=parallel.make_mesh(1)) is x

  @jax.jit
  def f(x):
    return parallel.constrain_batch(x, axis=1) * 2

  with parallel.data_parallel(mesh):
    out = f(jnp.ones((3, 8)))
  assert out.sharding.spec == P(None, "data")


def test_multihost_requested_reads_the_flag_then_the_environment(monkeypatch):
  monkeypatch.delenv(parallel.MULTIHOST_ENV, raising=False)
  assert not parallel.multihost_requested()
  assert parallel.multihost_requested(True)
  monkeypatch.setenv(parallel.MULTIHOST_ENV, "1")
  assert parallel.multihost_requested()
  assert not parallel.multihost_requested(False)
  monkeypatch.setenv(parallel.MULTIHOST_ENV, "0")
  assert not parallel.multihost_requested()


def test_initialize_multihost_off_is_a_single_process_run(monkeypatch):
  monkeypatch.delenv(parallel.MULTIHOST_ENV, raising=False)
  assert parallel.initialize_multihost() is False
  assert parallel.initialize_multihost(False) is False
  assert not jax.distributed.is_initialized()
  assert parallel.is_primary()


def test_initialize_multihost_rejects_a_malformed_environment(monkeypatch):
  monkeypatch.setenv(parallel.NUM_PROCESSES_ENV, "two")
  with pytest.raises(ConfigError, match="GMN_NUM_PROCESSES: expected an integer, found 'two'"):
    parallel.initialize_multihost(True, coordinator_address="127.0.0.1:1")
  assert not jax.distributed.is_initialized()


# --------------------------------------------------------------------------
# Data-parallel training.


def test_training_on_four_devices_equals_one_device(tmp_path):
  # pylint: disable=g-import-not-at-top
  from gmn_jax import specs
  from gmn_jax import stage1
  from gmn_jax import critic_updates
  from gmn_jax import train_state
  from reference_training import assert_trees_close, plain_stage1
  from test_train_support import tiny_config, tiny_dataset
  # pylint: enable=g-import-not-at-top
  config, dataset = tiny_config(), tiny_dataset()  # batch 8, GM 2 x (4 real + 8 fake)
  spec = specs.train_spec(config, dataset)
  data = train_state.make_train_data(dataset, spec)
  hyper = specs.hyperparameters(config)
  schedule = specs.Schedule(num_iterations=2, iterations_per_call=2, checkpoint_every=2,
                            log_every=1)
  single, _ = plain_stage1(spec, data, hyper, 3, schedule.num_iterations)
  mesh = parallel.make_mesh()
  (sharded,) = stage1.train_generators(
      spec, data, hyper, seeds=(3,), schedule=schedule,
      checkpoint_dirs=[str(tmp_path / "four")], mesh=mesh)
  assert_trees_close(sharded.state, single, rtol=1e-3, atol=1e-4)
  # Training moved the parameters, so the comparison is not of two inits.
  init = train_state.init_train_state(train_state.seed_keys(3).init, spec, data)
  assert not np.allclose(sharded.state.generator["layers"]["layer_0"]["kernel"],
                         init.generator["layers"]["layer_0"]["kernel"])
  # The step really splits its batches: XLA sums partial gradients (checked
  # on a critic step, a smaller program to compile than the whole chunk).
  critic_step = jax.jit(functools.partial(critic_updates.critic_step, spec))
  with parallel.data_parallel(mesh):
    hlo = critic_step.lower(*parallel.replicate(
        (hyper, init.critic, init.critic_opt, init.generator, jax.device_get(data),
         jax.random.key(0)), mesh)).compile().as_text()
  assert "all-reduce" in hlo


@pytest.mark.parametrize("args, env, needle", [
    (["--num_devices=9"], {}, "number of devices: expected 1..4"),
    ([], {"GMN_MULTIHOST": "1", "GMN_NUM_PROCESSES": "x"},
     "GMN_NUM_PROCESSES: expected an integer, found 'x'"),
])
def test_train_binary_rejects_bad_parallel_settings_in_one_line(tmp_path, args, env, needle):
  # pylint: disable=g-import-not-at-top
  import os
  import subprocess
  import sys
  # pylint: enable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=experiments/configs/digits.py",
       f"--workdir={tmp_path / 'w'}", *args], cwd=repo, capture_output=True, text=True,
      env=dict(os.environ, **env), timeout=120, check=False)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and needle in lines[0], result.stderr[-2000:]
  assert "Traceback" not in result.stderr
