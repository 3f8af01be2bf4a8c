"""What a run reports: one dict per seed, and the summary across seeds.

A seed's metrics are the mean over its final classifiers (classifier seeds)
of the last epoch; results.json holds the mean, std (over generator seeds,
ddof 0) and per-seed values of every metric, in percent.
"""

from typing import Any, Dict, Optional, Sequence

import ml_collections
import numpy as np

from gmn_jax import config as gmn_config
from gmn_jax import config_utils
from gmn_jax import final_classifier
from gmn_jax import metrics
from gmn_jax import scoring
from gmn_jax import specs
from gmn_jax.data.dataset import ZSLDataset

METRIC_NAMES = metrics.METRIC_NAMES  # zsl_t1, gzsl_u, gzsl_s, gzsl_h
# Calibrated stacking (docs/evaluation.md): AUSUC, the test-split oracle's
# best H, and (with a gamma chosen on a validation split) the honest H.
CALIBRATION_METRIC_NAMES = scoring.ORACLE_CALIBRATION_NAMES + scoring.CALIBRATION_NAMES
CURVE_POINTS = 101  # points per seen-unseen curve kept in results.json


def seed_result(seed: int, result: final_classifier.FinalClassifierResult,
                timings: Dict[str, Any]) -> Dict[str, Any]:
  """The result dict of one generator seed (its result.json).

  Args:
    seed: the generator seed.
    result: its final classifiers' result.
    timings: its stage timings.

  Returns:
    {"seed", "metrics": {name: mean over classifier seeds of the last epoch},
    "classifier_seeds": {name: [per classifier seed]}, "curves": {name: [mean
    over classifier seeds per epoch]}, "seen_unseen_curves": [{"unseen",
    "seen"} per classifier seed, at most CURVE_POINTS points], "timings"}.
  """
  names = METRIC_NAMES + tuple(n for n in CALIBRATION_METRIC_NAMES if n in result.last)
  return {
      "seed": seed,
      "metrics": {name: float(np.mean(result.last[name])) for name in names},
      "classifier_seeds": {name: [float(v) for v in result.last[name]] for name in names},
      "curves": {name: [float(v) for v in values]
                 for name, values in mean_curves(result).items()},
      "seen_unseen_curves": [
          dict(zip(("unseen", "seen"), ([float(v) for v in a]
                                        for a in curve.downsample(CURVE_POINTS))))
          for curve in result.seen_unseen_curves],
      "timings": timings,
  }


def mean_curves(result: final_classifier.FinalClassifierResult) -> Dict[str, np.ndarray]:
  """The per-epoch curves averaged over classifier seeds.

  Args:
    result: a final classifiers' result.

  Returns:
    {name: (epochs,) values}.
  """
  return {name: np.mean(values, axis=0) for name, values in result.curves.items()}


def format_mean_std(entry: Dict[str, Any]) -> str:
  """'55.31 ± 1.20' from a results.json metric entry.

  Args:
    entry: {"mean": float, "std": float, ...}.

  Returns:
    The text.
  """
  return f"{entry['mean']:.2f} ± {entry['std']:.2f}"


def final_classifier_description(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """What stage 2 of a validated config trains, as results.json records it.

  Args:
    config: the configuration.

  Returns:
    {"kind", "lr", "lr_decay", "weight_decay", "trained_on"}: "trained_on" is
    "seen classes (real features only)" for real_only, else "all classes".
  """
  spec = specs.eval_spec(config)
  baseline = not gmn_config.get_variant(config).uses_generator
  return {"kind": spec.classifier, "lr": spec.lr, "lr_decay": spec.lr_decay,
          "weight_decay": spec.weight_decay,
          "trained_on": "seen classes (real features only)" if baseline else "all classes"}


def summarize(config: ml_collections.ConfigDict, seed_results: Sequence[Dict[str, Any]],
              dataset: Optional[ZSLDataset] = None) -> Dict[str, Any]:
  """The results.json dict from per-seed results.

  Args:
    config: the configuration.
    seed_results: one `seed_result` per generator seed, in seed order.
    dataset: the dataset, for its sizes (optional).

  Returns:
    {"dataset", "method", "paper_row", "seeds", "metrics": {name: {"mean",
    "std", "per_seed"}} in percent (std over generator seeds, ddof 0),
    "final_classifier", "per_seed", "timings", "config"}; "final_classifier"
    says what stage 2 trained: its kind and optimiser settings (real_only's
    compatibility model, `eval.real_only`, may differ from eval.classifier)
    and the classes whose logits it was trained on.
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
      "final_classifier": final_classifier_description(config),
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
