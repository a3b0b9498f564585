"""The speed benchmark runs end to end (CPU smoke mode); its numbers are for BENCHMARKS.md, not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_smoke_prints_every_measurement():
    done = subprocess.run([sys.executable, "bench/bench.py", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    kinds = {r["what"] for r in records}
    assert {"environment", "packing", "bank", "steps_per_second_batch32", "segments_per_second",
            "best_segments_per_second", "trials_per_hour"} <= kinds
    ratios = [r["ratio"] for r in records if r["what"] == "steps_per_second_batch32"]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    assert [r["workers"] for r in records if r["what"] == "trials_per_hour"] == [1, 2]
