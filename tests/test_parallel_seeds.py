"""Stage 1 of S seeds in one program equals a plain loop per seed."""

import json
import os

import jax
import numpy as np
import pytest

from gmn_jax import checkpoint
from gmn_jax import parallel
from gmn_jax import seed_axis
from gmn_jax import specs
from gmn_jax import stage1
from gmn_jax import train
from gmn_jax import train_state
from reference_training import assert_trees_close, plain_stage1
from test_train_support import tiny_config, tiny_dataset

SEEDS = (3, 5)
# Three one-iteration calls (one compilation per group size), checkpoints
# after the second and the third.
SCHEDULE = specs.Schedule(num_iterations=3, iterations_per_call=1, checkpoint_every=2,
                          log_every=1)


def _setup():
  config, dataset = tiny_config(), tiny_dataset()
  spec = specs.train_spec(config, dataset)
  return spec, train_state.make_train_data(dataset, spec), specs.hyperparameters(config)


def _read_metrics(directory):
  with open(os.path.join(directory, "metrics.jsonl"), encoding="utf-8") as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def references():
  spec, data, hyper = _setup()
  return {s: plain_stage1(spec, data, hyper, s, SCHEDULE.num_iterations) for s in SEEDS}


def test_vmapped_init_equals_separate_inits():
  spec, data, _ = _setup()
  keys = [train_state.seed_keys(s).init for s in SEEDS]
  stacked = stage1.init_states(spec, jax.device_put(data), jax.numpy.stack(keys))
  for i, key in enumerate(keys):
    assert_trees_close(seed_axis.unstack(stacked, i),
                       train_state.init_train_state(key, spec, data), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seeds", [SEEDS, SEEDS[:1]], ids=["two_seeds", "one_seed"])
def test_a_group_equals_a_plain_loop_per_seed(tmp_path, references, seeds):
  spec, data, hyper = _setup()
  group = stage1.train_generators(
      spec, data, hyper, seeds=seeds, schedule=SCHEDULE,
      checkpoint_dirs=[str(tmp_path / f"ckpt_{s}") for s in seeds],
      metrics_dirs=[str(tmp_path / f"metrics_{s}") for s in seeds])
  assert [g.parallel_seeds for g in group] == [len(seeds)] * len(seeds)
  for s, grouped in zip(seeds, group):
    state, per_iteration = references[s]
    assert grouped.seed == s
    assert_trees_close(grouped.state, state, rtol=1e-4, atol=1e-6)
    rows = _read_metrics(tmp_path / f"metrics_{s}")
    assert [r["step"] for r in rows] == [1, 2, 3]
    np.testing.assert_allclose([r["train/generator_loss"] for r in rows],
                               per_iteration["generator_loss"], rtol=1e-4, atol=1e-5)
    # Each seed's checkpoint holds its own unstacked final state.
    with checkpoint.Checkpointer(str(tmp_path / f"ckpt_{s}")) as ckpt:
      assert ckpt.all_steps() == [2, 3]
      restored, extra = ckpt.restore(jax.tree.map(jax.numpy.asarray, grouped.state))
      assert extra == {"seed": s, "iteration": 3}
      assert_trees_close(restored, grouped.state, rtol=0, atol=0)
  if len(seeds) > 1:  # The seeds really are different runs.
    assert not np.allclose(group[0].state.generator["layers"]["layer_0"]["kernel"],
                           group[1].state.generator["layers"]["layer_0"]["kernel"])


def test_a_group_resumes_checkpoints_written_one_seed_at_a_time(tmp_path, references):
  spec, data, hyper = _setup()
  dirs = [str(tmp_path / f"ckpt_{s}") for s in SEEDS]
  partial = specs.Schedule(num_iterations=2, iterations_per_call=1, checkpoint_every=2,
                           log_every=1)
  for seed, directory in zip(SEEDS, dirs):  # two one-seed runs stop at iteration 2
    stage1.train_generators(spec, data, hyper, seeds=[seed], schedule=partial,
                            checkpoint_dirs=[directory])
  group = stage1.train_generators(spec, data, hyper, seeds=SEEDS, schedule=SCHEDULE,
                                  checkpoint_dirs=dirs)
  assert [g.start_iteration for g in group] == [2, 2]
  for s, grouped in zip(SEEDS, group):
    assert_trees_close(grouped.state, references[s][0], rtol=1e-4, atol=1e-6)


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
  common = stage1._common_steps(checkpointers)  # pylint: disable=protected-access
  assert (common[0] if common else 0) == expected


def test_num_parallel_seeds_gives_the_results_of_separate_runs(tmp_path, monkeypatch):
  """A wiring test of train_and_evaluate's seed groups, not of the training loop.

  Both sides run the product's stage-1 loop (stage1.train_generators), so
  this checks only that grouping keeps each seed's own keys, results and
  files; the loop itself is compared with the plain reference
  (tests/reference_training.py) by the tests above.
  """
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
  assert [r["timings"]["parallel_seeds"] for r in together["per_seed"]] == [2, 2]
  assert sorted(os.listdir(tmp_path / "together")) == ["checkpoints"]
  assert sorted(os.listdir(tmp_path / "together" / "checkpoints")) == ["seed_3", "seed_5"]


def test_runs_with_their_own_hyperparameters_equal_each_setting_alone(tmp_path):
  """A grid of traced settings x seeds as one program = a plain loop per run."""
  spec, data, hyper = _setup()
  settings = [hyper._replace(gm_weight=np.float32(w), lr_generator=np.float32(lr))
              for w, lr in ((1.0, 1e-4), (30.0, 3e-4))]
  runs = [(setting, seed) for seed in SEEDS for setting in range(2)]
  group = stage1.train_generators(
      spec, data, [settings[i] for i, _ in runs], seeds=[s for _, s in runs],
      schedule=SCHEDULE, checkpoint_dirs=[str(tmp_path / f"ckpt_{i}_{s}") for i, s in runs],
      names=[f"setting {i} seed {s}" for i, s in runs])
  for (i, s), grouped in zip(runs, group):
    state, _ = plain_stage1(spec, data, settings[i], s, SCHEDULE.num_iterations)
    assert_trees_close(grouped.state, state, rtol=1e-4, atol=1e-6)
  # The settings really differ: the same seed ends elsewhere under each.
  kernel = lambda g: g.state.generator["layers"]["layer_0"]["kernel"]
  assert not np.allclose(kernel(group[0]), kernel(group[1]), rtol=1e-3, atol=1e-5)


def test_hyperparameters_of_another_shape_are_refused():
  _, _, hyper = _setup()
  assert seed_axis.shared_or_stacked(hyper, 3) is None
  assert seed_axis.shared_or_stacked(seed_axis.stack([hyper] * 3), 3) == 0
  with pytest.raises(ValueError, match=r"expected scalars or \(2,\) arrays"):
    seed_axis.shared_or_stacked(seed_axis.stack([hyper] * 3), 2)
