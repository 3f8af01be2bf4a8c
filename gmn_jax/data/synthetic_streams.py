"""The seeded random streams of the synthetic data generator.

Every random component of the generator draws from its own stream, keyed by
(seed, stream id), so that changing one size (e.g. the number of images)
leaves the other components unchanged. The ids live in this one module so
that no two components can share a stream by accident; changing one changes
every generated file.
"""

import numpy as np

# Features (synthetic_features): the fixed maps, the class-level draws, and
# the per-image draws (one sub-stream per block of rows).
FEATURE_MAP, CLASSES, SAMPLES = 0, 1, 2
# Labels (synthetic_labels): unseen classes, validation classes, per-class
# count weights, and the assignment of images to classes.
UNSEEN, VALIDATION, COUNTS, ASSIGN = 10, 11, 12, 13
# Presets: class embeddings (synthetic_embeddings) and loc arrays
# (synthetic_presets).
EMBEDDINGS, LOCS = 20, 21


def rng(seed: int, *stream: int) -> np.random.Generator:
  """The numpy generator of one stream.

  Args:
    seed: the generator's seed.
    *stream: the stream id, optionally followed by sub-stream ids.

  Returns:
    A fresh np.random.Generator, the same for the same arguments.
  """
  return np.random.default_rng([int(seed), *stream])
