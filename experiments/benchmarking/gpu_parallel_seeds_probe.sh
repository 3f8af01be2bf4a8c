#!/usr/bin/env bash
# Why do vmapped parallel seeds cost so much on a GPU? One prepared probe.
#
# On an H100, S = 2 / 4 / 8 parallel seeds cost 1.6x / 2.7x / 4.9x one seed's
# time while the host's CPU time per iteration grows from 0.04 ms to 9.3 ms
# (docs/benchmarks.md, "What limits parallel seeds on the GPU"). The first
# suspect was that XLA:GPU runs the S = 1 loop as command buffers (CUDA
# graphs) and the S > 1 loop op by op. Compiling for an H100 without one
# (experiments.benchmarking.gpu_aot) since showed the same command buffers
# for every S and a memory-traffic model that accounts for the times; this
# probe checks both on the card, in one go, from the repository root:
#
#   OUT=/tmp/gmn_probe bash experiments/benchmarking/gpu_parallel_seeds_probe.sh \
#       [extra benchmark flags, e.g. --config.precision=bfloat16]
#
# It runs `python -m experiments.benchmark --scaling=seeds --skip_classifier
# --skip_breakdown` (CUB att+sent, --iterations=100 --chunks=3) three ways:
#
#   default             as is; also dumps the optimised HLO of every stage-1
#                       chunk program (--dump_hlo_dir; `main` is S = 1)
#   no_command_buffers  XLA_FLAGS=--xla_gpu_enable_command_buffer= (none);
#                       GPU only, and only if this XLA accepts the flag
#   profiled            S in $PROFILE_SEEDS, chunks of $PROFILE_ITERATIONS,
#                       one extra chunk per setting under jax.profiler.trace
#                       (--profile_dir); on a GPU with
#                       --xla_enable_command_buffers_during_profiling=true
#                       where accepted, as XLA otherwise runs command buffers
#                       op by op while it traces
#
# then prints `python -m experiments.benchmarking.probe_summary` of the results.
# Reading it: if command buffers are the cause, no_command_buffers' S = 1 row
# (host CPU ms/iteration, ms/iteration) climbs to the default S = 2 row's, the
# default HLO of `main` has the loop inside command buffers ("while 1/1", most
# fusions covered) and that of seeds_2 does not, and the S = 1 trace shows
# graph launches where S = 2 shows one kernel launch per kernel.
#
# Leaves in ${OUT:-/tmp/gmn_probe} at most 8 files, none in subfolders:
# summary.txt, probe.log, kernel_model.txt (on a GPU:
# `experiments.benchmarking.gpu_aot --analyse_dir` of the default way's
# dumps, fitted to its timings),
# probe_results.tar.gz (each way's JSON and log),
# probe_hlo.tar.gz (hlo/<point>/*after_optimizations.txt) and
# trace_<point>.json.gz (Chrome/Perfetto trace of each profiled S; the
# XProf .xplane.pb files stay in the scratch folder). The archives are
# rewritten after every way, so a run killed part-way keeps what finished.
# Scratch (everything unpacked, the full XLA dump, JAX's persistent
# compilation cache that lets S = 1 reuse the main setting's program) goes to
# ${WORK:-a temporary folder}, deleted at the end unless WORK was given.
#
# Settings (environment): CONFIG (experiments/configs/cub.py), ITERATIONS
# (100), CHUNKS (3), SEEDS (1,2,4,8), PROFILE_SEEDS (1,2), PROFILE_ITERATIONS
# (20), DEADLINE (seconds for the whole probe: 540), STEP_TIMEOUT (seconds per
# benchmark run: 200, cut to fit the deadline), PYTHON (python). Expected on
# an H100: about 2 minutes for each of the first two ways (mostly compiling
# S = 1, 2, 4, 8), 1 for the third. SEEDS=1,2,8 saves a compile per way.
# On a CPU the GPU-only flags are left out, so the mechanics can be checked
# anywhere with tiny settings (tests/test_benchmark.py does).

set -u -o pipefail

OUT=${OUT:-/tmp/gmn_probe}
CONFIG=${CONFIG:-experiments/configs/cub.py}
ITERATIONS=${ITERATIONS:-100}
CHUNKS=${CHUNKS:-3}
SEEDS=${SEEDS:-1,2,4,8}
PROFILE_SEEDS=${PROFILE_SEEDS:-1,2}
PROFILE_ITERATIONS=${PROFILE_ITERATIONS:-20}
DEADLINE=${DEADLINE:-540}
STEP_TIMEOUT=${STEP_TIMEOUT:-200}
PYTHON=${PYTHON:-python}
KEEP_WORK=${WORK:+1}
WORK=${WORK:-$(mktemp -d)}
RUN="$WORK/run"
EXTRA_ARGS=("$@")
# Time kept back at the end for the summary and the archives.
RESERVE=30

mkdir -p "$OUT" "$RUN"
LOG="$OUT/probe.log"
: >"$LOG"

say() { echo "[probe $(date +%H:%M:%S) +${SECONDS}s] $*" | tee -a "$LOG" >&2; }

cleanup() { [[ -n "$KEEP_WORK" ]] || rm -rf "$WORK"; }
trap cleanup EXIT

# Does this XLA start with these flags? (It aborts on ones it does not know.)
# The CPU backend answers in a second and parses XLA_FLAGS with the same XLA
# version as the CUDA plugin.
flags_accepted() {
  XLA_FLAGS="$1" JAX_PLATFORMS=cpu timeout 60 "$PYTHON" -c \
    "import jax, jax.numpy as jnp; jax.jit(lambda x: x + 1)(jnp.ones(2)).block_until_ready()" \
    >/dev/null 2>&1
}

# Copies the results so far into $OUT as a few flat files (see the top).
pack() {
  (cd "$RUN" && tar -czf "$OUT/probe_results.tar.gz" --ignore-failed-read \
    $(ls ./*.json ./*.log 2>/dev/null)) 2>>"$LOG"
  [[ -d "$RUN/hlo" ]] && (cd "$RUN" && tar -czf "$OUT/probe_hlo.tar.gz" hlo) 2>>"$LOG"
  local point trace
  for point_dir in "$RUN"/traces/seeds_*/; do
    [[ -d "$point_dir" ]] || continue
    point=$(basename "$point_dir")
    trace=$(find "$point_dir" -name '*.trace.json.gz' | sort | tail -n 1)
    [[ -n "$trace" ]] && cp "$trace" "$OUT/trace_$point.json.gz"
  done
  find "$OUT" -maxdepth 1 -type f -size +15M -printf \
    "[probe] %f is %s bytes: over what a device run brings back (16 MiB)\n" | tee -a "$LOG" >&2
}

# run_way NAME EXTRA_XLA_FLAGS BENCHMARK_FLAGS...: one benchmark run into
# $RUN/NAME.{json,log}, killed after STEP_TIMEOUT or at the deadline.
run_way() {
  local name=$1 flag_words xla_env
  # XLA reads an XLA_FLAGS that does not start with "--" as a file name: no
  # stray blanks, and no variable at all when there are no flags.
  read -r -a flag_words <<<"${XLA_FLAGS:-} $2"
  if [[ ${#flag_words[@]} -gt 0 ]]; then
    xla_env=("XLA_FLAGS=${flag_words[*]}")
  else
    xla_env=("--unset=XLA_FLAGS")
  fi
  shift 2
  local limit=$((DEADLINE - RESERVE - SECONDS))
  ((limit > STEP_TIMEOUT)) && limit=$STEP_TIMEOUT
  if ((limit < 20)); then
    say "$name: skipped (the deadline of ${DEADLINE} s is too close)"
    return
  fi
  say "$name: ${xla_env[*]} $* (limit ${limit} s)"
  local started=$SECONDS
  env "${xla_env[@]}" JAX_COMPILATION_CACHE_DIR="$WORK/jax_cache" PYTHONUNBUFFERED=1 \
    timeout --kill-after=10 "$limit" "$PYTHON" -m experiments.benchmark \
    --config="$CONFIG" --scaling=seeds --skip_classifier --skip_breakdown \
    --chunks="$CHUNKS" --json_out="$RUN/$name.json" \
    "$@" "${EXTRA_ARGS[@]}" >"$RUN/$name.log" 2>&1
  local status=$?
  say "$name: exit status $status after $((SECONDS - started)) s"
  [[ $status -eq 0 ]] || tail -n 5 "$RUN/$name.log" | tee -a "$LOG" >&2
  pack
}

BACKEND=$(timeout 120 "$PYTHON" -c "import jax; print(jax.default_backend())" 2>>"$LOG")
BACKEND=${BACKEND:-unknown}
say "backend: $BACKEND; out: $OUT; scratch: $WORK"
if [[ "$BACKEND" == gpu ]]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | tee -a "$LOG" >&2
fi

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

run_way default "" --iterations="$ITERATIONS" --seed_counts="$SEEDS" \
  --dump_hlo_dir="$WORK/hlo_full"
# Keep the optimised HLO (and any thunk listing), not the IR and binaries.
for point_dir in "$WORK"/hlo_full/*/; do
  [[ -d "$point_dir" ]] || continue
  point=$(basename "$point_dir")
  mkdir -p "$RUN/hlo/$point"
  find "$point_dir" -maxdepth 1 -type f \
    \( -name '*after_optimizations.txt' -o -name '*thunk*.txt' \) -exec cp {} "$RUN/hlo/$point/" \;
done
pack
# The roofline model of these programs
# (experiments/benchmarking/kernel_model.py), fitted to the default timings:
# does it explain them on the real compile as it did on the deviceless one
# (docs/benchmarks.md)?
if [[ "$BACKEND" == gpu && -f "$RUN/default.json" ]]; then
  timeout 120 "$PYTHON" -m experiments.benchmarking.gpu_aot --analyse_dir="$RUN/hlo" \
    --measured_json="$RUN/default.json" --json_out="$RUN/kernel_model.json" \
    >"$OUT/kernel_model.txt" 2>>"$LOG"
  say "kernel model ($OUT/kernel_model.txt): exit status $?"
fi

if [[ "$BACKEND" != gpu ]]; then
  say "no_command_buffers: skipped (backend $BACKEND has no command buffers)"
elif ! flags_accepted "$NO_COMMAND_BUFFERS"; then
  say "no_command_buffers: skipped (this XLA does not accept $NO_COMMAND_BUFFERS)"
else
  run_way no_command_buffers "$NO_COMMAND_BUFFERS" --iterations="$ITERATIONS" \
    --seed_counts="$SEEDS"
fi

run_way profiled "$PROFILE_FLAGS" --iterations="$PROFILE_ITERATIONS" \
  --seed_counts="$PROFILE_SEEDS" --profile_dir="$RUN/traces"

timeout "$RESERVE" "$PYTHON" -m experiments.benchmarking.probe_summary "$RUN" \
  >"$OUT/summary.txt" 2>>"$LOG"
say "summary ($OUT/summary.txt), exit status $?:"
cat "$OUT/summary.txt"
ls -l "$OUT" >&2
