"""How the read-only commands cope with a big study: builds one SQLite study of N trials (default 5,004) as
`search run` leaves them, then times `search trials`, `show`, `studies` and `report` on it, each in its own
process as a user runs it, and prints one JSON line per command (seconds, peak memory, output size).

    python bench/load.py                    # 5,004 trials in a temporary folder, each command once
    python bench/load.py --trials 200 --keep load-work/

The trials are written straight through Optuna's storage API (``optuna.trial.create_trial`` and
``study.add_trials`` in batches), not trained: their parameters are sampled from the `cpu` space with
search/running/space.py's own ``suggest`` (a RandomSampler in memory), and they carry the user attributes a trial of
`search run` carries (search/running/objective.py: the resolved configuration through search/reporting/attrs.py, parameter count,
device, speed, wall time, loss curve, why it ended) and its validation curve at the rungs 62, 186 and 500.
States as a pruned CPU study has them: about 10% complete, 85% pruned, 5% failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STUDY = "load"
BUDGET, RUNGS = 500, (62, 186, 500)


def build(folder: Path, n: int, seed: int = 0) -> float:
    """Write study ``load`` with ``n`` trials into ``folder/studies/load.db``; the seconds it took."""
    import optuna
    from optuna.trial import TrialState

    from search.reporting.attrs import config_attrs, rounded
    from search.running.space import build_configs, build_space, suggest
    from search.running.settings import StudySettings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.perf_counter()
    (folder / "studies").mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=STUDY, storage=f"sqlite:///{folder}/studies/{STUDY}.db",
                                direction="maximize")
    settings = StudySettings(budget=BUDGET, eval_every=RUNGS[0], data="embedded", seed=seed, profile="cpu")
    for key, value in vars(settings).items():
        study.set_user_attr(key, value)
    space, rng = build_space("cpu"), random.Random(seed)
    sampler_study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))  # in memory: params only
    start = datetime.datetime(2026, 12, 1, 8, 0, 0)
    batch = []
    for number in range(n):
        trial = sampler_study.ask()
        params = suggest(trial, space)
        model_cfg, train_cfg = build_configs(params, 40, 32, BUDGET, number, eval_steps=list(RUNGS))
        roll = rng.random()
        state = TrialState.COMPLETE if roll < 0.10 else TrialState.FAIL if roll > 0.95 else TrialState.PRUNED
        last = {TrialState.COMPLETE: 500, TrialState.PRUNED: rng.choice((62, 186)),
                TrialState.FAIL: rng.choice((62, 186))}[state]
        curve = {}
        accuracy = rng.uniform(0.05, 0.3)
        for step in RUNGS:
            if step > last or (state == TrialState.FAIL and step == last):
                break
            accuracy = min(0.95, accuracy + rng.uniform(0.0, 0.25))
            curve[step] = round(accuracy, 4)
        wall = round(last / rng.uniform(5, 20) + 2, 2)
        attrs = dict(config_attrs(params, model_cfg.to_dict(), vars(train_cfg)))
        losses = [rounded(3.4 - 0.5 * i - rng.random() * 0.3) for i in range(len(curve))]
        attrs.update(device="cpu", parameters=rng.randint(40_000, 400_000), worker=f"vm:{1000 + number % 7}",
                     train_loss_curve=losses, wall_seconds=wall, steps_per_second=round(last / wall, 2))
        if losses:
            attrs.update(last_step=max(curve), train_loss=losses[-1])
        if state == TrialState.COMPLETE:
            attrs.update(eval_seconds=round(wall * 0.1, 4), cuda_graph=False, best_step=max(curve, key=curve.get),
                         ended=f"complete after {BUDGET} steps")
        elif state == TrialState.PRUNED:
            attrs["ended"] = f"pruned at step {last}"
        else:
            attrs["ended"] = "failed: TrainingDiverged: the training loss became nan at step 73"
        frozen = optuna.trial.create_trial(
            state=state, value=max(curve.values()) if state == TrialState.COMPLETE else None,
            params=params, distributions=trial.distributions, user_attrs=attrs, intermediate_values=curve)
        frozen.datetime_start = start + datetime.timedelta(seconds=number * 15)
        frozen.datetime_complete = frozen.datetime_start + datetime.timedelta(seconds=wall)
        batch.append(frozen)
        if len(batch) == 500 or number == n - 1:
            study.add_trials(batch)
            batch = []
    return time.perf_counter() - started


def timed(folder: Path, args: list[str]) -> dict:
    """``search ARGS`` in a fresh process in ``folder``: wall seconds, its own peak memory (max RSS, from
    ``os.wait4``), output bytes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "search.cli", *args], cwd=folder, env=env, stdout=out,
                                   stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait for it again
        size = out.tell()
        err.seek(0)
        if process.returncode != 0:
            raise SystemExit(f"search {' '.join(args)} failed ({process.returncode}): {err.read().decode()[-2000:]}")
    return {"command": "search " + " ".join(args), "seconds": round(seconds, 2),
            "max_rss_mb": round(usage.ru_maxrss / 1024, 1), "stdout_bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5004)
    parser.add_argument("--keep", type=Path, default=None, help="build (or reuse) the study in this folder")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each command (the fastest is printed)")
    parser.add_argument("--only", nargs="+", choices=("studies", "trials", "show", "report"), default=None,
                        help="time only these commands")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = (args.keep or Path(scratch)).resolve()
        db = folder / "studies" / f"{STUDY}.db"
        if db.exists():
            print(json.dumps({"what": "study", "trials": args.trials, "reused": str(db)}), flush=True)
        else:
            seconds = build(folder, args.trials)
            print(json.dumps({"what": "study", "trials": args.trials, "build_seconds": round(seconds, 1),
                              "db_mb": round(db.stat().st_size / 1e6, 1)}), flush=True)
        report = folder / "report.html"
        for command in (["studies"], ["trials", "--study", STUDY], ["show", "--study", STUDY],
                        ["report", "--study", STUDY, "--out", str(report)]):
            if args.only and command[0] not in args.only:
                continue
            runs = [timed(folder, command) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["seconds"])
            if command[0] == "report":
                best["page_mb"] = round(report.stat().st_size / 1e6, 2)
            print(json.dumps({"what": command[0], **best}), flush=True)


if __name__ == "__main__":
    main()
