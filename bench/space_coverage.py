"""What a study's trials tried: counts of each encoder, pooling and loss, trial states, and the best
trials with their settings and speed. Prints plain text (used for the issue notes and BENCHMARKS.md).

    python bench/space_coverage.py --study gpu-full [--storage URL]
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from search.db.storage import default_url  # noqa: E402
from search.running.study import load_study  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--study", required=True)
    parser.add_argument("--storage", default=None)
    parser.add_argument("--top", type=int, default=8)
    args = parser.parse_args()
    study = load_study(args.study, args.storage or default_url(args.study))
    trials = study.get_trials(deepcopy=False)
    print(f"study {args.study}: {len(trials)} trials,",
          dict(collections.Counter(t.state.name for t in trials)))
    for key in ("encoder", "pooling", "loss", "head", "subsampling", "layers", "d_model"):
        counts = collections.Counter(t.params.get(key, "-") for t in trials)
        print(f"  {key:12s}", dict(sorted(counts.items(), key=lambda kv: str(kv[0]))))
    done = sorted((t for t in trials if t.value is not None), key=lambda t: -t.value)
    print(f"best {min(args.top, len(done))} completed trials:")
    for t in done[:args.top]:
        a = t.user_attrs
        print(f"  #{t.number:3d} acc {t.value:.4f}  {a.get('warm_start', '')}  params {a.get('parameters')}"
              f"  {a.get('steps_per_second')} steps/s  {a.get('wall_seconds')} s  {t.params}")
    seconds = sum(t.user_attrs.get("wall_seconds", 0) for t in trials)
    print(f"trial time in all: {seconds:.0f} s over {len(trials)} trials")


if __name__ == "__main__":
    main()
