"""Every figure a run's workdir allows: `plot_workdir` (`python -m experiments.plot`).

It reads the files of `gmn_jax.workdir`'s layout and draws them with the
figure functions of `gmn_jax.plotting`; an ablation workdir (rows in
sub-directories) gets its bar chart and each row's figures.
"""

import glob
import os
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from gmn_jax import errors
from gmn_jax import metric_writers
from gmn_jax import plotting
from gmn_jax import sweep_report
from gmn_jax import workdir as workdirs


def _seed_dirs(workdir: str) -> List[Tuple[int, str]]:
  found = []
  for path in glob.glob(os.path.join(workdir, "seed_*")):
    match = re.fullmatch(r"seed_(-?\d+)", os.path.basename(path))
    if match and os.path.isdir(path):
      found.append((int(match.group(1)), path))
  return sorted(found)


def _num_unseen_classes(workdir: str) -> Optional[int]:
  """The dataset's unseen-class count from results.json ("data"), when written."""
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    return None
  count = metric_writers.read_json(path).get("data", {}).get("num_unseen")
  return int(count) if isinstance(count, int) else None


def plot_workdir(workdir, *, out_dir: Optional[str] = None,
                 projections: Sequence[str] = ("pca", "tsne")
                 ) -> Tuple[List[str], List[str]]:
  """Draws every figure the files of a run's workdir allow.

  Figures (in `out_dir`, default workdir/plots): training.png,
  evaluation.png, seen_unseen.png, projection_seed_<s>.png (its title counts
  the unseen classes drawn, of the dataset's total from the samples file or
  results.json; before results.json exists, the drawn count alone). For an ablation
  workdir (rows in sub-directories with results.json) also ablation.png,
  and each row's figures in its own plots/ directory. For a sweep's
  directory (`gmn_jax.sweep`: sweep.json) sweep.png, and the figures of
  each of its runs in their own plots/: a stage-1 directory draws its
  seeds' training and feature figures, each stage-2 setting inside it its
  evaluation figures.

  Args:
    workdir: the run's directory.
    out_dir: where the PNGs go.
    projections: the 2-D projections of the feature figure.

  Returns:
    (written PNG paths, notes on figures that were skipped and why).

  Raises:
    DataError: when workdir is not a directory.
  """
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise errors.DataError(workdir, None, "a run's workdir", "no such directory")
  out_dir = out_dir or os.path.join(workdir, plotting.PLOTS_DIR)
  written, skipped = [], []
  sweep_file = os.path.join(workdir, sweep_report.JSON_FILE)
  if os.path.isfile(sweep_file):
    written.append(sweep_report.plot(metric_writers.read_json(sweep_file),
                                     os.path.join(out_dir, sweep_report.PLOT_FILE)))
    # A sweep's runs split what a plain run holds (stage 1 in the stage-1
    # directory, stage 2 in its settings' directories): the figures each part
    # lacks by design are not listed as skipped.
    for run in sorted(glob.glob(os.path.join(workdir, "*", "*", ""))):
      if os.path.isfile(os.path.join(run, workdirs.CONFIG_FILE)):  # one run's directory
        written += plot_workdir(run, projections=projections)[0]
    skipped.append(f"{workdir}: a sweep; each stage-1 directory has its training and feature "
                   "figures, each stage-2 setting inside it its evaluation figures")
    return written, skipped
  rows = sorted(d for d in glob.glob(os.path.join(workdir, "*", "results.json")))
  seeds = _seed_dirs(workdir)
  if rows and not seeds and not os.path.isfile(os.path.join(workdir, "results.json")):
    results = [metric_writers.read_json(p) for p in rows]
    written.append(plotting.plot_ablation_bars(results, os.path.join(out_dir, "ablation.png")))
    for row_path in rows:
      row_written, row_skipped = plot_workdir(os.path.dirname(row_path),
                                              projections=projections)
      written += row_written
      skipped += row_skipped
    return written, skipped
  if not seeds:
    return written, [f"{workdir}: no seed_<s> directories yet; nothing to plot"]

  training = {}
  for seed, path in seeds:
    file = os.path.join(path, metric_writers.METRICS_FILE)
    if os.path.isfile(file):
      training[seed] = metric_writers.read_jsonl(file)
  target = os.path.join(out_dir, "training.png")
  if any(any(k.startswith("train/") for r in recs for k in r) for recs in training.values()):
    written.append(plotting.plot_training_curves(training, target))
  else:
    skipped.append(f"{target}: no stage 1 metrics (seed_<s>/metrics.jsonl; real_only "
                   "runs train no generator)")

  curves = {}
  for seed, path in seeds:
    file = os.path.join(path, "eval", metric_writers.METRICS_FILE)
    if os.path.isfile(file):
      records = metric_writers.read_jsonl(file)
      curves[seed] = {name: [r[f"eval/{name}"] for r in records if f"eval/{name}" in r]
                      for name in plotting.EVAL_KEYS}
  target = os.path.join(out_dir, "evaluation.png")
  if curves:
    written.append(plotting.plot_evaluation_curves(curves, target))
  else:
    skipped.append(f"{target}: no finished stage 2 yet (seed_<s>/eval/metrics.jsonl)")

  seed_results = [metric_writers.read_json(os.path.join(p, "result.json")) for _, p in seeds
                  if os.path.isfile(os.path.join(p, "result.json"))]
  target = os.path.join(out_dir, "seen_unseen.png")
  if any(r.get("seen_unseen_curves") for r in seed_results):
    written.append(plotting.plot_seen_unseen_curves(seed_results, target))
  else:
    skipped.append(f"{target}: no seed result with seen_unseen_curves yet "
                   "(seed_<s>/result.json)")

  num_unseen = _num_unseen_classes(workdir)
  for seed, path in seeds:
    file = os.path.join(path, "samples.npz")
    target = os.path.join(out_dir, f"projection_seed_{seed}.png")
    if os.path.isfile(file):
      with np.load(file) as samples:
        samples = dict(samples)
      written.append(plotting.plot_feature_projections(
          samples, target, methods=projections, title=f"Seed {seed}",
          num_unseen_classes=None if "num_unseen_classes" in samples else num_unseen))
    else:
      skipped.append(f"{target}: missing {file} (written at the end of stage 1; "
                     "real_only runs have no generator)")
  if not os.path.isfile(os.path.join(workdir, "results.json")):
    for row_path in rows:  # a sweep's stage-1 directory: its stage-2 settings
      row_written, row_skipped = plot_workdir(os.path.dirname(row_path), projections=projections)
      written += row_written
      skipped += row_skipped
  return written, skipped

