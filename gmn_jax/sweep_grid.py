"""A sweep's grid: parsed from `--sweep`, typed by the config, its fields classified.

`parse_grid("gm.weight=10,100;eval.n_synth_unseen=50,100", config)` gives
{"gm.weight": [10.0, 100.0], "eval.n_synth_unseen": [50, 100]}; each value
takes the type of the config's field (tuples are Python literals:
`generator.hidden_dims=(256,),(512,)`). `combinations` is the grid's product
in the order written, the last field fastest.

Each field is of one of four kinds (`classify`), which decide how the sweep
trains it (`gmn_jax.sweep`):

* STAGE1_TRACED: a `specs.Hyperparameters` field (β, learning rates, the GP
  and L_CLS weights, ...): its values train with the seeds as one vmapped
  stage-1 program;
* STAGE2_TRACED: a final-classifier optimiser setting (`eval.lr`,
  `eval.weight_decay`, ...): the values' classifiers train as one program;
* STAGE2: another `eval.*` field (`eval.n_synth_unseen`, ...): every value
  is evaluated from the same generators, one stage-2 program per value;
* PROGRAM: anything else (hidden sizes, iterations, the method): each value
  compiles and trains its own programs.
"""

import ast
import itertools
import re
from typing import Any, Dict, List, Mapping

import ml_collections

from gmn_jax import specs
from gmn_jax.errors import ConfigError

STAGE1_TRACED = "stage 1, traced"
STAGE2_TRACED = "stage 2, traced"
STAGE2 = "stage 2"
PROGRAM = "separate programs"
# How each kind is trained, for the binary's listing and sweep.md.
KIND_DESCRIPTIONS = {
    STAGE1_TRACED: "vmapped with the seeds: the values train as one stage-1 program",
    STAGE2_TRACED: "the values' final classifiers train as one stage-2 program",
    STAGE2: "evaluated from the same generators (no retraining), one stage-2 program per value",
    PROGRAM: "changes shapes or the program: each value trains its own programs",
}
# The sweep decides these itself (seeds and grouping stay the config's).
NOT_SWEPT = ("seeds", "num_parallel_seeds", "split", "data_dir", "dataset")

Grid = Dict[str, List[Any]]


def _split_top_level(text: str, separator: str) -> List[str]:
  """Splits at `separator` outside parentheses and brackets."""
  parts, depth, current = [], 0, []
  for char in text:
    if char in "([":
      depth += 1
    elif char in ")]":
      depth -= 1
    if char == separator and depth == 0:
      parts.append("".join(current))
      current = []
    else:
      current.append(char)
  parts.append("".join(current))
  return [part.strip() for part in parts]


def _typed(field: str, text: str, current: Any) -> Any:
  """One value of `field` typed like the config's value `current`."""
  expected = type(current).__name__
  try:
    if isinstance(current, bool):
      if text.lower() not in ("true", "false"):
        raise ValueError
      return text.lower() == "true"
    if isinstance(current, int):
      return int(text)
    if isinstance(current, float):
      return float(text)
    if isinstance(current, str):
      return text.strip("'\"")
    if current is None and text.lower() in ("true", "false"):  # e.g. critic.conditional
      return text.lower() == "true"
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    if current is None:  # an unset field takes any literal, or else the text
      return text.strip("'\"")
    raise ConfigError(f"--sweep: {field}: expected {expected} values, found {text!r}") from None
  if isinstance(current, (tuple, list)):
    if isinstance(value, int):
      value = (value,)
    if not isinstance(value, (tuple, list)):
      raise ConfigError(f"--sweep: {field}: expected tuples such as (256,), found {text!r}")
    return tuple(value)
  return value


def _current_value(config: ml_collections.ConfigDict, field: str) -> Any:
  node = config
  for part in field.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      raise ConfigError(f"--sweep: {field}: not a config field (fields look like gm.weight "
                        "or eval.n_synth_unseen)")
    node = node[part]
  if isinstance(node, ml_collections.ConfigDict):
    raise ConfigError(f"--sweep: {field}: a section, not a field; sweep one of its fields")
  return node


def parse_grid(text: str, config: ml_collections.ConfigDict) -> Grid:
  """The grid a `--sweep` value describes.

  Args:
    text: "field=v1,v2;field=v1,v2,...", fields as the config's dotted paths.
    config: the base configuration; it types the values.

  Returns:
    {field: [values]} in the order written.

  Raises:
    ConfigError: for an empty or malformed text, an unknown field, a field
      the sweep decides itself (`NOT_SWEPT`), a field given twice, a
      repeated value or one of the wrong type.
  """
  grid: Grid = {}
  entries = [entry for entry in _split_top_level(text or "", ";") if entry]
  if not entries:
    raise ConfigError("--sweep: expected fields and values such as "
                      "'gm.weight=10,100;eval.n_synth_unseen=50,100', found nothing")
  for entry in entries:
    field, equals, values = entry.partition("=")
    field = field.strip()
    if not equals or not values.strip():
      raise ConfigError(f"--sweep: expected field=value,value,... , found {entry!r}")
    if field in NOT_SWEPT:
      raise ConfigError(f"--sweep: {field}: the sweep sets it itself (its seeds and grouping "
                        "are the config's, the split is validation then test); set it with "
                        f"--config.{field} instead")
    if field in grid:
      raise ConfigError(f"--sweep: {field}: given twice; list all its values once")
    current = _current_value(config, field)
    typed = [_typed(field, value, current) for value in _split_top_level(values, ",")]
    if len(set(map(repr, typed))) != len(typed):
      raise ConfigError(f"--sweep: {field}: a value is repeated in {values!r}")
    grid[field] = typed
  return grid


def classify(field: str) -> str:
  """How the sweep trains a field: one of STAGE1_TRACED, STAGE2_TRACED, STAGE2, PROGRAM."""
  if field in specs.HYPERPARAMETER_FIELDS:
    return STAGE1_TRACED
  if field.startswith("eval."):
    return STAGE2_TRACED if field[len("eval."):] in specs.EVAL_TRACED_FIELDS else STAGE2
  return PROGRAM


def describe(grid: Grid) -> str:
  """Lines saying how each swept field trains, then the number of combinations.

  Args:
    grid: {field: [values]}.

  Returns:
    e.g. "gm.weight = 10, 100: stage 1, traced (vmapped with the seeds: ...)".
  """
  lines = []
  for field, values in grid.items():
    kind = classify(field)
    lines.append(f"{field} = {', '.join(map(format_value, values))}: "
                 f"{kind} ({KIND_DESCRIPTIONS[kind]})")
  lines.append(f"{len(combinations(grid))} combinations")
  return "\n".join(lines)


def combinations(grid: Grid) -> List[Dict[str, Any]]:
  """Every combination of the grid, the last field fastest.

  Args:
    grid: {field: [values]}.

  Returns:
    [{field: value}] in grid order.
  """
  fields = list(grid)
  return [dict(zip(fields, values)) for values in itertools.product(*grid.values())]


def format_value(value: Any) -> str:
  """A value as written on the command line: 100.0 -> "100", (256, 256) -> "(256,256)"."""
  if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
    return str(int(value))
  if isinstance(value, tuple):
    return "(" + ",".join(map(format_value, value)) + ("," if len(value) == 1 else "") + ")"
  return str(value)


def label(setting: Mapping[str, Any]) -> str:
  """How logs and sweep.md name a setting: "gm.weight=10, eval.n_synth_unseen=50"."""
  return ", ".join(f"{field}={format_value(value)}" for field, value in setting.items())


def directory_name(setting: Mapping[str, Any]) -> str:
  """A setting's directory name: its label without spaces or path characters.

  The empty setting (nothing swept at this stage) is "base".
  """
  if not setting:
    return "base"
  text = ",".join(f"{field}={format_value(value)}" for field, value in setting.items())
  return re.sub(r"[^A-Za-z0-9._=,()+-]", "_", text)


def apply(config: ml_collections.ConfigDict, setting: Mapping[str, Any]
          ) -> ml_collections.ConfigDict:
  """A copy of config with the setting's fields set.

  Args:
    config: the base configuration (unchanged).
    setting: {field: value}.

  Returns:
    The new configuration.
  """
  out = config.copy_and_resolve_references()
  with out.unlocked():
    out.update_from_flattened_dict(dict(setting))
  return out
