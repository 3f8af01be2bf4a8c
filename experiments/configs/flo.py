"""FLO (no reference script): 82 seen / 20 unseen flowers, 1024-d sentences.

Per-class counts (~70 trainval images) and a sentence embedding are close to
CUB's, so CUB's settings apply, with the embedding FLO ships.
"""

from experiments import configs
from gmn_jax import config as gmn_config


def get_config(arg=None):
  """The preset; `arg` "smoke" (`--config=...py:smoke`) gives its smoke budget."""
  c = gmn_config.get_base_config()
  c.dataset = "FLO"
  c.data_dir = "data/xlsa17/FLO"
  c.embedding = "att"  # FLO's att_splits.mat `att` is the sentence embedding
  c.eval.n_synth_unseen = 300
  return configs.select(c, arg)
