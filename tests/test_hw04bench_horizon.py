"""HW04-Bench's long-horizon comparison (bench/hw04bench/horizon.py): what it tells a user choosing a trial budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _table(path: Path, budget: int, runs: dict[str, list[tuple[int, float]] | str], final: bool) -> Path:
    """A table as record.py writes it: a session line, then one run line per configuration (a curve of
    (step, accuracy) points, or the text of a failure)."""
    session = {"kind": "session", "session": "s", "budget": budget, "profile": "full"}
    lines = [{**session, **({"final": True} if final else {})}]
    for config, curve in runs.items():
        failed = curve if isinstance(curve, str) else None
        points = [] if failed else [[step, acc, 1.0, step / 100, 1.0] for step, acc in curve]
        lines.append({"kind": "run", "config": config, "repeat": 0, "session": "s", "curve": points, "failed": failed})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_the_comparison_ranks_what_finalize_keeps_against_the_trials_score(tmp_path):
    short = _table(tmp_path / "short.jsonl", 2000, {
        "warm:a": [(1000, 0.2), (2000, 0.50)], "sobol:1": [(2000, 0.40)], "sobol:2": [(2000, 0.30)],
        "sobol:3": [(2000, 0.20)], "sobol:4": [(2000, 0.10)]}, final=False)
    # at 20,000 steps sobol:1 overtakes the warm start (its best, 0.81 at 19,000, is what finalize keeps, not the
    # last point); the others keep their order; sobol:4 stopped short of the budget; sobol:3 diverged
    long20 = _table(tmp_path / "long20.jsonl", 20000, {
        "warm:a": [(1000, 0.3), (2000, 0.45), (20000, 0.70)],
        "sobol:1": [(1000, 0.2), (2000, 0.35), (19000, 0.81), (20000, 0.80)],
        "sobol:2": [(1000, 0.1), (2000, 0.25), (20000, 0.60)],
        "sobol:3": "training loss became nan before step 3000",
        "sobol:4": [(1000, 0.05), (2000, 0.08), (9000, 0.3)]}, final=True)
    long70 = _table(tmp_path / "long70.jsonl", 70000, {
        "warm:a": [(2000, 0.45), (70000, 0.72)], "sobol:1": [(2000, 0.35), (70000, 0.84)]}, final=True)
    done = subprocess.run([sys.executable, "-m", "bench.hw04bench.horizon", "--short", str(short),
                           "--long", str(long20), str(long70)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("20000 steps, 3 configurations also in the 2,000-step table: "
                               "Spearman(2,000-step score, best at 20000) 0.500;")
    assert "own accuracy at 2,000, best at 20000) 0.500" in lines[0]
    assert lines[0].endswith("the 2,000-step table's best of them ranks #2")  # warm:a, overtaken by sobol:1
    assert "  left out: sobol:3 (training loss became nan before step 3000)" in lines
    assert "  left out: sobol:4 (stopped at step 9000)" in lines
    rows = [line.split()[0] for line in lines if line.startswith("  ") and "left out" not in line]
    assert rows[:3] == ["sobol:1", "warm:a", "sobol:2"]  # by what finalize keeps at 20,000
    assert "best 0.810" in next(line for line in lines if line.startswith("  sobol:1 "))
    assert lines[-1] == "Spearman(best at 20000, best at 70000) over 2 configurations: -"  # too few to rank


def test_a_missing_table_is_named(tmp_path):
    missing = str(tmp_path / "none.jsonl")
    done = subprocess.run([sys.executable, "-m", "bench.hw04bench.horizon", "--short", missing, "--long", missing],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "none.jsonl: no such file" in done.stderr and "Traceback" not in done.stderr
