"""The embedded default: scikit-learn's 8x8 digits with seven-segment attributes.

Small networks and few iterations so that all three seeds train and evaluate
in about a minute on two CPU cores; the method and its switches are GMN's.
Calibrated on this dataset (docs/results.md): 2,000 generator iterations
(longer or faster training did not raise H once 300 synthetic features per
unseen class are used), GM over all 7 seen classes every iteration with the
reference's β = 100, and 300 synthetic features per unseen class (about
twice the real count of a seen class), which balances u against s in the
final classifier.
"""

from experiments import configs
from gmn_jax import config as gmn_config


def get_config(arg=None):
  """The preset; `arg` "smoke" (`--config=...py:smoke`) gives its smoke budget."""
  c = gmn_config.get_base_config()
  c.dataset = "digits"
  c.data_dir = "builtin:digits"
  c.generator.noise_dim = 16
  c.generator.hidden_dims = (128,)
  c.critic.hidden_dims = (128,)
  c.train.num_iterations = 2000
  c.train.batch_size = 64
  c.train.iterations_per_call = 250
  c.train.log_every = 250
  c.train.checkpoint_every = 1000
  c.gm.weight = 100.0
  c.gm.num_classes = 0  # every seen digit, every iteration (7 on test, 5 on validation)
  c.gm.real_per_class = 64
  c.gm.fake_repeat = 2
  c.eval.epochs = 50
  c.eval.batch_size = 64
  c.eval.lr = 0.01
  c.eval.weight_decay = 1e-3
  c.eval.n_synth_unseen = 300
  c.eval.num_classifier_seeds = 5
  return configs.select(c, arg)
