#!/usr/bin/env bash
# Why do vmapped parallel seeds cost so much on a GPU? One prepared probe.
#
# On an H100, S = 2 / 4 / 8 parallel seeds cost 1.6x / 2.7x / 4.9x one seed's
# time while the host's CPU time per iteration grows from 0.04 ms to 9.3 ms
# (docs/benchmarks.md, "What limits parallel seeds on the GPU"). The suspect:
# XLA:GPU runs the S = 1 loop as command buffers (CUDA graphs) and the S > 1
# loop op by op. This script settles it in one go, from the repository root:
#
#   OUT=/tmp/gmn_probe bash experiments/scripts/gpu_parallel_seeds_probe.sh \
#       [extra benchmark flags, e.g. --config.precision=bfloat16]
#
# It runs `python -m experiments.benchmark --scaling=seeds --skip_classifier
# --skip_breakdown` (CUB att+sent, --iterations=100 --chunks=3) three ways:
#
#   default             as is; also dumps the optimised HLO of every stage-1
#                       chunk program (--dump_hlo_dir; S = 1 is `main`)
#   no_command_buffers  XLA_FLAGS=--xla_gpu_enable_command_buffer= (none);
#                       GPU only, and only if this XLA accepts the flag
#   profiled            S in $PROFILE_SEEDS, one extra chunk per setting under
#                       jax.profiler.trace (--profile_dir); on a GPU with
#                       --xla_enable_command_buffers_during_profiling=true
#                       (where accepted), since XLA otherwise runs command
#                       buffers op by op while tracing
#
# and prints `python -m experiments.scripts.probe_summary $OUT` (also in
# $OUT/summary.txt). Reading it: if command buffers are the cause, the
# no_command_buffers S = 1 row's host CPU ms/iteration and ms/iteration climb
# towards the S = 2 row's, the default HLO of `main` has the loop inside
# command buffers ("while 1/1" or most fusions covered) and that of seeds_2
# does not, and the S = 1 trace shows graph launches where S = 2 shows
# a kernel launch per kernel.
#
# Writes under ${OUT:-/tmp/gmn_probe}: <way>.json and <way>.log per way, the
# optimised HLO texts under hlo/<point>/, traces under traces/<point>/,
# summary.txt and probe.log. Bulky scratch (the full XLA dump, JAX's
# persistent compilation cache, which the main setting and S = 1 of each way
# share) goes to ${WORK:-a temporary folder} and is deleted unless WORK is set.
#
# Settings (environment): CONFIG (experiments/configs/cub.py), ITERATIONS
# (100), CHUNKS (3), SEEDS (1,2,4,8), PROFILE_SEEDS (1,2), STEP_TIMEOUT
# (seconds per benchmark run: 200), PYTHON (python). On an H100 each of the
# first two ways takes about 2 minutes (mostly compiling S = 1, 2, 4, 8),
# the third about 1, so the whole probe about 5; SEEDS=1,2,8 saves a compile
# per way. A hung step is killed after STEP_TIMEOUT and the summary falls back
# to its log. On a CPU the GPU-only flags are left out (XLA aborts on flags
# it does not know), so the mechanics can be checked anywhere with tiny
# settings (see tests/test_benchmark.py).

set -u -o pipefail

OUT=${OUT:-/tmp/gmn_probe}
CONFIG=${CONFIG:-experiments/configs/cub.py}
ITERATIONS=${ITERATIONS:-100}
CHUNKS=${CHUNKS:-3}
SEEDS=${SEEDS:-1,2,4,8}
PROFILE_SEEDS=${PROFILE_SEEDS:-1,2}
STEP_TIMEOUT=${STEP_TIMEOUT:-200}
PYTHON=${PYTHON:-python}
KEEP_WORK=${WORK:+1}
WORK=${WORK:-$(mktemp -d)}

mkdir -p "$OUT" "$WORK"
LOG="$OUT/probe.log"
: >"$LOG"

say() { echo "[probe $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }

cleanup() { [[ -n "$KEEP_WORK" ]] || rm -rf "$WORK"; }
trap cleanup EXIT

# Does this Python/XLA start with these XLA_FLAGS? (XLA aborts on unknown ones.)
flags_accepted() {
  XLA_FLAGS="$1" timeout 120 "$PYTHON" -c \
    "import jax, jax.numpy as jnp; jax.jit(lambda x: x + 1)(jnp.ones(2)).block_until_ready()" \
    >/dev/null 2>&1
}

# run_way NAME EXTRA_XLA_FLAGS BENCHMARK_FLAGS...: one benchmark run, timed out
# after STEP_TIMEOUT; its JSON, stdout and stderr go to $OUT/NAME.{json,log}.
run_way() {
  local name=$1 xla_flags=$2
  shift 2
  say "$name: XLA_FLAGS='${XLA_FLAGS:-} $xla_flags' $*"
  local started=$SECONDS
  XLA_FLAGS="${XLA_FLAGS:-} $xla_flags" \
    JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache" \
    timeout --kill-after=10 "$STEP_TIMEOUT" "$PYTHON" -m experiments.benchmark \
    --config="$CONFIG" --scaling=seeds --skip_classifier --skip_breakdown \
    --iterations="$ITERATIONS" --chunks="$CHUNKS" --json_out="$OUT/$name.json" \
    "$@" "${EXTRA_ARGS[@]}" >"$OUT/$name.log" 2>&1
  local status=$?
  say "$name: exit status $status after $((SECONDS - started)) s"
  [[ $status -eq 0 ]] || tail -n 5 "$OUT/$name.log" | tee -a "$LOG" >&2
}

EXTRA_ARGS=("$@")
BACKEND=$(timeout 120 "$PYTHON" -c "import jax; print(jax.default_backend())" 2>>"$LOG")
BACKEND=${BACKEND:-unknown}
say "backend: $BACKEND; out: $OUT; scratch: $WORK"
[[ "$BACKEND" == gpu ]] && { nvidia-smi --query-gpu=name,driver_version --format=csv,noheader \
  2>/dev/null | tee -a "$LOG" >&2 || true; }

NO_COMMAND_BUFFERS="--xla_gpu_enable_command_buffer="
KEEP_DURING_PROFILING="--xla_enable_command_buffers_during_profiling=true"
PROFILE_FLAGS=""
if [[ "$BACKEND" == gpu ]]; then
  if flags_accepted "$KEEP_DURING_PROFILING"; then
    PROFILE_FLAGS=$KEEP_DURING_PROFILING
  else
    say "this XLA does not accept $KEEP_DURING_PROFILING: profiles run command buffers op by op"
  fi
fi

run_way default "" --seed_counts="$SEEDS" --dump_hlo_dir="$WORK/hlo_full"

if [[ "$BACKEND" != gpu ]]; then
  say "no_command_buffers: skipped (backend $BACKEND has no command buffers)"
elif ! flags_accepted "$NO_COMMAND_BUFFERS"; then
  say "no_command_buffers: skipped (this XLA does not accept $NO_COMMAND_BUFFERS)"
else
  run_way no_command_buffers "$NO_COMMAND_BUFFERS" --seed_counts="$SEEDS"
fi

run_way profiled "$PROFILE_FLAGS" --seed_counts="$PROFILE_SEEDS" --profile_dir="$OUT/traces"

# Keep the optimised HLO (and any thunk listing), not the IR and binaries.
if [[ -d "$WORK/hlo_full" ]]; then
  for point_dir in "$WORK/hlo_full"/*/; do
    point=$(basename "$point_dir")
    mkdir -p "$OUT/hlo/$point"
    find "$point_dir" -maxdepth 1 -type f \
      \( -name '*after_optimizations.txt' -o -name '*thunk*.txt' \) \
      -exec cp {} "$OUT/hlo/$point/" \;
  done
fi

timeout 300 "$PYTHON" -m experiments.scripts.probe_summary "$OUT" | tee "$OUT/summary.txt"
