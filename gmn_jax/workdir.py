"""A run's directory: its layout, the config it was made with, and what it holds.

Layout (`train.train_and_evaluate` writes it; only process 0 writes):
  config.json               the effective config (a rerun must match it)
  results.json              the summary across seeds
  metrics.jsonl, tensorboard/   one line / point per finished seed
  seed_<s>/metrics.jsonl, seed_<s>/tensorboard/   stage 1 scalars
  seed_<s>/eval/metrics.jsonl, .../tensorboard/   stage 2 curves per epoch
  seed_<s>/result.json      the seed's final metrics (a rerun skips the seed)
  seed_<s>/samples.npz      real and generated features of a few unseen classes
  checkpoints/seed_<s>/     orbax checkpoints of stage 1
  .lock                     held by the live run (`lock`): who runs here
"""

import contextlib
import datetime
import fcntl
import json
import os
import shlex
import shutil
import socket
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence

import ml_collections
import numpy as np

from gmn_jax import config as gmn_config
from gmn_jax import config_utils
from gmn_jax import errors
from gmn_jax import metric_writers
from gmn_jax import parallel
from gmn_jax import provenance
from gmn_jax import synthesis
from gmn_jax.data.dataset import ZSLDataset

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
SEED_RESULT_FILE = "result.json"
SAMPLES_FILE = "samples.npz"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"
# samples.npz: real and generated features of a few unseen classes (plots).
SAMPLE_CLASSES, SAMPLES_PER_CLASS = 5, 200
# Fields a run may change between a stop and its resume: logging, and how GM
# is computed (both implementations compute the same loss; workdirs written
# before gm.implementation existed resume with the default).
RESUME_SAFE_FIELDS = ("train.log_every", "gm.implementation")
# Fields that extend a run: which seeds, and how many train at once.
EXTENSION_FIELDS = ("seeds", "num_parallel_seeds")
# The stage-2 fields: a change re-evaluates finished seeds, stage 1 untouched.
STAGE2_PREFIX = "eval."
# Fields that no longer exist, with the one value that meant what the
# current code does: a workdir that stored it resumes.
RETIRED_FIELDS = {"eval.selection": "last"}


def seed_dir(workdir: str, seed: int) -> str:
  """The directory of one seed's metrics and results.

  Args:
    workdir: the run's directory.
    seed: the generator seed.

  Returns:
    `workdir/seed_<seed>`.
  """
  return os.path.join(workdir, f"seed_{seed}")


def checkpoint_dir(workdir: str, seed: int) -> str:
  """The orbax directory of one seed's stage-1 checkpoints.

  Args:
    workdir: the run's directory.
    seed: the generator seed.

  Returns:
    `workdir/checkpoints/seed_<seed>`.
  """
  return os.path.join(workdir, CHECKPOINT_DIR, f"seed_{seed}")


class WorkdirInUseError(errors.GMNError):
  """Another live process runs in this workdir."""


def _require_directory(workdir: str) -> None:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise errors.DataError(workdir, None, "a directory (the workdir)", "a file")


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds the workdir for one run; a second live run on it is refused.

  The run holds an exclusive `flock` on `workdir/.lock`, which the
  operating system releases when the process ends however it ends (kill -9
  included), so a lock left by a dead process never blocks a later launch.
  The file says who holds it, for the refusal's message. In a multi-host
  run only process 0 locks.

  Args:
    workdir: the run's directory (created when missing).

  Yields:
    Nothing; the lock is released on exit.

  Raises:
    WorkdirInUseError: when a live process holds the lock.
    DataError: when `workdir` is a file.
  """
  if not parallel.is_primary():
    yield
    return
  _require_directory(workdir)
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      raise WorkdirInUseError(f"{workdir}: in use by {_holder(path)}; wait for it to end, or "
                              "stop it, or use another --workdir") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({
        "pid": os.getpid(), "host": socket.gethostname(),
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": shlex.join(sys.argv)}).encode())
    yield
  finally:
    os.close(fd)  # releases the flock


def _holder(path: str) -> str:
  """'process 123 on host h (since ..., python -m ...)' from a lock file."""
  try:
    with open(path, encoding="utf-8") as f:
      who = json.load(f)
    return (f"process {who['pid']} on host {who['host']} (since {who['started']}: "
            f"{who['command']})")
  except (OSError, ValueError, KeyError):
    return "another process"


def stored_config(workdir: str) -> Optional[Dict[str, Any]]:
  """The config fingerprint a workdir's config.json holds, or None.

  Args:
    workdir: the run's directory.

  Returns:
    The flat {field: value} fingerprint (`config_utils.config_fingerprint`);
    workdirs written before config.json held provenance store it bare.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    return None
  stored = metric_writers.read_json(path)
  if isinstance(stored.get("config"), dict):
    return stored["config"]
  return stored


def stage2_fingerprint(fingerprint: Dict[str, Any], calibration_gamma=None) -> Dict[str, Any]:
  """What decides a seed's stage 2 given its generator: the eval fields and gamma.

  Args:
    fingerprint: a config fingerprint.
    calibration_gamma: the calibrated-stacking gamma given to the run, or None.

  Returns:
    {"eval.<field>": value, ..., "calibration_gamma": gamma}.
  """
  out = {k: v for k, v in fingerprint.items() if k.startswith(STAGE2_PREFIX)}
  out["calibration_gamma"] = None if calibration_gamma is None else float(calibration_gamma)
  return out


def stage1_differences(stored, fingerprint) -> List[str]:
  """The fields that keep a run of `fingerprint` from extending a workdir of `stored`.

  Args:
    stored: the config fingerprint a workdir was written with.
    fingerprint: the fingerprint of the config now given
      (`config_utils.config_fingerprint`).

  Returns:
    `config_utils.diff_configs` lines of every field that differs, except
    `RESUME_SAFE_FIELDS`, `EXTENSION_FIELDS` and eval.* (stage 2); empty
    when the run can reuse the workdir's generators.
  """
  return config_utils.diff_configs(
      stored, fingerprint, ignore=RESUME_SAFE_FIELDS + EXTENSION_FIELDS + (STAGE2_PREFIX[:-1],))


def prepare(config: ml_collections.ConfigDict, workdir: str, *,
            overwrite: bool = False) -> Optional[Dict[str, Any]]:
  """Creates the workdir, or checks that it holds a run this config extends.

  A workdir resumes when only these differ: the seeds (new ones are trained,
  finished ones kept, `results.json` summarises the config's seeds),
  `num_parallel_seeds`, the stage-2 fields `eval.*` (finished seeds are
  evaluated again from their final checkpoints), and `RESUME_SAFE_FIELDS`.
  Any other (stage-1) field that differs is refused. config.json is then
  rewritten with this config and this launch's provenance.

  Args:
    config: the effective config.
    workdir: the run's directory.
    overwrite: delete this project's outputs in `workdir` (checkpoints,
      results, metrics) and start afresh instead of resuming.

  Returns:
    The stored config's fingerprint when the workdir held one, else None.

  Raises:
    ConfigError: when `workdir/config.json` differs in a stage-1 field and
      `overwrite` is False; the message lists every differing field.
    DataError: when `workdir` exists and is not a directory.
  """
  _require_directory(workdir)
  if overwrite and parallel.is_primary():
    _remove_outputs(workdir)
  # In a multi-host run the others check config.json only after process 0 has
  # removed the old outputs.
  parallel.sync_processes("gmn_prepare_workdir")
  os.makedirs(workdir, exist_ok=True)
  fingerprint = config_utils.config_fingerprint(config)
  stored = stored_config(workdir)
  if stored is not None:
    stored = {field: value for field, value in stored.items()
              if RETIRED_FIELDS.get(field, object()) != value}
    # A field added to the schema after the workdir was written counts as its
    # default, which is chosen to mean what the code did before the field
    # existed (e.g. train.sampling="iid").
    defaults = config_utils.config_fingerprint(gmn_config.get_base_config())
    stored = {**{f: defaults[f] for f in fingerprint if f not in stored and f in defaults},
              **stored}
    differences = stage1_differences(stored, fingerprint)
    if differences:
      raise errors.ConfigError(
          f"{os.path.join(workdir, CONFIG_FILE)}: this workdir was written with other stage-1 "
          f"settings (differing fields: {'; '.join(differences)}); a run can only be "
          "extended with other seeds or eval.* fields: use the same config to resume, "
          "--overwrite to start afresh, or another --workdir")
  if parallel.is_primary():
    metric_writers.write_json_atomic(os.path.join(workdir, CONFIG_FILE),
                                     {"config": fingerprint, "provenance": provenance.describe()})
  return stored


def _remove_outputs(workdir: str) -> None:
  """Deletes what `train.train_and_evaluate` writes (and nothing else)."""
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


def read_seed_result(workdir: str, seed: int) -> Optional[Dict[str, Any]]:
  """A finished seed's result.json, or None when the seed has not finished.

  Args:
    workdir: the run's directory.
    seed: the generator seed.

  Returns:
    The dict `write_seed_outputs` saved, or None.
  """
  path = os.path.join(seed_dir(workdir, seed), SEED_RESULT_FILE)
  return metric_writers.read_json(path) if os.path.isfile(path) else None


def read_finished(workdir: str, seed: int, stage2: Dict[str, Any],
                  stored: Optional[Dict[str, Any]] = None):
  """A seed's result.json when it was evaluated with these stage-2 settings.

  Seeds finished by an earlier version did not record their stage-2
  fingerprint: theirs is the eval fields of the config.json they were written
  with (`stored`) and the calibration gamma in their metrics.

  Args:
    workdir: the directory of the seed's result.json.
    seed: the generator seed.
    stage2: the stage-2 fingerprint wanted (`stage2_fingerprint`).
    stored: the fingerprint of the workdir's earlier config.json, if any.

  Returns:
    (the result, or None when the seed has not finished or must be
    evaluated again; the differing stage-2 fields in the latter case, else
    an empty list).
  """
  result = read_seed_result(workdir, seed)
  if result is None:
    return None, []
  recorded = result["stage2"] if "stage2" in result else stage2_fingerprint(
      stored or {}, result["metrics"].get("calibration_gamma"))
  changed = config_utils.diff_configs(recorded, stage2)
  return (None if changed else result), changed


def write_samples(path: str, sample_fn: synthesis.SampleFn, params, dataset: ZSLDataset, key, *,
                  num_classes: int = SAMPLE_CLASSES,
                  per_class: int = SAMPLES_PER_CLASS) -> None:
  """Saves real and generated features of a few unseen classes (for plots).

  The classes are `num_classes` unseen ones evenly spread over their ids;
  each gets up to `per_class` real test_unseen features and as many
  generated ones. Written atomically (temporary file, then rename).

  Args:
    path: the .npz file.
    sample_fn: the generator's sample function (`synthesis.synthesize`).
    params: the generator's parameters.
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
  fake, fake_labels = synthesis.synthesize(sample_fn, params, key, picked.astype(np.int32),
                                           dataset.class_embeddings, counts)
  names = [dataset.class_names[c] if dataset.class_names is not None else str(c)
           for c in picked]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp.npz"
  np.savez(tmp, class_ids=picked.astype(np.int32), class_names=np.asarray(names, dtype=str),
           real_features=np.asarray(dataset.test_unseen_features)[rows],
           real_labels=labels[rows].astype(np.int32),
           generated_features=np.asarray(fake), generated_labels=np.asarray(fake_labels),
           num_unseen_classes=np.int64(unseen.size))
  os.replace(tmp, path)


def write_seed_outputs(workdir: str, seed_result: Dict[str, Any],
                       curves: Dict[str, np.ndarray]) -> None:
  """Writes a finished seed's stage-2 curves and result.json (process 0 only).

  result.json goes last, atomically: its presence marks the seed finished.

  Args:
    workdir: the run's directory.
    seed_result: the seed's result dict (`results.seed_result`).
    curves: {name: (epochs,) values} of the final classifiers, seed mean.
  """
  if not parallel.is_primary():
    return
  directory = seed_dir(workdir, seed_result["seed"])
  # resume_step=-1 empties the file first: a rerun after a crash rewrites it.
  with metric_writers.MetricWriter(os.path.join(directory, "eval"), resume_step=-1) as writer:
    for epoch in range(len(next(iter(curves.values())))):
      writer.write_scalars(epoch + 1, {f"eval/{k}": v[epoch] for k, v in curves.items()})
  metric_writers.write_json_atomic(os.path.join(directory, SEED_RESULT_FILE), seed_result)


def write_summary(workdir: str, seed_results: Sequence[Dict[str, Any]],
                  summary: Dict[str, Any]) -> None:
  """Writes metrics.jsonl (one line per seed) and results.json (process 0 only).

  Args:
    workdir: the run's directory.
    seed_results: the seeds' result dicts, in config order.
    summary: the results.json dict (`results.summarize`).
  """
  if not parallel.is_primary():
    return
  # Rewritten whole (resume_step=-1) so reruns never duplicate.
  with metric_writers.MetricWriter(workdir, resume_step=-1) as writer:
    for index, result in enumerate(seed_results):
      writer.write_scalars(index, {"seed": result["seed"],
                                   **{f"final/{k}": v for k, v in result["metrics"].items()}})
  metric_writers.write_json_atomic(os.path.join(workdir, RESULTS_FILE), summary)


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
