#!/usr/bin/env bash
# The GPU benchmark session, as run through the device tool (an H100/H200 without a package index).
# Usage: bench/gpu.sh PART [OUT_DIR]; PART is one of
#   data    install the wheels from .whl/ (../shared/tools/gpu-wheels.sh), run the CUDA-only tests (not with SKIP_TESTS=1),
#           make the HW04-scale synthetic set in /tmp/hw04 (skipped when it is there already)
#   rates   bench/bench.py parts 1, 2 and 4 (steps/s, segments/s, memory, packing) on /tmp/hw04
#   trials  bench/bench.py part 3 (trials per GPU-hour with K = 1, 2, 4 workers on the GPU)
#   throughput  issue 12 in one call: trials/GPU-hour for K = 1, 2, 4, 8 workers with and without MPS and
#           validation's share of a trial (600 speakers x 12 utterances, the issue's set), then the README's first
#           command (`search run --trials 20`, embedded data) from a fresh folder, timed
#   study   a full-space study (search run --gpus --workers-per-gpu 4) and which components its trials used
# Each part prints JSON lines and copies them to OUT_DIR (default: $OUT, the device tool's folder).
set -euo pipefail
part=$1
out=${2:-${OUT:-/tmp}}
if [ -d .whl ] && [ ! -d /tmp/site/optuna ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
data=/tmp/hw04
case $part in
  data)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    [ -n "${SKIP_TESTS:-}" ] || python3 -m pytest -q -p no:cacheprovider tests/test_train.py
    if [ ! -f $data/metadata.json ]; then
      start=$(date +%s.%N)
      python3 -c "
from data.synth import synthesize
if __name__ == '__main__':
    print(synthesize('$data', speakers=600, utterances_per_speaker=94, length_scale=1.0, seed=0, workers=16))"
      echo "synth seconds: $(python3 -c "print(round($(date +%s.%N) - $start, 1))")"
    fi
    du -sh $data ;;
  rates)
    python3 bench/bench.py --data $data --steps 1500 --skip trials | tee "$out/rates.jsonl" ;;
  trials)
    python3 bench/bench.py --data $data --skip packing,sample,rates --trials-per-worker "${TRIALS_PER_WORKER:-6}" | tee "$out/trials.jsonl" ;;
  throughput)
    small=/tmp/hw04-12
    [ -f $small/metadata.json ] || python3 -c "
from data.synth import synthesize
if __name__ == '__main__':
    synthesize('$small', speakers=600, utterances_per_speaker=12, length_scale=1.0, seed=0, workers=16)"
    python3 bench/bench.py --data $small --skip packing,sample,rates --workers 1,2,4,8 --mps off,on \
      --trials-per-worker "${TRIALS_PER_WORKER:-6}" | tee "$out/throughput.jsonl"
    work=$(mktemp -d); repo=$PWD
    (cd "$work" && mkdir -p bin && printf '#!/bin/sh\nexec python3 -m search.cli "$@"\n' > bin/search && chmod +x bin/search \
      && PATH=$work/bin:$PATH PYTHONPATH=$PYTHONPATH:$repo bash "$repo/bench/default_study.sh") | tail -n 4 | tee "$out/default_study.txt" ;;
  study)  # issue 3: the full search space on the HW04-scale set, 4 workers on the GPU, then what ran
    rm -f studies/gpu-full.db
    python3 -m search.cli run --trials "${TRIALS:-64}" --study gpu-full --data $data --gpus --workers-per-gpu 4 \
      --timeout "${STUDY_SECONDS:-300}" --quiet || true
    python3 bench/space_coverage.py --study gpu-full | tee "$out/study.txt"
    cp studies/gpu-full.db "$out/" ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
