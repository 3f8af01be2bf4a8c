"""Train and evaluate one configuration: `train_and_evaluate(config, workdir)`.

Read top to bottom, one run is:

1. Configuration: the config is validated once (`config.validate`) and read
   into typed specs (`gmn_jax.specs`); the dataset is loaded.
2. Workdir: created, or checked to hold the same config
   (`gmn_jax.workdir`, which also describes the layout).
3. Seeds: finished seeds are read back; the others are trained in groups of
   `num_parallel_seeds`, one program per group and stage (a single seed is
   a group of one):
   - stage 1 (`gmn_jax.stage1`, skipped by `real_only`): the generators,
     resumed from their checkpoints;
   - stage 2 (`gmn_jax.evaluate`): synthesis and the final classifiers;
   - each seed's result.json, written atomically, marks it finished.
4. Summary: results.json, the mean ± std over generator seeds.

Rerunning the same command resumes: finished seeds are read back, an
unfinished one restarts from its latest checkpoint, and the result equals an
uninterrupted run's bit for bit (every iteration draws its randomness from
`fold_in(key, iteration)` and the host calls cover the same iterations
either way).
"""

import os
import time
from typing import Any, Dict, List, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections

from gmn_jax import config as gmn_config
from gmn_jax import config_utils
from gmn_jax import evaluate
from gmn_jax import models
from gmn_jax import parallel
from gmn_jax import preemption
from gmn_jax import provenance
from gmn_jax import results
from gmn_jax import specs
from gmn_jax import stage1
from gmn_jax import train_state
from gmn_jax import workdir as workdirs
from gmn_jax.data import registry
from gmn_jax.data.dataset import ZSLDataset

def load_dataset(config: ml_collections.ConfigDict) -> ZSLDataset:
  """Loads the dataset a config names.

  Args:
    config: the full configuration.

  Returns:
    The `ZSLDataset` (split, embedding and feature normalisation from config).
  """
  return registry.load_dataset(config.data_dir, split=config.split, embedding=config.embedding,
                               feature_norm=config.feature_norm)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *,
                       overwrite: bool = False,
                       dataset: Optional[ZSLDataset] = None,
                       calibration_gamma: Optional[float] = None,
                       mesh: Optional[jax.sharding.Mesh] = None) -> Dict[str, Any]:
  """Runs both stages for every seed of `config` and writes results.json.

  Seeds are trained `config.num_parallel_seeds` at a time in one vmapped
  program per stage; results equal one seed at a time to float tolerance.
  With a mesh, stage 1 splits its batches over the mesh's devices; in a
  multi-host run every process calls this with the same arguments and a
  workdir all of them can read, and only process 0 writes files (the
  checkpointer is collective).

  SIGTERM and SIGINT (in the main thread) stop the run at the next chunk
  boundary after a checkpoint and raise `preemption.Interrupted`; rerunning
  resumes.

  Args:
    config: the full configuration (a preset plus overrides).
    workdir: the run's directory; rerunning with the same config resumes.
    overwrite: start afresh, deleting this project's outputs in workdir.
    dataset: an in-memory dataset to use instead of loading
      `config.data_dir` (e.g. from a notebook); config.data_dir then only
      labels the run.
    calibration_gamma: a calibrated-stacking gamma chosen on a validation
      split (see `workdir.calibration_gamma_from`); adds the honest
      calibrated u, s, H to the results. Finished seeds evaluated with
      another gamma (or none) are evaluated again; their stage 1 is not
      repeated.
    mesh: a ('data',) mesh from `parallel.make_mesh` for data-parallel (and
      multi-host) stage 1; None trains on the default device.

  Returns:
    The results.json dict (see `results.summarize`).

  Raises:
    ConfigError: invalid config, or a workdir made with another config.
    DataError: a missing or invalid dataset.
    NonFiniteLossError: training diverged.
    preemption.Interrupted: a stop signal arrived (a checkpoint is saved).
  """
  # --------------------------------------------------------------------------
  # Configuration and data: validated here, once; below, only specs.
  workdir = os.fspath(workdir)
  gmn_config.validate(config, check_data_dir=dataset is None)
  if dataset is None:
    dataset = load_dataset(config)
  variant = gmn_config.get_variant(config)
  eval_spec = specs.eval_spec(config)
  if variant.uses_generator:
    train_spec = specs.train_spec(config, dataset)
    train_data = train_state.make_train_data(dataset, train_spec)
    hyper, schedule = specs.hyperparameters(config), specs.schedule(config)
    # Stage 2 synthesises in float32, whatever stage 1's compute dtype.
    sample_fn = models.sample_fn(train_spec.generator.clone(dtype=jnp.float32))
  else:
    sample_fn = None

  # --------------------------------------------------------------------------
  # Workdir.
  # One live run per workdir: a second launch is refused while this one runs.
  with workdirs.lock(workdir):
    previous = workdirs.prepare(config, workdir, overwrite=overwrite)
    stage2 = workdirs.stage2_fingerprint(config_utils.config_fingerprint(config),
                                         calibration_gamma)
    logging.info("%s on %s: %d seen / %d unseen classes, seeds %s, workdir %s", config.method,
                 dataset.name, dataset.seen_classes.size, dataset.unseen_classes.size,
                 list(config.seeds), workdir)

    # --------------------------------------------------------------------------
    # Seeds, a group of num_parallel_seeds at a time.
    seed_results = {}
    pending = []
    for seed in map(int, config.seeds):
      finished = workdirs.read_seed_result(workdir, seed)
      if finished is not None:
        changed = config_utils.diff_configs(_stage2_of(finished, previous), stage2)
        if not changed:
          logging.info("seed %d: already finished, reading its result.json", seed)
          seed_results[seed] = finished
          continue
        logging.info("seed %d: finished with other stage-2 settings (%s): evaluating again "
                     "(stage 1 is restored from its final checkpoint)", seed, "; ".join(changed))
      pending.append(seed)
    group_size = config.num_parallel_seeds
    with preemption.StopOnSignal():
      for first in range(0, len(pending), group_size):
        group = pending[first:first + group_size]
        named = _name_seeds(group)
        try:
          _stop_if_requested(f"before {named}")

          # Stage 1: the generators.
          generators, timings = None, [{} for _ in group]
          if variant.uses_generator:
            trained = stage1.train_generators(
                train_spec, train_data, hyper, seeds=group, schedule=schedule,
                checkpoint_dirs=[workdirs.checkpoint_dir(workdir, s) for s in group],
                metrics_dirs=[workdirs.seed_dir(workdir, s) for s in group], mesh=mesh)
            generators = [t.state.generator for t in trained]
            timings = [_stage1_timings(t) for t in trained]
            _stop_if_requested(f"after stage 1 of {named} (final checkpoints saved)")

          # Stage 2: synthesis and final classifiers.
          started = time.perf_counter()
          evaluated = evaluate.evaluate_generators(
              sample_fn, generators, dataset, eval_spec,
              [train_state.seed_keys(s).eval for s in group], calibration_gamma=calibration_gamma,
              label=f"{named}: stage 2" if parallel.is_primary() else None)
        except preemption.Interrupted as interrupted:
          raise interrupted.with_unfinished(pending[first:]) from None
        share = (time.perf_counter() - started) / len(group)
        for i, (seed, result) in enumerate(zip(group, evaluated)):
          seed_results[seed] = results.seed_result(seed, result,
                                                   {**timings[i], "stage2_s": share})
          seed_results[seed]["stage2"] = stage2
          if generators is not None and parallel.is_primary():
            workdirs.write_samples(
                os.path.join(workdirs.seed_dir(workdir, seed), workdirs.SAMPLES_FILE),
                sample_fn, generators[i], dataset,
                jax.random.fold_in(train_state.seed_keys(seed).eval, 1))
          workdirs.write_seed_outputs(workdir, seed_results[seed], results.mean_curves(result))
          logging.info("seed %d: %s", seed, ", ".join(
              f"{k}={v:.2f}" for k, v in seed_results[seed]["metrics"].items()))

    # --------------------------------------------------------------------------
    # Summary.
    ordered = [seed_results[int(seed)] for seed in config.seeds]
    summary = results.summarize(config, ordered, dataset)
    summary["provenance"] = provenance.describe()
    workdirs.write_summary(workdir, ordered, summary)
    return summary


def _name_seeds(seeds: List[int]) -> str:
  return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _stop_if_requested(where: str) -> None:
  """Raises `preemption.Interrupted` when a stop signal arrived."""
  if preemption.should_stop():
    raise preemption.Interrupted(preemption.requested_signal(), where)


def _stage1_timings(trained: stage1.SeedResult) -> Dict[str, Any]:
  return {"stage1_s": trained.seconds, "stage1_start_iteration": trained.start_iteration,
          "ms_per_iteration": trained.ms_per_iteration,
          "stage1_first_call_s": trained.first_call_s, "parallel_seeds": trained.parallel_seeds}


def _stage2_of(seed_result: Dict[str, Any], previous: Optional[Dict[str, Any]]):
  """The stage-2 fingerprint a finished seed was evaluated with.

  Seeds finished by an earlier version did not record it: theirs is the
  eval fields of the config.json they were written with, and the calibration
  gamma in their metrics.
  """
  if "stage2" in seed_result:
    return seed_result["stage2"]
  return workdirs.stage2_fingerprint(previous or {},
                                     seed_result["metrics"].get("calibration_gamma"))
