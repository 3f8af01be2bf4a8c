"""AWA1: the reference's GMN configuration (scripts gmn_AWA1.sh, common_AWA1_hps.sh).

Adam betas (0.999, 0.999) are the reference's, as released.
"""

from experiments import configs
from gmn_jax import config as gmn_config


def get_config(arg=None):
  """The preset; `arg` "smoke" (`--config=...py:smoke`) gives its smoke budget."""
  c = gmn_config.get_base_config()
  c.dataset = "AWA1"
  c.data_dir = "data/xlsa17/AWA1"
  c.generator.hidden_dims = (2048, 2048)
  c.critic.hidden_dims = (2048, 2048)
  c.train.adam_b1 = 0.999
  c.train.adam_b2 = 0.999
  c.gm.num_classes = 2
  c.gm.real_per_class = 256
  c.gm.fake_repeat = 2
  c.eval.lr = 1e-3
  c.eval.lr_decay = 0.97
  c.eval.weight_decay = 0.1
  c.eval.n_synth_unseen = 2300
  c.eval.n_synth_seen = 600
  return configs.select(c, arg)
