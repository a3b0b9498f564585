#!/usr/bin/env bash
# Issue 11 part 4 on the GPU: every warm-start configuration for 70,000 steps on the HW04-scale synthetic set,
# plus diagnostics of the sample-code model's instability, run side by side on one GPU (an MPS daemon lets the
# processes' kernels overlap; each process still trains exactly as alone, only its steps/s differ).
# Usage (device tool): bench/gpu_calibrate.sh GROUP   with GROUP one of
#   sample     sample-code: seeds 0 and 1 as finalize trains it (clip 20, recovery), no clip and no recovery (the
#              issue's run), fp32 autocast off, eager steps; plus prenorm-d256-3layer and medium-d512-h16
#   conformer  conformer-d512-h16-linear and conformer-d160-2layer-sap
#   fp32       finalize's precision (tf32) for the runs that diverged in bf16: sample-code seed 0, medium-d512-h16,
#              conformer-d512-h16-linear; first, alone, 1,500-step speed probes of bf16, tf32 and fp32
# Writes calibrate-GROUP.jsonl to $OUT (MPS=off: no MPS daemon). bench/gpu.sh data must have made /tmp/hw04 (this script runs it).
set -euo pipefail
group=$1
out=${OUT:-/tmp}
bench/gpu.sh data "$out" > "$out/data.txt" 2>&1 || { cat "$out/data.txt"; exit 1; }
tail -n 3 "$out/data.txt"
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
# Pack the feature bank once, before the parallel runs (each would otherwise pack its own copy at once).
start=$(date +%s)
python3 -c "from search.running.task import load_task; import torch; load_task('/tmp/hw04', 0, torch.device('cuda'))"
echo "bank ready after $(( $(date +%s) - start )) s"
if [ "${MPS:-on}" = on ]; then
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  nvidia-cuda-mps-control -d && trap 'echo quit | nvidia-cuda-mps-control || true' EXIT
  # A client that cannot reach the daemon can hang in CUDA init: check one within 60 s, else go on without MPS.
  if timeout 60 python3 -c "import torch; torch.ones(1, device='cuda').sum().item()"; then echo "MPS on"
  else echo "MPS client failed: MPS off"; echo quit | nvidia-cuda-mps-control || true
       unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY; fi
fi
mkdir -p "$out/$group"
run() {  # NAME ARGS...
  local name=$1; shift
  python3 bench/calibrate.py --data /tmp/hw04 --steps "${STEPS:-70000}" --eval-every 5000 "$@" \
    > "$out/$group/$name.jsonl" 2>&1 &  # warnings too: grep '^{' for the records
}
case $group in
  sample)
    run sample-s0 --configs sample-code --seed 0
    run sample-s1 --configs sample-code --seed 1
    run sample-noclip --configs sample-code --seed 0 --grad-clip 0 --no-recover
    run sample-fp32 --configs sample-code --seed 0 --precision fp32
    run prenorm --configs prenorm-d256-3layer
    run medium --configs medium-d512-h16 ;;
  conformer)
    run c512 --configs conformer-d512-h16-linear
    run c160 --configs conformer-d160-2layer-sap ;;
  fp32)
    for precision in bf16 tf32 fp32; do
      python3 bench/calibrate.py --data /tmp/hw04 --steps 1500 --eval-every 1500 --configs conformer-d512-h16-linear \
        --precision $precision 2>/dev/null | grep '"summary"' | tee -a "$out/speed.jsonl"
    done
    run sample-s0 --configs sample-code --seed 0 --precision tf32
    run medium --configs medium-d512-h16 --precision tf32
    run c512 --configs conformer-d512-h16-linear --precision tf32 ;;
  *) echo "unknown group $group" >&2; exit 2 ;;
esac
# A heartbeat: each run's last evaluation every 60 s, so a slow or stuck run shows in the output.
while [ -n "$(jobs -r)" ]; do
  sleep 60
  for f in "$out/$group"/*.jsonl; do echo "$(date +%T) $(basename $f): $(tail -n 1 $f | cut -c1-160)"; done
done
wait
cat "$out/$group"/*.jsonl > "$out/calibrate-$group.jsonl"
grep -hv '^{' "$out/$group"/*.jsonl | tail -n 20
rm -rf "$out/$group"
grep -h '"summary"' "$out/calibrate-$group.jsonl"
