"""AWA2 (no reference script): AWA1's configuration, same classes and attributes.

AWA2 replaces AWA1's images with 37,322 new ones of the same 50 classes and
85 attributes, so the AWA1 hyperparameters are the natural choice.
"""

from experiments import configs
from experiments.configs import awa1


def get_config(arg=None):
  """The preset; `arg` "smoke" (`--config=...py:smoke`) gives its smoke budget."""
  c = awa1.get_config()
  c.dataset = "AWA2"
  c.data_dir = "data/xlsa17/AWA2"
  return configs.select(c, arg)
