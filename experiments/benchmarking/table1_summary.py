r"""The targets of issue 14 read off `gpu_table1.sh`'s output folder.

    python -m experiments.benchmarking.table1_summary OUT_DIR

Reads OUT_DIR/bench_cub.json (`experiments.benchmark`), torch_cub.json
(`bench_torch`), kernel_model.json (`gpu_aot`) and table1_<dataset>.json
(`table1_timing`), whichever exist, and prints one line per target with
the measured value, the target and whether it is met. Needs no JAX.
"""

import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

TABLE1_MINUTES = 30.0
FOUR_SEEDS_RATIO = 2.0
TORCH_RATIO = 10.0


def _read(folder: str, name: str) -> Optional[Dict[str, Any]]:
  path = os.path.join(folder, name)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _verdict(ok: bool) -> str:
  return "met" if ok else "NOT met"


def seeds_ratio(bench: Dict[str, Any], seeds: int = 4) -> Optional[float]:
  """ms per iteration of `seeds` vmapped seeds over one seed's, from a benchmark JSON."""
  rows = {p["value"]: p["ms_per_iteration"] for p in bench.get("scaling", [])
          if p.get("row") == "seeds"}
  one = rows.get(1, bench.get("ms_per_iteration"))
  if one and rows.get(seeds):
    return rows[seeds] / one
  return None


def summarize(folder: str) -> str:
  """The summary text of one output folder.

  Args:
    folder: gpu_table1.sh's $OUT.

  Returns:
    The lines, joined.
  """
  lines: List[str] = []
  bench = _read(folder, "bench_cub.json")
  if bench:
    device = bench.get("machine", {}).get("device_kind", "?")
    lines.append(f"device: {device}")
    iterations = bench.get("num_iterations", 100_000)
    minutes = bench["ms_per_iteration"] * iterations / 6e4
    lines.append(f"CUB iteration, one seed: {bench['ms_per_iteration']:.3f} ms "
                 f"({iterations} iterations: {minutes:.1f} min)")
    ratio = seeds_ratio(bench)
    if ratio is not None:
      lines.append(f"4 seeds / 1 seed: {ratio:.2f}x (target <= {FOUR_SEEDS_RATIO}): "
                   f"{_verdict(ratio <= FOUR_SEEDS_RATIO)}")
    final = bench.get("final_classifier")
    if final:
      lines.append(f"final classifier, {final.get('epochs')} epochs x 5 seeds: "
                   f"{final['projected_s']:.1f} s")
  else:
    lines.append("bench_cub.json: missing")
  model = _read(folder, "kernel_model.json")
  if model:
    for row in model.get("rows", []):
      lines.append(f"traffic model of the card's compile, S = {row['program']}: "
                   f"{row['gb_per_iteration']:.2f} GB / iteration, model "
                   f"{row['model_ms']:.2f} ms" + (f", measured {row['measured_ms']:.2f} ms"
                                                 if "measured_ms" in row else ""))
  torch = _read(folder, "torch_cub.json")
  if torch:
    for part in ("stage1", "final_classifier"):
      ratio = torch.get("ratios", {}).get(part)
      if ratio is not None:
        lines.append(f"PyTorch / JAX, {part}: {ratio:.1f}x (target >= {TORCH_RATIO}): "
                     f"{_verdict(ratio >= TORCH_RATIO)}")
  else:
    lines.append("torch_cub.json: missing")
  total, found = 0.0, []
  for dataset in ("cub", "sun", "awa1"):
    table = _read(folder, f"table1_{dataset}.json")
    if table is None:
      continue
    found.append(dataset)
    total += table["projected_s"] / 60
    lines.append(f"Table 1 on {table['dataset']}: {table['measured_s']:.0f} s measured at "
                 f"{table['iterations']} iterations, projected "
                 f"{table['projected_s'] / 60:.1f} min at {table['reference_iterations']} "
                 f"({len(table['rows'])} rows, {len(table['seeds'])} seeds, "
                 f"{table['concurrent_rows']} at once)")
  if found:
    complete = len(found) == 3
    lines.append(f"Table 1, {'+'.join(found)}: {total:.1f} min projected"
                 + (f" (target <= {TABLE1_MINUTES:.0f} min for the three): "
                    f"{_verdict(total <= TABLE1_MINUTES)}" if complete else " (incomplete)"))
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  if len(argv) != 2 or not os.path.isdir(argv[1]):
    print("usage: python -m experiments.benchmarking.table1_summary OUT_DIR", file=sys.stderr)
    return 2
  print(summarize(argv[1]))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
