"""Tests of gmn_jax.plotting and experiments.plot on small synthetic inputs."""

import os
import subprocess
import sys
import textwrap

from matplotlib import image
import numpy as np
import pytest

from gmn_jax import metric_writers
from gmn_jax import plotting
from gmn_jax.errors import ConfigError, DataError


def assert_png_with_content(path):
  """A readable PNG that is not one flat colour (something was drawn)."""
  assert os.path.getsize(path) > 1000
  pixels = image.imread(path)
  assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
  assert np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0).shape[0] > 20


def training_records(seed, steps=6):
  rng = np.random.default_rng(seed)
  return [{"step": s, "train/wasserstein": float(rng.normal()),
           "train/gm_loss": float(rng.random()), "train/generator_loss": float(rng.random()),
           "train/some_new_scalar": 1.0, "steps_per_sec": 100.0}
          for s in range(1, steps + 1)]


def curves(seed, epochs=5):
  rng = np.random.default_rng(seed)
  return {name: list(100 * rng.random(epochs)) for name in plotting.EVAL_KEYS}


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


def test_training_curves_draw_every_train_key(tmp_path):
  path = plotting.plot_training_curves({1: training_records(1), 67: training_records(2)},
                                       str(tmp_path / "t.png"))
  assert_png_with_content(path)
  assert plotting._ordered_keys(  # pylint: disable=protected-access
      ["some_new_scalar", "gm_loss", "wasserstein"]) == [
          "wasserstein", "gm_loss", "some_new_scalar"]
  with pytest.raises(DataError, match="train/"):
    plotting.plot_training_curves({1: [{"step": 1, "loss": 1.0}]}, str(tmp_path / "x.png"))


def test_evaluation_and_calibration_curves(tmp_path):
  assert_png_with_content(plotting.plot_evaluation_curves(
      {1: curves(1), 2: curves(2)}, str(tmp_path / "e.png")))
  assert_png_with_content(plotting.plot_seen_unseen_curves(
      [seed_result(1), seed_result(2)], str(tmp_path / "c.png")))
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


def test_feature_projection_figure(tmp_path):
  assert_png_with_content(plotting.plot_feature_projections(samples(), str(tmp_path / "p.png")))
  labels = np.array([5, 5, 1, 5, 1, 1, 1])
  np.testing.assert_array_equal(
      plotting._first_per_class(labels, 2), [0, 1, 2, 4])  # pylint: disable=protected-access


def test_ablation_bars(tmp_path):
  rows = [{"method": m, "paper_row": m.upper(),
           "metrics": {n: {"mean": 10.0 * (k + 1), "std": 1.0}
                       for n in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h", "ausuc")}}
          for k, m in enumerate(("real_only", "cwgan", "cwgan_gm"))]
  assert_png_with_content(plotting.plot_ablation_bars(rows, str(tmp_path / "a.png")))
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


def test_plot_workdir_draws_what_exists_and_names_what_is_missing(tmp_path):
  workdir = make_workdir(str(tmp_path / "run"))
  written, skipped = plotting.plot_workdir(workdir, projections=("pca",))
  names = sorted(os.path.basename(p) for p in written)
  assert names == ["evaluation.png", "projection_seed_1.png", "seen_unseen.png",
                   "training.png"]
  for path in written:
    assert os.path.dirname(path) == os.path.join(workdir, "plots")
    assert_png_with_content(path)
  assert len(skipped) == 1 and "seed_2/samples.npz" in skipped[0]
  empty = tmp_path / "empty"
  empty.mkdir()
  assert plotting.plot_workdir(str(empty))[0] == []
  with pytest.raises(DataError, match="no such directory"):
    plotting.plot_workdir(str(tmp_path / "absent"))


def test_plot_workdir_of_an_ablation_draws_the_bar_chart_and_each_row(tmp_path):
  root = tmp_path / "ablation"
  for k, method in enumerate(("real_only", "cwgan_gm")):
    row = make_workdir(str(root / method), seeds=(1,), with_samples=())
    metric_writers.write_json_atomic(os.path.join(row, "results.json"), {
        "method": method, "paper_row": method,
        "metrics": {n: {"mean": 20.0 + k, "std": 0.5}
                    for n in ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h")}})
  written, _ = plotting.plot_workdir(str(root), projections=("pca",))
  assert str(root / "plots" / "ablation.png") in written
  assert str(root / "cwgan_gm" / "plots" / "training.png") in written
  assert_png_with_content(root / "plots" / "ablation.png")


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
