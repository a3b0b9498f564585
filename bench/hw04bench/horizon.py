"""How well a trial's 2,000-step score ranks what finalize delivers (issue 20, long horizon).

The long-horizon tables (``record.py --final``: finalize's settings over 20,000 or 70,000 steps, validated every
1,000) hold configurations of the 2,000-step table. For each configuration in both, this compares:

- its **2,000-step score**: the 2,000-step table's accuracy at the end of the budget (the mean of its repeats),
  what the search ranks trials by (near enough: a trial's value is its best of three validations);
- its **long score**: the long run's best validation accuracy, what finalize keeps (the best weights);
- the long run's own accuracy at 2,000 steps (a finalize schedule, not a trial's: its learning rate decays over
  the long budget), to tell the schedule's part from the horizon's.

It prints Spearman's rank correlation between them, where the 2,000-step table's best lands among the long
scores, and one line per configuration. Failed or unfinished long runs are listed and left out of the ranks.

    python -m bench.hw04bench.horizon --short bench/results/hw04bench-gpu.jsonl.gz \\
        --long bench/results/hw04bench-final20k.jsonl.gz bench/results/hw04bench-final70k.jsonl.gz
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.hw04bench import table as bench_table


@dataclass
class LongRun:
    config: str
    budget: int
    best: float | None  # best validation accuracy of a complete run; None if it failed or did not finish
    at_2000: float | None  # its own accuracy at 2,000 steps (interpolated between validations)
    why_not: str | None = None  # failed / unfinished: why it is left out


def long_runs(tbl: bench_table.Table) -> list[LongRun]:
    """The long table's runs (repeat 0), complete or not."""
    runs = []
    for r in tbl.runs:
        if r.get("repeat", 0) != 0:
            continue
        curve = r["curve"]
        steps = [point[0] for point in curve]
        at_2000 = float(np.interp(2000, steps, [point[1] for point in curve])) if curve and steps[-1] >= 2000 else None
        last = steps[-1] if curve else 0
        why = r["failed"] or (None if last == tbl.budget else f"stopped at step {last}")
        runs.append(LongRun(r["config"], tbl.budget, None if why else max(p[1] for p in curve), at_2000, why))
    return runs


def _spearman(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic) if len(a) >= 3 else None


def compare(short: dict[str, float], runs: list[LongRun]) -> dict:
    """Rank agreement between the 2,000-step scores and one long budget's runs (see the module docstring)."""
    both = [r for r in runs if r.best is not None and r.config in short]
    by_long = sorted(both, key=lambda r: -r.best)
    short_best = max(both, key=lambda r: short[r.config]) if both else None
    return {
        "budget": runs[0].budget if runs else None, "configurations": len(both),
        "spearman_short_long": _spearman([short[r.config] for r in both], [r.best for r in both]),
        "spearman_own_2000_long": _spearman([r.at_2000 for r in both if r.at_2000 is not None],
                                            [r.best for r in both if r.at_2000 is not None]),
        # 1 = the configuration the 2,000-step table ranks first is also the long budget's best
        "short_best_long_rank": by_long.index(short_best) + 1 if short_best else None,
        "left_out": [(r.config, r.why_not) for r in runs if r.best is None],
        "rows": [(r.config, short.get(r.config), r.at_2000, r.best) for r in by_long],
    }


def _format(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hw04bench.horizon", description=__doc__.splitlines()[0])
    parser.add_argument("--short", nargs="+", required=True, help="the 2,000-step table's files")
    parser.add_argument("--long", nargs="+", required=True, help="long-horizon tables, one file per budget")
    args = parser.parse_args(argv)
    for path in [*args.short, *args.long]:
        if not Path(path).is_file():
            parser.error(f"{path}: no such file")
    short = bench_table.final_scores(bench_table.load(*args.short).results())
    results = [compare(short, long_runs(bench_table.load(path))) for path in args.long]
    for result in results:
        print(f"{result['budget']} steps, {result['configurations']} configurations also in the 2,000-step table: "
              f"Spearman(2,000-step score, best at {result['budget']}) {_format(result['spearman_short_long'])}; "
              f"(its own accuracy at 2,000, best at {result['budget']}) {_format(result['spearman_own_2000_long'])}; "
              f"the 2,000-step table's best of them ranks #{result['short_best_long_rank']}")
        for config, why in result["left_out"]:
            print(f"  left out: {config} ({why})")
        for config, score, own, best in result["rows"]:
            print(f"  {config:40s} 2,000-step {_format(score)}  own at 2,000 {_format(own)}  best {_format(best)}")
    if len(results) == 2:  # the configurations of the longest budget, ranked at both long budgets
        first = {c: best for c, _, _, best in results[0]["rows"]}
        shared = [(first[c], best) for c, _, _, best in results[1]["rows"] if c in first]
        print(f"Spearman(best at {results[0]['budget']}, best at {results[1]['budget']}) over {len(shared)} "
              f"configurations: {_format(_spearman([a for a, _ in shared], [b for _, b in shared]))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
