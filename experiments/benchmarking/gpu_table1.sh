#!/usr/bin/env bash
# Every GPU measurement of docs/benchmarks.md's "Table 1 on one GPU", in one go.
#
#   OUT=/tmp/gmn_t1 bash experiments/benchmarking/gpu_table1.sh
#
# from the repository root of a machine with one GPU, in this order (each
# step killed at its limit or at the deadline; later steps are skipped when
# too little time is left, so a short lease still brings back the first):
#
#   1. bench_cub      experiments.benchmark, CUB att+sent, S = 1 and 4
#                     vmapped seeds (100-iteration chunks, 3 chunks), the
#                     final classifier's 200 epochs x 5 seeds, the
#                     programs' optimised HLO dumped: ms per iteration and
#                     the 4-seed ratio (target <= 2.0).
#   2. kernel_model   experiments.benchmarking.gpu_aot --analyse_dir on
#                     step 1's dumps, fitted to its times: the traffic model
#                     of the card's own (autotuned) compile.
#   3. torch_cub      experiments.benchmarking.bench_torch: the eager
#                     PyTorch rendition of the reference's CUB iteration and
#                     final classifier beside the project's, same card, same
#                     run (target >= 10x).
#   4. table1_<ds>    experiments.benchmarking.table1_timing for CUB, SUN and
#                     AWA1: the six rows x the config's 3 seeds, both stages,
#                     stage 1 cut to $T1_ITERATIONS iterations, projected to
#                     the reference's counts (target <= 30 min for the three).
#
# $OUT ends up with flat files only: summary.txt (also printed), run.log,
# and each step's <name>.json and <name>.log; kernel_model.txt.
# Scratch (HLO dumps, the rows' workdirs, JAX's compilation cache, shared by
# the steps) goes to ${WORK:-a temporary folder}, deleted unless WORK is set.
#
# Settings (environment): DEADLINE (seconds for everything: 480),
# T1_ITERATIONS (300), T1_DATASETS (cub sun awa1), CONCURRENT_ROWS (3),
# PYTHON (python3), SMALL (1: tiny networks and budgets, to check the
# mechanics on a CPU in a minute or two; tests/test_benchmark.py runs it).
# The project needs ml_collections and tensorboardX, which the GPU image
# lacks: carry their wheels as the device tool's README says (.whl) and set
# WHEELS=.whl; they are installed into $WORK/site first.

set -u -o pipefail

OUT=${OUT:-/tmp/gmn_t1}
DEADLINE=${DEADLINE:-480}
T1_ITERATIONS=${T1_ITERATIONS:-300}
T1_DATASETS=${T1_DATASETS:-cub sun awa1}
CONCURRENT_ROWS=${CONCURRENT_ROWS:-3}
PYTHON=${PYTHON:-python3}
SMALL=${SMALL:-0}
KEEP_WORK=${WORK:+1}
WORK=${WORK:-$(mktemp -d)}
RESERVE=15

mkdir -p "$OUT" "$WORK"
LOG="$OUT/run.log"
: >"$LOG"
say() { echo "[t1 $(date +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG" >&2; }
cleanup() { [[ -n "$KEEP_WORK" ]] || rm -rf "$WORK"; }
trap cleanup EXIT

if [[ -n "${WHEELS:-}" ]]; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$WORK/site" "$WHEELS"/*.whl >>"$LOG" 2>&1 || say "installing $WHEELS failed"
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache" PYTHONUNBUFFERED=1

# Tiny settings for a CPU check of the mechanics; none on a GPU.
BENCH_SMALL=()
TORCH_SMALL=()
T1_SMALL=()
if [[ "$SMALL" == 1 ]]; then
  tiny=(--config.embedding=att --config.generator.hidden_dims='(16,)'
        --config.critic.hidden_dims='(16,)' --config.generator.noise_dim=8
        --config.train.batch_size=8 --config.gm.real_per_class=4 --config.eval.epochs=1)
  BENCH_SMALL=("${tiny[@]}" --iterations=2 --chunks=1 --classifier_epochs=1 --matmul_size=64)
  TORCH_SMALL=("${tiny[@]}" --iterations=2 --chunks=1 --classifier_epochs=1)
  T1_SMALL=("${tiny[@]}" --config.seeds='(1,)' --config.train.n_critic=1
            --methods=real_only,cwgan,cwgan_gm)
  T1_ITERATIONS=2
fi

# step NAME LIMIT COMMAND...: runs COMMAND (output to $OUT/NAME.log) for at
# most LIMIT seconds, less when the deadline is closer.
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((DEADLINE - RESERVE - SECONDS))
  ((limit > left)) && limit=$left
  if ((limit < 20)); then
    say "$name: skipped (the deadline of ${DEADLINE} s is too close)"
    return 1
  fi
  say "$name: $* (limit ${limit} s)"
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
  local status=$?
  say "$name: exit status $status after $((SECONDS - started)) s"
  [[ $status -eq 0 ]] || tail -n 5 "$OUT/$name.log" | tee -a "$LOG" >&2
  return $status
}

step bench_cub 200 "$PYTHON" -m experiments.benchmark --config=experiments/configs/cub.py \
  --scaling=seeds --seed_counts=1,4 --skip_breakdown --iterations=100 --chunks=3 \
  --classifier_epochs=200 --dump_hlo_dir="$WORK/hlo" --json_out="$OUT/bench_cub.json" \
  "${BENCH_SMALL[@]}"

# The traffic model reads XLA:GPU dumps only (a CPU run has none).
if compgen -G "$WORK/hlo/main/*gpu_after_optimizations.txt" >/dev/null; then
  step kernel_model 60 "$PYTHON" -m experiments.benchmarking.gpu_aot --analyse_dir="$WORK/hlo" \
    --measured_json="$OUT/bench_cub.json" --json_out="$OUT/kernel_model.json" \
    && cp "$OUT/kernel_model.log" "$OUT/kernel_model.txt"
fi

step torch_cub 150 "$PYTHON" -m experiments.benchmarking.bench_torch \
  --config=experiments/configs/cub.py --iterations=50 --chunks=3 --classifier_epochs=200 \
  --json_out="$OUT/torch_cub.json" "${TORCH_SMALL[@]}"

for dataset in $T1_DATASETS; do
  step "table1_$dataset" 240 "$PYTHON" -m experiments.benchmarking.table1_timing \
    --config="experiments/configs/$dataset.py" --workdir="$WORK/table1_$dataset" \
    --iterations="$T1_ITERATIONS" --concurrent_rows="$CONCURRENT_ROWS" \
    --json_out="$OUT/table1_$dataset.json" "${T1_SMALL[@]}"
done

"$PYTHON" -m experiments.benchmarking.table1_summary "$OUT" | tee "$OUT/summary.txt"
say "done"
