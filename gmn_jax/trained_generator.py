"""A run's trained generator, reloaded from its workdir: sample features for any classes.

  import jax
  from gmn_jax import trained_generator

  generator = trained_generator.load_generator("/tmp/gmn_digits", seed=1)
  features, labels = generator.sample(class_embeddings, 300, jax.random.key(0))

`load_generator(workdir, seed)` rebuilds the generator a training run
(`train.train_and_evaluate`) left in `workdir` and needs nothing but the
workdir: not the dataset, not the config file it was started from.

* The architecture comes from `workdir/config.json` (`generator.kind`,
  `generator.noise_dim`, `generator.hidden_dims`); the two sizes that come
  from the data, the embedding width K and the feature width D, are read from
  the array shapes of the checkpoint itself (orbax metadata: no array is
  read for that), and the module built from them must give exactly the
  checkpoint's parameter shapes. The checkpoint is the one source that exists
  for every seed from its first save on and that cannot disagree with the
  parameters restored; results.json's `data` entry appears only when every
  seed has finished.
* Only the generator's parameters (and the iteration counter) are read from
  the newest checkpoint of `checkpoints/seed_<s>/`, by an orbax partial
  restore; the critic, the optimiser states and the rest of the training
  state stay on disk.
* The checkpoint directory is opened read-only: a run that is still
  training in the same workdir is never disturbed (the training-side
  `checkpoint.Checkpointer` deletes the leftovers of interrupted saves when
  it opens a directory, which could be another process's save in progress).

`TrainedGenerator.sample` draws through `synthesis.synthesize` with the
float32 generator module, exactly as stage 2 of the run did: with the same
key, classes and counts it returns the run's own synthetic features bit for
bit (for example `seed_<s>/samples.npz`, drawn with
`jax.random.fold_in(train_state.seed_keys(seed).eval, 1)`).

The features are in the run's feature space: normalised as `config.feature_norm`
says (fitted on the run's training features). The class embeddings must be in
the run's embedding space too (xlsa17 and digits runs L2-normalise each
class's vector; see docs/generators.md).
"""

import contextlib
import dataclasses
import functools
import logging as python_logging
import os
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from gmn_jax import config as gmn_config
from gmn_jax import errors
from gmn_jax import models
from gmn_jax import synthesis
from gmn_jax import workdir as workdirs

# The items of a step directory (the layout gmn_jax.checkpoint documents).
_STATE_ITEM, _EXTRA_ITEM = "state", "extra"
# The "path" of in-memory arguments in DataError messages.
INPUT = "sample() arguments"


@dataclasses.dataclass(frozen=True, eq=False)
class TrainedGenerator:
  """One seed's generator, restored from a run's checkpoint.

  Attributes:
    module: the float32 `models.Generator` (the module stage 2 samples with).
    params: its parameters (device arrays, the layout of `models`).
    workdir: the run's directory.
    seed: the generator seed.
    iteration: the generator iterations the restored checkpoint holds.
    num_iterations: the iterations the run's stage 1 has in all.
    config: the run's config, rebuilt from its config.json.
  """

  module: models.Generator
  params: Any
  workdir: str
  seed: int
  iteration: int
  num_iterations: int
  config: ml_collections.ConfigDict

  @property
  def embedding_dim(self) -> int:
    """K, the width of the class embeddings the generator takes."""
    return self.module.embedding_dim

  @property
  def feature_dim(self) -> int:
    """D, the width of the features it generates."""
    return self.module.feature_dim

  @property
  def finished(self) -> bool:
    """Whether the checkpoint is the end of stage 1."""
    return self.iteration >= self.num_iterations

  @property
  def sample_fn(self) -> synthesis.SampleFn:
    """`fn(params, embeddings (B, K), key) -> (B, D)`, for `synthesis.synthesize`."""
    return models.sample_fn(self.module)

  def sample(self, class_embeddings, num_per_class, key, *,
             class_ids: Optional[Sequence[int]] = None,
             chunk_size: int = 4096) -> Tuple[np.ndarray, np.ndarray]:
    """Generates features for classes given by their embeddings.

    The features are grouped by class in the order of `class_ids`. Drawn by
    `synthesis.synthesize` (chunk i with `jax.random.fold_in(key, i)`), so
    the same key, classes, counts and chunk size give the same features as
    the run's own synthesis.

    Args:
      class_embeddings: (C, K) embeddings, one row per class: the dataset's
        (`ZSLDataset.class_embeddings`), or new classes'.
      num_per_class: features per class: an int, or one int per class of
        `class_ids`.
      key: a PRNG key (`jax.random.key`), or an int seed of one.
      class_ids: the rows of `class_embeddings` to generate for (default:
        every row, in order).
      chunk_size: the most rows generated per compiled call.

    Returns:
      (features (N, D) float32, labels (N,) int32): numpy arrays; each label
      is the row of `class_embeddings` its feature was generated for.

    Raises:
      DataError: embeddings that are not a finite (C, K) array of this
        generator's width K, class ids outside [0, C), or counts that are not
        non-negative ints aligned with the class ids.
    """
    embeddings = np.asarray(class_embeddings)
    if (embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim
        or not np.issubdtype(embeddings.dtype, np.number)):
      raise errors.DataError(
          INPUT, "class_embeddings",
          f"a (C, {self.embedding_dim}) array (this generator takes "
          f"{self.embedding_dim}-d class embeddings)",
          f"{embeddings.dtype} of shape {embeddings.shape}")
    embeddings = embeddings.astype(np.float32)
    if not np.all(np.isfinite(embeddings)):
      raise errors.DataError(INPUT, "class_embeddings", "finite values",
                             "NaN or infinite values")
    ids = np.arange(embeddings.shape[0]) if class_ids is None else class_ids
    if isinstance(key, (int, np.integer)):
      key = jax.random.key(int(key))
    features, labels = synthesis.synthesize(self.sample_fn, self.params, key, ids, embeddings,
                                            num_per_class, chunk_size=chunk_size)
    return np.asarray(features), np.asarray(labels)


def read_run_config(workdir) -> ml_collections.ConfigDict:
  """The config a run was made with, rebuilt from its config.json.

  Fields the current schema no longer has are accepted only with the value
  that meant what the code does now (`workdir.RETIRED_FIELDS`); fields that
  config.json lacks (a workdir written before they existed) take their
  defaults.

  Args:
    workdir: the run's directory.

  Returns:
    The validated ConfigDict.

  Raises:
    DataError: no such directory, or no readable config.json in it.
    ConfigError: config.json holds unknown fields or invalid values.
  """
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise errors.DataError(workdir, None, "a run's workdir (the --workdir of a training run)",
                           "a file" if os.path.exists(workdir) else "no such directory")
  path = os.path.join(workdir, workdirs.CONFIG_FILE)
  if not os.path.isfile(path):
    raise errors.DataError(path, None, "the config.json a training run writes first",
                           "no such file (not a workdir of experiments.train?)")
  flat = workdirs.stored_config(workdir)
  if not isinstance(flat, dict):
    raise errors.DataError(path, None, "a JSON object of config fields",
                           type(flat).__name__)
  config = gmn_config.get_base_config()
  unknown, problems = [], []
  for field, value in sorted(flat.items()):
    if field in workdirs.RETIRED_FIELDS:  # no longer a field; nothing here reads it
      continue
    *parents, leaf = field.split(".")
    node = config
    for name in parents:
      node = node.get(name) if isinstance(node, ml_collections.ConfigDict) else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      unknown.append(field)
      continue
    default = node[leaf]
    if isinstance(value, list) and isinstance(default, tuple):
      value = tuple(value)
    if isinstance(value, int) and not isinstance(value, bool) and isinstance(default, float):
      value = float(value)
    try:
      node[leaf] = value
    except (TypeError, ValueError) as error:
      problems.append(f"{field}: {' '.join(str(error).split())}")
  if unknown:
    raise errors.ConfigError(
        f"{path}: expected the fields of this version's config, found unknown fields "
        f"{', '.join(unknown)} (written by another version of gmn_jax?)")
  if problems:
    raise errors.ConfigError(f"{path}: {'; '.join(problems)}")
  try:
    gmn_config.validate(config, check_data_dir=False)
  except errors.ConfigError as error:
    raise errors.ConfigError(f"{path}: {error}") from error
  return config


def load_generator(workdir, seed: Optional[int] = None, *,
                   allow_unfinished: bool = False) -> TrainedGenerator:
  """Restores one seed's generator from the newest checkpoint of a run.

  Args:
    workdir: the run's directory (`--workdir` of experiments.train).
    seed: the generator seed; None takes the run's first seed.
    allow_unfinished: accept a checkpoint from before the end of stage 1 (a
      run still training, or stopped), i.e. a partly trained generator.

  Returns:
    The `TrainedGenerator`.

  Raises:
    DataError: no workdir or config.json; no checkpoint for the seed yet; an
      unfinished stage 1 without `allow_unfinished`; a checkpoint whose
      generator does not match config.json or cannot be read.
    ConfigError: config.json is invalid, names a method without a generator
      (real_only), or `seed` is not one of the run's seeds.
  """
  workdir = os.fspath(workdir)
  config = read_run_config(workdir)
  config_path = os.path.join(workdir, workdirs.CONFIG_FILE)
  if not gmn_config.get_variant(config).uses_generator:
    raise errors.ConfigError(
        f"{config_path} [method]: expected a method that trains a generator, found "
        f"{config.method!r} (the real-features-only baseline has no generator)")
  seeds = [int(s) for s in config.seeds]
  seed = seeds[0] if seed is None else seed
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) not in seeds:
    raise errors.ConfigError(
        f"{config_path} [seeds]: expected the seed to be one of the run's seeds "
        f"{', '.join(map(str, seeds))}, found {seed!r}")
  seed = int(seed)
  # orbax reads absolute paths only.
  directory = os.path.abspath(workdirs.checkpoint_dir(workdir, seed))
  num_iterations = int(config.train.num_iterations)
  none_yet = f"no checkpoint (stage 1 of seed {seed} has not saved one yet)"
  if not os.path.isdir(directory):
    raise errors.DataError(directory, None, f"a stage-1 checkpoint of seed {seed}", none_yet)
  with _read_only_manager(directory) as manager:
    step = manager.latest_step()
    if step is None:
      raise errors.DataError(directory, None, f"a stage-1 checkpoint of seed {seed}", none_yet)
    if step < num_iterations and not allow_unfinished:
      raise errors.DataError(
          directory, None,
          f"a finished stage 1 ({num_iterations} generator iterations)",
          f"its newest checkpoint at iteration {step}: stage 1 of seed {seed} is unfinished "
          "(pass allow_unfinished=True, or --allow_unfinished, to sample from the partly "
          "trained generator)")
    step_dir = os.path.join(directory, str(step))
    stored = _stored_generator_shapes(manager, step, step_dir)
    module = _generator_module(config, stored, step_dir)
    params, iteration = _restore_generator(manager, step, step_dir, stored)
  if iteration != step:
    raise errors.DataError(step_dir, f"{_STATE_ITEM}/iteration", f"iteration {step}", iteration)
  params = jax.device_put(params, jax.local_devices()[0])
  return TrainedGenerator(module=module, params=params, workdir=workdir, seed=seed,
                          iteration=iteration, num_iterations=num_iterations, config=config)


class _DropMessage(python_logging.Filter):
  """Drops log records whose message contains a text."""

  def __init__(self, text: str):
    super().__init__()
    self.text = text

  def filter(self, record) -> bool:
    return self.text not in record.getMessage()


@contextlib.contextmanager
def _read_only_manager(directory: str):
  """An orbax CheckpointManager that never writes, creates or deletes anything."""
  options = ocp.CheckpointManagerOptions(read_only=True, create=False, max_to_keep=None,
                                         save_interval_steps=0, cleanup_tmp_directories=False)
  # A read-only manager announces itself with a warning every time it opens.
  absl_logger = python_logging.getLogger("absl")
  quiet = _DropMessage("Given directory is read only")
  absl_logger.addFilter(quiet)
  try:
    manager = ocp.CheckpointManager(
        directory, options=options,
        item_handlers={_STATE_ITEM: ocp.PyTreeCheckpointHandler(),
                       _EXTRA_ITEM: ocp.JsonCheckpointHandler()})
  finally:
    absl_logger.removeFilter(quiet)
  try:
    yield manager
  finally:
    manager.close()


def _path_str(path) -> str:
  """'layers/layer_0/kernel' for a jax key path of nested dicts."""
  return "/".join(str(getattr(entry, "key", entry)) for entry in path)


def _stored_generator_shapes(manager, step: int, step_dir: str):
  """The stored generator subtree as ShapeDtypeStructs (metadata only)."""
  try:
    metadata = manager.item_metadata(step)[_STATE_ITEM]
  except Exception as error:  # pylint: disable=broad-except
    # A damaged step: orbax's own errors vary.
    raise errors.DataError(
        step_dir, None, "a readable orbax checkpoint",
        f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    ) from error
  tree = getattr(metadata, "tree", metadata)
  if not isinstance(tree, dict) or not isinstance(tree.get("generator"), dict):
    raise errors.DataError(step_dir, f"{_STATE_ITEM}/generator",
                           "the generator's parameters (a training state of gmn_jax)", "none")
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(tuple(leaf.shape), leaf.dtype),
                      tree["generator"])


def _generator_module(config: ml_collections.ConfigDict, stored, step_dir: str):
  """The float32 generator of config.json with K and D from the stored shapes.

  K is the fan-in of the layer that reads the embedding (`mu` for
  latent_noise, the embedding block of the first layer for
  attribute_concat), D the width of the last layer's bias. The module built
  from them must have exactly the stored parameter shapes.
  """
  kind = config.generator.kind
  hidden = tuple(int(h) for h in config.generator.hidden_dims)
  layers = stored.get("layers", {})
  try:
    feature_dim = int(layers[f"layer_{len(hidden)}"]["bias"].shape[0])
    if kind == "latent_noise":
      embedding_dim = int(stored["mu"]["kernel"].shape[0])
    else:
      embedding_dim = int(layers["layer_0"]["kernel_embedding"].shape[0])
  except (KeyError, IndexError, TypeError):
    embedding_dim = feature_dim = None
  found = ", ".join(
      f"{_path_str(p)} {np.dtype(s.dtype).name}{s.shape}"
      for p, s in jax.tree_util.tree_flatten_with_path(stored)[0])
  expected = (f"the parameters of a {kind} generator with hidden layers {list(hidden)} and "
              f"noise_dim {config.generator.noise_dim} (config.json)")
  if embedding_dim is None:
    raise errors.DataError(step_dir, f"{_STATE_ITEM}/generator", expected, found)
  module = models.Generator(kind, embedding_dim, feature_dim,
                            config.generator.noise_dim or embedding_dim, hidden, jnp.float32)
  wanted = jax.eval_shape(functools.partial(models.init_generator, module),
                          jax.random.key(0))
  if (jax.tree.structure(wanted) != jax.tree.structure(stored)
      or any(w.shape != s.shape or w.dtype != s.dtype
             for w, s in zip(jax.tree.leaves(wanted), jax.tree.leaves(stored)))):
    raise errors.DataError(step_dir, f"{_STATE_ITEM}/generator", expected, found)
  return module


def _restore_generator(manager, step: int, step_dir: str, stored):
  """(generator params as numpy arrays, the stored iteration), a partial restore."""
  item = {"generator": stored, "iteration": jax.ShapeDtypeStruct((), np.int32)}
  restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
  try:
    restored = manager.restore(step, args=ocp.args.Composite(**{
        _STATE_ITEM: ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                            partial_restore=True)}))
  except Exception as error:  # pylint: disable=broad-except
    raise errors.DataError(
        step_dir, None, "a readable orbax checkpoint",
        f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
    ) from error
  state = restored[_STATE_ITEM]
  return state["generator"], int(state["iteration"])
