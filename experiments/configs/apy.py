"""APY (no reference script): 20 seen / 12 unseen classes, 64 attributes.

Few, large classes as in AWA1 (trainval ~300 images per class), so AWA1's
network sizes and classifier settings, with GM over 4 of the 20 seen classes
per iteration and the reference's usual Adam betas (0.0, 0.999).
"""

from experiments import configs
from gmn_jax import config as gmn_config


def get_config(arg=None):
  """The preset; `arg` "smoke" (`--config=...py:smoke`) gives its smoke budget."""
  c = gmn_config.get_base_config()
  c.dataset = "APY"
  c.data_dir = "data/xlsa17/APY"
  c.generator.hidden_dims = (2048, 2048)
  c.critic.hidden_dims = (2048, 2048)
  c.gm.num_classes = 4
  c.gm.real_per_class = 128
  c.gm.fake_repeat = 2
  c.eval.lr = 1e-3
  c.eval.lr_decay = 0.97
  c.eval.weight_decay = 0.1
  c.eval.n_synth_unseen = 1000
  return configs.select(c, arg)
