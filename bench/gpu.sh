#!/usr/bin/env bash
# The GPU benchmark session, as run through the device tool (an H100/H200 without a package index).
# Usage: bench/gpu.sh PART [OUT_DIR]; PART is one of
#   data    install the wheels from .whl/ (../shared/tools/gpu-wheels.sh), run the CUDA-only tests (not with SKIP_TESTS=1),
#           make the HW04-scale synthetic set in /tmp/hw04 (skipped when it is there already)
#   tests   install the wheels, run the CUDA tests (graph steps, MPS with a real daemon, workers on every GPU)
#   rates   bench/bench.py parts 1, 2 and 4 (steps/s, segments/s, memory, packing) on /tmp/hw04
#   trials  bench/bench.py part 3 (trials per GPU-hour with K = 1, 2, 4 workers on the GPU)
#   throughput  issue 12 in one call: trials/GPU-hour for K = 1, 2, 4, 8 workers with and without MPS and
#           validation's share of a trial (600 speakers x 12 utterances, the issue's set), then the README's first
#           command (`search run --trials 20`, embedded data) from a fresh folder, timed
#           (WORKERS=1,4,8 MPS_MODES=on GPUS=1,2 TRIALS_PER_WORKER=n: other sides; FIRST=0: no README command)
#   first   the README's first command alone (FIRST_ARGS: options added to it, e.g. "--workers-per-gpu 4")
#   against  trials/GPU-hour of this tree and of an earlier one in $BASE (e.g. `git archive <commit>` unpacked),
#           alternating on the same card: K = 1 without MPS, then K = 4 and 8 with it (KS_ON="4,8"), 10 trials per
#           worker (TRIALS_PER_WORKER); each JSON line gets "tree": "base" or "this"
#   ensemble  issue 11 part 3 on the HW04-scale set: a default search (--workers-per-gpu 4: MPS started by the run)
#           for SEARCH_SECONDS, then `finalize top --k 3` and `finalize top --k 3 --seeds` at FINAL_STEPS steps each,
#           each finalize stopped at the call's end and resumed by the next call (a killed finalize resumes);
#           UTTERANCES=40: on 600 speakers x 40 utterances instead
#   study   a full-space study (search run --gpus --workers-per-gpu 4) and which components its trials used
#   fusion  bench/fusion.py: K sample-code trials fused into one vmapped, graphed step against one model's step
# Each part prints JSON lines and copies them to OUT_DIR (default: $OUT, the device tool's folder).
set -euo pipefail
part=$1
out=${2:-${OUT:-/tmp}}
if [ -d .whl ] && [ ! -d /tmp/site/optuna ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
data=/tmp/hw04
small=/tmp/hw04-12  # issue 12's set: 600 speakers x 12 utterances
small_set() {
  [ -f $small/metadata.json ] || python3 -c "
from data.synth import synthesize
if __name__ == '__main__':
    synthesize('$small', speakers=600, utterances_per_speaker=12, length_scale=1.0, seed=0, workers=16)"
}
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
  tests)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -m pytest -q -p no:cacheprovider -rs tests/test_train.py tests/test_gpus.py tests/test_mps.py 2>&1 \
      | tee "$out/tests.txt" | tail -n 15 ;;
  rates)
    python3 bench/bench.py --data $data --steps 1500 --skip trials | tee "$out/rates.jsonl" ;;
  trials)
    python3 bench/bench.py --data $data --skip packing,sample,rates --trials-per-worker "${TRIALS_PER_WORKER:-6}" | tee "$out/trials.jsonl" ;;
  throughput)
    small_set
    python3 bench/bench.py --data $small --skip packing,sample,rates,${SKIP:-} --workers "${WORKERS:-1,2,4,8}" \
      --mps "${MPS_MODES:-off,on}" --gpus "${GPUS:-1}" --trials-per-worker "${TRIALS_PER_WORKER:-6}" \
      | tee "$out/throughput.jsonl"
    [ "${FIRST:-1}" = 1 ] || exit 0
    bench/gpu.sh first "$out" ;;
  first)  # the README's first command, from a fresh folder
    work=$(mktemp -d); repo=$PWD
    (cd "$work" && mkdir -p bin && printf '#!/bin/sh\nexec python3 -m search.cli "$@"\n' > bin/search && chmod +x bin/search \
      && PATH=$work/bin:$PATH PYTHONPATH=$PYTHONPATH:$repo bash "$repo/bench/default_study.sh" ${FIRST_ARGS:-}) | tail -n 4 \
      | tee -a "$out/default_study.txt" ;;
  fusion)
    for attention in ${ATTENTION:-default no-cudnn}; do
      python3 bench/fusion.py --ks "${KS:-1,2,4,8,16}" --steps "${STEPS:-500}" --attention $attention | tee -a "$out/fusion.jsonl"
    done ;;
  against)
    [ -n "${BASE:-}" ] && [ -f "$BASE/bench/bench.py" ] || { echo "against: BASE must name an earlier tree" >&2; exit 2; }
    small_set
    here=$PWD
    for side in "1 off" "${KS_ON:-4,8} on"; do
      set -- $side
      for tree in base this; do
        dir=$here; [ $tree = base ] && dir=$BASE
        (cd "$dir" && PYTHONPATH=/tmp/site:$dir python3 bench/bench.py --data $small --skip packing,sample,rates,evaluation \
          --workers "$1" --mps "$2" --trials-per-worker "${TRIALS_PER_WORKER:-10}" --trial-steps "${TRIAL_STEPS:-2000}") \
          | sed "s/^{/{\"tree\": \"$tree\", /" | tee -a "$out/against.jsonl"
      done
    done ;;
  ensemble)  # issue 11 part 3; the study and the finalize checkpoints stay in studies/ for the next call
    deadline=$(( $(date +%s) + ${SECONDS_LEFT:-540} ))
    if [ -n "${UTTERANCES:-}" ]; then  # a smaller set than HW04's 94 training utterances per speaker
      data=/tmp/hw04-$UTTERANCES
      [ -f $data/metadata.json ] || python3 -m search.cli data synth $data --utterances-per-speaker $UTTERANCES --workers 16
    fi
    [ -f $data/metadata.json ] || SKIP_TESTS=1 bench/gpu.sh data "$out"
    if [ ! -f studies/ens.db ]; then
      python3 -m search.cli run --study ens --data $data --gpus --workers-per-gpu 4 --timeout "${SEARCH_SECONDS:-150}" --quiet 2>&1 \
        | tee "$out/ens-run.txt" | tail -n 8
    fi
    for how in "" "--seeds"; do
      left=$(( deadline - $(date +%s) )); [ $left -gt 30 ] || break
      # SIGINT at the deadline: finalize stops at its next step, keeps its checkpoint and says how to resume
      timeout -s INT $left python3 -m search.cli finalize top --k 3 $how --study ens --data $data \
        --steps "${FINAL_STEPS:-10000}" --out "studies/ens/top3${how}.csv" 2>&1 | tee -a "$out/ens-final${how}.txt" \
        | tail -n 14 || true
    done
    python3 -m search.cli show --study ens > "$out/ens-show.txt" 2>&1 || true ;;
  study)  # issue 3: the full search space on the HW04-scale set, 4 workers on the GPU, then what ran
    rm -f studies/gpu-full.db
    python3 -m search.cli run --trials "${TRIALS:-64}" --study gpu-full --data $data --gpus --workers-per-gpu 4 \
      --timeout "${STUDY_SECONDS:-300}" --quiet || true
    python3 bench/space_coverage.py --study gpu-full | tee "$out/study.txt"
    cp studies/gpu-full.db "$out/" ;;
  *) echo "unknown part $part" >&2; exit 2 ;;
esac
