"""The presets in experiments/configs/ and their `:smoke` argument."""

import importlib

import pytest

from experiments import cli
from experiments import configs
from gmn_jax import config as gmn_config
from gmn_jax import config_utils
from gmn_jax.errors import ConfigError

PRESETS = ("apy", "awa1", "awa2", "cub", "digits", "flo", "sun")
# The fields a smoke run changes, and nothing else: the budget of stage 1
# (iterations, host-call size, log and checkpoint periods), of stage 2
# (final-classifier epochs and seeds), of the L_CLS pretraining, and one
# generator seed.
SMOKE_FIELDS = {"seeds", "train.num_iterations", "train.iterations_per_call",
                "train.log_every", "train.checkpoint_every", "cls.pretrain_epochs",
                "eval.epochs", "eval.num_classifier_seeds"}


def _preset(name):
  return importlib.import_module(f"experiments.configs.{name}")


def test_the_presets_are_the_files_of_experiments_configs():
  assert tuple(cli.preset_names()) == PRESETS


@pytest.mark.parametrize("name", PRESETS)
def test_full_and_smoke_presets_validate(name):
  gmn_config.validate(_preset(name).get_config(), check_data_dir=False)
  gmn_config.validate(_preset(name).get_config("smoke"), check_data_dir=False)


@pytest.mark.parametrize("name", PRESETS)
def test_smoke_differs_from_the_full_preset_only_in_the_budget(name):
  full = config_utils.config_fingerprint(_preset(name).get_config())
  smoke = config_utils.config_fingerprint(_preset(name).get_config("smoke"))
  changed = {field for field in full if full[field] != smoke[field]}
  assert changed == SMOKE_FIELDS
  assert set(configs.SMOKE_BUDGET) == SMOKE_FIELDS
  # A budget that cuts, never one that grows.
  for field in SMOKE_FIELDS - {"seeds"}:
    assert smoke[field] < full[field], field
  assert len(smoke["seeds"]) < len(full["seeds"])
  # Every host call ends at a checkpoint and a log line, and there are two.
  assert smoke["train.num_iterations"] == 2 * smoke["train.iterations_per_call"]
  assert smoke["train.checkpoint_every"] == smoke["train.iterations_per_call"]
  assert smoke["train.log_every"] == smoke["train.iterations_per_call"]


@pytest.mark.parametrize("arg", ["fast", "Smoke", "smoke:1"])
def test_an_unknown_argument_is_a_config_error(arg):
  with pytest.raises(ConfigError, match=f"unknown config argument '{arg}' "
                     r"\(expected nothing or :smoke\)"):
    _preset("awa1").get_config(arg)


def test_an_empty_argument_is_the_full_preset():
  assert (config_utils.config_fingerprint(_preset("cub").get_config(""))
          == config_utils.config_fingerprint(_preset("cub").get_config()))
