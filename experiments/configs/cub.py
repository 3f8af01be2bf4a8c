"""CUB: the reference's GMN configuration (scripts gmn_CUB.sh, common_CUB_hps.sh).

The reference concatenates the 312 attributes with the 1024-d sentence
embedding (K = 1336, `embedding="att+sent"`, needs CUB/sent_splits.mat); use
`--config.embedding=att` for the attribute-only setting most papers report.
"""

from experiments import configs
from gmn_jax import config as gmn_config


def get_config(arg=None):
  """The preset; `arg` "smoke" (`--config=...py:smoke`) gives its smoke budget."""
  c = gmn_config.get_base_config()
  c.dataset = "CUB"
  c.data_dir = "data/xlsa17/CUB"
  c.embedding = "att+sent"
  return configs.select(c, arg)  # Every other default is the reference's CUB setting.
