"""Several generator seeds in one vmapped program equal separate runs."""

import json
import os

import jax
import numpy as np
import pytest

from gmn_jax import checkpoint
from gmn_jax import parallel
from gmn_jax import parallel_train
from gmn_jax import train
from gmn_jax import train_state
from test_train_support import tiny_config, tiny_dataset

SEEDS = (3, 5)
RUN = dict(num_iterations=2, iterations_per_call=2, checkpoint_every=2, log_every=1)


def _setup():
  config, dataset = tiny_config(), tiny_dataset()
  spec = train_state.make_train_spec(config, dataset)
  return spec, train_state.make_train_data(dataset, spec), train_state.make_hyperparameters(config)


def _assert_trees_close(got, want, **tolerance):
  got_leaves, want_leaves = jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)
  assert len(got_leaves) == len(want_leaves)
  for g, w in zip(got_leaves, want_leaves):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), **tolerance)


def _read_metrics(directory):
  with open(os.path.join(directory, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


def test_vmapped_init_equals_separate_inits():
  spec, data, _ = _setup()
  keys = [train._seed_keys(s)[0] for s in SEEDS]  # pylint: disable=protected-access
  stacked = parallel_train.init_train_states(spec, jax.device_put(data), jax.numpy.stack(keys))
  for i, key in enumerate(keys):
    _assert_trees_close(parallel_train.tree_slice(stacked, i),
                        train_state.init_train_state(key, spec, data), rtol=1e-6, atol=1e-7)


def test_group_of_seeds_equals_separate_runs(tmp_path):
  spec, data, hyper = _setup()
  separate = [train.train_generator(spec, data, hyper, seed=s,
                                    checkpoint_dir=str(tmp_path / f"one_{s}"),
                                    metrics_dir=str(tmp_path / f"one_metrics_{s}"), **RUN)
              for s in SEEDS]
  group = parallel_train.train_generators(
      spec, data, hyper, seeds=SEEDS,
      checkpoint_dirs=[str(tmp_path / f"group_{s}") for s in SEEDS],
      metrics_dirs=[str(tmp_path / f"group_metrics_{s}") for s in SEEDS], **RUN)
  assert [g["parallel_seeds"] for g in group] == [2, 2]
  for s, one, grouped in zip(SEEDS, separate, group):
    _assert_trees_close(grouped["state"], one["state"], rtol=1e-4, atol=1e-6)
    one_rows = _read_metrics(tmp_path / f"one_metrics_{s}")
    group_rows = _read_metrics(tmp_path / f"group_metrics_{s}")
    assert [r["step"] for r in group_rows] == [r["step"] for r in one_rows] == [1, 2]
    for a, b in zip(group_rows, one_rows):
      np.testing.assert_allclose(a["train/generator_loss"], b["train/generator_loss"],
                                 rtol=1e-4, atol=1e-5)
    # Each seed's checkpoint holds its own unstacked state, as a one-seed run's.
    template = train_state.init_train_state(jax.random.key(0), spec, data)
    with checkpoint.Checkpointer(str(tmp_path / f"group_{s}")) as ckpt:
      assert ckpt.latest_step() == 2
      _assert_trees_close(ckpt.restore(template)[0], grouped["state"], rtol=0, atol=0)
  # The seeds really are different runs.
  assert not np.allclose(group[0]["state"].generator["layers"]["layer_0"]["kernel"],
                         group[1]["state"].generator["layers"]["layer_0"]["kernel"])


class _FakeCheckpointer:

  def __init__(self, steps):
    self._steps = steps

  def latest_step(self):
    return max(self._steps) if self._steps else None

  def all_steps(self):
    return list(self._steps)


@pytest.mark.parametrize("steps, expected", [
    ([[2, 4], [2, 4]], 4),  # all saved
    ([[2, 4], [2]], 2),  # interrupted between two seeds' saves
    ([[4, 6], [2, 4]], 4),
    ([[2], []], 0),  # one seed never saved
    ([[6, 8], [2, 4]], 0),  # no common step left: start afresh
])
def test_group_resumes_from_the_newest_step_every_seed_keeps(steps, expected):
  checkpointers = [_FakeCheckpointer(s) for s in steps]
  assert parallel_train._start_step(checkpointers) == expected  # pylint: disable=protected-access


def test_mismatched_directory_lists_are_refused():
  spec, data, hyper = _setup()
  with pytest.raises(train.errors.ConfigError, match="one checkpoint and metrics directory"):
    parallel_train.train_generators(spec, data, hyper, seeds=SEEDS, checkpoint_dirs=["a"], **RUN)


def test_num_parallel_seeds_gives_the_results_of_separate_runs(tmp_path, monkeypatch):
  dataset = tiny_dataset()
  one_at_a_time = train.train_and_evaluate(tiny_config(seeds=SEEDS), tmp_path / "one",
                                           dataset=dataset)
  # The group run also plays a non-primary process of a multi-host run: it
  # computes everything but writes nothing (the checkpointer is collective
  # and writes through orbax, which decides by the real process index).
  monkeypatch.setattr(parallel, "is_primary", lambda: False)
  together = train.train_and_evaluate(tiny_config(seeds=SEEDS, num_parallel_seeds=2),
                                      tmp_path / "together", dataset=dataset)
  for name, entry in one_at_a_time["metrics"].items():
    np.testing.assert_allclose(together["metrics"][name]["per_seed"], entry["per_seed"],
                               atol=1e-6, err_msg=name)
  assert [r["timings"]["stage1_start_iteration"] for r in together["per_seed"]] == [0, 0]
  assert sorted(os.listdir(tmp_path / "together")) == [train.CHECKPOINT_DIR]
  assert sorted(os.listdir(tmp_path / "together" / train.CHECKPOINT_DIR)) == [
      f"seed_{s}" for s in SEEDS]
