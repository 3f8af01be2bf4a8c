"""The presets' config arguments: `--config=experiments/configs/<ds>.py:smoke`.

Every preset's `get_config(arg=None)` ends with `select(config, arg)`: no
argument gives the full configuration; `smoke` gives the same dataset, shapes
and method on a budget small enough to check a real-shaped dataset end to
end in a few minutes on a laptop CPU (docs/configuration.md, "Smoke runs").
ml_collections' config_flags passes the text after the ':' as `arg`.
"""

from gmn_jax.errors import ConfigError

# The budget a smoke run uses: field -> value. Nothing else differs from
# the full preset (tests/test_configs.py holds this set).
SMOKE_BUDGET = {
    "seeds": (1,),                    # one generator seed
    "train.num_iterations": 20,       # generator iterations (each with n_critic critic steps)
    "train.iterations_per_call": 10,  # two host calls, each ending at a checkpoint
    "train.log_every": 10,            # a progress line and a metrics point per call
    "train.checkpoint_every": 10,     # a checkpoint after each call
    "cls.pretrain_epochs": 2,         # the frozen L_CLS classifier (methods *_cls)
    "eval.epochs": 5,                 # final-classifier epochs
    "eval.num_classifier_seeds": 2,   # final classifiers per generator seed
}

ARGUMENTS = ("smoke",)


def smoke(config):
  """`config` with the smoke budget (`SMOKE_BUDGET`); everything else unchanged.

  Args:
    config: a full preset's ConfigDict (changed in place).

  Returns:
    The same ConfigDict.
  """
  config.update_from_flattened_dict(SMOKE_BUDGET)
  return config


def select(config, arg=None):
  """The preset for a config argument: none (the full run) or `smoke`.

  Args:
    config: the full preset.
    arg: the text after ':' in `--config=FILE:ARG`, or None.

  Returns:
    The ConfigDict to run.

  Raises:
    ConfigError: for an argument other than those in `ARGUMENTS`.
  """
  if arg is None or arg == "":
    return config
  if arg == "smoke":
    return smoke(config)
  raise ConfigError(f"unknown config argument {arg!r} (expected nothing or "
                    f"{' or '.join(':' + a for a in ARGUMENTS)})")
