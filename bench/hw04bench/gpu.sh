#!/usr/bin/env bash
# One device call of HW04-Bench recording (an H100/H200 without a package index; see bench/gpu.sh for the wheels).
# Usage: bench/hw04bench/gpu.sh CALL SECONDS
#   CALL     a name for this call's files: $OUT/gpu-CALL.jsonl (RECORD=final20k: final20k-CALL.jsonl; below) and
#            $OUT/cpu-CALL.jsonl
#   SECONDS  the call's time limit: each recorder hands out only runs expected to end END_MARGIN (20) seconds
#            before it (record.py --end-at), and stops any still in flight then
# EVAL_MEMORY=1: run bench/eval_memory.py on the HW04-scale set first ($OUT/eval-memory-CALL.jsonl); OOM_RECOVERY=1:
# bench/oom_recovery.py ($OUT/oom-recovery-CALL.jsonl).
# HW04BENCH_COMMIT: write the local HEAD's hash into the command (the device's copy of .git is the last landed
# commit, not the tree it runs).
# Runs already recorded are skipped: the tables of earlier calls are read from .gpuwork/*.jsonl (copied back from
# $OUT and carried), and from bench/results/hw04bench-*.jsonl.gz. The plans come from .gpuwork/plan-*.json.
# Two recorders run side by side: the GPU table (full space, 2,000 steps, HW04-scale synthetic set,
# GPU_WORKERS workers under MPS) and the CPU table (cpu profile, 500 steps, embedded data, CPU_WORKERS workers of
# one thread each on the host's spare cores; CPU_WORKERS=0 leaves the CPU table out and the host's cores to the GPU
# workers).
set -euo pipefail
call=$1 limit=$2
start=$(date +%s)
out=${OUT:-/tmp/out}; mkdir -p "$out"
if [ ! -d /tmp/site/optuna ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HW04BENCH_COMMIT=${HW04BENCH_COMMIT:-unknown}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
done_files() { ls .gpuwork/$1-*.jsonl bench/results/hw04bench-$1*.jsonl.gz 2>/dev/null || true; }
end_at=$(( start + limit - ${END_MARGIN:-20} ))

if [ ! -f /tmp/hw04/metadata.json ]; then
  python3 -c "
from data.synth import synthesize
if __name__ == '__main__':
    synthesize('/tmp/hw04', speakers=600, utterances_per_speaker=94, length_scale=1.0, seed=0, workers=12)"
  echo "data ready after $(( $(date +%s) - start )) s"
fi
# Pack the feature bank before either recorder starts: beside the CPU recorder's workers the packing took most of
# a call (BENCHMARKS.md, HW04-Bench), and no GPU run started before the deadline.
python3 -c "
from search.running.task import prepare_bank
prepare_bank('/tmp/hw04')"
echo "bank ready after $(( $(date +%s) - start )) s"
# EVAL_MEMORY=1: first measure validation's memory and time with and without the attention bound (bench/eval_memory.py)
if [ "${EVAL_MEMORY:-0}" = 1 ]; then
  python3 bench/eval_memory.py --data /tmp/hw04 --device cuda --repeats 2 2> "$out/eval-memory-$call.err" \
    | tee "$out/eval-memory-$call.jsonl" || true
  echo "eval memory done after $(( $(date +%s) - start )) s"
fi
# OOM_RECOVERY=1: whether a process that ran out of memory can train the next run (bench/oom_recovery.py)
if [ "${OOM_RECOVERY:-0}" = 1 ]; then
  python3 bench/oom_recovery.py --data /tmp/hw04 2> "$out/oom-recovery-$call.err" | tee "$out/oom-recovery-$call.jsonl" || true
  echo "oom recovery done after $(( $(date +%s) - start )) s"
fi
# The CPU table (embedded data) on the host's spare cores, beside the GPU recorder.
cpu_pid=
if [ "${CPU_WORKERS:-6}" != 0 ]; then
  python3 -m bench.hw04bench.record --profile cpu --device cpu --workers "${CPU_WORKERS:-6}" --threads 1 \
    --plan .gpuwork/plan-cpu.json --done $(done_files cpu) --out "$out/cpu-$call.jsonl" \
    --end-at "$end_at" > "$out/cpu-$call.log" 2>&1 &
  cpu_pid=$!
fi
# RECORD=final20k / final70k: the long-horizon runs instead of the 2,000-step table (finalize's settings; plans from
# `python -m bench.hw04bench.configs --long-from bench/results/hw04bench-gpu.jsonl.gz --out .gpuwork/plan-final.json`),
# kept at each validation in /tmp/hw04bench-checkpoints so that a run goes on in the next call on this machine.
case ${RECORD:-gpu} in
  gpu) table=gpu; runs=(--plan .gpuwork/plan-full.json) ;;
  final20k) table=final20k; runs=(--final --budget 20000 --plan .gpuwork/plan-final-long.json) ;;
  final70k) table=final70k; runs=(--final --budget 70000 --plan .gpuwork/plan-final-longest.json) ;;
  *) echo "RECORD=$RECORD: expected gpu, final20k or final70k" >&2; exit 2 ;;
esac
[ "$table" = gpu ] || runs+=(--checkpoints /tmp/hw04bench-checkpoints)
python3 -m bench.hw04bench.record --profile full --data /tmp/hw04 --workers "${GPU_WORKERS:-8}" "${runs[@]}" \
  --done $(done_files $table) --out "$out/$table-$call.jsonl" \
  --end-at "$end_at" 2>&1 | tee "$out/$table-$call.log" | grep -v '^ ' || true
if [ -n "$cpu_pid" ]; then
  wait "$cpu_pid" || true
  tail -n 3 "$out/cpu-$call.log"
fi
echo "call $call done after $(( $(date +%s) - start )) s"
