"""Config validation before any compilation, and config comparison on resume.

`validate_config(config, reference, rules)` checks a run's ml_collections
config against the reference config (the defaults, which declare every field
and its type) and a small declarative list of `Rule`s, and raises one
`ConfigError` whose single line names every problem, e.g.

  config.gm.wieght is not a known field (did you mean config.gm.weight?)
  config.train.batch_size: expected int, found str '256'
  config.train.n_critic: expected a positive integer, found -1

`config_fingerprint` flattens a config into {"gm.weight": 100.0, ...} (stored
as the workdir's config.json) and `diff_configs` lists the fields in which two
fingerprints differ, so a binary can refuse to resume a workdir written with a
different config.
"""

import dataclasses
import difflib
import json
import math
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

from gmn_jax import errors

_ABSENT = "<absent>"


@dataclasses.dataclass(frozen=True)
class Rule:
  """A constraint on one config field, or a relation between several.

  Attributes:
    path: a dotted field name ("train.batch_size"), or a tuple of them for a
      relation between fields.
    check: takes the field's value (one argument per path for a tuple) and
      returns whether it is valid; an exception counts as invalid.
    message: what a valid value is, completing "expected ..." (e.g. "a
      positive integer").
    skip_none: whether a None value (an unset optional field) passes without
      calling `check`.
    hint: what to do about a violation, appended to the problem in
      parentheses (e.g. how to get a missing dataset); "" for none, or a
      function of the values (like `check`) that returns the text.
  """

  path: str | tuple[str, ...]
  check: Callable[..., bool]
  message: str
  skip_none: bool = True
  hint: str | Callable[..., str] = ""

  @property
  def paths(self) -> tuple[str, ...]:
    """The rule's field names as a tuple."""
    return (self.path,) if isinstance(self.path, str) else tuple(self.path)


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def positive_int(path: str) -> Rule:
  """Rule: an integer > 0 (sizes, counts, iterations)."""
  return Rule(path, lambda v: _is_int(v) and v > 0, "a positive integer")


def non_negative_int(path: str) -> Rule:
  """Rule: an integer >= 0."""
  return Rule(path, lambda v: _is_int(v) and v >= 0, "an integer >= 0")


def positive(path: str) -> Rule:
  """Rule: a finite number > 0 (learning rates, weights)."""
  return Rule(path, lambda v: _is_number(v) and 0 < v < math.inf,
              "a positive number")


def non_negative(path: str) -> Rule:
  """Rule: a finite number >= 0."""
  return Rule(path, lambda v: _is_number(v) and 0 <= v < math.inf,
              "a number >= 0")


def in_range(path: str, low: float, high: float) -> Rule:
  """Rule: a number in the closed interval [low, high]."""
  return Rule(path, lambda v: _is_number(v) and low <= v <= high,
              f"a number in [{low}, {high}]")


def one_of(path: str, choices: Iterable[Any]) -> Rule:
  """Rule: one of a fixed set of values (e.g. classifier kinds)."""
  choices = tuple(choices)
  return Rule(path, lambda v: v in choices,
              f"one of {', '.join(repr(c) for c in choices)}")


def each_positive_int(path: str, *, allow_empty: bool = True) -> Rule:
  """Rule: a sequence of positive integers (e.g. hidden layer widths)."""
  return Rule(
      path,
      lambda v: (isinstance(v, (list, tuple)) and (allow_empty or bool(v))
                 and all(_is_int(x) and x > 0 for x in v)),
      "a sequence of positive integers" + ("" if allow_empty else
                                           " (at least one)"))


def existing_dir(path: str, *, special_prefixes: Sequence[str] = (),
                 hint: str | Callable[[Any], str] = "") -> Rule:
  """Rule: a directory that exists (or a value starting a special prefix).

  Args:
    path: the field.
    special_prefixes: values starting with one of these are accepted as they
      are (e.g. "builtin:" for a dataset that ships with the package).
    hint: how to get or name the directory, appended to the problem (text,
      or a function of the value that returns it).

  Returns:
    The rule.
  """
  prefixes = tuple(special_prefixes)
  message = "an existing directory" + (
      f" or a value starting with {' or '.join(map(repr, prefixes))}"
      if prefixes else "")
  return Rule(
      path,
      lambda v: isinstance(v, str) and (
          (bool(prefixes) and v.startswith(prefixes)) or os.path.isdir(v)),
      message, hint=hint)


def _children(node) -> Mapping[str, Any] | None:
  """The fields of a ConfigDict or dict node; None for a leaf value."""
  if isinstance(node, Mapping):
    return node
  if hasattr(node, "keys") and hasattr(node, "get_type"):  # ConfigDict.
    return {key: node[key] for key in node.keys()}
  return None


def _declared_type(parent, key: str, value):
  """The type a reference field declares; None when any type is allowed.

  A placeholder field (`config_dict.placeholder(int)`) has the value None but
  a declared type; a plain None default accepts anything.
  """
  if value is None:
    get_type = getattr(parent, "get_type", None)
    declared = get_type(key) if get_type is not None else type(None)
    return None if declared is type(None) else declared
  return type(value)


def _type_name(t) -> str:
  return {tuple: "tuple", list: "list"}.get(t, getattr(t, "__name__", str(t)))


def _fits_type(value, declared, reference_value) -> bool:
  """Whether `value` may stand where the reference has `reference_value`."""
  if declared is None:
    return True
  if value is None:
    return reference_value is None  # Only optional (placeholder) fields.
  if declared is bool:
    return isinstance(value, bool)
  if declared is int:
    return _is_int(value)
  if declared is float:
    return _is_number(value)
  if declared in (tuple, list):
    if not isinstance(value, (tuple, list)):
      return False
    element_types = {type(x) for x in reference_value or ()}
    if len(element_types) != 1:
      return True  # Empty or mixed default: elements unconstrained.
    (element_type,) = element_types
    return all(_fits_type(x, element_type, reference_value[0]) for x in value)
  return isinstance(value, declared)


def _short_repr(value) -> str:
  """A one-line repr, cut at 60 characters (ConfigDicts print as dicts)."""
  text = repr(value.to_dict() if hasattr(value, "to_dict") else value)
  text = " ".join(text.split())  # One line, whatever the object prints.
  return text if len(text) <= 60 else text[:57] + "..."


def _describe_value(value) -> str:
  """"str '256'" / "int 3" / "None": a value with its type, short."""
  if value is None:
    return "None"
  return f"{type(value).__name__} {_short_repr(value)}"


def _all_paths(node, prefix: str = "") -> list[str]:
  """Every dotted path (leaves and sub-configs) under a reference node."""
  paths = []
  children = _children(node) or {}
  for key, value in children.items():
    path = f"{prefix}{key}"
    paths.append(path)
    if _children(value) is not None:
      paths.extend(_all_paths(value, path + "."))
  return paths


def _compare(config, reference, prefix: str, known_paths: list[str],
             problems: list[str], bad_fields: set[str]) -> None:
  """Collects unknown, missing and mistyped fields (recursively)."""
  config_children = _children(config)
  reference_children = _children(reference)
  if not reference_children:
    return  # An empty reference sub-config is free-form.
  for key, value in config_children.items():
    path = f"{prefix}{key}"
    if key not in reference_children:
      close = difflib.get_close_matches(path, known_paths, n=1, cutoff=0.6)
      hint = f" (did you mean config.{close[0]}?)" if close else ""
      problems.append(f"config.{path} is not a known field{hint}")
      bad_fields.add(path)
      continue
    ref_value = reference_children[key]
    if _children(ref_value) is not None:
      if _children(value) is None:
        problems.append(f"config.{path}: expected a sub-config, found "
                        f"{_describe_value(value)}")
        bad_fields.add(path)
      else:
        _compare(value, ref_value, path + ".", known_paths, problems,
                 bad_fields)
      continue
    declared = _declared_type(reference, key, ref_value)
    is_sub_config = _children(value) is not None
    if ((is_sub_config and declared is not None) or
        not _fits_type(value, declared, ref_value)):
      expected = _type_name(declared)
      if declared in (tuple, list) and ref_value:
        expected = (f"a tuple of {_type_name(type(ref_value[0]))}"
                    if len({type(x) for x in ref_value}) == 1 else expected)
      problems.append(f"config.{path}: expected {expected}, found "
                      f"{_describe_value(value)}")
      bad_fields.add(path)
  for key, ref_value in reference_children.items():
    if key not in config_children:
      path = f"{prefix}{key}"
      what = ("a sub-config" if _children(ref_value) is not None else
              f"its default is {ref_value!r}")
      problems.append(f"config.{path} is missing ({what})")
      bad_fields.add(path)


def _lookup(config, path: str):
  """The value at a dotted path; raises KeyError when absent."""
  node = config
  for part in path.split("."):
    children = _children(node)
    if children is None or part not in children:
      raise KeyError(path)
    node = children[part]
  return node


def _check_rule(config, rule: Rule) -> str | None:
  """The problem line of a violated rule; None when it holds."""
  values = []
  for path in rule.paths:
    try:
      values.append(_lookup(config, path))
    except KeyError:
      raise ValueError(f"Rule refers to config.{path}, which the config "
                       "does not have") from None
  if rule.skip_none and any(v is None for v in values):
    return None
  try:
    ok = bool(rule.check(*values))
  except Exception:  # pylint: disable=broad-except
    ok = False  # e.g. comparing a str with an int: invalid, not a crash.
  if ok:
    return None
  hint = rule.hint(*values) if callable(rule.hint) else rule.hint
  hint = f" ({hint})" if hint else ""
  if len(values) == 1:
    return (f"config.{rule.paths[0]}: expected {rule.message}, found "
            f"{_short_repr(values[0])}{hint}")
  found = ", ".join(f"{p}={_short_repr(v)}"
                    for p, v in zip(rule.paths, values))
  return (f"config.{', config.'.join(rule.paths)}: expected {rule.message}, "
          f"found {found}{hint}")


def validate_config(config, reference_config, rules: Iterable[Rule] = ()
                   ) -> None:
  """Checks fields, types and rules; raises one ConfigError naming them all.

  Checks, in order: fields the reference does not have (with the closest
  known name suggested), fields it has that the config lacks, values whose
  type differs from the reference default's (an int may stand for a float; a
  None only where the default is None), then each rule on fields that passed
  the type checks.

  Args:
    config: the run's config (ConfigDict, FrozenConfigDict or nested dict).
    reference_config: the config declaring every field with its default (and
      type). An empty sub-config in it accepts any fields.
    rules: constraints on values (see `Rule` and the helpers above).

  Raises:
    ConfigError: with every problem on one line, separated by "; ".
    ValueError: when a rule names a field that does not exist (a bug in the
      rule list, not in the user's config).
  """
  problems, bad_fields = [], set()
  _compare(config, reference_config, "", _all_paths(reference_config),
           problems, bad_fields)
  for rule in rules:
    if any(p in bad_fields or any(p.startswith(b + ".") for b in bad_fields)
           for p in rule.paths):
      continue
    problem = _check_rule(config, rule)
    if problem is not None:
      problems.append(problem)
  if problems:
    raise errors.ConfigError("; ".join(problems))


def _json_value(value):
  """A JSON-able copy of a config value (tuples become lists)."""
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  if isinstance(value, (list, tuple)):
    return [_json_value(v) for v in value]
  children = _children(value)
  if children is not None:
    return {str(k): _json_value(v) for k, v in children.items()}
  return repr(value)


def config_fingerprint(config) -> dict[str, Any]:
  """A flat, JSON-able view of a config: {"gm.weight": 100.0, ...}.

  Args:
    config: a ConfigDict, FrozenConfigDict or nested dict.

  Returns:
    Dotted field name -> JSON value (tuples as lists, unknown objects as
    their repr, an empty sub-config as {}), sorted by name. Equal configs give
    equal fingerprints, also after a JSON round trip.
  """
  flat = {}

  def visit(node, prefix):
    children = _children(node)
    if children is None or (not children and prefix):
      flat[prefix[:-1]] = _json_value(node)
      return
    for key, value in children.items():
      visit(value, f"{prefix}{key}.")

  visit(config, "")
  return dict(sorted(flat.items()))


def diff_configs(old_flat: Mapping[str, Any], new_flat: Mapping[str, Any], *,
                 ignore: Iterable[str] = ()) -> list[str]:
  """The fields in which two fingerprints differ, as "field: old -> new".

  Args:
    old_flat: the fingerprint a workdir was created with (its config.json).
    new_flat: the fingerprint of the config now given.
    ignore: fields, or sub-config prefixes, that may change on resume (e.g.
      "train.log_every", "data_dir").

  Returns:
    Sorted lines; values as JSON ("<absent>" for a field only one side has).
    Empty when the configs agree.
  """
  ignore = tuple(ignore)

  def ignored(field):
    return any(field == i or field.startswith(i + ".") for i in ignore)

  lines = []
  for field in sorted(set(old_flat) | set(new_flat)):
    if ignored(field):
      continue
    old = old_flat.get(field, _ABSENT)
    new = new_flat.get(field, _ABSENT)
    old_json, new_json = (v if v is _ABSENT else json.dumps(_json_value(v))
                          for v in (old, new))
    if old_json != new_json and not (_is_number(old) and _is_number(new)
                                     and old == new):
      lines.append(f"{field}: {old_json} -> {new_json}")
  return lines
