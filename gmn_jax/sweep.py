"""Model selection on the validation split: `sweep(config, grid, workdir)`.

Read top to bottom, a sweep is:

1. Validation: every combination of the grid (`gmn_jax.sweep_grid`) trains
   and evaluates with the config's seeds on the validation split (xlsa17
   `train_loc` / `val_loc`: validation classes play the unseen ones). Stage-1
   settings whose compiled programs are the same (they differ only in traced
   hyperparameters) train together, vmapped with the seeds; every `eval.*`
   value is evaluated from the same generators (`train.train_runs`).
2. Choice: the combination with the best mean of the metric over seeds;
   the ties (equal at two decimals) and those within one std of it are
   reported, the first in grid order is chosen.
3. Test: the chosen setting trains and evaluates on the test split, as
   `experiments.train` would (W/test/<setting>/).
4. Oracle (optional): the whole grid on the test split, its best labelled as
   an oracle, to show what choosing on test would have reported.

Layout of W (only this module writes it; every stage-1 directory is a
resumable run directory, `gmn_jax.workdir`):
  validation/<stage-1 setting>/           config.json, checkpoints/seed_<s>/,
                                          seed_<s>/metrics.jsonl, samples.npz
  validation/<stage-1>/<stage-2 setting>/ seed_<s>/result.json, results.json
  test/<setting>/                         the chosen setting's run on test
  oracle/...                              as validation/, on the test split
  sweep.json, sweep.md, plots/sweep.png   `gmn_jax.sweep_report`
  .lock                                   held while the sweep runs

Rerunning the same command resumes: finished evaluations are read back, an
unfinished stage 1 continues from its checkpoints, and a setting added to
the grid trains only what is new.
"""

import os
import shutil
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import jax
import ml_collections
import numpy as np

from gmn_jax import checkpoint
from gmn_jax import config as gmn_config
from gmn_jax import config_utils
from gmn_jax import plotting
from gmn_jax import provenance
from gmn_jax import results
from gmn_jax import specs
from gmn_jax import sweep_grid
from gmn_jax import sweep_report
from gmn_jax import train
from gmn_jax import workdir as workdirs
from gmn_jax.errors import ConfigError

VALIDATION_DIR, TEST_DIR, ORACLE_DIR = "validation", "test", "oracle"
# The metrics a sweep can select by.
SELECTION_METRICS = results.METRIC_NAMES + ("ausuc",)


def _validated(config: ml_collections.ConfigDict, setting: Dict[str, Any],
               split: str) -> ml_collections.ConfigDict:
  """The config of one setting on a split, validated (errors name the setting)."""
  out = sweep_grid.apply(config, {**setting, "split": split})
  try:
    gmn_config.validate(out)
  except ConfigError as error:
    if not setting:
      raise
    raise ConfigError(f"--sweep: {sweep_grid.label(setting)}: {error}") from None
  return out


def _stage1_part(setting: Dict[str, Any]) -> Dict[str, Any]:
  return {f: v for f, v in setting.items() if not f.startswith(workdirs.STAGE2_PREFIX)}


def _stage2_part(setting: Dict[str, Any]) -> Dict[str, Any]:
  return {f: v for f, v in setting.items() if f.startswith(workdirs.STAGE2_PREFIX)}


def run_grid(config: ml_collections.ConfigDict, grid: sweep_grid.Grid, directory: str, *,
             split: str, runs_per_program: Optional[int] = None,
             mesh: Optional[jax.sharding.Mesh] = None) -> List[Dict[str, Any]]:
  """Trains and evaluates every combination of grid on one split.

  Args:
    config: the base configuration.
    grid: {field: [values]} (`sweep_grid.parse_grid`).
    directory: where the runs live (see the module's layout).
    split: "validation" or "test".
    runs_per_program: the most runs (setting x seed) in one stage-1 program;
      None: num_parallel_seeds seeds of every setting that shares the program.
    mesh: a ('data',) mesh for data-parallel stage 1, or None.

  Returns:
    One results.json dict per combination, in grid order, each with its
    "setting" ({field: value}), "dir" and "split".

  Raises:
    ConfigError: a combination's config is invalid (before anything runs),
      or a directory holds another config's run.
    preemption.Interrupted: a stop signal arrived; rerun to resume.
  """
  combos = sweep_grid.combinations(grid)
  configs = [_validated(config, combo, split) for combo in combos]
  seeds = [int(s) for s in config.seeds]

  # Stage-1 settings, in grid order, each with its evaluations.
  stage1, combo_dirs = {}, []
  for combo, combo_config in zip(combos, configs):
    part = _stage1_part(combo)
    name = sweep_grid.directory_name(part)
    if name not in stage1:
      stage1[name] = {"setting": part, "config": _validated(config, part, split),
                      "dir": os.path.join(directory, name), "evaluations": []}
    stage2_dir = os.path.join(stage1[name]["dir"], sweep_grid.directory_name(_stage2_part(combo)))
    stage1[name]["evaluations"].append((combo_config, stage2_dir))
    combo_dirs.append((name, stage2_dir))

  # Programs: settings with equal data, specs and schedules train together.
  datasets, programs = {}, []
  for entry in stage1.values():
    s1_config = entry["config"]
    # config.json of each stage-1 directory: a rerun with other settings is refused.
    workdirs.prepare(s1_config, entry["dir"])
    data_key = (s1_config.data_dir, s1_config.embedding, s1_config.feature_norm)
    if data_key not in datasets:
      datasets[data_key] = train.load_dataset(s1_config)
    entry["dataset"] = datasets[data_key]
    entry["program"] = train.stage1_program(s1_config, entry["dataset"])
    key = (data_key, entry["program"].spec, entry["program"].schedule,
           gmn_config.get_variant(s1_config).uses_generator)
    for program_key, members in programs:
      if program_key == key:
        members.append(entry)
        break
    else:
      programs.append((key, [entry]))

  finished = {}  # (stage-2 dir, seed) -> result dict
  for index, (_, members) in enumerate(programs):
    runs = []
    group_seeds = config.num_parallel_seeds
    for first in range(0, len(seeds), group_seeds):
      for entry in members:
        for seed in seeds[first:first + group_seeds]:
          evaluations = _pending(entry, seed, finished)
          if evaluations:
            runs.append(train.Run(seed=seed, hyper=entry["program"].hyper, workdir=entry["dir"],
                                  evaluations=tuple(evaluations),
                                  setting=sweep_grid.label(entry["setting"])))
    logging.info("sweep on the %s split: stage-1 program %d of %d, %d setting(s) x %d seed(s), "
                 "%d run(s) to train or evaluate", split, index + 1, len(programs),
                 len(members), len(seeds), len(runs))
    # Runs resume together only from a checkpoint step they all keep: runs at
    # different steps (a grid extended after some runs finished stage 1)
    # train in separate groups, so finished ones are restored, not retrained.
    by_step = {}
    for run in runs:
      by_step.setdefault(_latest_step(run), []).append(run)
    for _, step_runs in sorted(by_step.items(), reverse=True):
      done = train.train_runs(step_runs, members[0]["program"], members[0]["dataset"],
                              runs_per_program=runs_per_program or group_seeds * len(members),
                              mesh=mesh)
      for run, run_results in zip(step_runs, done):
        for evaluation, result in zip(run.evaluations, run_results):
          finished[(evaluation.workdir, run.seed)] = result

  # Summaries, one per combination.
  summaries = []
  for combo, combo_config, (name, stage2_dir) in zip(combos, configs, combo_dirs):
    entry = stage1[name]
    ordered = [finished[(stage2_dir, seed)] for seed in seeds]
    summary = results.summarize(combo_config, ordered, entry["dataset"])
    summary["provenance"] = provenance.describe()
    workdirs.write_summary(stage2_dir, ordered, summary)
    summaries.append({**summary, "setting": combo, "dir": stage2_dir, "split": split})
  return summaries


def _latest_step(run: train.Run) -> int:
  """The newest checkpoint step of a run (0 when it has none)."""
  with checkpoint.Checkpointer(workdirs.checkpoint_dir(run.workdir, run.seed)) as checkpointer:
    return checkpointer.latest_step() or 0


def _pending(entry: Dict[str, Any], seed: int, finished: Dict) -> List[train.Evaluation]:
  """A stage-1 setting's evaluations of one seed that must run; reads the others."""
  pending = []
  for combo_config, stage2_dir in entry["evaluations"]:
    stage2 = workdirs.stage2_fingerprint(config_utils.config_fingerprint(combo_config))
    result, _ = workdirs.read_finished(stage2_dir, seed, stage2)
    if result is not None:
      finished[(stage2_dir, seed)] = result
      continue
    pending.append(train.Evaluation(specs.eval_spec(combo_config), stage2_dir, stage2))
  return pending


def choose(summaries: Sequence[Dict[str, Any]], metric: str, *,
           oracle: bool = False) -> Dict[str, Any]:
  """The best setting by the metric's mean over seeds, with its ties and close rivals.

  Args:
    summaries: the combinations' results (`run_grid`), measured on the
      validation split.
    metric: a name of `SELECTION_METRICS`.
    oracle: allow results of the test split (the oracle's best, reported as
      such, never used as a choice).

  Returns:
    {"index", "setting", "mean", "std", "ties": [indices equal at two
    decimals, the chosen first], "within_one_std": [indices of the others
    whose mean is within the chosen one's std]}. The first best in grid
    order is chosen.

  Raises:
    ConfigError: for results of another split than validation (unless
      `oracle`): a choice made on test would bias the numbers reported.
  """
  wrong = [s["split"] for s in summaries if s.get("split", "validation") != "validation"]
  if wrong and not oracle:
    raise ConfigError(f"sweep choice: expected results of the validation split, found split "
                      f"{wrong[0]!r} (choosing on test biases what is reported)")
  means = np.array([s["metrics"][metric]["mean"] for s in summaries])
  best = int(np.argmax(np.round(means, 2)))  # the first of the ties
  mean, std = float(means[best]), float(summaries[best]["metrics"][metric]["std"])
  ties = [i for i, m in enumerate(means) if round(float(m), 2) == round(mean, 2)]
  close = [i for i, m in enumerate(means) if i not in ties and m >= mean - std]
  return {"index": best, "setting": summaries[best]["setting"], "mean": mean, "std": std,
          "ties": ties, "within_one_std": close}


def _remove_outputs(workdir: str) -> None:
  """Deletes what a sweep writes in workdir (and nothing else)."""
  plot = os.path.join(plotting.PLOTS_DIR, sweep_report.PLOT_FILE)
  for name in (VALIDATION_DIR, TEST_DIR, ORACLE_DIR, sweep_report.JSON_FILE,
               sweep_report.MARKDOWN_FILE, plot):
    target = os.path.join(workdir, name)
    if os.path.isdir(target):
      shutil.rmtree(target)
    elif os.path.isfile(target):
      os.remove(target)


def sweep(config: ml_collections.ConfigDict, grid: sweep_grid.Grid, workdir, *,
          metric: str = "gzsl_h", oracle: bool = False,
          runs_per_program: Optional[int] = None, overwrite: bool = False,
          command: str = "", mesh: Optional[jax.sharding.Mesh] = None) -> Dict[str, Any]:
  """Chooses a setting on the validation split and measures it on the test split.

  Args:
    config: the base configuration (its split is ignored: the sweep uses
      validation, then test).
    grid: {field: [values]} (`sweep_grid.parse_grid`).
    workdir: the sweep's directory; rerunning resumes.
    metric: what is maximised, one of `SELECTION_METRICS`.
    oracle: also run the grid on the test split and report its best (an
      oracle, the field's usual but dishonest protocol).
    runs_per_program: see `run_grid`.
    overwrite: delete the sweep's outputs in workdir and start afresh.
    command: the command line, recorded in sweep.md.
    mesh: a ('data',) mesh for data-parallel stage 1, or None.

  Returns:
    The sweep.json dict (`sweep_report.summary`).

  Raises:
    ConfigError: a bad metric, grid or config (before anything trains).
    preemption.Interrupted: a stop signal arrived; rerun to resume.
  """
  workdir = os.fspath(workdir)
  if metric not in SELECTION_METRICS:
    raise ConfigError(f"--metric: expected one of {', '.join(SELECTION_METRICS)}, "
                      f"found {metric!r}")
  if not grid:
    raise ConfigError("--sweep: expected at least one field to sweep, found none")
  for split in ("validation", "test"):  # every combination, before anything trains
    for combo in sweep_grid.combinations(grid):
      _validated(config, combo, split)
  os.makedirs(workdir, exist_ok=True)
  with workdirs.lock(workdir):
    if overwrite:
      _remove_outputs(workdir)
    for line in sweep_grid.describe(grid).splitlines():
      logging.info("sweep: %s", line)
    validation = run_grid(config, grid, os.path.join(workdir, VALIDATION_DIR),
                          split="validation", runs_per_program=runs_per_program, mesh=mesh)
    chosen = choose(validation, metric)
    logging.info("sweep: chose %s (validation %s %.2f ± %.2f)",
                 sweep_grid.label(chosen["setting"]) or "the base config", metric,
                 chosen["mean"], chosen["std"])
    test = train.train_and_evaluate(
        _validated(config, chosen["setting"], "test"),
        os.path.join(workdir, TEST_DIR, sweep_grid.directory_name(chosen["setting"])), mesh=mesh)
    on_test = oracle_best = None
    if oracle:
      on_test = run_grid(config, grid, os.path.join(workdir, ORACLE_DIR), split="test",
                         runs_per_program=runs_per_program, mesh=mesh)
      oracle_best = choose(on_test, metric, oracle=True)
    out = sweep_report.summary(grid, metric, validation, chosen, test,
                               None if on_test is None else (on_test, oracle_best),
                               command=command)
    sweep_report.write(workdir, out)
  return out

