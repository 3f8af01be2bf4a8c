"""Tests of gmn_jax.config_utils: validation, rules, fingerprints, diffs."""

import json

import ml_collections
from ml_collections import config_dict
import pytest

from gmn_jax import config_utils
from gmn_jax import errors
from gmn_jax.config_utils import Rule


def reference() -> ml_collections.ConfigDict:
  """A small reference config shaped like the project's."""
  c = ml_collections.ConfigDict()
  c.data_dir = "builtin:digits"
  c.method = "cwgan_gm"
  c.seeds = (1, 67, 99)
  c.note = None  # A plain None default: any type allowed.
  c.critic = ml_collections.ConfigDict()
  c.critic.hidden_dims = (1024,)
  c.critic.conditional = config_dict.placeholder(bool)
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 256
  c.train.lr = 1e-4
  c.train.class_balanced = True
  c.gm = ml_collections.ConfigDict()
  c.gm.weight = 100.0
  c.gm.num_classes = 5
  c.gm.classifier = "bilinear"
  c.extras = ml_collections.ConfigDict()  # Free-form.
  return c


RULES = (
    config_utils.positive_int("train.batch_size"),
    config_utils.positive("train.lr"),
    config_utils.non_negative("gm.weight"),
    config_utils.positive_int("gm.num_classes"),
    config_utils.one_of("gm.classifier", ("bilinear", "softmax")),
    config_utils.each_positive_int("critic.hidden_dims"),
    config_utils.existing_dir("data_dir", special_prefixes=("builtin:",)),
)


def problems_of(config, rules=RULES) -> str:
  """The ConfigError message validate_config raises for `config`."""
  with pytest.raises(errors.ConfigError) as info:
    config_utils.validate_config(config, reference(), rules)
  message = str(info.value)
  assert "\n" not in message
  return message


def test_valid_configs_pass():
  config = reference()
  config.train.batch_size = 64
  config.train.lr = 1  # An int where a float is expected is fine.
  config.critic.conditional = False
  config.note = {"anything": [1, 2]}
  config.seeds = [3, 4]
  config.extras.anything_goes = "yes"
  config_utils.validate_config(config, reference(), RULES)
  config_utils.validate_config(ml_collections.FrozenConfigDict(config),
                               reference(), RULES)
  config_utils.validate_config(config.to_dict(), reference(), RULES)


def test_mistyped_key_suggests_the_closest_known_key():
  config = reference()
  config.gm.wieght = 50.0
  assert problems_of(config) == (
      "config.gm.wieght is not a known field (did you mean config.gm.weight?)")


def test_mistyped_sub_config_is_reported_once_with_a_suggestion():
  config = reference().to_dict()
  config["trian"] = config.pop("train")
  message = problems_of(config)
  assert message == ("config.trian is not a known field (did you mean "
                     "config.train?); config.train is missing (a sub-config)")


def test_unknown_key_without_a_close_match_has_no_suggestion():
  config = reference()
  config.zzzzzz = 1
  assert problems_of(config) == "config.zzzzzz is not a known field"


def test_missing_field_names_its_default():
  config = reference().to_dict()
  del config["gm"]["weight"]
  assert problems_of(config) == (
      "config.gm.weight is missing (its default is 100.0)")


@pytest.mark.parametrize("path, value, expected", [
    ("train.batch_size", "256",
     "config.train.batch_size: expected int, found str '256'"),
    ("train.batch_size", 256.0,
     "config.train.batch_size: expected int, found float 256.0"),
    ("train.batch_size", True,
     "config.train.batch_size: expected int, found bool True"),
    ("train.class_balanced", 1,
     "config.train.class_balanced: expected bool, found int 1"),
    ("gm.weight", None, "config.gm.weight: expected float, found None"),
    ("critic.conditional", "yes",
     "config.critic.conditional: expected bool, found str 'yes'"),
    ("critic.hidden_dims", (1024.5,),
     "config.critic.hidden_dims: expected a tuple of int, found tuple "
     "(1024.5,)"),
    ("seeds", 3, "config.seeds: expected a tuple of int, found int 3"),
    ("gm", 5, "config.gm: expected a sub-config, found int 5"),
    ("train.lr", {"a": 1},
     "config.train.lr: expected float, found dict {'a': 1}"),
])
def test_wrong_types_are_named_with_expected_and_found(path, value, expected):
  config = reference().to_dict()  # A dict: ConfigDict would refuse these.
  section, _, key = path.rpartition(".")
  (config[section] if section else config)[key] = value
  # Rules on a mistyped field are skipped: one problem, not two.
  assert problems_of(config) == expected


def test_placeholder_accepts_none_and_its_declared_type():
  config = reference()
  config.critic.conditional = None
  config_utils.validate_config(config, reference(), RULES)
  config.critic.conditional = True
  config_utils.validate_config(config, reference(), RULES)


@pytest.mark.parametrize("path, value, expected", [
    ("train.batch_size", -3,
     "config.train.batch_size: expected a positive integer, found -3"),
    ("train.lr", 0.0, "config.train.lr: expected a positive number, found 0.0"),
    ("train.lr", float("inf"),
     "config.train.lr: expected a positive number, found inf"),
    ("gm.weight", -1.0, "config.gm.weight: expected a number >= 0, found -1.0"),
    ("gm.classifier", "svm",
     "config.gm.classifier: expected one of 'bilinear', 'softmax', found "
     "'svm'"),
    ("critic.hidden_dims", (512, 0),
     "config.critic.hidden_dims: expected a sequence of positive integers, "
     "found (512, 0)"),
    ("data_dir", "/no/such/dir",
     "config.data_dir: expected an existing directory or a value starting "
     "with 'builtin:', found '/no/such/dir'"),
])
def test_rules_report_impossible_values(path, value, expected):
  config = reference()
  section, _, key = path.rpartition(".")
  (config[section] if section else config)[key] = value
  assert problems_of(config) == expected


def test_every_problem_is_listed_on_one_line():
  config = reference()
  config.train.batch_size = 0
  config.gm.classifier = "svm"
  config.gm.wieght = 1.0
  message = problems_of(config)
  assert message.count("; ") == 2
  assert message.startswith("config.gm.wieght is not a known field")
  assert "config.train.batch_size: expected a positive integer" in message


def test_relations_between_fields_and_optional_values(tmp_path):
  fewer = Rule(("gm.num_classes", "train.batch_size"), lambda n, b: n <= b,
               "gm.num_classes <= train.batch_size")
  config = reference()
  config.gm.num_classes = 300
  assert problems_of(config, [fewer]) == (
      "config.gm.num_classes, config.train.batch_size: expected "
      "gm.num_classes <= train.batch_size, found gm.num_classes=300, "
      "train.batch_size=256")
  # None skips a rule unless skip_none=False.
  config = reference()
  optional = config_utils.positive_int("critic.conditional")
  config_utils.validate_config(config, reference(), [optional])
  strict = Rule("critic.conditional", lambda v: v is not None, "a value",
                skip_none=False)
  assert problems_of(config, [strict]) == (
      "config.critic.conditional: expected a value, found None")
  config.data_dir = str(tmp_path)
  config_utils.validate_config(config, reference(), RULES)


def test_a_check_that_raises_counts_as_invalid():
  config = reference()
  config.gm.classifier = "softmax"
  rule = Rule("gm.classifier", lambda v: v > 3, "a number above 3")
  assert problems_of(config, [rule]) == (
      "config.gm.classifier: expected a number above 3, found 'softmax'")


def test_a_rule_hint_follows_its_problem(tmp_path):
  config = reference()
  config.data_dir = str(tmp_path / "data" / "CUB")
  fixed = config_utils.existing_dir("data_dir", hint="run the download first")
  assert problems_of(config, [fixed]).endswith(" (run the download first)")
  computed = config_utils.existing_dir(
      "data_dir", hint=lambda value: f"download {value.rsplit('/', 1)[-1]}")
  assert problems_of(config, [computed]).endswith(" (download CUB)")
  config.data_dir = str(tmp_path)  # a valid value: no problem, no hint
  config_utils.validate_config(config, reference(), [fixed, computed])


def test_the_data_dir_hint_names_the_benchmark_and_the_commands():
  from gmn_jax import config as gmn_config  # pylint: disable=g-import-not-at-top
  hint = gmn_config.data_dir_hint("data/xlsa17/AWA2")
  assert hint == ("get the benchmark with python -m experiments.download_data --dataset=AWA2 "
                  "--out=data/xlsa17, or write stand-in data with python -m "
                  "experiments.make_synthetic --preset=AWA2 --out_dir=DIR, or name the "
                  "directory with --config.data_dir=DIR")
  assert "--dataset=<DS> --out=data/xlsa17" in gmn_config.data_dir_hint("/my/features")


def test_rule_on_an_absent_field_is_a_programming_error():
  with pytest.raises(ValueError, match="config.gm.nope"):
    config_utils.validate_config(reference(), reference(),
                                 [config_utils.positive("gm.nope")])


def test_fingerprint_is_flat_sorted_and_json_stable():
  config = reference()
  config.train.batch_size = config_dict.FieldReference(32)
  flat = config_utils.config_fingerprint(config)
  assert list(flat) == sorted(flat)
  assert flat["train.batch_size"] == 32
  assert flat["seeds"] == [1, 67, 99]
  assert flat["critic.conditional"] is None
  assert flat["extras"] == {}
  assert "gm" not in flat and flat["gm.weight"] == 100.0
  assert json.loads(json.dumps(flat)) == flat
  assert config_utils.config_fingerprint(config.to_dict()) == flat
  assert config_utils.config_fingerprint({"f": object}).keys() == {"f"}


def test_diff_configs_lists_changed_fields():
  old = config_utils.config_fingerprint(reference())
  assert config_utils.diff_configs(old, json.loads(json.dumps(old))) == []
  config = reference()
  config.gm.weight = 50.0
  config.seeds = (1, 2)
  config.method = "wgan_gm"
  config.critic.conditional = True
  config.train.lr = 1e-4  # Unchanged.
  new = config_utils.config_fingerprint(config)
  new["train.extra_field"] = 3
  del new["data_dir"]
  assert config_utils.diff_configs(old, new) == [
      "critic.conditional: null -> true",
      'data_dir: "builtin:digits" -> <absent>',
      "gm.weight: 100.0 -> 50.0",
      'method: "cwgan_gm" -> "wgan_gm"',
      "seeds: [1, 67, 99] -> [1, 2]",
      "train.extra_field: <absent> -> 3",
  ]
  assert config_utils.diff_configs(
      old, new, ignore=("data_dir", "train", "critic")) == [
          "gm.weight: 100.0 -> 50.0",
          'method: "cwgan_gm" -> "wgan_gm"',
          "seeds: [1, 67, 99] -> [1, 2]",
      ]
  # An int and an equal float are the same value.
  assert config_utils.diff_configs({"a": 100}, {"a": 100.0}) == []


def test_project_base_config_and_the_gm_weight_typo():
  config_module = pytest.importorskip("gmn_jax.config")
  base = config_module.get_base_config()
  config_utils.validate_config(config_module.get_base_config(), base)
  config = config_module.get_base_config()
  config.gm.wieght = 50.0
  with pytest.raises(errors.ConfigError,
                     match=r"did you mean config\.gm\.weight\?"):
    config_utils.validate_config(config, base)
