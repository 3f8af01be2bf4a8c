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
   This loop is `train_runs`, which `gmn_jax.sweep` also drives with runs
   that differ in traced settings as well as seeds, each evaluated under
   one or more stage-2 settings.
4. Summary: results.json, the mean ± std over generator seeds.

Rerunning the same command resumes: finished seeds are read back, an
unfinished one restarts from its latest checkpoint, and the result equals an
uninterrupted run's bit for bit (every iteration draws its randomness from
`fold_in(key, iteration)` and the host calls cover the same iterations
either way).
"""

import dataclasses
import os
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

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
  eval_spec = specs.eval_spec(config)
  program = stage1_program(config, dataset)

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
    runs = []
    for seed in map(int, config.seeds):
      finished, changed = workdirs.read_finished(workdir, seed, stage2, previous)
      if finished is not None:
        logging.info("seed %d: already finished, reading its result.json", seed)
        seed_results[seed] = finished
        continue
      if changed:
        logging.info("seed %d: finished with other stage-2 settings (%s): evaluating again "
                     "(stage 1 is restored from its final checkpoint)", seed, "; ".join(changed))
      runs.append(Run(seed=seed, hyper=program.hyper, workdir=workdir,
                      evaluations=(Evaluation(eval_spec, workdir, stage2),)))
    finished_runs = train_runs(runs, program, dataset, runs_per_program=config.num_parallel_seeds,
                               calibration_gamma=calibration_gamma, mesh=mesh)
    for run, (result,) in zip(runs, finished_runs):
      seed_results[run.seed] = result

    # --------------------------------------------------------------------------
    # Summary.
    ordered = [seed_results[int(seed)] for seed in config.seeds]
    summary = results.summarize(config, ordered, dataset)
    summary["provenance"] = provenance.describe()
    workdirs.write_summary(workdir, ordered, summary)
    return summary


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One stage 2 of a run's generator.

  Attributes:
    spec: its settings.
    workdir: where it writes seed_<s>/result.json and seed_<s>/eval/.
    stage2: the stage-2 fingerprint stored in result.json
      (`workdir.stage2_fingerprint`): a rerun with other settings evaluates
      again.
  """

  spec: specs.EvalSpec
  workdir: str
  stage2: Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Run:
  """One generator to train (or restore) and evaluate one or more times.

  Attributes:
    seed: the generator seed.
    hyper: its stage-1 numeric settings (None for the real-only baseline).
    workdir: where its stage 1 lives: checkpoints/seed_<s>/,
      seed_<s>/metrics.jsonl and seed_<s>/samples.npz.
    evaluations: its pending stage 2s.
    setting: the label of its settings in a grid ("gm.weight=10"), or "".
  """

  seed: int
  hyper: Optional[specs.Hyperparameters]
  workdir: str
  evaluations: Tuple[Evaluation, ...]
  setting: str = ""

  @property
  def name(self) -> str:
    """How logs and progress name the run: "seed 1", "gm.weight=10, seed 1"."""
    return f"{self.setting}, seed {self.seed}" if self.setting else f"seed {self.seed}"


class Stage1Program(NamedTuple):
  """What stage 1 of a config needs, built once (fields None for real-only).

  Attributes:
    spec: the static settings (`specs.train_spec`); configs with equal specs
      and schedules share one compiled program.
    data: the training data.
    schedule: iterations, calls, checkpoints and metric windows.
    hyper: the config's traced settings.
    sample_fn: the generators' float32 sample function for stage 2.
  """

  spec: Optional[specs.TrainSpec]
  data: Optional[train_state.TrainData]
  schedule: Optional[specs.Schedule]
  hyper: Optional[specs.Hyperparameters]
  sample_fn: Any


def stage1_program(config: ml_collections.ConfigDict, dataset: ZSLDataset) -> Stage1Program:
  """Stage 1's specs, data and sample function of a validated config.

  Args:
    config: the validated configuration.
    dataset: its dataset.

  Returns:
    The `Stage1Program`; every field None when the method trains no
    generator (real_only).
  """
  if not gmn_config.get_variant(config).uses_generator:
    return Stage1Program(None, None, None, None, None)
  spec = specs.train_spec(config, dataset)
  # Stage 2 synthesises in float32, whatever stage 1's compute dtype.
  return Stage1Program(spec=spec, data=train_state.make_train_data(dataset, spec),
                       schedule=specs.schedule(config), hyper=specs.hyperparameters(config),
                       sample_fn=models.sample_fn(spec.generator.clone(dtype=jnp.float32)))


def train_runs(runs: Sequence[Run], program: Stage1Program, dataset: ZSLDataset, *,
               runs_per_program: int, calibration_gamma: Optional[float] = None,
               mesh: Optional[jax.sharding.Mesh] = None) -> List[List[Dict[str, Any]]]:
  """Both stages of runs that share stage 1's program, `runs_per_program` at a time.

  The runs of a group may differ in seed and in `hyper` (a hyperparameter
  grid, `gmn_jax.sweep`): stage 1 trains them as one vmapped program. Each
  run's evaluations go to stage 2 together with the group's other ones:
  those whose specs differ only in `specs.EVAL_TRACED_FIELDS` train their
  final classifiers as one program, the others one program per spec. Every
  evaluation's seed_<s>/result.json is written as soon as its program ends.

  Args:
    runs: the runs, in the order they are grouped.
    program: stage 1's program (`stage1_program`; its hyper is ignored, each
      run has its own).
    dataset: the dataset stage 2 measures.
    runs_per_program: the most runs in one stage-1 program.
    calibration_gamma: see `train_and_evaluate`.
    mesh: see `train_and_evaluate`.

  Returns:
    For each run, the result dicts (`results.seed_result`) of its
    evaluations, in order.

  Raises:
    NonFiniteLossError: training diverged.
    preemption.Interrupted: a stop signal arrived; it names the runs still
      to run.
  """
  finished = []
  with preemption.StopOnSignal():
    for first in range(0, len(runs), runs_per_program):
      group = runs[first:first + runs_per_program]
      # Plain seeds are named as a group ("seeds 1, 67"), a grid's runs one by one.
      names = [run.name for run in group] if any(run.setting for run in group) else None
      named = stage1.group_name([run.seed for run in group], names)
      try:
        _stop_if_requested(f"before {named}")

        # Stage 1: the generators.
        generators, timings = None, [{} for _ in group]
        if program.spec is not None:
          hypers = [run.hyper for run in group]
          # One shared setting keeps the seeds' program of a plain run.
          shared = all(h == hypers[0] for h in hypers)
          trained = stage1.train_generators(
              program.spec, program.data, hypers[0] if shared else hypers,
              seeds=[run.seed for run in group], schedule=program.schedule,
              checkpoint_dirs=[workdirs.checkpoint_dir(run.workdir, run.seed) for run in group],
              metrics_dirs=[workdirs.seed_dir(run.workdir, run.seed) for run in group],
              mesh=mesh, names=names)
          generators = [t.state.generator for t in trained]
          timings = [_stage1_timings(t) for t in trained]
          _stop_if_requested(f"after stage 1 of {named} (final checkpoints saved)")
          if parallel.is_primary():
            for run, params in zip(group, generators):
              workdirs.write_samples(
                  os.path.join(workdirs.seed_dir(run.workdir, run.seed), workdirs.SAMPLES_FILE),
                  program.sample_fn, params, dataset,
                  jax.random.fold_in(train_state.seed_keys(run.seed).eval, 1))

        # Stage 2: synthesis and final classifiers, one program per shape.
        outputs = [[None] * len(run.evaluations) for run in group]
        for shape, pairs in _stage2_programs(group).items():
          started = time.perf_counter()
          evaluated = evaluate.evaluate_generators(
              program.sample_fn, None if generators is None else [generators[i] for i, _ in pairs],
              dataset, [group[i].evaluations[j].spec for i, j in pairs],
              [train_state.seed_keys(group[i].seed).eval for i, _ in pairs],
              calibration_gamma=calibration_gamma,
              label=f"{named}: stage 2{shape}" if parallel.is_primary() else None)
          share = (time.perf_counter() - started) / len(pairs)
          for (i, j), result in zip(pairs, evaluated):
            run, evaluation = group[i], group[i].evaluations[j]
            seed_result = results.seed_result(run.seed, result, {**timings[i], "stage2_s": share})
            seed_result["stage2"] = evaluation.stage2
            workdirs.write_seed_outputs(evaluation.workdir, seed_result,
                                        results.mean_curves(result))
            outputs[i][j] = seed_result
            logging.info("%s: %s", run.name, ", ".join(
                f"{k}={v:.2f}" for k, v in seed_result["metrics"].items()
                if k in results.METRIC_NAMES))
      except preemption.Interrupted as interrupted:
        raise interrupted.with_unfinished([run.name for run in runs[first:]]) from None
      finished.extend(outputs)
  return finished


def _stage2_programs(group: Sequence[Run]) -> Dict[str, List[Tuple[int, int]]]:
  """The group's (run, evaluation) pairs by stage-2 program, labelled for logs.

  Specs that differ only in traced fields share a program; the label names
  the untraced fields that tell programs apart ("" when there is one).
  """
  programs: Dict[specs.EvalSpec, List[Tuple[int, int]]] = {}
  for i, run in enumerate(group):
    for j, evaluation in enumerate(run.evaluations):
      programs.setdefault(evaluation.spec.program_key(), []).append((i, j))
  if len(programs) == 1:
    return {"": next(iter(programs.values()))}
  differing = [f.name for f in dataclasses.fields(specs.EvalSpec)
               if len({getattr(spec, f.name) for spec in programs}) > 1]
  return {" (" + ", ".join(f"eval.{name}={getattr(spec, name)}" for name in differing) + ")": pairs
          for spec, pairs in programs.items()}


def _stop_if_requested(where: str) -> None:
  """Raises `preemption.Interrupted` when a stop signal arrived."""
  if preemption.should_stop():
    raise preemption.Interrupted(preemption.requested_signal(), where)


def _stage1_timings(trained: stage1.SeedResult) -> Dict[str, Any]:
  return {"stage1_s": trained.seconds, "stage1_start_iteration": trained.start_iteration,
          "ms_per_iteration": trained.ms_per_iteration,
          "stage1_first_call_s": trained.first_call_s, "parallel_seeds": trained.parallel_seeds}
