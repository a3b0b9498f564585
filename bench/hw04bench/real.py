"""Real searches beside their replay: the same strategies run by ``search run`` itself (issue 20).

A replay's ranking is only as good as its surrogate. This runs strategies for real, through the ``search run``
command a user types, in the CPU table's setting (the embedded data, the cpu profile, 500-step trials, one torch
thread a study: the table's recorder ran one-thread workers), each seed's study pinned to a core of its own, and
prints each strategy's best validation accuracy after the budget beside the replay's prediction for the same
strategy, budget and one worker.

    python -m bench.hw04bench.real --budget 600 --seeds 0,1 --out bench/results/real-cpu.jsonl
    python -m bench.hw04bench.real --summary bench/results/real-cpu.jsonl \\
        --table bench/results/hw04bench-cpu.jsonl.gz --replay-seeds 30

One JSON line per study (its command, the machine, every trial's state, value, start and end in seconds since the
command started, and its measured steps/s), appended as each study ends: a killed run goes on with the studies
it had not finished (an unfinished study's storage is started again, since its clock was cut).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.hw04bench import table as bench_table

# The replay's names (replay.py OURS/EXTRA) of the strategies `search run` offers as options.
STRATEGY_OPTIONS = {
    "default": [],
    "no-warm-start": ["--no-warm-start"],
    "no-warm-start-no-pruning": ["--no-warm-start", "--no-pruning"],
}


def study_line(storage: str, study_name: str, strategy: str, seed: int, budget: float, command: list[str],
               started: float) -> dict:
    """One finished study as a line: its trials, timed from ``started`` (the command's start)."""
    import optuna

    study = optuna.load_study(study_name=study_name, storage=storage)
    trials = []
    for t in study.get_trials(deepcopy=False):
        end = t.datetime_complete.timestamp() - started if t.datetime_complete else None
        trials.append({"number": t.number, "state": t.state.name, "value": t.value, "params": t.params,
                       "start": round(t.datetime_start.timestamp() - started, 2) if t.datetime_start else None,
                       "end": None if end is None else round(end, 2),
                       "steps_per_second": t.user_attrs.get("steps_per_second"),
                       "ended": t.user_attrs.get("ended")})
    from bench.hw04bench.record import _cpu_model

    return {"strategy": strategy, "seed": seed, "budget": budget, "command": " ".join(command),
            "cpu": _cpu_model(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "commit": os.environ.get("HW04BENCH_COMMIT", "unknown"), "trials": trials}


def _command(strategy: str, seed: int, budget: float, storage: str, study_name: str) -> list[str]:
    return [shutil.which("search") or "search", "run", "--study", study_name, "--storage", storage,
            "--device", "cpu", "--space", "cpu", "--seed", str(seed), "--timeout", f"{budget:g}", "--quiet",
            *STRATEGY_OPTIONS[strategy]]


def run(strategies: list[str], seeds: list[int], budget: float, out: Path, cores: list[int], work: Path) -> None:
    """Run every (strategy, seed) not yet in ``out``, ``len(cores)`` at a time, each pinned to one core."""
    done = {(line["strategy"], line["seed"]) for line in bench_table.read_lines(out)}
    jobs = [(s, seed) for s in strategies for seed in seeds if (s, seed) not in done]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one torch thread, as the table's workers
    running: dict[int, tuple] = {}  # core -> (process, strategy, seed, storage, study name, command, started)
    while jobs or running:
        for core in cores:
            if core not in running and jobs:
                strategy, seed = jobs.pop(0)
                name = f"{strategy}-s{seed}"
                db = work / f"{name}.db"
                db.unlink(missing_ok=True)  # an unfinished study from a killed run: its clock was cut, start again
                storage = f"sqlite:///{db}"
                command = _command(strategy, seed, budget, storage, name)
                started = time.time()
                with open(work / f"{name}.err", "w") as err:  # a file, not a pipe nobody reads until the end
                    process = subprocess.Popen(["taskset", "-c", str(core), *command], env=env,
                                               stdout=subprocess.DEVNULL, stderr=err)
                running[core] = (process, strategy, seed, storage, name, command, started)
                print(f"core {core}: {name} started", flush=True)
        time.sleep(2)
        for core, (process, strategy, seed, storage, name, command, started) in list(running.items()):
            if process.poll() is None:
                continue
            del running[core]
            if process.returncode != 0:
                error = (work / f"{name}.err").read_text()[-500:]
                raise SystemExit(f"{name}: search run exited {process.returncode}: {error}")
            line = study_line(storage, name, strategy, seed, budget, ["search", *command[1:]], started)
            with open(out, "a", encoding="utf-8") as f:
                f.write(json.dumps(line) + "\n")
            print(f"core {core}: {name} done after {time.time() - started:.0f} s, {len(line['trials'])} trials",
                  flush=True)


def best_at(trials: list[dict], seconds: float) -> float | None:
    """The best value of the trials complete by ``seconds`` (what the study's best trial was then)."""
    values = [t["value"] for t in trials if t["state"] == "COMPLETE" and t["end"] is not None and t["end"] <= seconds]
    return max(values) if values else None


def speed_ratio(lines: list[dict], surrogate) -> float | None:
    """Median of (the table's seconds per step, as the surrogate predicts them) x (the real trial's steps/s):
    above 1 this machine trains faster than the table's recording machine."""
    pairs = [(t["params"], t["steps_per_second"]) for line in lines for t in line["trials"] if t["steps_per_second"]]
    if not pairs:
        return None
    _, costs, _ = surrogate.predict([p for p, _ in pairs])
    return float(np.median(costs[:, 0] * np.asarray([s for _, s in pairs])))


def summary(lines: list[dict], replay: dict[str, dict] | None) -> list[str]:
    """One row per strategy: each seed's real best at the budget, their mean, and the replay's prediction."""
    by_strategy: dict[str, list[dict]] = {}
    for line in lines:
        by_strategy.setdefault(line["strategy"], []).append(line)
    width = max(34, *(13 * len(group) for group in by_strategy.values()))
    rows = [f"{'strategy':<26} {'real best at the budget, by seed':<{width}} {'mean':>7} {'trials':>7}"
            + ("   replay: mean ± 95%, seeds' range" if replay else "")]
    for strategy, group in by_strategy.items():
        group.sort(key=lambda line: line["seed"])
        bests = [best_at(line["trials"], line["budget"]) for line in group]
        shown = ", ".join(f"s{line['seed']} {'-' if b is None else f'{b:.4f}'}" for line, b in zip(group, bests))
        known = [b for b in bests if b is not None]
        trials = np.mean([sum(t["end"] is not None and t["end"] <= line["budget"] for t in line["trials"])
                          for line in group])
        row = f"{strategy:<26} {shown:<{width}} {np.mean(known) if known else float('nan'):>7.4f} {trials:>7.1f}"
        if replay and strategy in replay:
            r = replay[strategy]
            row += f"   {r['mean']:.4f} ± {r['band']:.4f}, {r['low']:.4f}-{r['high']:.4f}"
        rows.append(row)
    return rows


def replay_prediction(model, strategies: list[str], budget: float, seeds: int) -> dict:
    """The replay's counterpart of ``best_at`` per strategy, one worker: the best observed value (seed luck
    included, as a real study's best trial) of the trainings complete by ``budget``; mean, 95% band, range."""
    from bench.hw04bench import replay

    out = {}
    for name in strategies:
        finals = []
        with tempfile.TemporaryDirectory(prefix="hw04bench-real-replay-") as tmp:
            for seed in range(seeds):
                trace = replay.replay(replay.make_strategy(name, model, seed, 1, Path(tmp) / str(seed)), model,
                                      budget, 1, seed)
                values = [t["value"] for t in trace.trials if t["state"] == "complete" and t["end"] <= budget
                          and t["last_step"] >= model.budget and t["value"] is not None]
                finals.append(max(values) if values else np.nan)
        finals = np.asarray(finals)
        out[name] = {"mean": float(finals.mean()), "band": float(1.96 * finals.std(ddof=1) / np.sqrt(len(finals))),
                     "low": float(finals.min()), "high": float(finals.max())}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default=",".join(STRATEGY_OPTIONS), help="comma-separated, of: "
                        + ", ".join(STRATEGY_OPTIONS))
    parser.add_argument("--seeds", default="0,1", help="comma-separated study seeds (the split's too)")
    parser.add_argument("--budget", type=float, default=600, help="seconds a study starts trials for (--timeout)")
    parser.add_argument("--cores", default="0,1", help="comma-separated CPU cores: one study runs on each")
    parser.add_argument("--out", type=Path, help="the .jsonl file each finished study is appended to")
    parser.add_argument("--summary", type=Path, help="print the table of an --out file instead of running")
    parser.add_argument("--table", nargs="+", type=Path, help="with --summary: the replay's table, for its prediction")
    parser.add_argument("--replay-seeds", type=int, default=30)
    args = parser.parse_args(argv)
    strategies = args.strategies.split(",")
    unknown = [s for s in strategies if s not in STRATEGY_OPTIONS]
    if unknown:
        parser.error(f"--strategies: unknown {', '.join(unknown)} (known: {', '.join(STRATEGY_OPTIONS)})")
    if args.summary:
        lines = bench_table.read_lines(args.summary)
        if not lines:
            parser.error(f"--summary: {args.summary} holds no finished study")
        budget = lines[0]["budget"]
        replay = None
        if args.table:
            from bench.hw04bench import surrogate

            model = surrogate.Surrogate(bench_table.load(*args.table))
            # the replay's clock is the table machine's: this machine's budget is worth `ratio` times as much there
            ratio = speed_ratio(lines, model) or 1.0
            print(f"this machine trains {ratio:.2f} times as fast as the table's (median over the real trials): "
                  f"the replay's budget is {budget:g} x {ratio:.2f} = {budget * ratio:.0f} s, {args.replay_seeds} seeds")
            replay = replay_prediction(model, sorted({line["strategy"] for line in lines}), budget * ratio,
                                       args.replay_seeds)
        print("\n".join(summary(lines, replay)))
        return 0
    if not args.out:
        parser.error("--out is required to run (or --summary FILE to print one)")
    if shutil.which("taskset") is None:
        parser.error("taskset (util-linux) is needed to pin each study to its core")
    work = Path(tempfile.mkdtemp(prefix="hw04bench-real-"))
    run(strategies, [int(s) for s in args.seeds.split(",")], args.budget, args.out,
        [int(c) for c in args.cores.split(",")], work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
