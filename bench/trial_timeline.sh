#!/usr/bin/env bash
# When each trial of a short `search run` starts and ends, for this tree and (with BASE=<an unpacked earlier tree>)
# that one: the gaps between trials are the runner's own time (notes, tell, the next ask), which trials/hour folds in.
# Usage: [BASE=DIR] [DEVICE=cuda|cpu] [STEPS=2000] [TRIALS=5] bash bench/trial_timeline.sh
# Prints, per tree and trial: start, end, seconds, training seconds (wall_seconds), validation seconds.
set -u
device=${DEVICE:-cuda} steps=${STEPS:-2000} trials=${TRIALS:-5}
# On the GPU machine (no optuna installed there): the wheels of ../shared/tools/gpu-wheels.sh, carried in .whl
python3 -c "import optuna" 2>/dev/null || [ -d /tmp/site/optuna ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
  --target /tmp/site .whl/*.whl
trees="this"; [ -n "${BASE:-}" ] && trees="base this"
for tree in $trees; do
  dir=$PWD; [ $tree = base ] && dir=$BASE
  work=$(mktemp -d)
  (cd "$work" && PYTHONPATH=/tmp/site:$dir python3 - <<PY
import os, subprocess, sys, time

import optuna

from search.running.space import KNOWN_CONFIGS

url = "sqlite:///$work/t.db"
study = optuna.create_study(study_name="t", storage=url, direction="maximize")
for _ in range($trials):
    study.enqueue_trial(KNOWN_CONFIGS["sample-code"])
started = time.time()
done = subprocess.run([sys.executable, "-m", "search.cli", "run", "--trials", "$trials", "--study", "t", "--storage", url,
                       "--budget", "$steps", "--device", "$device", "--no-warm-start", "--no-pruning", "--space", "full",
                       "--quiet"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": "/tmp/site:$dir"})
print("$tree", "exit", done.returncode, "wall", round(time.time() - started, 1), done.stderr[-300:] if done.returncode else "")
for t in optuna.load_study(study_name="t", storage=url).trials:
    print("$tree", t.number, t.datetime_start.strftime("%H:%M:%S.%f")[:-3], t.datetime_complete.strftime("%H:%M:%S.%f")[:-3],
          round((t.datetime_complete - t.datetime_start).total_seconds(), 2), t.user_attrs.get("wall_seconds"),
          t.user_attrs.get("eval_seconds"))
PY
  ) 2>&1 | grep -v "A new study created" | tee -a "${OUT:-/tmp}/timeline.txt"
done
