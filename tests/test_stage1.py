"""Jitted-step hygiene of the stage-1 loop: donation, finiteness, abstract restores.

The loop's results are compared with the plain reference in
test_parallel_seeds.py; these tests check how it gets there.
"""

import jax
import jax.numpy as jnp
import numpy as np

from gmn_jax import seed_axis
from gmn_jax import specs
from gmn_jax import stage1
from gmn_jax import train_state
from test_train_support import tiny_config, tiny_dataset


def _setup(method="cwgan_gm"):
  config, dataset = tiny_config(method), tiny_dataset()
  spec = specs.train_spec(config, dataset)
  data = jax.device_put(train_state.make_train_data(dataset, spec))
  return spec, data, jax.device_put(specs.hyperparameters(config))


def _chunk_inputs(spec, data, seeds):
  init_keys = jnp.stack([train_state.seed_keys(s).init for s in seeds])
  train_keys = jnp.stack([train_state.seed_keys(s).train for s in seeds])
  return stage1.init_states(spec, data, init_keys), train_keys


def test_a_chunk_donates_the_states_it_is_given():
  spec, data, hyper = _setup()
  states, keys = _chunk_inputs(spec, data, (1,))
  new_states, _, _, _ = stage1.compiled_chunk(spec, 1, 1)(states, data, hyper, keys,
                                                          jnp.int32(0), jnp.int32(1))
  assert all(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(states))
  assert not any(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves(new_states))
  assert not any(leaf.is_deleted() for leaf in jax.tree_util.tree_leaves((data, hyper, keys)))


def test_the_chunk_flags_each_seed_whose_parameters_are_not_finite():
  spec, data, hyper = _setup()
  states, keys = _chunk_inputs(spec, data, (1, 2))
  # Seed 1's critic output bias is NaN from the start; seed 2 is untouched.
  bias = states.critic["layers"]["layer_1"]["bias"]
  critic = jax.tree.map(lambda x: x, states.critic)
  critic["layers"]["layer_1"]["bias"] = bias.at[0].set(jnp.nan)
  states = states._replace(critic=critic)
  new_states, metrics, finite, _ = stage1.compiled_chunk(spec, 1, 2)(
      states, data, hyper, keys, jnp.int32(0), jnp.int32(1))
  host = jax.device_get(new_states)
  expected = [all(np.isfinite(leaf).all() for leaf in jax.tree_util.tree_leaves(
      seed_axis.unstack(host, i)) if np.issubdtype(leaf.dtype, np.floating)) for i in range(2)]
  assert expected == [False, True]  # the NaN spread through seed 1 only
  np.testing.assert_array_equal(np.asarray(finite), expected)
  assert not np.isfinite(np.asarray(metrics["critic_loss"])[:, 0]).all()
  assert np.isfinite(np.asarray(metrics["critic_loss"])[:, 1]).all()


def test_a_resumed_group_initialises_and_pretrains_nothing(tmp_path, monkeypatch):
  spec, data, hyper = _setup("wgan_cls")  # L_CLS: its classifier is pretrained at init
  real_init = train_state.init_train_state
  concrete_inits = []

  def counting_init(key, spec, data):
    if not isinstance(key, jax.core.Tracer):
      concrete_inits.append(key)
    return real_init(key, spec, data)

  monkeypatch.setattr(train_state, "init_train_state", counting_init)
  schedule = specs.Schedule(num_iterations=2, iterations_per_call=2, checkpoint_every=2,
                            log_every=1)
  dirs = [str(tmp_path / "seed_1")]
  (first,) = stage1.train_generators(spec, data, hyper, seeds=[1], schedule=schedule,
                                     checkpoint_dirs=dirs)
  assert len(concrete_inits) == 1  # a fresh start initialises (and pretrains) once
  concrete_inits.clear()
  (resumed,) = stage1.train_generators(spec, data, hyper, seeds=[1], schedule=schedule,
                                       checkpoint_dirs=dirs)
  assert concrete_inits == []  # the restore template was abstract (jax.eval_shape)
  assert resumed.start_iteration == 2
  for got, want in zip(jax.tree_util.tree_leaves(resumed.state),
                       jax.tree_util.tree_leaves(first.state)):
    np.testing.assert_array_equal(got, want)
