"""The paper's Table 2: the systems it compares, the numbers reported for them.

A table row is not always a method: "Xian et al. – ALE" is method `fclswgan`
with `eval.classifier=ale`. `Row` names a row (its directory under the
table's workdir and its name on the command line), the method, the config
overrides that make the row, the label the paper gives it and where the
reported numbers come from; `COMPARISON_ROWS` lists the rows this project
implements, in table order. `PAPER_NUMBERS[dataset][row name]` holds the
reported ZSL T1 and GZSL u, s, H (in %, None where no source was found);
`format_comparison_table` puts our mean ± std over generator seeds beside
them. The ablation (Table 1) uses the same rows, with no overrides
(`ablation_row`); `experiments/ablation.py` trains both tables in one loop.

Every number below is copied from the source its row names; none is
inferred. The GMN paper's Table 2 itself is not in this project's reference
notes, so only the GMN row carries the paper's own numbers (restated by its
authors); the others come from the method's own paper or the reference
repository, as each `source` says, or are None.
"""

import dataclasses
import types
from typing import Any, Dict, List, Mapping, Optional, Sequence

import ml_collections

from gmn_jax import config as gmn_config
from gmn_jax import results as run_results
from gmn_jax.errors import ConfigError

# The table's metrics, in its column order (results.json metric names).
METRICS = ("zsl_t1", "gzsl_u", "gzsl_s", "gzsl_h")
METRIC_LABELS = {"zsl_t1": "ZSL T1", "gzsl_u": "GZSL u", "gzsl_s": "GZSL s",
                 "gzsl_h": "GZSL H"}
COMPARISON_FILE = "comparison.md"
MISSING = "—"  # a number no source gave


@dataclasses.dataclass(frozen=True)
class Row:
  """One row of a results table: a method and the config overrides that make it.

  Attributes:
    name: the row's directory under the table's workdir and its name in
      --methods (e.g. "fclswgan_ale").
    method: the `config.method` it trains (a `config.VARIANTS` name).
    overrides: flat config overrides applied after the method is set, e.g.
      {"eval.classifier": "ale"}; read-only.
    label: the row's label as the paper gives it.
    source: where the reported numbers of `PAPER_NUMBERS` for this row come
      from (or why there are none).
    dataset_overrides: {dataset (upper case): overrides} applied after
      `overrides` on that dataset: the method's own code's settings where
      they are known (`FCLSWGAN_SETTINGS`, `GMMN_SETTINGS`).
  """

  name: str
  method: str
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  label: str = ""
  source: str = ""
  dataset_overrides: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    # A frozen row shared by every run must not change through its dicts.
    object.__setattr__(self, "overrides", types.MappingProxyType(dict(self.overrides)))
    object.__setattr__(self, "dataset_overrides", types.MappingProxyType(
        {name: types.MappingProxyType(dict(o)) for name, o in self.dataset_overrides.items()}))

  def overrides_for(self, dataset: str) -> Dict[str, Any]:
    """`overrides`, then those of `dataset_overrides[dataset]` (case-insensitive)."""
    return {**self.overrides, **self.dataset_overrides.get(str(dataset).upper(), {})}


@dataclasses.dataclass(frozen=True)
class PaperOnlyRow:
  """A system the paper's Table 2 lists that this project does not train.

  Attributes:
    name: a short key of `PAPER_NUMBERS`.
    label: the row's label as the paper gives it.
    reason: why it is not implemented, shown in the table.
    source: where its reported numbers come from (or why there are none).
  """

  name: str
  label: str
  reason: str
  source: str


_NO_TABLE2 = "The GMN paper's Table 2 is not in this project's reference notes"
_XIAN = ("Xian et al., Feature Generating Networks for Zero-Shot Learning, CVPR'18")

# f-CLSWGAN's own settings for the paper's datasets (Xian et al.'s release,
# as read in the reference notes: an MLP generator on [z, a] with nz = K and
# one hidden layer of 4096, a critic with one of 4096, Adam betas (0.5,
# 0.999), batch 64, lr 1e-4 (SUN 2e-4, AWA 1e-5); c = 0.01 is cls.weight's
# default). Not reproduced: their N(0, 0.02) initialisation, min-max scaled
# features and iteration counts (the table keeps one data pipeline and the
# config's budget for every row).
_FCLSWGAN_COMMON = {"generator.kind": "attribute_concat", "generator.noise_dim": 0,
                    "generator.hidden_dims": (4096,), "critic.hidden_dims": (4096,),
                    "train.batch_size": 64, "train.adam_b1": 0.5}
FCLSWGAN_SETTINGS = {
    dataset: {**_FCLSWGAN_COMMON, "train.lr_generator": lr, "train.lr_critic": lr}
    for dataset, lr in (("CUB", 1e-4), ("SUN", 2e-4), ("AWA1", 1e-5))
}

# GMMN's own settings (Bucher et al.'s code, the same for every dataset):
# Adam at 2e-4 with torch's default betas, 15-d noise. Their generator (two
# layers of 8192 with dropout and a linear output) is not available here.
GMMN_SETTINGS = {dataset: {"train.lr_generator": 2e-4, "train.adam_b1": 0.9,
                           "generator.noise_dim": 15}
                 for dataset in ("CUB", "SUN", "AWA1")}

COMPARISON_ROWS = (
    Row("real_only", "real_only", {}, "Train only with real samples",
        "The reference repository's own seen-only bilinear baseline: the comments of "
        "src/scripts/bilcomp.sh in github.com/mbsariyildiz/gmn-zsl (whose code uses Adam "
        "where the comments say SGD), not the paper's Table 2 row, which is not in this "
        "project's reference notes."),
    Row("fclswgan", "fclswgan", {}, "Xian et al. '18 (f-CLSWGAN)",
        f"Not found. {_NO_TABLE2}, nor the numbers of {_XIAN}. This row trains the "
        "config's final classifier (each of the paper's Xian et al. rows names its own).",
        FCLSWGAN_SETTINGS),
    Row("fclswgan_ale", "fclswgan", {"eval.classifier": "ale"}, "Xian et al. '18 – ALE",
        f"Not found. {_NO_TABLE2}, nor the f-CLSWGAN + ALE numbers of {_XIAN}.",
        FCLSWGAN_SETTINGS),
    Row("fclswgan_devise", "fclswgan", {"eval.classifier": "devise"},
        "Xian et al. '18 – DEVISE",
        f"Not found. {_NO_TABLE2}, nor the f-CLSWGAN + DEVISE numbers of {_XIAN}.",
        FCLSWGAN_SETTINGS),
    Row("cwgan_cls", "cwgan_cls", {},
        "cWGAN^S + CLS (the reference repository's f-CLSWGAN variant)",
        "Not found: the reference repository's own f-CLSWGAN-like variant (a frozen "
        "bilinear L_CLS classifier, its src/scripts/fclswgan_*.sh), whose scripts give no "
        "numbers for it."),
    Row("cyclewgan", "cyclewgan", {}, "Felix et al. '18 – cycle-WGAN",
        "CUB GZSL u, s, H only: Felix et al., Multi-modal Cycle-consistent Generalized "
        "Zero-Shot Learning, ECCV'18, Table 4, as quoted by its first author in "
        "github.com/rafafelixphd/frwgan-eccv18 issue #3 (whose question notes that the "
        f"paper's CUB class embedding is 1024-d sentences). {_NO_TABLE2}; CUB ZSL, SUN and "
        "AWA1 not found."),
    Row("cycle_clswgan", "cycle_clswgan", {}, "Felix et al. '18 – cycle-CLSWGAN",
        f"Not found. {_NO_TABLE2}, nor Felix et al.'s ECCV'18 paper."),
    Row("gmmn", "gmmn", {}, "Bucher et al. '17 (GMMN)",
        f"Not found. {_NO_TABLE2}, nor Bucher et al.'s 2017 paper.", GMMN_SETTINGS),
    Row("cvae", "cvae", {}, "Verma et al. '18 (SE-GZSL)",
        f"Not found. {_NO_TABLE2}, nor Verma et al.'s CVPR'18 paper."),
    Row("cwgan_gm", "cwgan_gm", {}, "GMN (Sariyildiz & Cinbis '19)",
        "The GMN paper (CVPR'19) as restated by its authors: the 'Paper' rows of the "
        "README of github.com/mbsariyildiz/gmn-zsl (its CUB numbers use attributes + "
        "sentence embeddings, as experiments/configs/cub.py)."),
)

PAPER_ONLY_ROWS = (
    PaperOnlyRow("zhang18", "Zhang et al. '18",
                 "not implemented (a kernel compatibility model, not a generator)",
                 f"Not found. {_NO_TABLE2}."),
)


def _numbers(zsl_t1, gzsl_u, gzsl_s, gzsl_h) -> Dict[str, Optional[float]]:
  return dict(zip(METRICS, (zsl_t1, gzsl_u, gzsl_s, gzsl_h)))


# PAPER_NUMBERS[dataset][row name]: the reported numbers (in %), from the
# row's `source`; a row absent here has none for that dataset.
PAPER_NUMBERS = {
    "CUB": {
        "real_only": _numbers(57.8, 27.5, 66.9, 39.0),
        "cyclewgan": _numbers(None, 46.0, 60.3, 52.2),
        "cwgan_gm": _numbers(64.3, 56.1, 54.3, 55.2),
    },
    "SUN": {
        "real_only": _numbers(61.5, 25.0, 40.3, 30.9),
        "cwgan_gm": _numbers(63.6, 53.2, 33.0, 40.7),
    },
    "AWA1": {
        "real_only": _numbers(63.2, 13.4, 78.2, 22.9),
        "cwgan_gm": _numbers(71.9, 61.1, 71.3, 65.8),
    },
}


def paper_numbers(dataset: str) -> Optional[Dict[str, Dict[str, Optional[float]]]]:
  """The reported numbers for a dataset, or None when the paper has none for it.

  Args:
    dataset: a `config.dataset` label ("CUB", "cub", "digits", ...).

  Returns:
    {row name: {metric: value or None}} for CUB, SUN and AWA1; None otherwise.
  """
  return PAPER_NUMBERS.get(str(dataset).upper())


def reported(dataset: str, rows: Sequence[Row]) -> List[Optional[Dict[str, Optional[float]]]]:
  """Per row, its reported numbers on `dataset` ({metric: value or None}), or None.

  Args:
    dataset: a `config.dataset` label.
    rows: the table's rows.

  Returns:
    One entry per row, in order (what `plotting.plot_ablation_bars` marks).
  """
  numbers = paper_numbers(dataset) or {}
  return [numbers.get(row.name) for row in rows]


def ablation_row(method: str) -> Row:
  """The ablation's (Table 1's) row of a method: the method alone, no overrides.

  Args:
    method: a `config.VARIANTS` name.

  Returns:
    The `Row`, named and labelled as the method (`Variant.paper_row`).
  """
  variant = gmn_config.VARIANTS.get(method)
  return Row(method, method, {}, variant.paper_row if variant else method)


def select_rows(names: Optional[Sequence[str]]) -> List[Row]:
  """The comparison rows named in --methods, in the order given.

  Args:
    names: row names; None selects every row of `COMPARISON_ROWS`.

  Returns:
    The rows.

  Raises:
    ConfigError: for an empty selection or a name that is not a row.
  """
  by_name = {row.name: row for row in COMPARISON_ROWS}
  if names is None:
    return list(COMPARISON_ROWS)
  unknown = [name for name in names if name not in by_name]
  if unknown or not names:
    raise ConfigError(f"--methods: expected row names among {list(by_name)}, "
                      f"found {list(names)}")
  return [by_name[name] for name in names]


def row_config(base, row: Row):
  """The config that trains a row: a copy of `base` with its method and overrides.

  Args:
    base: the table's base ConfigDict (not changed).
    row: the row.

  Returns:
    A new ConfigDict: `row.method`, `critic.conditional` reset to None (the
    method decides the critic, as in the ablation), then `row.overrides`
    and, on a dataset it names, `row.dataset_overrides[base.dataset]`.

  Raises:
    ConfigError: an override names a field the config lacks, or has a value
      of the wrong type.
  """
  config = base.copy_and_resolve_references()
  config.method = row.method
  config.critic.conditional = None  # The row decides the critic type.
  for field, value in row.overrides_for(base.dataset).items():
    *parents, leaf = field.split(".")
    node = config
    for part in parents:
      node = node.get(part) if isinstance(node, ml_collections.ConfigDict) else None
    # An unlocked ConfigDict would silently grow a mistyped field.
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      raise ConfigError(f"row {row.name}: override {field}={value!r}: config.{field} is "
                        "not a known field")
    try:
      config.update_from_flattened_dict({field: value})
    except (TypeError, ValueError) as error:
      raise ConfigError(f"row {row.name}: override {field}={value!r}: {error}") from error
  return config


def _value(value: Optional[float]) -> str:
  return MISSING if value is None else f"{value:.1f}"


def format_comparison_table(rows: Sequence[Row], results: Sequence[Mapping[str, Any]],
                            dataset: str, *, title: str = "", command: str = "") -> str:
  """The markdown of comparison.md: our numbers beside the reported ones.

  Args:
    rows: the rows that ran, in table order.
    results: their results.json dicts (`train.train_and_evaluate`), in the
      same order.
    dataset: the `config.dataset` label, which picks the reported numbers.
    title: an optional heading line.
    command: an optional command line, shown under the table.

  Returns:
    Markdown: one line per row with ZSL T1, GZSL u, s, H as "mean ± std"
    over generator seeds and, for CUB, SUN and AWA1, the reported value
    beside each ("—" where no source gave one); then `PAPER_ONLY_ROWS`, the
    notes and the sources of the reported numbers.

  Raises:
    ValueError: when rows and results differ in number.
  """
  if len(rows) != len(results):
    raise ValueError(f"{len(rows)} rows but {len(results)} results")
  numbers = paper_numbers(dataset)
  with_paper = numbers is not None
  headers = ["row", "system", "seeds"]
  for name in METRICS:
    headers += [METRIC_LABELS[name]] + (["reported"] if with_paper else [])
  lines = [f"## {title}", ""] if title else []
  lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
  for row, result in zip(rows, results):
    cells = [row.name, row.label, str(len(result["seeds"]))]
    for name in METRICS:
      cells.append(run_results.format_mean_std(result["metrics"][name]))
      if with_paper:
        cells.append(_value((numbers.get(row.name) or {}).get(name)))
    lines.append("| " + " | ".join(cells) + " |")
  for other in PAPER_ONLY_ROWS:
    cells = [MISSING, f"{other.label}: {other.reason}", MISSING]
    for name in METRICS:
      cells.append(MISSING)
      if with_paper:
        cells.append(_value((numbers.get(other.name) or {}).get(name)))
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Ours: accuracies in %, per-class mean top-1 at the last epoch of the final "
            "classifier; mean ± std (ddof 0) over generator seeds."]
  if with_paper:
    lines += ["", f"reported: the number on {dataset} that the row's source below gives, in %; "
              f"{MISSING} where none was found."]
    lines += ["", "Sources of the reported numbers:", ""]
    lines += [f"- {row.name}: {row.source}" for row in rows]
    lines += [f"- {other.label}: {other.source}" for other in PAPER_ONLY_ROWS]
  else:
    lines += ["", f"The paper has no numbers for {dataset} (its Table 2 covers CUB, SUN and "
              "AWA1): only ours are shown."]
  if command:
    lines += ["", "```", command, "```"]
  return "\n".join(lines) + "\n"
