"""Synthetic datasets with the real shapes of an xlsa17 benchmark.

The benchmark times stage 1 and the final classifier on in-memory data whose
shapes (class counts, feature and embedding sizes) are a real dataset's; the
values do not matter to the timing.
"""

from typing import Optional

import ml_collections
import numpy as np

from gmn_jax.data import synthetic
from gmn_jax.data.dataset import ZSLDataset
from gmn_jax.errors import ConfigError

# Sentence embeddings of CUB (and FLO's only embedding) have 1024 dimensions.
SENTENCE_DIM = 1024


def embedding_dim_of(config: ml_collections.ConfigDict, shape: synthetic.DatasetShape) -> int:
  """K for the config's embedding on a dataset of this shape.

  Args:
    config: the configuration (reads `embedding`).
    shape: the dataset's preset.

  Returns:
    The embedding size.
  """
  if config.embedding == "sent":
    return SENTENCE_DIM
  if config.embedding == "att+sent":
    return shape.embedding_dim + SENTENCE_DIM
  return shape.embedding_dim


def benchmark_dataset(config: ml_collections.ConfigDict, *, num_seen: Optional[int] = None,
                      seed: int = 0) -> ZSLDataset:
  """A synthetic dataset with the real shapes of `config.dataset`.

  Args:
    config: the configuration (reads `dataset` and `embedding`).
    num_seen: replace the number of seen classes (the training features are
      dealt round-robin over them); None keeps the preset's.
    seed: random seed.

  Returns:
    The in-memory dataset.

  Raises:
    ConfigError: when the dataset has no preset.
  """
  name = str(config.dataset).upper()
  if name not in synthetic.PRESETS:
    raise ConfigError(f"config.dataset: expected one of {sorted(synthetic.PRESETS)} (a preset "
                      f"of real shapes), found {config.dataset!r}")
  shape = synthetic.PRESETS[name]
  dataset = synthetic.synthetic_dataset(synthetic.preset_att_splits(name, seed=seed),
                                        name=name, seed=seed)
  k = embedding_dim_of(config, shape)
  if num_seen is not None:
    dataset = _with_seen_classes(dataset, num_seen)
  if num_seen is not None or k != dataset.embedding_dim:
    embeddings = synthetic.make_class_embeddings(dataset.num_classes, k, seed=seed)
    dataset = dataset.replace(class_embeddings=embeddings.astype(np.float32))
  return dataset


def _with_seen_classes(dataset: ZSLDataset, num_seen: int) -> ZSLDataset:
  """The same features relabelled: num_seen seen classes, then the unseen ones."""
  rng = np.random.default_rng(num_seen)
  num_unseen = dataset.unseen_classes.size
  unseen_local = np.searchsorted(dataset.unseen_classes, dataset.test_unseen_labels)

  def deal(n):
    return rng.permutation(np.arange(n) % num_seen).astype(np.int32)

  return dataset.replace(
      train_labels=deal(dataset.train_labels.size),
      test_seen_labels=deal(dataset.test_seen_labels.size),
      test_unseen_labels=(num_seen + unseen_local).astype(np.int32),
      class_embeddings=np.zeros((num_seen + num_unseen, dataset.embedding_dim), np.float32),
      seen_classes=np.arange(num_seen, dtype=np.int32),
      unseen_classes=np.arange(num_seen, num_seen + num_unseen, dtype=np.int32),
      class_names=None)
