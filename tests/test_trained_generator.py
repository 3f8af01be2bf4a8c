"""gmn_jax.trained_generator and experiments/synthesize.py: reload a run's generator, sample.

One tiny run on the embedded digits (test_train_support's tiny config: one
seed, 4 generator iterations) is trained once for the module; the digits
are also written out as an xlsa17 directory for --data_dir. The error cases
work on copies of the workdir with one thing broken.
"""

import contextlib
import io
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.io

from experiments import synthesize
from gmn_jax import train
from gmn_jax import train_state
from gmn_jax import trained_generator
from gmn_jax import workdir as workdirs
from gmn_jax.data import mat_io
from gmn_jax.data import registry
from gmn_jax.data import xlsa17
from gmn_jax.errors import ConfigError
from gmn_jax.errors import DataError
from test_train_support import tiny_config
from test_train_support import tiny_dataset

REPO = pathlib.Path(__file__).resolve().parents[1]
SEED = 1


def _loc(rows):
  return (np.asarray(rows) + 1).astype(np.float64).reshape(-1, 1)


def write_xlsa17(path: pathlib.Path, dataset) -> pathlib.Path:
  """The dataset as an xlsa17 directory (res101.mat and att_splits.mat)."""
  parts = [(dataset.train_features, dataset.train_labels),
           (dataset.test_seen_features, dataset.test_seen_labels),
           (dataset.test_unseen_features, dataset.test_unseen_labels)]
  features = np.concatenate([f for f, _ in parts])
  labels = np.concatenate([l for _, l in parts])
  ends = np.cumsum([0] + [l.size for _, l in parts])
  names = np.empty((dataset.num_classes, 1), dtype=object)
  names[:, 0] = [f"{c + 1:03d}.class_{c}" for c in range(dataset.num_classes)]
  path.mkdir(parents=True)
  scipy.io.savemat(path / "res101.mat", {"features": features.T.astype(np.float64),
                                         "labels": (labels + 1.0).reshape(-1, 1)})
  scipy.io.savemat(path / "att_splits.mat", {
      "att": np.asarray(dataset.class_embeddings, np.float64).T, "allclasses_names": names,
      **{key: _loc(np.arange(ends[i], ends[i + 1]))
         for i, key in enumerate(xlsa17.TEST_LOC_KEYS)}})
  return path


class Run:
  """The module's trained run and the data around it."""

  def __init__(self, root: pathlib.Path):
    self.dataset = registry.load_dataset("builtin:digits")  # What the run trained on.
    self.data_dir = write_xlsa17(root / "DIGITS", self.dataset)
    self.xlsa17_dataset = registry.load_dataset(self.data_dir)
    self.workdir = root / "run"
    train.train_and_evaluate(tiny_config(seeds=(SEED,)), self.workdir)

  def __getitem__(self, index):  # (workdir, data_dir, dataset)
    return (self.workdir, self.data_dir, self.dataset)[index]


@pytest.fixture(name="run", scope="module")
def fixture_run(tmp_path_factory):
  """A finished tiny digits run."""
  return Run(tmp_path_factory.mktemp("trained_generator"))


def broken_copy(run, tmp_path, change):
  """A copy of the run's workdir with `change(copy)` applied."""
  copy = tmp_path / "broken"
  shutil.copytree(run[0], copy)
  change(copy)
  return copy


def edit_config(**fields):
  def change(workdir):
    path = workdir / workdirs.CONFIG_FILE
    stored = json.loads(path.read_text())
    stored["config"] = {**stored["config"], **fields}
    path.write_text(json.dumps(stored))
  return change


def keep_only_step(step):
  def change(workdir):
    directory = pathlib.Path(workdirs.checkpoint_dir(workdir, SEED))
    for entry in directory.iterdir():
      if entry.name.isdigit() and int(entry.name) != step:
        shutil.rmtree(entry)
  return change


def _samples_key(seed):
  """The key train.train_and_evaluate draws samples.npz with."""
  return jax.random.fold_in(train_state.seed_keys(seed).eval, 1)


# ----------------------------------------------------------------------------
# The library.


def test_reload_reproduces_the_runs_own_samples_bit_for_bit(run):
  workdir, _, dataset = run
  generator = trained_generator.load_generator(workdir, SEED)
  assert (generator.seed, generator.iteration, generator.num_iterations) == (SEED, 4, 4)
  assert generator.finished
  assert (generator.embedding_dim, generator.feature_dim) == (9, 64)
  assert (generator.module.kind, generator.module.noise_dim,
          generator.module.hidden_dims) == ("latent_noise", 4, (8,))
  samples = np.load(os.path.join(workdirs.seed_dir(workdir, SEED), workdirs.SAMPLES_FILE))
  ids = samples["class_ids"]
  counts = np.array([np.sum(samples["generated_labels"] == c) for c in ids])
  features, labels = generator.sample(dataset.class_embeddings, counts, _samples_key(SEED),
                                      class_ids=ids)
  assert features.dtype == np.float32 and features.shape == samples["generated_features"].shape
  np.testing.assert_array_equal(features, samples["generated_features"])
  np.testing.assert_array_equal(labels, samples["generated_labels"])


def test_new_classes_get_the_right_shapes_and_keys_matter(run):
  generator = trained_generator.load_generator(run[0])  # The run's first seed.
  assert generator.seed == SEED
  new = np.random.default_rng(0).normal(size=(3, 9))
  features, labels = generator.sample(new, [2, 0, 5], jax.random.key(7), class_ids=[2, 1, 0])
  assert features.shape == (7, 64) and features.dtype == np.float32
  np.testing.assert_array_equal(labels, [2, 2, 0, 0, 0, 0, 0])
  assert np.all(features >= 0)
  again, _ = generator.sample(new, [2, 0, 5], 7, class_ids=[2, 1, 0])  # An int key.
  np.testing.assert_array_equal(features, again)
  other, _ = generator.sample(new, [2, 0, 5], jax.random.key(8), class_ids=[2, 1, 0])
  assert not np.allclose(features, other)
  everything, labels = generator.sample(new, 4, 0)
  assert everything.shape == (12, 64)
  np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 4))


def test_the_docs_example_runs_and_prints_what_the_docs_show(run):
  doc = REPO / "docs" / "generators.md"
  if not doc.is_file():
    pytest.skip("docs/ not present (installed package)")
  text = doc.read_text()
  code, shown = re.search(r"A runnable example.*?```python\n(.*?)```.*?```\n(.*?)```", text,
                          re.S).groups()
  assert 'W = "/tmp/gmn_digits"' in code
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    exec(code.replace('"/tmp/gmn_digits"', repr(str(run.workdir))), {})  # pylint: disable=exec-used
  printed, shown = printed.getvalue().splitlines(), shown.splitlines()
  # The docs' run trained 2,000 iterations, this one 4.
  assert printed[0] == shown[0].replace("2000", "4")
  assert printed[1:] == shown[1:]


def test_the_checkpoint_directory_is_read_only(run, tmp_path):
  # An orbax save in progress (another process still training) is left alone.
  def add_save_in_progress(workdir):
    (pathlib.Path(workdirs.checkpoint_dir(workdir, SEED)) / "6.orbax-checkpoint-tmp-1"
     / "state").mkdir(parents=True)
  workdir = broken_copy(run, tmp_path, add_save_in_progress)
  directory = pathlib.Path(workdirs.checkpoint_dir(workdir, SEED))
  before = sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))
  trained_generator.load_generator(workdir, SEED)
  assert sorted(str(p.relative_to(directory)) for p in directory.rglob("*")) == before


def test_an_unfinished_stage_1_needs_allow_unfinished(run, tmp_path):
  workdir = broken_copy(run, tmp_path, keep_only_step(2))
  with pytest.raises(DataError) as error:
    trained_generator.load_generator(workdir, SEED)
  message = str(error.value)
  assert "\n" not in message
  assert ("expected a finished stage 1 (4 generator iterations), found its newest checkpoint "
          "at iteration 2" in message)
  assert "allow_unfinished=True" in message
  partial = trained_generator.load_generator(workdir, SEED, allow_unfinished=True)
  assert (partial.iteration, partial.finished) == (2, False)
  final = trained_generator.load_generator(run[0], SEED)
  assert not np.array_equal(partial.params["mu"]["kernel"], final.params["mu"]["kernel"])
  line = synthesize.synthesize_to_file(workdir, tmp_path / "early.npz", data_dir=str(run[1]),
                                       allow_unfinished=True)
  assert line.endswith("from seed 1's generator at iteration 2 of 4 (stage 1 unfinished)")


def _real_only_workdir(run, tmp_path):
  workdir = tmp_path / "real_only"
  workdirs.prepare(tiny_config("real_only", seeds=(SEED,), data_dir=str(run[1])), str(workdir))
  return workdir


def _load_case(case, run, tmp_path):
  """(workdir, seed) of a broken run, per error case."""
  if case == "no_workdir":
    return tmp_path / "missing", SEED
  if case == "no_config":
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty", SEED
  if case == "real_only":
    return _real_only_workdir(run, tmp_path), SEED
  if case == "not_a_seed":
    return run[0], 5
  if case == "no_checkpoint":
    return broken_copy(run, tmp_path, lambda w: shutil.rmtree(w / "checkpoints")), SEED
  if case == "empty_checkpoint_dir":
    def empty(w):
      shutil.rmtree(w / "checkpoints" / f"seed_{SEED}")
      (w / "checkpoints" / f"seed_{SEED}").mkdir()
    return broken_copy(run, tmp_path, empty), SEED
  if case == "unfinished":
    return broken_copy(run, tmp_path, keep_only_step(2)), SEED
  if case == "unknown_field":
    return broken_copy(run, tmp_path, edit_config(**{"gm.wieght": 1.0})), SEED
  if case == "other_architecture":
    return broken_copy(run, tmp_path, edit_config(**{"generator.hidden_dims": [9]})), SEED
  raise AssertionError(case)


# case -> (error type, fragments of the one-line message).
LOAD_ERRORS = {
    "no_workdir": (DataError, ["missing: expected a run's workdir", "no such directory"]),
    "no_config": (DataError, ["config.json: expected the config.json a training run writes",
                              "no such file"]),
    "real_only": (ConfigError, ["config.json [method]: expected a method that trains a "
                                "generator, found 'real_only'"]),
    "not_a_seed": (ConfigError, ["config.json [seeds]: expected the seed to be one of the "
                                 "run's seeds 1, found 5"]),
    "no_checkpoint": (DataError, ["seed_1: expected a stage-1 checkpoint of seed 1, found no "
                                  "checkpoint"]),
    "empty_checkpoint_dir": (DataError, ["expected a stage-1 checkpoint of seed 1"]),
    "unfinished": (DataError, ["at iteration 2", "allow_unfinished=True"]),
    "unknown_field": (ConfigError, ["found unknown fields gm.wieght"]),
    "other_architecture": (DataError, ["[state/generator]: expected the parameters of a "
                                       "latent_noise generator with hidden layers [9]"]),
}


@pytest.mark.parametrize("case", sorted(LOAD_ERRORS))
def test_load_errors_are_one_line(case, run, tmp_path):
  workdir, seed = _load_case(case, run, tmp_path)
  error_type, fragments = LOAD_ERRORS[case]
  with pytest.raises(error_type) as error:
    trained_generator.load_generator(workdir, seed)
  message = str(error.value)
  assert "\n" not in message
  for fragment in fragments:
    assert fragment in message, message


def test_embeddings_of_the_wrong_width_are_refused(run):
  generator = trained_generator.load_generator(run[0], SEED)
  for bad in (np.ones((3, 4)), np.ones(9), np.array([["a"] * 9])):
    with pytest.raises(DataError, match=r"\[class_embeddings\]: expected a \(C, 9\) array "
                       r"\(this generator takes 9-d class embeddings\), found"):
      generator.sample(bad, 2, 0)
  with pytest.raises(DataError, match="finite values"):
    generator.sample(np.full((1, 9), np.nan), 2, 0)
  with pytest.raises(DataError, match="class_ids"):
    generator.sample(np.ones((2, 9)), 2, 0, class_ids=[2])


# ----------------------------------------------------------------------------
# The binary.


def run_binary(*args):
  return subprocess.run([sys.executable, "-m", "experiments.synthesize", *map(str, args)],
                        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_binary_writes_the_unseen_classes_of_an_xlsa17_directory_as_npz(run, tmp_path):
  workdir, data_dir, dataset = run.workdir, run.data_dir, run.xlsa17_dataset
  out = tmp_path / "unseen.npz"
  result = run_binary(f"--workdir={workdir}", f"--data_dir={data_dir}", f"--out={out}",
                      "--key_seed=3")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines() == [
      f"wrote {out}: 30 features (64-d) of 3 classes, 10 per class, from seed 1's generator "
      "at iteration 4"]
  assert sorted(os.listdir(tmp_path)) == ["unseen.npz"]  # No temporary file left.
  with np.load(out, allow_pickle=False) as written:
    np.testing.assert_array_equal(written["class_ids"], dataset.unseen_classes)
    np.testing.assert_array_equal(written["class_embeddings"], dataset.class_embeddings)
    assert list(written["class_names"]) == list(dataset.class_names)
    assert (int(written["seed"]), int(written["iteration"]), int(written["key_seed"]),
            str(written["feature_norm"])) == (1, 4, 3, "none")
    # eval.n_synth_unseen = 10 per class by default; the same as the API gives.
    features, labels = trained_generator.load_generator(workdir, SEED).sample(
        dataset.class_embeddings, 10, jax.random.key(3), class_ids=dataset.unseen_classes)
    assert written["features"].dtype == np.float32 and written["labels"].dtype == np.int32
    np.testing.assert_array_equal(written["features"], features)
    np.testing.assert_array_equal(written["labels"], labels)


def test_binary_writes_an_xlsa17_style_mat_that_loads_as_a_dataset(run, tmp_path):
  workdir, data_dir, dataset = run.workdir, run.data_dir, run.xlsa17_dataset
  out = tmp_path / "SYNTH" / "res101.mat"
  result = run_binary(f"--workdir={workdir}", f"--data_dir={data_dir}", "--classes=all",
                      "--num_per_class=4", f"--out={out}")
  assert result.returncode == 0, result.stderr[-3000:]
  assert "40 features (64-d) of 10 classes, 4 per class" in result.stdout
  variables = mat_io.load_mat(out)
  assert set(variables) == {"features", "labels"}
  assert variables["features"].shape == (64, 40) and variables["features"].dtype == np.float32
  assert variables["labels"].shape == (40, 1)
  np.testing.assert_array_equal(variables["labels"][:, 0], np.repeat(np.arange(10), 4) + 1)
  features, _ = trained_generator.load_generator(workdir, SEED).sample(
      dataset.class_embeddings, 4, 0)
  np.testing.assert_array_equal(variables["features"].T, features)
  # Beside a split file whose locs index it, it is a dataset directory.
  rows = lambda classes: np.flatnonzero(np.isin(variables["labels"][:, 0] - 1, classes))
  seen_rows = rows(dataset.seen_classes)
  splits = mat_io.load_mat(data_dir / "att_splits.mat", ["att", "allclasses_names"])
  scipy.io.savemat(out.parent / "att_splits.mat", {
      **splits, "trainval_loc": _loc(seen_rows[0::2]), "test_seen_loc": _loc(seen_rows[1::2]),
      "test_unseen_loc": _loc(rows(dataset.unseen_classes))})
  synthetic = xlsa17.load_xlsa17(out.parent)
  np.testing.assert_array_equal(synthetic.train_features, features[seen_rows[0::2]])
  np.testing.assert_array_equal(synthetic.unseen_classes, dataset.unseen_classes)
  np.testing.assert_array_equal(synthetic.class_names, dataset.class_names)


def test_new_classes_from_a_file_are_l2_normalised_on_request(run, tmp_path):
  embeddings = np.abs(np.random.default_rng(1).normal(size=(2, 9)))
  source = tmp_path / "new_classes.csv"
  np.savetxt(source, embeddings, delimiter=",")
  out = tmp_path / "new.mat"
  line = synthesize.synthesize_to_file(run[0], out, embeddings=str(source), l2_normalize=True,
                                       num_per_class=3)
  assert "6 features (64-d) of 2 classes, 3 per class" in line
  variables = mat_io.load_mat(out)
  np.testing.assert_array_equal(variables["labels"][:, 0], [1, 1, 1, 2, 2, 2])
  unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
  features, _ = trained_generator.load_generator(run[0], SEED).sample(
      unit.astype(np.float32), 3, 0)
  np.testing.assert_allclose(variables["features"].T, features, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("source, contents", [
    ("e.npy", lambda p, x: np.save(p, x)),
    ("e.npz", lambda p, x: np.savez(p, embeddings=x, names=np.array(["a", "b"]))),
    ("e.txt", lambda p, x: np.savetxt(p, x)),
    ("e.csv", lambda p, x: np.savetxt(p, x, delimiter=",", header="a comment")),
], ids=["npy", "npz", "txt", "csv"])
def test_every_embedding_file_format_reads_back(tmp_path, source, contents):
  x = np.arange(10, dtype=np.float32).reshape(2, 5) / 7
  contents(tmp_path / source, x)
  embeddings, names = synthesize.read_embeddings(tmp_path / source)
  np.testing.assert_allclose(embeddings, x, rtol=1e-6)
  assert embeddings.dtype == np.float32
  assert names == (("a", "b") if source.endswith(".npz") else None)


@pytest.mark.parametrize("write, fragment", [
    (lambda p: np.save(p / "e.npy", np.ones(5)), "e.npy: expected a (C, K) array of numbers"),
    (lambda p: np.savez(p / "e.npz", other=np.ones((2, 5))),
     "e.npz [embeddings]: expected a (C, K) array of class embeddings, found no such key "
     "(keys: other)"),
    (lambda p: np.savez(p / "e.npz", embeddings=np.ones((2, 5)), names=np.array(["a"])),
     "e.npz [names]: expected 2 class names"),
    (lambda p: (p / "e.csv").write_text("1,2\n3\n"), "e.csv: expected a readable file"),
    (lambda p: (p / "e.txt").write_text("1 nan\n"), "e.txt: expected finite numbers"),
    (lambda p: (p / "e.json").write_text("[]"), "--embeddings: expected a .npy, .npz, .csv"),
    (lambda p: None, "e.npy: expected a file of class embeddings, found no such file"),
], ids=["1d_npy", "npz_without_key", "npz_names", "ragged_csv", "nan_txt", "json", "missing"])
def test_bad_embedding_files_give_one_line(tmp_path, write, fragment):
  write(tmp_path)
  name = next((p.name for p in tmp_path.iterdir()), "e.npy")
  with pytest.raises((DataError, ConfigError)) as error:
    synthesize.read_embeddings(tmp_path / name)
  assert fragment in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("options, fragment", [
    (dict(data_dir="D", embeddings="e.npy"), "expected exactly one source of classes, found both"),
    (dict(), "expected exactly one source of classes, found neither"),
    (dict(embeddings="e.npy", classes="seen"), "--classes: expected only with --data_dir"),
    (dict(data_dir="D", l2_normalize=True), "--l2_normalize: expected only with --embeddings"),
    (dict(data_dir="D", out="x.csv"), "--out: expected a file ending in .npz or .mat"),
    (dict(data_dir="D", num_per_class=0), "--num_per_class: expected a positive integer"),
    (dict(data_dir="D", out=""), "--out: expected a .npz or .mat file to write"),
])
def test_bad_options_give_one_line(tmp_path, options, fragment):
  options = {"out": tmp_path / "x.npz", **options}
  with pytest.raises(ConfigError, match=None) as error:
    synthesize.synthesize_to_file(tmp_path, options.pop("out"), **options)
  assert fragment in str(error.value)


def test_out_is_replaced_only_with_overwrite(run, tmp_path):
  out = tmp_path / "x.npz"
  out.write_bytes(b"keep")
  with pytest.raises(ConfigError, match="--out: expected a file that does not exist yet "
                     r"\(or --overwrite\)"):
    synthesize.synthesize_to_file(run[0], out, data_dir=str(run[1]))
  assert out.read_bytes() == b"keep"
  line = synthesize.synthesize_to_file(run[0], out, data_dir=str(run[1]), classes="seen",
                                       num_per_class=2, overwrite=True)
  assert line.endswith("14 features (64-d) of 7 classes, 2 per class, from seed 1's "
                       "generator at iteration 4")
  with np.load(out) as written:
    assert written["features"].shape == (14, 64)
  assert sorted(os.listdir(tmp_path)) == ["x.npz"]


def test_a_data_dir_of_another_width_is_refused(run, tmp_path):
  other = write_xlsa17(tmp_path / "TINY", tiny_dataset())  # 5-d embeddings
  with pytest.raises(DataError, match=r"TINY \[embedding=att\]: expected 9-d class "
                     r"embeddings \(the width the run's generator takes\), found 5-d ones"):
    synthesize.synthesize_to_file(run.workdir, tmp_path / "x.npz", data_dir=str(other))


def _wrong_width_file(tmp_path):
  np.save(tmp_path / "wide.npy", np.ones((2, 7)))
  return tmp_path / "wide.npy"


# Load errors through the binary: exit 2, one line, no traceback. Every load
# error's message is checked in-process above; these cover each stage the
# binary fails at (config.json, the variant, the opened checkpoint, after the
# restore, the options) in a subprocess.
BINARY_ERRORS = ["no_workdir", "real_only", "unfinished"]


@pytest.mark.parametrize("case", BINARY_ERRORS + ["wrong_width", "existing_out", "bad_flag"])
def test_binary_errors_are_one_line_with_status_2(case, run, tmp_path):
  source = f"--data_dir={run[1]}"
  out = tmp_path / "out.npz"
  if case in BINARY_ERRORS:
    workdir, _ = _load_case(case, run, tmp_path)
    fragments = LOAD_ERRORS[case][1]
  elif case == "wrong_width":
    workdir, source = run[0], f"--embeddings={_wrong_width_file(tmp_path)}"
    fragments = ["wide.npy: expected 9 numbers per class", "found 7 (2 rows)"]
  elif case == "existing_out":
    workdir = run[0]
    out.write_bytes(b"")
    fragments = ["--out: expected a file that does not exist yet (or --overwrite)"]
  else:
    workdir, source = run[0], "--classes=bogus"
    fragments = ["flag --classes=bogus: value should be one of <unseen|seen|all>"]
  result = run_binary(f"--workdir={workdir}", source, f"--out={out}")
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  lines = result.stderr.splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
  for fragment in fragments:
    assert fragment in lines[0]
  assert result.stdout == ""
  if case != "existing_out":
    assert not out.exists()
