"""What a sweep reports: sweep.json, sweep.md and plots/sweep.png.

`summary` gathers the sweep's numbers into the sweep.json dict; `write`
writes the three files from it (atomically, process 0 only), so that a
report can be redrawn from sweep.json alone.
"""

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from matplotlib.figure import Figure

from gmn_jax import metric_writers
from gmn_jax import parallel
from gmn_jax import plotting
from gmn_jax import provenance
from gmn_jax import results
from gmn_jax import sweep_grid

JSON_FILE, MARKDOWN_FILE, PLOT_FILE = "sweep.json", "sweep.md", "sweep.png"
# The table columns, in order (AUSUC when every entry has it).
COLUMNS = {"zsl_t1": "ZSL T1", "gzsl_u": "GZSL u", "gzsl_s": "GZSL s", "gzsl_h": "GZSL H",
           "ausuc": "AUSUC"}


def _jsonable(value: Any) -> Any:
  return list(value) if isinstance(value, tuple) else value


def _format(value: Any) -> str:
  """A value of sweep.json (tuples are lists there) as written on the command line."""
  return sweep_grid.format_value(tuple(value) if isinstance(value, list) else value)


def _entry(summary: Dict[str, Any]) -> Dict[str, Any]:
  setting = summary.get("setting", {})
  return {"setting": {f: _jsonable(v) for f, v in setting.items()},
          "label": sweep_grid.label(setting), "dir": summary.get("dir"),
          "metrics": {name: {k: entry[k] for k in ("mean", "std", "per_seed")}
                      for name, entry in summary["metrics"].items() if name in COLUMNS}}


def _field_entry(field: str, values: Sequence[Any]) -> Dict[str, Any]:
  kind = sweep_grid.classify(field)
  return {"field": field, "values": [_jsonable(v) for v in values], "kind": kind,
          "how": sweep_grid.KIND_DESCRIPTIONS[kind]}


def summary(grid: sweep_grid.Grid, metric: str, validation: Sequence[Dict[str, Any]],
            chosen: Dict[str, Any], test: Dict[str, Any],
            oracle: Optional[Tuple[Sequence[Dict[str, Any]], Dict[str, Any]]] = None, *,
            command: str = "") -> Dict[str, Any]:
  """The sweep.json dict.

  Args:
    grid: the swept {field: [values]}.
    metric: the selection metric.
    validation: the combinations' validation results (`sweep.run_grid`).
    chosen: the choice (`sweep.choose`).
    test: the chosen setting's results.json on the test split.
    oracle: (the combinations' test results, their best by `sweep.choose`),
      when the oracle grid ran.
    command: the command line.

  Returns:
    {"metric", "dataset", "method", "seeds", "fields": [{"field", "values",
    "kind", "how"}], "validation": [entries], "choice": {"label", "setting",
    "mean", "std", "ties", "within_one_std"}, "test": {"metrics"},
    "oracle": None or {"entries", "best": {"label", "setting", "mean",
    "std"}}, "command", "provenance"}; an entry is {"setting", "label",
    "dir", "metrics": {name: {"mean", "std", "per_seed"}}}.
  """
  labels = [sweep_grid.label(s["setting"]) for s in validation]
  out = {
      "metric": metric, "dataset": test["dataset"], "method": test["method"],
      "seeds": test["seeds"],
      "fields": [_field_entry(field, values) for field, values in grid.items()],
      "validation": [_entry(s) for s in validation],
      "choice": {"label": labels[chosen["index"]],
                 "setting": {f: _jsonable(v) for f, v in chosen["setting"].items()},
                 "mean": chosen["mean"], "std": chosen["std"],
                 "ties": [labels[i] for i in chosen["ties"]],
                 "within_one_std": [labels[i] for i in chosen["within_one_std"]]},
      "test": {"metrics": _entry({**test, "dir": None})["metrics"]},
      "oracle": None, "command": command, "provenance": provenance.describe(),
  }
  if oracle is not None:
    entries, best = oracle
    out["oracle"] = {"entries": [_entry(s) for s in entries],
                     "best": {"label": labels[best["index"]], "mean": best["mean"],
                              "std": best["std"],
                              "setting": out["validation"][best["index"]]["setting"]}}
  return out


def _columns(entries: Sequence[Dict[str, Any]]) -> List[str]:
  return [name for name in COLUMNS if all(name in e["metrics"] for e in entries)]


def _table(entries: Sequence[Dict[str, Any]], fields: Sequence[str], marks: Dict[str, str]
           ) -> List[str]:
  columns = _columns(entries)
  lines = ["| " + " | ".join(list(fields) + [COLUMNS[c] for c in columns]) + " | |",
           "|" + "---|" * (len(fields) + len(columns) + 1)]
  for entry in entries:
    cells = ([_format(entry["setting"][f]) for f in fields]
             + [results.format_mean_std(entry["metrics"][c]) for c in columns])
    lines.append("| " + " | ".join(cells) + f" | {marks.get(entry['label'], '')} |")
  return lines


def format_markdown(report: Dict[str, Any]) -> str:
  """The text of sweep.md.

  Args:
    report: the sweep.json dict (`summary`).

  Returns:
    Markdown: the fields and how each trains, every combination's
    validation mean ± std (the choice marked), the chosen setting's test
    numbers and, when it ran, the oracle grid on test.
  """
  metric = report["metric"]
  name = COLUMNS.get(metric, metric)
  fields = [f["field"] for f in report["fields"]]
  choice = report["choice"]
  seeds = report["seeds"]
  lines = [f"# Sweep on {report['dataset']} ({report['method']}): {name} chosen on the "
           "validation split", "",
           "| field | values | how it trains |", "|---|---|---|"]
  for f in report["fields"]:
    values = ", ".join(map(_format, f["values"]))
    lines.append(f"| {f['field']} | {values} | {f['kind']}: {f['how']} |")
  lines += ["", f"## Validation split ({len(seeds)} generator seeds {tuple(seeds)})", ""]
  marks = {choice["label"]: "chosen"}
  marks.update({label: "tie" for label in choice["ties"] if label != choice["label"]})
  marks.update({label: "within 1 std" for label in choice["within_one_std"]})
  lines += _table(report["validation"], fields, marks)
  ties = [t for t in choice["ties"] if t != choice["label"]]
  lines += ["", f"Chosen: **{choice['label']}**, validation {name} "
            f"{results.format_mean_std(choice)} (the best mean over seeds; the first "
            "in grid order among ties)."]
  lines.append("Ties at two decimals: " + ("; ".join(ties) if ties else "none") + ". "
               "Within one std of it: " + ("; ".join(choice["within_one_std"]) or "none") + ".")
  test = report["test"]["metrics"]
  columns = [c for c in COLUMNS if c in test]
  lines += ["", "## Test split: the chosen setting", "",
            "| " + " | ".join(COLUMNS[c] for c in columns) + " |", "|" + "---|" * len(columns),
            "| " + " | ".join(results.format_mean_std(test[c]) for c in columns) + " |"]
  oracle = report.get("oracle")
  if oracle:
    best = oracle["best"]
    lines += ["", "## Oracle: the grid judged on the test split (not an honest result)", ""]
    lines += _table(oracle["entries"], fields, {best["label"]: "oracle best",
                                                **({choice["label"]: "chosen on validation"}
                                                   if choice["label"] != best["label"] else {})})
    cost = best["mean"] - test[metric]["mean"]
    lines += ["", f"Choosing on test would pick **{best['label']}** and report {name} "
              f"{results.format_mean_std(best)}; the choice made on validation gives "
              f"{results.format_mean_std(test[metric])} on test: honesty costs {cost:.2f} "
              "points here."]
  lines += ["", "Accuracies in %, per-class mean top-1 at the last epoch of the final "
            "classifier; mean ± std (ddof 0) over generator seeds."]
  if report.get("command"):
    lines += ["", "```", report["command"], "```"]
  return "\n".join(lines) + "\n"


def plot(report: Dict[str, Any], path: str) -> str:
  """The metric against each swept field: validation (and oracle test) mean ± std.

  One panel per field; its x axis is the field's values, and each line holds
  the other fields at one combination of their values.

  Args:
    report: the sweep.json dict.
    path: the PNG file.

  Returns:
    `path`.
  """
  metric = report["metric"]
  fields = [f["field"] for f in report["fields"]]
  figure = Figure(figsize=(4.6 * len(fields), 4.2), layout="constrained")
  for k, field in enumerate(fields):
    axes = figure.add_subplot(1, len(fields), k + 1)
    values = [f["values"] for f in report["fields"]][k]
    texts = [_format(v) for v in values]
    sources = [("validation", report["validation"], "-")]
    if report.get("oracle"):
      sources.append(("test (oracle)", report["oracle"]["entries"], "--"))
    others = {}
    for i, entry in enumerate(report["validation"]):
      rest = sweep_grid.label({f: v for f, v in entry["setting"].items() if f != field})
      others.setdefault(rest, []).append(i)
    for c, (rest, indices) in enumerate(others.items()):
      for source, entries, style in sources:
        xs = [values.index(entries[i]["setting"][field]) for i in indices]
        ys = [entries[i]["metrics"][metric]["mean"] for i in indices]
        es = [entries[i]["metrics"][metric]["std"] for i in indices]
        axes.errorbar(xs, ys, yerr=es, fmt="o" + style, color=f"C{c % 10}", capsize=3,
                      alpha=1.0 if style == "-" else 0.6,
                      label=f"{source}{': ' + rest if rest else ''}")
    chosen = report["choice"]["setting"]
    axes.plot([values.index(chosen[field])], [report["choice"]["mean"]], "k*", markersize=12)
    axes.set_xticks(range(len(values)), texts)
    axes.set_xlabel(field)
    axes.set_ylabel(f"{COLUMNS.get(metric, metric)} (%)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="x-small")
  figure.suptitle(f"Sweep on {report['dataset']}: mean ± std over seeds "
                  "(★ chosen on validation)")
  return plotting.save_figure(figure, path)


def write(workdir: str, report: Dict[str, Any]) -> None:
  """Writes sweep.json, sweep.md and plots/sweep.png into workdir (process 0 only).

  Args:
    workdir: the sweep's directory.
    report: the sweep.json dict.
  """
  if not parallel.is_primary():
    return
  metric_writers.write_json_atomic(os.path.join(workdir, JSON_FILE), report)
  tmp = os.path.join(workdir, MARKDOWN_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(format_markdown(report))
  os.replace(tmp, os.path.join(workdir, MARKDOWN_FILE))
  plot(report, os.path.join(workdir, plotting.PLOTS_DIR, PLOT_FILE))
