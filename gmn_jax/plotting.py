"""PNG figures of a run: training and evaluation curves, GZSL calibration, features.

Each `plot_*` function takes plain Python data (what the run files hold) and
writes one PNG (with `return_figure=True` it also returns the matplotlib
Figure, e.g. to inspect what was drawn); `gmn_jax.workdir_plots` reads a
workdir and draws every figure its files allow, and `save_figure` /
`legend_below` are shared with the other figures (`gmn_jax.sweep_report`).
Matplotlib is used through its object API with the Agg canvas, so importing
this module changes no global backend and needs no display.

Conventions every figure follows: a curve's points that have no drawn
neighbour (a one-point curve, a point between NaNs) get a marker, since a
line through one point is invisible; step and epoch axes have integer ticks;
legends sit outside the axes (below the panels, or right of them), so they
never cover data; paper-row names ("WGAN^{S+U} + GM") are drawn as mathtext
superscripts (`mathtext_label`).
"""

import os
import re
from typing import Any, List, Mapping, Optional, Sequence, Tuple

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
import numpy as np

from gmn_jax import errors

PLOTS_DIR = "plots"
METRIC_LABELS = {"zsl_t1": "ZSL T1", "gzsl_u": "GZSL u", "gzsl_s": "GZSL s",
                 "gzsl_h": "GZSL H", "ausuc": "AUSUC",
                 "oracle_calibrated_gzsl_h": "H cal. (oracle)",
                 "calibrated_gzsl_h": "H cal."}
# Training scalars drawn first, when present; any other "train/" key follows.
PREFERRED_TRAINING_KEYS = ("wasserstein", "gm_loss", "generator_loss", "critic_loss",
                           "adversarial_loss", "cls_loss", "gradient_penalty")
EVAL_KEYS = ("gzsl_u", "gzsl_s", "gzsl_h", "zsl_t1")


def save_figure(figure: Figure, path: str,
                return_figure: bool = False) -> str | Tuple[str, Figure]:
  """Writes the PNG; returns `path`, or `(path, figure)` when `return_figure`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  FigureCanvasAgg(figure)
  figure.savefig(path, dpi=110)
  return (path, figure) if return_figure else path


def mathtext_label(name: str) -> str:
  """A row name with its superscripts written as matplotlib mathtext.

  The paper's row names mark superscripts TeX-style: "cWGAN^S" and
  "WGAN^{S+U} + GM" become "cWGAN$^{S}$" and "WGAN$^{S+U}$ + GM", which
  matplotlib renders as superscripts. A literal "$" is escaped, so nothing
  else turns into math (underscores in method names stay as they are).

  Args:
    name: e.g. a `config.VARIANTS[...].paper_row`.

  Returns:
    The label to draw.
  """
  text = name.replace("$", r"\$")
  return re.sub(r"\^(?:\{([^{}$]*)\}|([^\s{}^$]))",
                lambda m: "$^{" + (m.group(1) if m.group(1) is not None else m.group(2)) + "}$",
                text)


def _isolated(values) -> np.ndarray:
  """Indices of the finite values whose neighbours are both missing or not finite."""
  finite = np.isfinite(np.asarray(values, np.float64))
  before = np.concatenate([[False], finite[:-1]])
  after = np.concatenate([finite[1:], [False]])
  return np.flatnonzero(finite & ~before & ~after)


def _plot_curve(axes, x, y, **kwargs):
  """`axes.plot(x, y)`, with a marker on each point no line segment reaches."""
  isolated = _isolated(y)
  if isolated.size:
    kwargs.setdefault("marker", "o")
    kwargs.setdefault("markersize", 4)
    kwargs["markevery"] = [int(i) for i in isolated]
  return axes.plot(x, y, **kwargs)[0]


def _integer_x_ticks(axes, xs) -> None:
  """Integer ticks on the x axis (steps, epochs), also for a single x value.

  MaxNLocator(integer=True) falls back to fractional steps when the view
  spans less than about one unit, so one distinct x gets the view x ± 1.
  """
  # nbins="auto", as matplotlib's default locator: as many ticks as the
  # labels leave room for (a fixed count crowds 4-digit step labels).
  axes.xaxis.set_major_locator(MaxNLocator(nbins="auto", steps=[1, 2, 2.5, 5, 10],
                                           integer=True))
  xs = np.asarray(list(xs), np.float64)
  xs = xs[np.isfinite(xs)]
  if xs.size and xs.min() == xs.max():
    axes.set_xlim(xs[0] - 1, xs[0] + 1)


def legend_below(figure: Figure, handles: Sequence[Any], labels: Sequence[str], *,
                  columns: int = 6, fontsize: str = "small"):
  """One figure legend under the panels (outside every axes); None without entries."""
  if not handles:
    return None
  return figure.legend(handles, labels, loc="outside lower center",
                       ncols=max(1, min(columns, len(labels))), fontsize=fontsize)


def _grid(count: int, columns: int = 3) -> Tuple[int, int]:
  columns = max(1, min(columns, count))
  return -(-count // columns), columns


def _ordered_keys(keys) -> List[str]:
  keys = set(keys)
  first = [k for k in PREFERRED_TRAINING_KEYS if k in keys]
  return first + sorted(keys - set(first))


def plot_training_curves(records_by_seed: Mapping[Any, Sequence[Mapping[str, Any]]],
                         path: str, *, prefix: str = "train/",
                         return_figure: bool = False) -> str | Tuple[str, Figure]:
  """One panel per training scalar, one line per seed, against the step.

  Args:
    records_by_seed: {seed: metrics.jsonl records}; keys starting with
      `prefix` are drawn (e.g. "train/wasserstein", the critic's estimate of
      the Wasserstein distance).
    path: the PNG file.
    prefix: which keys are training scalars.
    return_figure: also return the matplotlib Figure.

  Returns:
    `path`, or `(path, figure)` when `return_figure`.

  Raises:
    DataError: when no record holds a key with the prefix.
  """
  keys = {k[len(prefix):] for records in records_by_seed.values() for r in records
          for k in r if k.startswith(prefix)}
  if not keys:
    raise errors.DataError(path, None, f"records with '{prefix}*' scalars", "none")
  names = _ordered_keys(keys)
  rows, columns = _grid(len(names))
  figure = Figure(figsize=(4.2 * columns, 3.0 * rows + 0.4), layout="constrained")
  handles = {}
  for index, name in enumerate(names):
    axes = figure.add_subplot(rows, columns, index + 1)
    drawn = []
    for k, (seed, records) in enumerate(records_by_seed.items()):
      points = [(r["step"], r[prefix + name]) for r in records if prefix + name in r]
      if points:
        steps, values = zip(*points)
        drawn += steps
        line = _plot_curve(axes, steps, values, label=f"seed {seed}", linewidth=1.2,
                           color=f"C{k % 10}")
        handles.setdefault(f"seed {seed}", line)
    axes.set_title(name)
    axes.set_xlabel("generator iteration")
    _integer_x_ticks(axes, drawn)
    axes.grid(alpha=0.3)
  legend_below(figure, list(handles.values()), list(handles))
  figure.suptitle("Stage 1: training scalars (means over each logging window)")
  return save_figure(figure, path, return_figure)


def plot_evaluation_curves(curves_by_seed: Mapping[Any, Mapping[str, Sequence[float]]],
                           path: str, *, return_figure: bool = False) -> str | Tuple[str, Figure]:
  """GZSL u, s, H and ZSL T1 of the final classifier after every epoch.

  Args:
    curves_by_seed: {seed: {metric name: per-epoch values}} (percent).
    path: the PNG file.
    return_figure: also return the matplotlib Figure.

  Returns:
    `path`, or `(path, figure)` when `return_figure`.

  Raises:
    DataError: when no seed has any of the metrics.
  """
  names = [n for n in EVAL_KEYS if any(n in c for c in curves_by_seed.values())]
  if not names:
    raise errors.DataError(path, None, f"per-epoch curves of {EVAL_KEYS}", "none")
  rows, columns = _grid(len(names), 2)
  figure = Figure(figsize=(4.6 * columns, 3.2 * rows + 0.4), layout="constrained")
  handles = {}
  for index, name in enumerate(names):
    axes = figure.add_subplot(rows, columns, index + 1)
    epochs = []
    for k, (seed, curves) in enumerate(curves_by_seed.items()):
      if name in curves and len(curves[name]):
        values = np.asarray(curves[name], np.float64)
        x = np.arange(1, values.size + 1)
        epochs += list(x)
        line = _plot_curve(axes, x, values, label=f"seed {seed}", color=f"C{k % 10}")
        handles.setdefault(f"seed {seed}", line)
    axes.set_title(METRIC_LABELS.get(name, name))
    axes.set_xlabel("epoch")
    axes.set_ylabel("accuracy (%)")
    _integer_x_ticks(axes, epochs)
    axes.grid(alpha=0.3)
  legend_below(figure, list(handles.values()), list(handles))
  figure.suptitle("Stage 2: final classifier, per-class mean top-1 per epoch")
  return save_figure(figure, path, return_figure)


def plot_seen_unseen_curves(seed_results: Sequence[Mapping[str, Any]], path: str, *,
                            return_figure: bool = False) -> str | Tuple[str, Figure]:
  """The seen-unseen accuracy curves of calibrated stacking, with their AUSUC.

  Args:
    seed_results: per generator seed, a dict with "seed",
      "seen_unseen_curves" (a list of {"unseen": [...], "seen": [...]}, one
      per classifier seed) and optionally "metrics" ("ausuc", "gzsl_u",
      "gzsl_s", "oracle_calibrated_gzsl_u"/"_s"), as in seed_<s>/result.json.
    path: the PNG file.
    return_figure: also return the matplotlib Figure.

  Returns:
    `path`, or `(path, figure)` when `return_figure`.

  Raises:
    DataError: when no seed has a curve.
  """
  usable = [r for r in seed_results if r.get("seen_unseen_curves")]
  if not usable:
    raise errors.DataError(path, None, "seed results with seen_unseen_curves", "none")
  figure = Figure(figsize=(6.0, 6.2), layout="constrained")
  axes = figure.add_subplot(1, 1, 1)
  colours = [f"C{i % 10}" for i in range(len(usable))]
  ausucs = []
  for colour, result in zip(colours, usable):
    curves = result["seen_unseen_curves"]
    areas = [_area(c["unseen"], c["seen"]) for c in curves]
    ausucs.extend(areas)
    label = (f"seed {result.get('seed', '?')}: AUSUC {np.mean(areas):.1f}"
             + (f" ± {np.std(areas):.1f}" if len(areas) > 1 else ""))
    for i, curve in enumerate(curves):
      _plot_curve(axes, curve["unseen"], curve["seen"], color=colour,
                  alpha=0.8 if i == 0 else 0.35, linewidth=1.3, label=label if i == 0 else None)
    values = result.get("metrics", {})
    if "gzsl_u" in values and "gzsl_s" in values:
      axes.plot(values["gzsl_u"], values["gzsl_s"], "o", color=colour, markersize=6)
    if "oracle_calibrated_gzsl_u" in values:
      axes.plot(values["oracle_calibrated_gzsl_u"], values["oracle_calibrated_gzsl_s"], "*",
                color=colour, markersize=11)
  axes.plot([], [], "o", color="0.3", label="no calibration (gamma = 0)")
  axes.plot([], [], "*", color="0.3", markersize=11, label="best H (oracle gamma)")
  axes.set_xlim(0, 100)
  axes.set_ylim(0, 100)
  axes.set_xlabel("unseen accuracy u (%)")
  axes.set_ylabel("seen accuracy s (%)")
  axes.grid(alpha=0.3)
  handles, labels = axes.get_legend_handles_labels()
  legend_below(figure, handles, labels, columns=2)
  axes.set_title(f"Calibrated stacking: AUSUC {np.mean(ausucs):.1f} "
                 f"(mean over {len(ausucs)} classifiers)")
  return save_figure(figure, path, return_figure)


def _area(unseen, seen) -> float:
  """Trapezoid area under seen(unseen) in percent of the unit square."""
  u = np.asarray(unseen, np.float64) / 100.0
  s = np.asarray(seen, np.float64) / 100.0
  return float(100.0 * np.sum(np.diff(u) * (s[1:] + s[:-1]) / 2.0))


def project_features(features, method: str, *, seed: int = 0) -> np.ndarray:
  """A 2-D embedding of feature rows (PCA or t-SNE, scikit-learn).

  Args:
    features: (N, D) rows; real and generated rows are projected together
      so that both live in the same coordinates.
    method: "pca" or "tsne".
    seed: the random state of t-SNE.

  Returns:
    (N, 2) float coordinates.

  Raises:
    ConfigError: for an unknown method.
  """
  # pylint: disable=g-import-not-at-top
  from sklearn.decomposition import PCA
  from sklearn.manifold import TSNE
  features = np.asarray(features, np.float64)
  if method == "pca":
    return PCA(n_components=2).fit_transform(features)
  if method == "tsne":
    from threadpoolctl import threadpool_limits  # a scikit-learn dependency
    perplexity = float(min(30.0, max(2.0, (features.shape[0] - 1) / 3.0)))
    # One thread: on a machine busy with other work (or with JAX's own
    # threads) OpenMP's t-SNE was measured 25x slower with all threads
    # (42 s instead of 1.7 s for 600 points).
    with threadpool_limits(limits=1):
      return TSNE(n_components=2, perplexity=perplexity, init="pca",
                  random_state=seed).fit_transform(features)
  raise errors.ConfigError(f"projection method: expected 'pca' or 'tsne', found {method!r}")


def _first_per_class(labels, limit: int) -> np.ndarray:
  """Indices of the first `limit` rows of every label, in row order."""
  labels = np.asarray(labels)
  keep = np.zeros(labels.shape, bool)
  for label in np.unique(labels):
    keep[np.flatnonzero(labels == label)[:limit]] = True
  return np.flatnonzero(keep)


def plot_feature_projections(samples: Mapping[str, np.ndarray], path: str, *,
                             methods: Sequence[str] = ("pca", "tsne"),
                             title: str = "", per_class: int = 100,
                             num_unseen_classes: Optional[int] = None,
                             return_figure: bool = False) -> str | Tuple[str, Figure]:
  """Real versus generated features of a few unseen classes, in 2-D.

  The figure title says how many unseen classes are drawn and, when known,
  out of how many: "Seed 1: 5 of 50 unseen classes, real (o) vs generated
  (x) features".

  Args:
    samples: the arrays of a samples.npz: real_features, real_labels,
      generated_features, generated_labels, class_ids and optionally
      class_names and num_unseen_classes (the dataset's count).
    path: the PNG file.
    methods: projections, one panel each ("pca", "tsne").
    title: an optional start of the figure title (e.g. "Seed 1").
    per_class: the most real and the most generated rows drawn per class
      (t-SNE's cost grows with the number of points).
    num_unseen_classes: the dataset's number of unseen classes; default
      samples["num_unseen_classes"] when present, else the title gives the
      drawn count alone.
    return_figure: also return the matplotlib Figure.

  Returns:
    `path`, or `(path, figure)` when `return_figure`.

  Raises:
    DataError: when more classes are drawn than `num_unseen_classes`.
  """
  real_rows = _first_per_class(samples["real_labels"], per_class)
  fake_rows = _first_per_class(samples["generated_labels"], per_class)
  real = np.asarray(samples["real_features"])[real_rows]
  fake = np.asarray(samples["generated_features"])[fake_rows]
  labels = np.concatenate([np.asarray(samples["real_labels"])[real_rows],
                           np.asarray(samples["generated_labels"])[fake_rows]])
  is_real = np.arange(labels.size) < real.shape[0]
  class_ids = list(np.asarray(samples["class_ids"]))
  names = (list(np.asarray(samples["class_names"])) if "class_names" in samples
           else [str(c) for c in class_ids])
  shown = int(np.intersect1d(np.asarray(class_ids), labels).size)
  if num_unseen_classes is None and "num_unseen_classes" in samples:
    num_unseen_classes = int(np.asarray(samples["num_unseen_classes"]))
  if num_unseen_classes is not None and shown > num_unseen_classes:
    raise errors.DataError(path, "num_unseen_classes", f"at least the {shown} classes drawn",
                           str(num_unseen_classes))
  count = (f"{shown} of {num_unseen_classes}" if num_unseen_classes is not None
           else str(shown))
  count += f" unseen class{'' if shown == 1 and num_unseen_classes is None else 'es'}"
  figure = Figure(figsize=(5.2 * len(methods), 4.8), layout="constrained")
  stacked = np.concatenate([real, fake])
  for index, method in enumerate(methods):
    axes = figure.add_subplot(1, len(methods), index + 1)
    points = project_features(stacked, method)
    for k, (class_id, name) in enumerate(zip(class_ids, names)):
      colour = f"C{k % 10}"
      rows = labels == class_id
      axes.scatter(*points[rows & is_real].T, s=12, color=colour, marker="o", alpha=0.6,
                   label=f"{name} real")
      axes.scatter(*points[rows & ~is_real].T, s=16, color=colour, marker="x", alpha=0.8,
                   label=f"{name} generated")
    axes.set_title({"pca": "PCA", "tsne": "t-SNE"}.get(method, method))
    axes.set_xticks([])
    axes.set_yticks([])
    if index == len(methods) - 1:
      axes.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.0, 0.5))
  figure.suptitle(f"{title + ': ' if title else ''}{count}, real (o) vs generated (x) features")
  return save_figure(figure, path, return_figure)


def plot_ablation_bars(rows: Sequence[Mapping[str, Any]], path: str, *,
                       metric_names: Optional[Sequence[str]] = None,
                       title: str = "", labels: Optional[Sequence[str]] = None,
                       reported: Optional[Sequence[Optional[Mapping[str, Any]]]] = None,
                       return_figure: bool = False) -> str | Tuple[str, Figure]:
  """A results table as grouped bars: mean ± std per row and metric.

  Draws the ablation (Table 1) and, with `labels` and `reported`, the
  comparison with other systems (Table 2).

  Args:
    rows: results.json dicts (one per row) with "method", optionally
      "paper_row" (drawn through `mathtext_label`: "cWGAN^S" with a
      superscript S), and "metrics": {name: {"mean", "std", ...}}.
    path: the PNG file.
    metric_names: the metrics (groups) to draw; default ZSL T1, GZSL u, s,
      H, and AUSUC when every row has it.
    title: an optional title.
    labels: the legend's row names (default each row's paper_row, else its
      method), also drawn through `mathtext_label`.
    reported: per row, {metric: a value some paper reports, or None}, or
      None; each known value is a black line across its bar.
    return_figure: also return the matplotlib Figure.

  Returns:
    `path`, or `(path, figure)` when `return_figure`.

  Raises:
    DataError: when `rows` is empty or a row lacks a requested metric.
  """
  if not rows:
    raise errors.DataError(path, None, "at least one ablation row", "none")
  if metric_names is None:
    metric_names = ["zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"]
    if all("ausuc" in r["metrics"] for r in rows):
      metric_names.append("ausuc")
  for row in rows:
    missing = [m for m in metric_names if m not in row["metrics"]]
    if missing:
      raise errors.DataError(path, row.get("method"), f"metrics {list(metric_names)}",
                             f"missing {missing}")
  width = 0.8 / len(rows)
  positions = np.arange(len(metric_names))
  columns = min(3, len(rows))
  figure = Figure(figsize=(max(6.0, 1.6 * len(metric_names) + 0.25 * len(rows)),
                           4.6 + 0.22 * -(-len(rows) // columns)),
                  layout="constrained")
  axes = figure.add_subplot(1, 1, 1)
  marks = None  # the reported values' lines: one legend entry, after the rows
  for k, row in enumerate(rows):
    means = [row["metrics"][m]["mean"] for m in metric_names]
    stds = [row["metrics"][m].get("std", 0.0) for m in metric_names]
    label = mathtext_label(labels[k] if labels else row.get("paper_row") or row["method"])
    centres = positions + (k - (len(rows) - 1) / 2) * width
    axes.bar(centres, means, width, yerr=stds, capsize=2, label=label, color=f"C{k % 10}")
    values = (reported[k] or {}) if reported else {}
    known = [(x, values[m]) for x, m in zip(centres, metric_names) if values.get(m) is not None]
    if known:
      xs, ys = np.asarray(known, np.float64).T
      marks = axes.hlines(ys, xs - width / 2, xs + width / 2, colors="black", linewidth=2,
                          zorder=3)
  axes.set_xticks(positions, [METRIC_LABELS.get(m, m) for m in metric_names])
  axes.set_ylabel("accuracy / area (%)")
  axes.set_ylim(0, 100)
  axes.grid(axis="y", alpha=0.3)
  handles, texts = axes.get_legend_handles_labels()
  if marks is not None:
    handles, texts = handles + [marks], texts + ["reported"]
  legend_below(figure, handles, texts, columns=columns)
  axes.set_title(title or "Ablation: mean ± std over generator seeds")
  return save_figure(figure, path, return_figure)
