#!/usr/bin/env bash
# Benchmark: the README's main job, `search run --trials 20` on the embedded data, from a fresh folder
# (dataset generation included). Prints the wall time and the trial counts. SEARCH: the command to run (default
# `search`; e.g. SEARCH="python -m search.cli" with PYTHONPATH set to another checkout, for a before/after pair).
set -euo pipefail
work=$(mktemp -d)
cd "$work"
start=$(date +%s.%N)
${SEARCH:-search} run --trials 20 "$@" | tee run.log
end=$(date +%s.%N)
python3 - "$start" "$end" <<'PY'
import sys, optuna
start, end = map(float, sys.argv[1:3])
study = optuna.load_study(study_name="hw04", storage="sqlite:///studies/studies.sqlite3")
states = [t.state.name for t in study.trials]
print(f"wall_seconds {end - start:.0f}  trials {len(states)}  complete {states.count('COMPLETE')}  "
      f"pruned {states.count('PRUNED')}  failed {states.count('FAIL')}  best {study.best_value:.4f}")
PY
rm -rf "$work"
