"""Tests of gmn_jax.plotting and experiments.plot on small synthetic inputs."""

import os
import subprocess
import sys
import textwrap

from matplotlib import image
from matplotlib.ticker import MaxNLocator
import numpy as np
import pytest

from gmn_jax import config as gmn_config
from gmn_jax import metric_writers
from gmn_jax import plotting
from gmn_jax import workdir_plots
from gmn_jax.errors import ConfigError, DataError


def assert_png_with_content(path):
  """A readable PNG that is not one flat colour (something was drawn)."""
  assert os.path.getsize(path) > 1000
  pixels = image.imread(path)
  assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
  assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 20


def line_data(axes):
  """(x, y) of every line drawn on `axes`, in drawing order."""
  return [(list(np.asarray(l.get_xdata(), float)), list(np.asarray(l.get_ydata(), float)))
          for l in axes.get_lines()]


def legend_texts(axes):
  legend = axes.get_legend()
  return None if legend is None else [t.get_text() for t in legend.get_texts()]


def figure_legend_texts(figure):
  """The entries of the figure's one legend (the one below its panels)."""
  (legend,) = figure.legends
  return [t.get_text() for t in legend.get_texts()]


def assert_legends_hide_nothing(figure):
  """Every legend, the figure's and the axes', lies outside every axes' data area."""
  figure.canvas.draw()
  renderer = figure.canvas.get_renderer()
  legends = list(figure.legends) + [a.get_legend() for a in figure.axes if a.get_legend()]
  assert legends
  for legend in legends:
    box = legend.get_window_extent(renderer)
    for axes in figure.axes:
      assert not box.overlaps(axes.get_window_extent(renderer)), (
          [t.get_text() for t in legend.get_texts()], axes.get_title())


def assert_integer_x_ticks(axes):
  """The x ticks in view are whole numbers (steps, epochs) and there are some."""
  assert isinstance(axes.xaxis.get_major_locator(), MaxNLocator)
  axes.figure.canvas.draw()
  low, high = axes.get_xlim()
  ticks = [t for t in axes.get_xticks() if low <= t <= high]
  assert ticks and all(float(t).is_integer() for t in ticks), (axes.get_title(), ticks)
  # Readable: the drawn tick labels do not run into each other.
  renderer = axes.figure.canvas.get_renderer()
  boxes = sorted((t.label1.get_window_extent(renderer) for t in axes.xaxis.get_major_ticks()
                  if low <= t.get_loc() <= high and t.label1.get_visible()
                  and t.label1.get_text()), key=lambda b: b.x0)
  assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), axes.get_title()


def assert_markers_on_lone_points(axes):
  """A line gets a marker exactly on the points that no segment reaches."""
  for line in axes.get_lines():
    y = np.asarray(line.get_ydata(), float)
    if y.size == 0 or line.get_linestyle() in ("None", ""):
      continue  # a legend-only entry, or points drawn as markers anyway
    finite = np.isfinite(y)
    lone = [i for i in range(y.size) if finite[i]
            and not (i > 0 and finite[i - 1]) and not (i + 1 < y.size and finite[i + 1])]
    if lone:
      assert line.get_marker() == "o" and list(line.get_markevery()) == lone
    else:
      assert line.get_marker() in ("None", None, "")


def record_figures(monkeypatch):
  """{plot function name: Figure} of the figures plot_workdir draws."""
  figures = {}
  for name in ("plot_training_curves", "plot_evaluation_curves", "plot_seen_unseen_curves",
               "plot_feature_projections", "plot_ablation_bars"):
    def wrapped(*args, _real=getattr(plotting, name), _name=name, **kwargs):
      path, figure = _real(*args, return_figure=True, **kwargs)
      figures.setdefault(_name, []).append(figure)
      return path
    monkeypatch.setattr(plotting, name, wrapped)
  return figures


def training_records(seed, steps=6):
  rng = np.random.default_rng(seed)
  return [{"step": s, "train/wasserstein": float(rng.normal()),
           "train/gm_loss": float(rng.random()), "train/generator_loss": float(rng.random()),
           "train/some_new_scalar": 1.0, "steps_per_sec": 100.0}
          for s in range(1, steps + 1)]


def curves(seed, epochs=5):
  rng = np.random.default_rng(seed)
  return {name: list(100 * rng.random(epochs)) for name in ("gzsl_u", "gzsl_s", "gzsl_h",
                                                             "zsl_t1")}


def seed_result(seed):
  unseen = [0.0, 10.0, 40.0, 70.0, 80.0]
  seen = [90.0, 85.0, 60.0, 30.0, 0.0]
  return {"seed": seed,
          "metrics": {"gzsl_u": 40.0, "gzsl_s": 60.0, "ausuc": 50.0,
                      "oracle_calibrated_gzsl_u": 40.0, "oracle_calibrated_gzsl_s": 60.0},
          "seen_unseen_curves": [{"unseen": unseen, "seen": seen},
                                 {"unseen": unseen, "seen": [s * 0.9 for s in seen]}]}


def samples(num_classes=3, per_class=12, dim=10, seed=0):
  rng = np.random.default_rng(seed)
  ids = np.arange(1, 2 * num_classes, 2)
  labels = np.repeat(ids, per_class)
  centres = 5 * rng.normal(size=(ids.max() + 1, dim))
  return {"class_ids": ids, "class_names": np.array([f"class {c}" for c in ids]),
          "real_features": centres[labels] + rng.normal(size=(labels.size, dim)),
          "real_labels": labels,
          "generated_features": centres[labels] + 1.5 * rng.normal(size=(labels.size, dim)),
          "generated_labels": labels}


def assert_training_figure(figure, records_by_seed):
  """One panel per train/ key (preferred ones first), one line per seed: the records."""
  names = ["wasserstein", "gm_loss", "generator_loss", "some_new_scalar"]
  assert [a.get_title() for a in figure.axes] == names  # steps_per_sec is not drawn
  for axes, name in zip(figure.axes, names):
    assert line_data(axes) == [
        ([r["step"] for r in records], [r[f"train/{name}"] for r in records])
        for records in records_by_seed.values()], name
  # One legend for all panels, below them; a seed has one colour everywhere.
  assert figure_legend_texts(figure) == [f"seed {s}" for s in records_by_seed]
  assert all(a.get_legend() is None for a in figure.axes)
  for axes in figure.axes:
    assert [l.get_color() for l in axes.get_lines()] == [
        f"C{k}" for k in range(len(records_by_seed))]
    assert_integer_x_ticks(axes)
    assert_markers_on_lone_points(axes)
  assert_legends_hide_nothing(figure)


def test_training_curves_draw_every_train_key(tmp_path):
  records = {1: training_records(1), 67: training_records(2)}
  path, figure = plotting.plot_training_curves(records, str(tmp_path / "t.png"),
                                               return_figure=True)
  assert path == str(tmp_path / "t.png")
  assert_png_with_content(path)
  assert_training_figure(figure, records)
  assert plotting.plot_training_curves(records, str(tmp_path / "u.png")) == str(
      tmp_path / "u.png")  # by default the path alone
  # A long run's steps (250 ... 20000): integer ticks that leave their labels room.
  long_run = {s: [dict(r, step=250 * r["step"]) for r in training_records(s, steps=80)]
              for s in (1, 67, 99)}
  _, figure = plotting.plot_training_curves(long_run, str(tmp_path / "l.png"),
                                            return_figure=True)
  assert_training_figure(figure, long_run)
  assert plotting._ordered_keys(  # pylint: disable=protected-access
      ["some_new_scalar", "gm_loss", "wasserstein"]) == [
          "wasserstein", "gm_loss", "some_new_scalar"]
  with pytest.raises(DataError, match="train/"):
    plotting.plot_training_curves({1: [{"step": 1, "loss": 1.0}]}, str(tmp_path / "x.png"))


def assert_evaluation_figure(figure, curves_by_seed):
  """GZSL u, s, H and ZSL T1 panels, one line per seed: its values against epochs 1..E."""
  names = ["gzsl_u", "gzsl_s", "gzsl_h", "zsl_t1"]
  assert [a.get_title() for a in figure.axes] == ["GZSL u", "GZSL s", "GZSL H", "ZSL T1"]
  for axes, name in zip(figure.axes, names):
    assert line_data(axes) == [
        (list(range(1, len(c[name]) + 1)), list(c[name])) for c in curves_by_seed.values()]
    assert_integer_x_ticks(axes)
    assert_markers_on_lone_points(axes)
  assert figure_legend_texts(figure) == [f"seed {s}" for s in curves_by_seed]
  assert_legends_hide_nothing(figure)


# The two curves of seed_result, by hand: trapezoids of (u, s) in percent,
# 10 * 87.5 + 30 * 72.5 + 30 * 45 + 10 * 15 = 4550 -> 45.5, and 0.9 of it,
# 40.95: mean 43.225, std 2.275.
SEED_RESULT_LABEL = "AUSUC 43.2 ± 2.3"


def assert_seen_unseen_figure(figure, seed_results):
  (axes,) = figure.axes
  lines = axes.get_lines()
  per_seed = 4  # two curves, the gamma = 0 point, the oracle point
  assert len(lines) == per_seed * len(seed_results) + 2  # + two legend entries
  for k, result in enumerate(seed_results):
    mine = lines[per_seed * k:per_seed * (k + 1)]
    assert line_data(axes)[per_seed * k:per_seed * k + 2] == [
        (c["unseen"], c["seen"]) for c in result["seen_unseen_curves"]]
    metrics = result["metrics"]
    assert [line_data(axes)[per_seed * k + i] for i in (2, 3)] == [
        ([metrics["gzsl_u"]], [metrics["gzsl_s"]]),
        ([metrics["oracle_calibrated_gzsl_u"]], [metrics["oracle_calibrated_gzsl_s"]])]
    assert [l.get_marker() for l in mine[2:]] == ["o", "*"]
    assert {l.get_color() for l in mine} == {f"C{k}"}  # one colour per seed
  assert_markers_on_lone_points(axes)
  assert axes.get_legend() is None
  assert figure_legend_texts(figure) == [f"seed {r['seed']}: {SEED_RESULT_LABEL}"
                                         for r in seed_results] + [
                                             "no calibration (gamma = 0)",
                                             "best H (oracle gamma)"]
  assert_legends_hide_nothing(figure)
  assert axes.get_title() == (
      f"Calibrated stacking: AUSUC 43.2 (mean over {2 * len(seed_results)} classifiers)")


def test_evaluation_and_calibration_curves(tmp_path):
  values = {1: curves(1), 2: curves(2)}
  path, figure = plotting.plot_evaluation_curves(values, str(tmp_path / "e.png"),
                                                 return_figure=True)
  assert_png_with_content(path)
  assert_evaluation_figure(figure, values)
  # Only the metrics some seed has get a panel.
  _, figure = plotting.plot_evaluation_curves({3: {"gzsl_h": [1.0, 2.0]}},
                                              str(tmp_path / "h.png"), return_figure=True)
  assert [a.get_title() for a in figure.axes] == ["GZSL H"]
  assert line_data(figure.axes[0]) == [([1.0, 2.0], [1.0, 2.0])]
  assert_integer_x_ticks(figure.axes[0])  # two epochs: no tick at 1.5
  results = [seed_result(1), seed_result(2)]
  path, figure = plotting.plot_seen_unseen_curves(results, str(tmp_path / "c.png"),
                                                  return_figure=True)
  assert_png_with_content(path)
  assert_seen_unseen_figure(figure, results)
  with pytest.raises(DataError):
    plotting.plot_seen_unseen_curves([{"seed": 1}], str(tmp_path / "none.png"))


def test_area_of_a_drawn_curve():
  # The legend's AUSUC: a triangle below the diagonal has half the square.
  area = plotting._area  # pylint: disable=protected-access
  assert area([0, 100], [100, 0]) == pytest.approx(50.0)
  assert area([0, 0, 100, 100], [100, 100, 100, 0]) == pytest.approx(100.0)


def test_pca_projection_equals_the_top_two_principal_directions():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(40, 6)) * np.array([5, 3, 1, 0.5, 0.1, 0.1])
  got = plotting.project_features(x, "pca")
  centred = x - x.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  expected = centred @ vt[:2].T
  for k in range(2):  # principal directions are defined up to sign
    sign = np.sign(got[:, k] @ expected[:, k])
    np.testing.assert_allclose(sign * got[:, k], expected[:, k], atol=1e-8)
  with pytest.raises(ConfigError, match="umap"):
    plotting.project_features(x, "umap")


def test_tsne_keeps_well_separated_clusters_apart():
  data = samples(num_classes=2, per_class=15, seed=3)
  points = plotting.project_features(data["real_features"], "tsne")
  labels = data["real_labels"]
  a, b = points[labels == labels[0]], points[labels != labels[0]]
  within = max(np.ptp(a, axis=0).max(), np.ptp(b, axis=0).max())
  between = np.linalg.norm(a.mean(0) - b.mean(0))
  assert between > within


def numpy_pca(x):
  centred = x - x.mean(0)
  _, _, vt = np.linalg.svd(centred, full_matrices=False)
  return centred @ vt[:2].T


def assert_projection_panel(axes, data, per_class, pca=True):
  """Per class a real and a generated scatter of its first `per_class` rows of each kind.

  With pca, the points are those of a numpy PCA of the drawn rows together
  (each direction up to sign).
  """
  ids = list(data["class_ids"])
  keep = {kind: np.concatenate([np.flatnonzero(data[f"{kind}_labels"] == c)[:per_class]
                                for c in ids])
          for kind in ("real", "generated")}
  stacked = np.concatenate([data[f"{kind}_features"][keep[kind]] for kind in keep])
  labels = {kind: data[f"{kind}_labels"][keep[kind]] for kind in keep}
  offsets = [np.asarray(c.get_offsets(), float) for c in axes.collections]
  assert len(offsets) == 2 * len(ids)
  for k, class_id in enumerate(ids):
    for j, kind in enumerate(("real", "generated")):
      assert offsets[2 * k + j].shape == (min(per_class, np.sum(data[f"{kind}_labels"]
                                                                 == class_id)), 2)
  if pca:
    points = numpy_pca(stacked)
    n_real = keep["real"].size
    want = np.concatenate([
        part for c in ids for part in (points[:n_real][labels["real"] == c],
                                       points[n_real:][labels["generated"] == c])])
    got = np.concatenate(offsets)
    signs = np.sign(np.sum(got * want, axis=0))
    np.testing.assert_allclose(got * signs, want, atol=1e-6)


def test_feature_projection_figure(tmp_path):
  data = samples()  # 3 classes, 12 real and 12 generated rows each
  path, figure = plotting.plot_feature_projections(data, str(tmp_path / "p.png"),
                                                   return_figure=True)
  assert_png_with_content(path)
  assert [a.get_title() for a in figure.axes] == ["PCA", "t-SNE"]
  assert_projection_panel(figure.axes[0], data, per_class=12)
  assert_projection_panel(figure.axes[1], data, per_class=12, pca=False)
  assert legend_texts(figure.axes[0]) is None
  assert legend_texts(figure.axes[1]) == [
      f"class {c} {kind}" for c in (1, 3, 5) for kind in ("real", "generated")]
  assert_legends_hide_nothing(figure)
  # The title counts the classes drawn (the dataset's total is not known here).
  assert figure.texts[0].get_text() == "3 unseen classes, real (o) vs generated (x) features"
  # At most per_class rows of each class and kind: the first ones.
  _, figure = plotting.plot_feature_projections(data, str(tmp_path / "q.png"), methods=("pca",),
                                                per_class=5, return_figure=True)
  assert_projection_panel(figure.axes[0], data, per_class=5)
  labels = np.array([5, 5, 1, 5, 1, 1, 1])
  np.testing.assert_array_equal(
      plotting._first_per_class(labels, 2), [0, 1, 2, 4])  # pylint: disable=protected-access


def test_projection_title_counts_the_unseen_classes_it_shows(tmp_path):
  data = samples(num_classes=3)
  _, figure = plotting.plot_feature_projections(data, str(tmp_path / "p.png"), methods=("pca",),
                                                title="Seed 7", num_unseen_classes=50,
                                                return_figure=True)
  assert figure.texts[0].get_text() == (
      "Seed 7: 3 of 50 unseen classes, real (o) vs generated (x) features")
  # The total stored in the samples file; a listed class without rows is not drawn.
  data = samples(num_classes=4)
  rows = data["real_labels"] != 7
  data.update(num_unseen_classes=np.int64(4), real_features=data["real_features"][rows],
              real_labels=data["real_labels"][rows])
  rows = data["generated_labels"] != 7
  data.update(generated_features=data["generated_features"][rows],
              generated_labels=data["generated_labels"][rows])
  _, figure = plotting.plot_feature_projections(data, str(tmp_path / "q.png"), methods=("pca",),
                                                return_figure=True)
  assert len(figure.axes[0].collections) == 8  # 4 classes x 2 kinds, class 7's empty
  assert [len(c.get_offsets()) for c in figure.axes[0].collections][-2:] == [0, 0]
  assert figure.texts[0].get_text().startswith("3 of 4 unseen classes,")
  data = samples(num_classes=1)
  _, figure = plotting.plot_feature_projections(data, str(tmp_path / "r.png"), methods=("pca",),
                                                return_figure=True)
  assert figure.texts[0].get_text().startswith("1 unseen class,")
  # More classes drawn than the dataset has unseen ones is an error, not a title.
  with pytest.raises(DataError, match="num_unseen_classes"):
    plotting.plot_feature_projections(samples(num_classes=5), str(tmp_path / "s.png"),
                                      methods=("pca",), num_unseen_classes=3)


def test_one_point_curves_get_markers_and_integer_ticks(tmp_path):
  """A run with one log step and one epoch: every line is a single, visible point."""
  records = {1: training_records(1, steps=1), 2: training_records(2, steps=1)}
  _, figure = plotting.plot_training_curves(records, str(tmp_path / "t.png"),
                                            return_figure=True)
  for axes in figure.axes:
    assert [(l.get_marker(), l.get_markevery()) for l in axes.get_lines()] == [("o", [0])] * 2
  assert_training_figure(figure, records)  # also: integer ticks around step 1
  values = {1: curves(1, epochs=1), 2: curves(2, epochs=1)}
  path, figure = plotting.plot_evaluation_curves(values, str(tmp_path / "e.png"),
                                                 return_figure=True)
  assert_png_with_content(path)
  for axes in figure.axes:
    assert [(l.get_marker(), l.get_markevery()) for l in axes.get_lines()] == [("o", [0])] * 2
    assert 1 in axes.get_xticks()
  assert_evaluation_figure(figure, values)
  # Longer curves: no markers, except on a point that NaNs cut off.
  values = {1: {"gzsl_h": [1.0, 2.0, 3.0]}, 2: {"gzsl_h": [1.0, float("nan"), 3.0, 4.0]}}
  _, figure = plotting.plot_evaluation_curves(values, str(tmp_path / "n.png"),
                                              return_figure=True)
  plain, cut = figure.axes[0].get_lines()
  assert plain.get_marker() == "None" and cut.get_marker() == "o"
  assert cut.get_markevery() == [0]
  assert_markers_on_lone_points(figure.axes[0])
  np.testing.assert_array_equal(plotting._isolated(  # pylint: disable=protected-access
      [np.nan, 1.0, np.nan, 2.0, 3.0, np.inf, 4.0]), [1, 6])
  # A one-point seen-unseen curve is drawn as a point, too.
  result = seed_result(1)
  result["seen_unseen_curves"] = [{"unseen": [30.0], "seen": [60.0]}]
  _, figure = plotting.plot_seen_unseen_curves([result], str(tmp_path / "c.png"),
                                               return_figure=True)
  assert figure.axes[0].get_lines()[0].get_markevery() == [0]


# The paper's row names as the ablation chart draws them (mathtext superscripts).
PAPER_ROW_MATHTEXT = {
    "WGAN^S + CLS": "WGAN$^{S}$ + CLS",
    "cWGAN^S": "cWGAN$^{S}$",
    "WGAN^S + GM": "WGAN$^{S}$ + GM",
    "cWGAN^S + GM (GMN)": "cWGAN$^{S}$ + GM (GMN)",
    "WGAN^{S+U} + GM": "WGAN$^{S+U}$ + GM",
    "cWGAN^S + CLS (the reference repository's f-CLSWGAN variant)":
        "cWGAN$^{S}$ + CLS (the reference repository's f-CLSWGAN variant)",
}


def outside_math(text):
  """`text` without its $...$ (mathtext) segments; an escaped \\$ is literal."""
  parts = text.replace(r"\$", "").split("$")
  assert len(parts) % 2 == 1, f"unbalanced $ in {text!r}"
  return "".join(parts[::2])


def test_mathtext_label_converts_every_paper_row():
  for variant in gmn_config.VARIANTS.values():
    label = plotting.mathtext_label(variant.paper_row)
    assert label == PAPER_ROW_MATHTEXT.get(variant.paper_row, variant.paper_row)
    assert "^" not in outside_math(label)  # no raw caret is drawn
  assert plotting.mathtext_label("real_only") == "real_only"  # no accidental subscripts
  assert plotting.mathtext_label("a $5 ^x") == r"a \$5 $^{x}$"


def test_ablation_chart_renders_the_paper_rows_as_mathtext(tmp_path):
  names = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h")
  rows = [{"method": method, "paper_row": variant.paper_row,
           "metrics": {n: {"mean": 90.0 - 3 * k - i, "std": 1.0} for i, n in enumerate(names)}}
          for k, (method, variant) in enumerate(gmn_config.VARIANTS.items())]
  path, figure = plotting.plot_ablation_bars(rows, str(tmp_path / "a.png"), return_figure=True)
  assert_png_with_content(path)
  assert_ablation_figure(figure, rows, names)  # tall bars, legend below them
  texts = figure.legends[0].get_texts()
  assert "WGAN$^{S+U}$ + GM" in [t.get_text() for t in texts]
  for text, row in zip(texts, rows):
    raw = row["paper_row"]
    # matplotlib parses each "^" label as math: its drawn width is that of the
    # label without the caret and braces (a superscript), not of the raw text.
    is_math = "^" in raw
    assert text._preprocess_math(text.get_text())[1] == is_math  # pylint: disable=protected-access
    if is_math:
      renderer = figure.canvas.get_renderer()
      drawn = text.get_window_extent(renderer).width
      text.set_text(raw)
      assert text.get_window_extent(renderer).width > drawn
      text.set_text(plotting.mathtext_label(raw))


def assert_ablation_figure(figure, rows, metric_names):
  """Per row one bar per metric at its mean, with its std as the error bar."""
  (axes,) = figure.axes
  labels = {"zsl_t1": "ZSL T1", "gzsl_u": "GZSL u", "gzsl_s": "GZSL s", "gzsl_h": "GZSL H",
            "ausuc": "AUSUC"}
  assert [t.get_text() for t in axes.get_xticklabels()] == [labels[m] for m in metric_names]
  assert axes.get_legend() is None
  assert figure_legend_texts(figure) == [
      PAPER_ROW_MATHTEXT.get(r.get("paper_row"), r.get("paper_row") or r["method"])
      for r in rows]
  assert_legends_hide_nothing(figure)
  bars = [c for c in axes.containers if hasattr(c, "errorbar")]
  assert len(bars) == len(rows)
  width = 0.8 / len(rows)
  for k, (row, container) in enumerate(zip(rows, bars)):
    means = [row["metrics"][m]["mean"] for m in metric_names]
    stds = [row["metrics"][m]["std"] for m in metric_names]
    np.testing.assert_allclose([b.get_height() for b in container.patches], means)
    centres = [b.get_x() + b.get_width() / 2 for b in container.patches]
    np.testing.assert_allclose(centres, np.arange(len(metric_names))
                               + (k - (len(rows) - 1) / 2) * width)
    segments = container.errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose([seg[:, 1] for seg in segments],
                               [[m - s, m + s] for m, s in zip(means, stds)])


def test_ablation_bars(tmp_path):
  names = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "ausuc")
  rows = [{"method": m, "paper_row": m.upper(),
           "metrics": {n: {"mean": 10.0 * (k + 1) + i, "std": 0.5 * (i + 1)}
                       for i, n in enumerate(names)}}
          for k, m in enumerate(("real_only", "cwgan", "cwgan_gm"))]
  path, figure = plotting.plot_ablation_bars(rows, str(tmp_path / "a.png"), return_figure=True)
  assert_png_with_content(path)
  assert_ablation_figure(figure, rows, names)
  # AUSUC is drawn by default only when every row has it.
  del rows[1]["metrics"]["ausuc"]
  _, figure = plotting.plot_ablation_bars(rows, str(tmp_path / "d.png"), return_figure=True)
  assert_ablation_figure(figure, rows, names[:4])
  with pytest.raises(DataError, match="missing"):
    plotting.plot_ablation_bars(rows, str(tmp_path / "b.png"), metric_names=["nope"])
  with pytest.raises(DataError):
    plotting.plot_ablation_bars([], str(tmp_path / "c.png"))


def make_workdir(root, seeds=(1, 2), with_samples=(1,)):
  """A workdir with the files train_and_evaluate writes, made by hand."""
  os.makedirs(root, exist_ok=True)
  for seed in seeds:
    seed_dir = os.path.join(root, f"seed_{seed}")
    with metric_writers.MetricWriter(seed_dir, resume_step=-1) as writer:
      for record in training_records(seed):
        writer.write_scalars(record.pop("step"), record)
    with metric_writers.MetricWriter(os.path.join(seed_dir, "eval"), resume_step=-1) as writer:
      values = curves(seed)
      for epoch in range(5):
        writer.write_scalars(epoch + 1, {f"eval/{k}": v[epoch] for k, v in values.items()})
    metric_writers.write_json_atomic(os.path.join(seed_dir, "result.json"), seed_result(seed))
    if seed in with_samples:
      np.savez(os.path.join(seed_dir, "samples.npz"), **samples(seed=seed))
  return root


def test_plot_workdir_draws_what_exists_and_names_what_is_missing(tmp_path, monkeypatch):
  workdir = make_workdir(str(tmp_path / "run"))
  figures = record_figures(monkeypatch)
  written, skipped = workdir_plots.plot_workdir(workdir, projections=("pca",))
  names = sorted(os.path.basename(p) for p in written)
  assert names == ["evaluation.png", "projection_seed_1.png", "seen_unseen.png",
                   "training.png"]
  for path in written:
    assert os.path.dirname(path) == os.path.join(workdir, "plots")
    assert_png_with_content(path)
  assert len(skipped) == 1 and "seed_2/samples.npz" in skipped[0]
  # The figures hold the files' data (make_workdir wrote these values).
  records = {s: [{k: v for k, v in r.items() if k != "steps_per_sec"}
                 for r in training_records(s)] for s in (1, 2)}
  assert_training_figure(figures["plot_training_curves"][0], records)
  assert_evaluation_figure(figures["plot_evaluation_curves"][0], {1: curves(1), 2: curves(2)})
  assert_seen_unseen_figure(figures["plot_seen_unseen_curves"][0],
                            [seed_result(1), seed_result(2)])
  (projection,) = figures["plot_feature_projections"]
  assert_projection_panel(projection.axes[0], samples(seed=1), per_class=100)
  # Before results.json the dataset's unseen-class count is unknown; after, it is given.
  title = "Seed 1: {} unseen classes, real (o) vs generated (x) features"
  assert projection.texts[0].get_text() == title.format(3)
  metric_writers.write_json_atomic(os.path.join(workdir, "results.json"),
                                   {"data": {"num_unseen": 50}})
  workdir_plots.plot_workdir(workdir, projections=("pca",))
  assert figures["plot_feature_projections"][1].texts[0].get_text() == title.format("3 of 50")
  empty = tmp_path / "empty"
  empty.mkdir()
  assert workdir_plots.plot_workdir(str(empty))[0] == []
  with pytest.raises(DataError, match="no such directory"):
    workdir_plots.plot_workdir(str(tmp_path / "absent"))


def test_plot_workdir_of_an_ablation_draws_the_bar_chart_and_each_row(tmp_path, monkeypatch):
  root = tmp_path / "ablation"
  rows = []
  for k, method in enumerate(("real_only", "cwgan_gm")):
    row = make_workdir(str(root / method), seeds=(1,), with_samples=())
    rows.append({"method": method, "paper_row": method,
                 "metrics": {n: {"mean": 20.0 + k + i, "std": 0.5 + k}
                             for i, n in enumerate(("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"))}})
    metric_writers.write_json_atomic(os.path.join(row, "results.json"), rows[-1])
  figures = record_figures(monkeypatch)
  written, _ = workdir_plots.plot_workdir(str(root), projections=("pca",))
  assert str(root / "plots" / "ablation.png") in written
  assert str(root / "cwgan_gm" / "plots" / "training.png") in written
  assert_png_with_content(root / "plots" / "ablation.png")
  (chart,) = figures["plot_ablation_bars"]
  # The rows in the order of their directories' names: cwgan_gm, real_only.
  assert_ablation_figure(chart, rows[::-1], ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h"))
  assert len(figures["plot_training_curves"]) == 2  # one per row


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(*args):
  """Runs a binary in a fresh process (binaries define absl flags globally)."""
  result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  return result.returncode, result.stdout, result.stderr


def test_plot_binary_lists_figures_and_fails_in_one_line(tmp_path):
  workdir = make_workdir(str(tmp_path / "run"), seeds=(1,), with_samples=())
  code, out, err = run_module("-m", "experiments.plot", f"--workdir={workdir}",
                              "--projections=pca")
  assert code == 0, err[-2000:]
  assert out.count("written: ") == 3 and out.count("skipped: ") == 1
  code, _, err = run_module("-m", "experiments.plot", f"--workdir={tmp_path / 'absent'}")
  assert code == 2 and err.count("\n") == 1 and "no such directory" in err


_ABLATION_DRIVER = textwrap.dedent("""
    import os
    from absl import app
    from experiments import ablation

    def fake_rows(config, workdir, methods, **kwargs):
      os.makedirs(workdir, exist_ok=True)
      return [{"method": m, "paper_row": m, "seeds": [1, 2],
               "metrics": {n: {"mean": 30.0 + k, "std": 1.0, "per_seed": [29.0 + k, 31.0 + k]}
                           for n in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h")}}
              for k, m in enumerate(methods)]

    ablation.run_ablation = fake_rows  # the rows' training is tested elsewhere
    if hasattr(ablation, "define_flags"):  # flags defined only when run as a program
      ablation.define_flags()
    app.run(ablation.main, flags_parser=ablation.parse_flags)
    """)


def test_ablation_binary_writes_the_bar_chart(tmp_path):
  driver = tmp_path / "driver.py"
  driver.write_text(_ABLATION_DRIVER)
  code, out, err = run_module(str(driver), "--config=experiments/configs/digits.py",
                              f"--workdir={tmp_path / 'w'}", "--methods=real_only,cwgan_gm")
  assert code == 0, err[-2000:]
  chart = tmp_path / "w" / "plots" / "ablation.png"
  assert f"written: {chart}" in out
  assert_png_with_content(chart)


def test_the_legend_check_catches_a_legend_inside_the_axes(tmp_path):
  """assert_legends_hide_nothing fails on the legend placement the figures used to have."""
  values = {1: curves(1), 2: curves(2)}
  _, figure = plotting.plot_evaluation_curves(values, str(tmp_path / "e.png"),
                                              return_figure=True)
  figure.legends.clear()
  figure.axes[0].legend(loc="upper right")
  with pytest.raises(AssertionError):
    assert_legends_hide_nothing(figure)
