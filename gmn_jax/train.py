"""Train and evaluate one configuration: `train_and_evaluate(config, workdir)`.

For every generator seed in `config.seeds`:

1. Stage 1 (skipped by `real_only`): the fused jitted step
   (`train_step`) runs `iterations_per_call` generator iterations per host
   call; orbax checkpoints every `checkpoint_every` iterations and at the end
   (`workdir/checkpoints/seed_<s>`); per-iteration scalars are averaged over
   `log_every` windows into `workdir/seed_<s>/metrics.jsonl` and TensorBoard;
   a non-finite value stops the run with `NonFiniteLossError` before anything
   non-finite is saved.
2. Stage 2: `evaluate.evaluate_generator` (synthesise, pool with real seen
   features, train `eval.num_classifier_seeds` final classifiers); the seed's
   metrics are the mean over classifier seeds of the last epoch, saved
   atomically to `workdir/seed_<s>/result.json`, so a rerun skips the seed.
   Seeds whose stage 1 ran together (`num_parallel_seeds` > 1) are evaluated
   together too (`evaluate.evaluate_generators`: all their final classifiers
   in one program), with the same per-seed results and files.

Then `workdir/results.json` holds mean, std (over generator seeds, ddof 0)
and per-seed values of every metric, in percent. Rerunning the same command
resumes: finished seeds are read back, an unfinished one restarts from its
latest checkpoint, and the result equals an uninterrupted run's bit for bit
(every iteration draws its randomness from `fold_in(key, iteration)` and the
host calls cover the same iterations either way).

Workdir layout:
  config.json               the effective config (a rerun must match it)
  results.json              the summary across seeds
  metrics.jsonl, tensorboard/   one line / point per finished seed
  seed_<s>/metrics.jsonl, seed_<s>/tensorboard/   stage 1 scalars
  seed_<s>/eval/metrics.jsonl, .../tensorboard/   stage 2 curves per epoch
  seed_<s>/result.json      the seed's final metrics
  checkpoints/seed_<s>/     orbax checkpoints of stage 1
"""

import functools
import os
import re
import shutil
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gmn_jax import checkpoint
from gmn_jax import config as gmn_config
from gmn_jax import config_utils
from gmn_jax import errors
from gmn_jax import evaluate
from gmn_jax import metric_writers
from gmn_jax import metrics as gmn_metrics
from gmn_jax import models
from gmn_jax import parallel
from gmn_jax import preemption
from gmn_jax import progress
from gmn_jax import train_state
from gmn_jax import train_step
from gmn_jax.data import registry
from gmn_jax.data.dataset import ZSLDataset

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
SEED_RESULT_FILE = "result.json"
CHECKPOINT_DIR = "checkpoints"
METRIC_NAMES = gmn_metrics.METRIC_NAMES  # zsl_t1, gzsl_u, gzsl_s, gzsl_h
METRIC_LABELS = {"zsl_t1": "ZSL T1", "gzsl_u": "GZSL u", "gzsl_s": "GZSL s",
                 "gzsl_h": "GZSL H"}
# Calibrated stacking (docs/evaluation.md): AUSUC, the test-split oracle's
# best H, and (with a gamma chosen on a validation split) the honest H.
CALIBRATION_METRIC_NAMES = evaluate.ORACLE_CALIBRATION_NAMES + evaluate.CALIBRATION_NAMES
CALIBRATION_LABELS = {"ausuc": "AUSUC", "oracle_calibrated_gzsl_h": "H cal.*",
                      "calibrated_gzsl_h": "H cal."}
SAMPLES_FILE = "samples.npz"
# samples.npz: real and generated features of a few unseen classes (plots).
SAMPLE_CLASSES, SAMPLES_PER_CLASS = 5, 200
CURVE_POINTS = 101  # points per seen-unseen curve kept in results.json
# Fields that only change how a run reports, never what it computes: a rerun
# may change them and still resume.
# Fields a run may change between a stop and its resume: logging, and how GM
# is computed (both implementations compute the same loss; workdirs written
# before gm.implementation existed resume with the default).
RESUME_SAFE_FIELDS = ("train.log_every", "gm.implementation")

# Sub-keys of a seed's PRNG key (fold_in constants), one per consumer.
_INIT_STREAM, _TRAIN_STREAM, _EVAL_STREAM = 0, 1, 2


class NonFiniteLossError(errors.GMNError):
  """A training scalar became NaN or infinite; the run stopped."""


def _seed_dir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f"seed_{seed}")


def _seed_keys(seed: int):
  base = jax.random.key(seed)
  return tuple(jax.random.fold_in(base, s) for s in (_INIT_STREAM, _TRAIN_STREAM, _EVAL_STREAM))


# --------------------------------------------------------------------------
# Workdir and config.


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str, *,
                    overwrite: bool = False) -> None:
  """Creates the workdir, or checks that it was made with the same config.

  Args:
    config: the effective config.
    workdir: the run's directory.
    overwrite: delete this project's outputs in `workdir` (checkpoints,
      results, metrics) and start afresh instead of resuming.

  Raises:
    ConfigError: when `workdir/config.json` exists with different fields and
      `overwrite` is False; the message lists every differing field.
    DataError: when `workdir` exists and is not a directory.
  """
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.DataError(workdir, None, "a directory (the workdir)", "a file")
  if overwrite and parallel.is_primary():
    _remove_outputs(workdir)
  # In a multi-host run the others check config.json only after process 0 has
  # removed the old outputs.
  parallel.sync_processes("gmn_prepare_workdir")
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, CONFIG_FILE)
  fingerprint = config_utils.config_fingerprint(config)
  if os.path.isfile(path):
    stored = metric_writers.read_json(path)
    differences = config_utils.diff_configs(stored, fingerprint, ignore=RESUME_SAFE_FIELDS)
    if differences:
      raise errors.ConfigError(
          f"{path}: this workdir was written with a different config (differing fields: "
          f"{'; '.join(differences)}); use the same config to resume, --overwrite to start "
          "afresh, or another --workdir")
  if parallel.is_primary():
    metric_writers.write_json_atomic(path, fingerprint)


def _remove_outputs(workdir: str) -> None:
  """Deletes what `train_and_evaluate` writes (and nothing else)."""
  if not os.path.isdir(workdir):
    return
  for name in os.listdir(workdir):
    target = os.path.join(workdir, name)
    ours = (name in (CONFIG_FILE, RESULTS_FILE, CHECKPOINT_DIR, metric_writers.METRICS_FILE,
                     metric_writers.TENSORBOARD_DIR) or name.startswith("seed_"))
    if not ours:
      continue
    if os.path.isdir(target):
      shutil.rmtree(target)
    else:
      os.remove(target)


def load_dataset(config: ml_collections.ConfigDict) -> ZSLDataset:
  """Loads the dataset a config names.

  Args:
    config: the full configuration.

  Returns:
    The `ZSLDataset` (split, embedding and feature normalisation from config).
  """
  return registry.load_dataset(config.data_dir, split=config.split, embedding=config.embedding,
                               feature_norm=config.feature_norm)


# --------------------------------------------------------------------------
# Stage 1.


def chunk_lengths(start: int, num_iterations: int, iterations_per_call: int,
                  checkpoint_every: int) -> List[int]:
  """Iterations per host call from `start` on; calls end at every checkpoint.

  Args:
    start: iterations already done.
    num_iterations: the total.
    iterations_per_call: the most iterations per call.
    checkpoint_every: the checkpoint period.

  Returns:
    The lengths of the remaining calls, in order. A resumed run (start at a
    checkpoint) gets the same calls as the tail of an uninterrupted run.
  """
  lengths, it = [], start
  while it < num_iterations:
    next_checkpoint = min((it // checkpoint_every + 1) * checkpoint_every, num_iterations)
    length = min(iterations_per_call, next_checkpoint - it)
    lengths.append(length)
    it += length
  return lengths


def _first_non_finite(chunk_metrics: Dict[str, np.ndarray]):
  """(row, name, value) of the first non-finite scalar, or None."""
  first = None
  for name in sorted(chunk_metrics):
    values = chunk_metrics[name]
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size and (first is None or bad[0] < first[0]):
      first = (int(bad[0]), name, float(values[bad[0]]))
  return first


@jax.jit
def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def _log_rows(chunk_metrics: Dict[str, np.ndarray], first_iteration: int, log_every: int):
  """(step, window means) at every multiple of log_every inside a chunk.

  Row i of the chunk is iteration first_iteration + i (0-based), after which
  first_iteration + i + 1 iterations are done; that count is the step. Each
  logged value is the mean over the iterations since the previous log step
  (or the chunk's start).
  """
  length = len(next(iter(chunk_metrics.values())))
  rows, window_start = [], 0
  for i in range(length):
    step = first_iteration + i + 1
    if step % log_every == 0:
      rows.append((step, {name: float(np.mean(values[window_start:i + 1]))
                          for name, values in chunk_metrics.items()}))
      window_start = i + 1
  return rows


def train_generator(spec: train_state.TrainSpec, data: train_state.TrainData,
                    hyper: train_state.Hyperparameters, *, seed: int,
                    num_iterations: int, iterations_per_call: int, checkpoint_every: int,
                    log_every: int, checkpoint_dir: str, metrics_dir: Optional[str] = None,
                    ) -> Dict[str, Any]:
  """Stage 1 for one generator seed, resuming from its latest checkpoint.

  Args:
    spec: the run's settings.
    data: the training data (numpy or device arrays).
    hyper: the numeric settings.
    seed: the generator seed (init and per-iteration randomness).
    num_iterations: total generator iterations.
    iterations_per_call: iterations per jitted call.
    checkpoint_every: checkpoint period in iterations (and at the end).
    log_every: metrics window in iterations.
    checkpoint_dir: this seed's orbax directory.
    metrics_dir: where metrics.jsonl / tensorboard go (None: no metrics).

  Returns:
    {"state": the final TrainState, "start_iteration": where this call
    started, "seconds": wall time, "ms_per_iteration": median over the calls
    after the first (which includes compilation), "first_call_s"}.

  Raises:
    NonFiniteLossError: when a scalar of an iteration is NaN or infinite; the
      checkpoints hold the last finite state.
  """
  init_key, train_key, _ = _seed_keys(seed)
  data = jax.device_put(data)
  template = train_state.init_train_state(init_key, spec, data)
  # Restored arrays come back committed to their device; committing the fresh
  # state too lets a resumed run reuse the compiled chunk instead of
  # compiling it again for a different placement.
  template = jax.tree.map(lambda x: jax.device_put(x, x.sharding), template)
  started = time.perf_counter()
  timings = []
  with checkpoint.Checkpointer(checkpoint_dir, max_to_keep=2) as checkpointer:
    start = checkpointer.latest_step()
    if start is None:
      state, start = template, 0
    else:
      state, _ = checkpointer.restore(template)
      if int(state.iteration) != start:
        raise errors.DataError(checkpoint_dir, f"{start}/iteration", f"iteration {start}",
                               int(state.iteration))
      logging.info("seed %d: resuming stage 1 from iteration %d", seed, start)
    writer = (metric_writers.MetricWriter(metrics_dir, resume_step=start)
              if metrics_dir is not None else None)
    logger = progress.ProgressLogger(num_iterations, log_every=log_every, initial_step=start)
    try:
      it = start
      for length in chunk_lengths(start, num_iterations, iterations_per_call, checkpoint_every):
        chunk = train_step.jitted_chunk_fn(spec, length)
        call_started = time.perf_counter()
        state, chunk_metrics = chunk(state, data, hyper, train_key)
        chunk_metrics = {k: np.asarray(v) for k, v in jax.device_get(chunk_metrics).items()}
        elapsed = time.perf_counter() - call_started
        timings.append((length, elapsed))
        bad = _first_non_finite(chunk_metrics)
        if bad is None and not bool(_all_finite(state)):
          bad = (length - 1, "parameters", float("nan"))
        if bad is not None:
          row, name, value = bad
          latest = checkpointer.latest_step()
          kept = ("no checkpoint was written yet" if latest is None else
                  f"keeping the last finite checkpoint (iteration {latest}) in "
                  f"{checkpoint_dir}")
          raise NonFiniteLossError(
              f"seed {seed}: {name} became {value} at generator iteration {it + row + 1} of "
              f"{num_iterations}; the run stopped, {kept}. Lower the learning rates or the "
              "loss weights.")
        if writer is not None:
          for step, row in _log_rows(chunk_metrics, it, log_every):
            writer.write_scalars(step, {**{f"train/{k}": v for k, v in row.items()},
                                        "steps_per_sec": length / elapsed})
        it += length
        logger.update(it, {k: float(v[-1]) for k, v in chunk_metrics.items()})
        if it % checkpoint_every == 0 or it == num_iterations:
          checkpointer.save(it, state, extra={"seed": seed, "iteration": it})
        if it < num_iterations and preemption.should_stop():
          # A no-op when this chunk already ended at a periodic checkpoint.
          checkpointer.save(it, state, extra={"seed": seed, "iteration": it})
          checkpointer.wait()
          raise preemption.Interrupted(
              preemption.requested_signal(),
              f"at generator iteration {it} of {num_iterations} (seed {seed}), after "
              f"saving a checkpoint in {checkpoint_dir}")
      checkpointer.wait()
    finally:
      logger.close()
      if writer is not None:
        writer.close()
  steady = [1000.0 * s / n for n, s in timings[1:]] or [1000.0 * s / n for n, s in timings]
  return {"state": state, "start_iteration": start,
          "seconds": time.perf_counter() - started,
          "ms_per_iteration": float(np.median(steady)) if steady else None,
          "first_call_s": timings[0][1] if timings else None}


# --------------------------------------------------------------------------
# One seed, both stages.


def _seed_result_path(workdir: str, seed: int) -> str:
  return os.path.join(_seed_dir(workdir, seed), SEED_RESULT_FILE)


def write_samples(path: str, sample_fn, dataset: ZSLDataset, key, *,
                  num_classes: int = SAMPLE_CLASSES,
                  per_class: int = SAMPLES_PER_CLASS) -> None:
  """Saves real and generated features of a few unseen classes (for plots).

  The classes are `num_classes` unseen ones evenly spread over their ids;
  each gets up to `per_class` real test_unseen features and as many
  generated ones. Written atomically (temporary file, then rename).

  Args:
    path: the .npz file.
    sample_fn: the generator, as for `evaluate.synthesize`.
    dataset: the dataset.
    key: PRNG key of the generated features.
    num_classes: how many unseen classes.
    per_class: the most features per class and kind.
  """
  unseen = np.asarray(dataset.unseen_classes)
  picked = unseen[np.unique(np.linspace(0, unseen.size - 1, min(num_classes, unseen.size))
                            .round().astype(int))]
  labels = np.asarray(dataset.test_unseen_labels)
  rows = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in picked])
  counts = np.array([np.sum(labels[rows] == c) for c in picked], np.int64)
  fake, fake_labels = evaluate.synthesize(sample_fn, key, picked.astype(np.int32),
                                          dataset.class_embeddings, counts)
  names = [dataset.class_names[c] if dataset.class_names is not None else str(c)
           for c in picked]
  tmp = f"{path}.tmp.npz"
  np.savez(tmp, class_ids=picked.astype(np.int32), class_names=np.asarray(names, dtype=str),
           real_features=np.asarray(dataset.test_unseen_features)[rows],
           real_labels=labels[rows].astype(np.int32),
           generated_features=np.asarray(fake), generated_labels=np.asarray(fake_labels))
  os.replace(tmp, path)


def _stop_if_requested(where: str) -> None:
  """Raises `preemption.Interrupted` when a stop signal arrived."""
  if preemption.should_stop():
    raise preemption.Interrupted(preemption.requested_signal(), where)


def run_seed(config: ml_collections.ConfigDict, dataset: ZSLDataset, seed: int,
             workdir: str, *, calibration_gamma: Optional[float] = None,
             stage1: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Both stages for one generator seed; returns (and saves) its result.

  Args:
    config: the validated configuration.
    dataset: the loaded dataset.
    seed: the generator seed.
    workdir: the run's directory.
    calibration_gamma: a calibrated-stacking gamma chosen on a validation
      split, or None (see `evaluate.evaluate_generator`).
    stage1: this seed's stage-1 result when it was trained already (with
      other seeds or over a mesh, `parallel_train.train_generators`); None
      trains it here.

  Returns:
    {"seed", "metrics": {name: mean over classifier seeds of the last epoch},
    "classifier_seeds": {name: [per classifier seed]}, "curves": {name: [mean
    over classifier seeds per epoch]}, "seen_unseen_curves": [{"unseen",
    "seen"} per classifier seed, at most CURVE_POINTS points], "timings": {...}}.

  Raises:
    preemption.Interrupted: on a stop signal (after a checkpoint).
  """
  variant = gmn_config.get_variant(config)
  _, _, eval_key = _seed_keys(seed)
  timings = {}
  sample_fn = None
  if variant.uses_generator and stage1 is None:
    spec = train_state.make_train_spec(config, dataset)
    data = train_state.make_train_data(dataset, spec)
    stage1 = train_generator(
        spec, data, train_state.make_hyperparameters(config), seed=seed,
        num_iterations=config.train.num_iterations,
        iterations_per_call=config.train.iterations_per_call,
        checkpoint_every=config.train.checkpoint_every, log_every=config.train.log_every,
        checkpoint_dir=os.path.join(workdir, CHECKPOINT_DIR, f"seed_{seed}"),
        metrics_dir=_seed_dir(workdir, seed))
  if variant.uses_generator:
    timings.update(_stage1_timings(stage1))
    sample_fn = _sample_fn(stage1)
    _stop_if_requested(f"after stage 1 of seed {seed} (its final checkpoint is saved)")
  started = time.perf_counter()
  result = evaluate.evaluate_generator(sample_fn, dataset, config.eval, eval_key,
                                       calibration_gamma=calibration_gamma)
  timings["stage2_s"] = time.perf_counter() - started
  return _save_seed_result(workdir, dataset, seed, result, sample_fn, timings)


def run_seed_group(config: ml_collections.ConfigDict, dataset: ZSLDataset,
                   seeds: Sequence[int], stage1: Dict[int, Dict[str, Any]], workdir: str, *,
                   calibration_gamma: Optional[float] = None) -> List[Dict[str, Any]]:
  """Stage 2 of generator seeds trained together; returns (and saves) their results.

  The final classifiers of all the seeds train in one program
  (`evaluate.evaluate_generators`); each seed's result and files equal what
  `run_seed` gives and writes for it alone, to float tolerance. Each seed's
  `timings.stage2_s` is the group's stage-2 wall time divided by the group
  size (its share, as for stage 1); `timings.parallel_seeds` is the size.

  Args:
    config: the validated configuration (a variant with a generator).
    dataset: the loaded dataset.
    seeds: the generator seeds of the group.
    stage1: {seed: its stage-1 result} from `parallel_train.train_generators`.
    workdir: the run's directory.
    calibration_gamma: a calibrated-stacking gamma chosen on a validation
      split, or None.

  Returns:
    One `run_seed` result per seed, in the order of `seeds`.

  Raises:
    preemption.Interrupted: on a stop signal after stage 1 (whose final
      checkpoints are saved).
  """
  seeds = [int(s) for s in seeds]
  _stop_if_requested(f"after stage 1 of seeds {seeds} (their final checkpoints are saved)")
  sample_fns = [_sample_fn(stage1[seed]) for seed in seeds]
  started = time.perf_counter()
  results = evaluate.evaluate_generators(
      sample_fns, dataset, config.eval, [_seed_keys(seed)[2] for seed in seeds],
      calibration_gamma=calibration_gamma)
  share = (time.perf_counter() - started) / len(seeds)
  return [
      _save_seed_result(workdir, dataset, seed, result, sample_fn,
                        {**_stage1_timings(stage1[seed]), "stage2_s": share})
      for seed, result, sample_fn in zip(seeds, results, sample_fns)
  ]


def _stage1_timings(stage1: Dict[str, Any]) -> Dict[str, Any]:
  timings = {"stage1_s": stage1["seconds"], "stage1_start_iteration": stage1["start_iteration"],
             "ms_per_iteration": stage1["ms_per_iteration"],
             "stage1_first_call_s": stage1["first_call_s"]}
  if "parallel_seeds" in stage1:  # trained by parallel_train: the group's size
    timings["parallel_seeds"] = stage1["parallel_seeds"]
  return timings


def _sample_fn(stage1: Dict[str, Any]):
  # A partial over arrays: the generator weights are arguments of the compiled
  # synthesis program, so every seed reuses it (evaluate.synthesize).
  return functools.partial(models.apply_generator, stage1["state"].generator)


def _save_seed_result(workdir: str, dataset: ZSLDataset, seed: int,
                      result: evaluate.FinalClassifierResult, sample_fn,
                      timings: Dict[str, Any]) -> Dict[str, Any]:
  """A seed's result dict, saved with its eval curves and samples (process 0 only)."""
  _, _, eval_key = _seed_keys(seed)
  names = METRIC_NAMES + tuple(n for n in CALIBRATION_METRIC_NAMES if n in result.last)
  curves = {name: np.mean(values, axis=0) for name, values in result.curves.items()}
  eval_dir = os.path.join(_seed_dir(workdir, seed), "eval")
  if parallel.is_primary():
    # resume_step=-1 empties the file first: a rerun after a crash rewrites it.
    with metric_writers.MetricWriter(eval_dir, resume_step=-1) as writer:
      for epoch in range(len(next(iter(curves.values())))):
        writer.write_scalars(epoch + 1, {f"eval/{k}": v[epoch] for k, v in curves.items()})
  seed_result = {
      "seed": seed,
      "metrics": {name: float(np.mean(result.last[name])) for name in names},
      "classifier_seeds": {name: [float(v) for v in result.last[name]] for name in names},
      "curves": {name: [float(v) for v in values] for name, values in curves.items()},
      "seen_unseen_curves": [
          dict(zip(("unseen", "seen"), ([float(v) for v in a]
                                        for a in curve.downsample(CURVE_POINTS))))
          for curve in result.seen_unseen_curves],
      "timings": timings,
  }
  if parallel.is_primary():
    os.makedirs(_seed_dir(workdir, seed), exist_ok=True)
    if sample_fn is not None:
      write_samples(os.path.join(_seed_dir(workdir, seed), SAMPLES_FILE), sample_fn, dataset,
                    jax.random.fold_in(eval_key, 1))
    metric_writers.write_json_atomic(_seed_result_path(workdir, seed), seed_result)
  return seed_result


# --------------------------------------------------------------------------
# All seeds.


def summarize(config: ml_collections.ConfigDict, seed_results: Sequence[Dict[str, Any]],
              dataset: Optional[ZSLDataset] = None) -> Dict[str, Any]:
  """The results.json dict from per-seed results.

  Args:
    config: the configuration.
    seed_results: one `run_seed` result per generator seed, in seed order.
    dataset: the dataset, for its sizes (optional).

  Returns:
    {"dataset", "method", "paper_row", "seeds", "metrics": {name: {"mean",
    "std", "per_seed"}} in percent (std over generator seeds, ddof 0),
    "per_seed", "timings", "config"}.
  """
  variant = gmn_config.get_variant(config)
  summary_metrics = {}
  # Calibration entries of seeds finished by an older version may be absent.
  names = METRIC_NAMES + tuple(n for n in CALIBRATION_METRIC_NAMES
                               if all(n in r["metrics"] for r in seed_results))
  for name in names:
    values = [r["metrics"][name] for r in seed_results]
    summary_metrics[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                             "per_seed": values}
  timings = {
      key: float(np.sum([r["timings"].get(key) or 0.0 for r in seed_results]))
      for key in ("stage1_s", "stage2_s")
  }
  ms = [r["timings"].get("ms_per_iteration") for r in seed_results]
  ms = [m for m in ms if m is not None]
  timings["ms_per_iteration"] = float(np.median(ms)) if ms else None
  out = {
      "dataset": config.dataset,
      "method": config.method,
      "paper_row": variant.paper_row,
      "seeds": [int(s) for s in config.seeds],
      "metrics": summary_metrics,
      "per_seed": list(seed_results),
      "timings": timings,
      "config": config_utils.config_fingerprint(config),
  }
  if dataset is not None:
    out["data"] = {"name": dataset.name, "num_train": int(dataset.train_features.shape[0]),
                   "feature_dim": dataset.feature_dim, "embedding_dim": dataset.embedding_dim,
                   "num_seen": int(dataset.seen_classes.size),
                   "num_unseen": int(dataset.unseen_classes.size)}
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir, *,
                       overwrite: bool = False,
                       dataset: Optional[ZSLDataset] = None,
                       calibration_gamma: Optional[float] = None,
                       mesh: Optional[jax.sharding.Mesh] = None) -> Dict[str, Any]:
  """Runs both stages for every seed of `config` and writes results.json.

  Seeds are trained `config.num_parallel_seeds` at a time in one vmapped
  program (`parallel_train.train_generators`), and such a group's final
  classifiers in one more (`run_seed_group`); results equal separate runs to
  float tolerance. With a mesh, stage 1 splits its batches over the mesh's
  devices; in a multi-host run every process calls this with the same
  arguments and a workdir all of them can read, and only process 0 writes
  files (the checkpointer is collective).

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
      split (see `calibration_gamma_from`); adds the honest calibrated
      u, s, H to the results. Finished seeds evaluated with another gamma
      (or none) are evaluated again; their stage 1 is not repeated.
    mesh: a ('data',) mesh from `parallel.make_mesh` for data-parallel (and
      multi-host) stage 1; None trains on the default device.

  Returns:
    The results.json dict (see `summarize`).

  Raises:
    ConfigError: invalid config, or a workdir made with another config.
    DataError: a missing or invalid dataset.
    NonFiniteLossError: training diverged.
    preemption.Interrupted: a stop signal arrived (a checkpoint is saved).
  """
  workdir = os.fspath(workdir)
  if dataset is None:
    gmn_config.validate(config)
    dataset = load_dataset(config)
  else:
    gmn_config.validate_fields(config)
  variant = gmn_config.get_variant(config)
  if config.eval.selection != "last":
    raise errors.ConfigError(
        f"config.eval.selection: expected 'last' (automatic selection on the validation "
        f"split is not implemented; run with --config.split=validation to compare settings), "
        f"found {config.eval.selection!r}")
  if variant.uses_generator:
    # Fail early on impossible settings.
    train_state.make_train_spec(config, dataset)
    train_state.make_hyperparameters(config)
  prepare_workdir(config, workdir, overwrite=overwrite)
  logging.info("%s on %s: %d seen / %d unseen classes, seeds %s, workdir %s", config.method,
               dataset.name, dataset.seen_classes.size, dataset.unseen_classes.size,
               list(config.seeds), workdir)
  seed_results = {}
  with preemption.StopOnSignal():
    pending = []
    for seed in config.seeds:
      path = _seed_result_path(workdir, seed)
      finished = metric_writers.read_json(path) if os.path.isfile(path) else None
      if finished is not None and _evaluated_with(finished, calibration_gamma):
        logging.info("seed %d: already finished, reading %s", seed, path)
        seed_results[seed] = finished
      else:
        if finished is not None:
          logging.info("seed %d: evaluated with calibration gamma %s, now %s: evaluating again "
                       "(stage 1 is restored from its final checkpoint)", seed,
                       finished["metrics"].get("calibration_gamma"), calibration_gamma)
        pending.append(int(seed))
    group_size = int(config.num_parallel_seeds)
    for first in range(0, len(pending), group_size):
      group = pending[first:first + group_size]
      _stop_if_requested(f"before seeds {group}")
      stage1 = _train_group(config, dataset, group, workdir, mesh)
      if len(group) > 1 and stage1:
        finished = run_seed_group(config, dataset, group, stage1, workdir,
                                  calibration_gamma=calibration_gamma)
      else:  # One seed, or real_only: each seed on its own, as it finishes.
        finished = (run_seed(config, dataset, seed, workdir, calibration_gamma=calibration_gamma,
                             stage1=stage1.get(seed)) for seed in group)
      for seed, result in zip(group, finished):
        seed_results[seed] = result
        logging.info("seed %d: %s", seed, ", ".join(
            f"{k}={v:.2f}" for k, v in result["metrics"].items()))
  seed_results = [seed_results[seed] for seed in config.seeds]
  summary = summarize(config, seed_results, dataset)
  if parallel.is_primary():
    # One line per seed; rewritten whole (resume_step=-1) so reruns never duplicate.
    with metric_writers.MetricWriter(workdir, resume_step=-1) as writer:
      for index, result in enumerate(seed_results):
        writer.write_scalars(index, {"seed": result["seed"],
                                     **{f"final/{k}": v for k, v in result["metrics"].items()}})
    metric_writers.write_json_atomic(os.path.join(workdir, RESULTS_FILE), summary)
  return summary


def _train_group(config: ml_collections.ConfigDict, dataset: ZSLDataset, seeds: List[int],
                 workdir: str, mesh: Optional[jax.sharding.Mesh]) -> Dict[int, Dict[str, Any]]:
  """Stage 1 of a group of seeds in one program; {} when run_seed should train.

  A single seed without a mesh (the default) is left to `run_seed`'s own
  `train_generator`; otherwise `parallel_train.train_generators` trains the
  group (vmapped over seeds, batches split over the mesh).
  """
  if not gmn_config.get_variant(config).uses_generator or (len(seeds) == 1 and mesh is None):
    return {}
  from gmn_jax import parallel_train  # pylint: disable=g-import-not-at-top  # (imports this module)
  spec = train_state.make_train_spec(config, dataset)
  results = parallel_train.train_generators(
      spec, train_state.make_train_data(dataset, spec), train_state.make_hyperparameters(config),
      seeds=seeds, num_iterations=config.train.num_iterations,
      iterations_per_call=config.train.iterations_per_call,
      checkpoint_every=config.train.checkpoint_every, log_every=config.train.log_every,
      checkpoint_dirs=[os.path.join(workdir, CHECKPOINT_DIR, f"seed_{s}") for s in seeds],
      metrics_dirs=[_seed_dir(workdir, s) for s in seeds], mesh=mesh)
  return dict(zip(seeds, results))


def _evaluated_with(seed_result: Dict[str, Any], gamma: Optional[float]) -> bool:
  """Whether a finished seed's stage 2 used this calibration gamma (or none)."""
  stored = seed_result["metrics"].get("calibration_gamma")
  if stored is None or gamma is None:
    return stored is None and gamma is None
  return stored == float(gamma)


def calibration_gamma_from(validation_workdir) -> float:
  """The calibrated-stacking gamma a validation-split run chose (honest on test).

  It is the mean over generator seeds of `oracle_calibration_gamma`, the
  gamma of best H on the validation split, which holds none of the test
  split's data.

  Args:
    validation_workdir: the workdir of a finished run with config.split =
      "validation".

  Returns:
    The gamma.

  Raises:
    DataError: when its results.json is missing or has no gamma.
    ConfigError: when that run was not on the validation split.
  """
  path = os.path.join(os.fspath(validation_workdir), RESULTS_FILE)
  if not os.path.isfile(path):
    raise errors.DataError(path, None, "the results.json of a finished validation-split run",
                           "no such file")
  results = metric_writers.read_json(path)
  split = results.get("config", {}).get("split")
  if split != "validation":
    raise errors.ConfigError(
        f"{path}: expected a run with config.split='validation' (choosing gamma on the test "
        f"split is test-set selection), found split {split!r}")
  entry = results.get("metrics", {}).get("oracle_calibration_gamma")
  if not isinstance(entry, dict) or not isinstance(entry.get("mean"), (int, float)):
    raise errors.DataError(path, "metrics.oracle_calibration_gamma", "a mean gamma",
                           "none (written by an older version?)")
  return float(entry["mean"])


# --------------------------------------------------------------------------
# Reporting.


def command_line_error(error: Exception, argv: Sequence[str]) -> errors.ConfigError:
  """One clear line for a command-line error of absl / config_flags.

  config_flags reports an unknown `--config.<field>` as a KeyError holding
  only the last name ('wieght' and a suggestion); this names the whole flag
  and the field suggested, like `validate_config` does.

  Args:
    error: what parsing the flags raised.
    argv: the command line.

  Returns:
    The ConfigError to print.
  """
  if error.args and isinstance(error.args[0], KeyError):
    error = error.args[0]  # config_flags wraps it in an AttributeError.
  raw = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  text = " ".join(str(raw).split())
  unknown = re.fullmatch(r"Unknown command line flag '(config\.[^']+)'", text)
  if unknown:
    return errors.ConfigError(f"--{unknown.group(1)}: {unknown.group(1)} is not a known field")
  if isinstance(error, KeyError):
    missing = str(raw).splitlines()[0].strip("'\"") if str(raw) else ""
    suggestion = re.search(r'Did you mean "([^"]+)"', str(raw))
    for arg in argv:
      if not arg.startswith("--config."):
        continue
      path = arg[len("--config."):].split("=", 1)[0]
      parts = path.split(".")
      if missing in parts:
        prefix = parts[:parts.index(missing)]
        message = f"--config.{path}: config.{'.'.join(prefix + [missing])} is not a known field"
        if suggestion:
          message += f" (did you mean config.{'.'.join(prefix + [suggestion.group(1)])}?)"
        return errors.ConfigError(message)
  return errors.ConfigError(f"command line: {text}")


def quiet_checkpoint_logs() -> None:
  """Hides orbax's INFO lines (several per checkpoint) from the absl log.

  Binaries call this; warnings and errors still show.
  """
  import logging as python_logging  # pylint: disable=g-import-not-at-top
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= python_logging.WARNING
      or f"{os.sep}orbax{os.sep}" not in record.pathname)


def format_mean_std(entry: Dict[str, Any]) -> str:
  """'55.31 ± 1.20' from a results.json metric entry.

  Args:
    entry: {"mean": float, "std": float, ...}.

  Returns:
    The text.
  """
  return f"{entry['mean']:.2f} ± {entry['std']:.2f}"


def format_results_table(results: Dict[str, Any]) -> str:
  """The table printed at the end of a run (one row per metric).

  Args:
    results: the results.json dict of `train.train_and_evaluate`.

  Returns:
    A multi-line text.
  """
  seeds = results["seeds"]
  lines = [f"{results['paper_row']} ({results['method']}) on {results['dataset']}, "
           f"{len(seeds)} generator seed{'s' if len(seeds) != 1 else ''} {tuple(seeds)}; "
           "accuracies in %, last epoch, mean ± std over seeds",
           f"{'metric':<8}  {'mean ± std':>14}  per seed"]
  labels = dict(METRIC_LABELS)
  labels.update({k: v for k, v in CALIBRATION_LABELS.items() if k in results["metrics"]})
  for name, label in labels.items():
    entry = results["metrics"][name]
    per_seed = " ".join(f"{v:.2f}" for v in entry["per_seed"])
    lines.append(f"{label:<8}  {format_mean_std(entry):>14}  {per_seed}")
  if "oracle_calibrated_gzsl_h" in results["metrics"]:
    lines.append("AUSUC: area under the seen-unseen curve of calibrated stacking; H cal.*: "
                 "its best H, gamma chosen on this split (an oracle)")
  if "calibrated_gzsl_h" in results["metrics"]:
    lines.append("H cal.: calibrated stacking with the gamma chosen on the validation split")
  return "\n".join(lines)
