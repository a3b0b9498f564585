"""Does the search beat tuning by hand at equal GPU time? Best-so-far accuracy against seconds, per strategy.

Every arm gets the same wall-clock budget on the same card, data and split, and the arms run one after
another in one process (the data is loaded once; CUDA is warmed up before the first arm, so no arm pays
for it). The arms (``--arms``, one letter each):

  a  grid     the hand grid of the HW04 seed write-up: the sample-code model and training settings with
              d_model 80/128/256/512 x nhead 2/4/8/16 x head 80/1,024 (32 configurations), each trained
              for the full trial budget, no early stopping, in an order shuffled by the seed (a person has
              no canonical order, and with a budget that ends mid-grid the order decides what is tried);
  b  random   random search over the full space, no pruning;
  c  tpe      TPE over the full space, no pruning;
  d  default  what ``search run`` does: TPE + Hyperband + the warm-start configurations (search/running/study.py);
  e  asha     TPE (multivariate, grouped: it models the conditional space jointly) + asynchronous
              successive halving (each trial is stopped at the first rung where it is not in the top third)
              + warm start.
  f  default-v1  the default as it was before the warm start was ordered by published score: TPE +
              Hyperband + the three warm-start configurations of then, the sample code first.

A trial counts when it *completes* within the arm's budget (a pruned trial has no finished model); its
time is when it completed, counted from the arm's start. Then each arm's best configuration (by
validation accuracy: the test answers never select) is retrained for ``--final-steps`` steps with the
same seed and scored on the test set with the data's answer key (``answers.csv``).

Prints JSON lines (``trial``, ``arm``, ``final``, ``summary``), a Markdown table for BENCHMARKS.md, and
writes one self-contained plotly page (best-so-far validation accuracy against seconds, one line per
arm and seed). Results go to ``--results`` as they come (``results.jsonl`` there): a rerun of the same
command skips the (arm, seed) pairs and finals already done, so a session cut off by a time limit goes
on where it stopped; ``--stop-after`` keeps one call inside such a limit.

GPU (BENCHMARKS.md):
    python bench/efficiency.py --data /tmp/eff --seconds 100 --seeds 0,1 --final-steps 10000 --results /tmp/eff-results
CPU smoke mode (all arms on a tiny set in under a minute; the test suite runs it):
    python bench/efficiency.py --smoke
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402

from bench.bench import script_parser, smoke_dataset  # noqa: E402
from search.running import space as search_space  # noqa: E402
from search.errors import TrainingDiverged  # noqa: E402
from search.finalizing.final_pipeline import final_configs  # noqa: E402
from search.running.objective import Objective, trial_seed  # noqa: E402
from search.finalizing.scoring import answer_key, read_rows  # noqa: E402
from search.running.settings import StudySettings  # noqa: E402
from search.running.study import open_study  # noqa: E402
from search.running.task import Task, load_task  # noqa: E402
from search.training.train import TrainConfig, evaluate, predict, train  # noqa: E402

ARMS = {"a": "grid", "b": "random", "c": "tpe", "d": "default", "e": "asha", "f": "default-v1"}

# The warm start before it was ordered by published score (BENCHMARKS.md compares the two): arm f.
WARM_START_V1 = ["sample-code", "medium-d512-h16", "conformer-1block-linear"]


def hand_grid(seed: int, profile: str = "full") -> list[dict]:
    """The 32 sample-code variants a person would try, in a seeded order (those inside the profile's space:
    all 32 in ``full``; the ``cpu`` profile of the smoke run holds 3)."""
    base = search_space.KNOWN_CONFIGS["sample-code"]
    space = search_space.build_space(profile)
    grid = [{**base, "d_model": d, "nhead": h, "head_hidden": w}
            for d, h, w in product((80, 128, 256, 512), (2, 4, 8, 16), (80, 1024))]
    grid = [params for params in grid if search_space.contains(space, params)]
    random.Random(seed).shuffle(grid)
    return grid


@dataclass
class Arm:
    name: str
    sampler: optuna.samplers.BaseSampler | None  # None: what open_study sets (the default arm)
    pruner: optuna.pruners.BasePruner | None
    warm_start: bool = False
    enqueue: list[dict] | None = None  # fixed configurations, run in this order


def make_arm(letter: str, seed: int, settings: StudySettings) -> Arm:
    name = ARMS[letter]
    nop = optuna.pruners.NopPruner()
    if name == "grid":
        return Arm(name, optuna.samplers.RandomSampler(seed=seed), nop, enqueue=hand_grid(seed, settings.profile))
    if name == "random":
        return Arm(name, optuna.samplers.RandomSampler(seed=seed), nop)
    if name == "tpe":
        return Arm(name, optuna.samplers.TPESampler(seed=seed, n_startup_trials=10), nop)
    if name == "default":
        return Arm(name, None, None, warm_start=True)
    if name == "default-v1":
        space = search_space.build_space(settings.profile)  # as the warm start did: those inside the space
        return Arm(name, None, None, enqueue=[search_space.KNOWN_CONFIGS[n] for n in WARM_START_V1
                                              if search_space.contains(space, search_space.KNOWN_CONFIGS[n])])
    if name == "asha":
        return Arm(name, optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, multivariate=True, group=True),
                   optuna.pruners.SuccessiveHalvingPruner(min_resource=settings.eval_every, reduction_factor=3),
                   warm_start=True)
    raise ValueError(letter)


class DeadlinePruner(optuna.pruners.BasePruner):
    """The arm's own pruner, and past the arm's deadline a stop for the trial in flight: it could no longer
    count, and the GPU time is the next arm's."""

    def __init__(self, inner: optuna.pruners.BasePruner, deadline: float) -> None:
        self.inner, self.deadline = inner, deadline

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return time.perf_counter() > self.deadline or self.inner.prune(study, trial)


def run_arm(letter: str, seed: int, task: Task, settings: StudySettings, seconds: float, folder: Path,
            emit) -> dict:
    """Run one arm for ``seconds`` of wall-clock time; returns its summary (best complete trial in time)."""
    arm = make_arm(letter, seed, settings)
    study_name = f"{arm.name}-s{seed}"
    db = folder / f"{study_name}.db"
    db.unlink(missing_ok=True)  # an arm cut off half-way starts over: its clock must start at zero
    url = f"sqlite:///{db}"
    if arm.sampler is None:  # exactly the study `search run` opens
        study, settings, _ = open_study(study_name, url, settings, warm_start=arm.warm_start)
        for params in arm.enqueue or []:
            study.enqueue_trial(params)
    else:
        study = optuna.create_study(study_name=study_name, storage=url, direction="maximize",
                                    sampler=arm.sampler, pruner=arm.pruner)
        for key, value in vars(settings).items():
            study.set_user_attr(key, value)
        configs = arm.enqueue or []
        if arm.warm_start:
            configs = list(search_space.warm_start_configs(search_space.build_space(settings.profile)).values())
        for params in configs:
            study.enqueue_trial(params)
    objective = Objective(task, settings.budget, search_space.build_space(settings.profile), settings.seed)
    timeline: list[dict] = []
    best = {"value": -1.0}
    started = time.perf_counter()
    study.pruner = DeadlinePruner(study.pruner, started + seconds)

    def on_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        t = time.perf_counter() - started
        record = {"what": "trial", "arm": arm.name, "seed": seed, "number": trial.number, "t": round(t, 2),
                  "state": trial.state.name.lower(), "value": trial.value}
        if trial.state == optuna.trial.TrialState.COMPLETE and t <= seconds and trial.value > best["value"]:
            best.update(value=trial.value, number=trial.number, params=trial.params, t=round(t, 2))
        record["best_so_far"] = best["value"] if best["value"] >= 0 else None
        timeline.append(record)
        emit(record)
        if arm.name == "grid" and trial.number + 1 >= len(arm.enqueue):
            study.stop()  # the whole grid is done before the budget: the person is finished

    study.optimize(objective, timeout=seconds, catch=(Exception,), callbacks=[on_trial], gc_after_trial=True)
    states = [r["state"] for r in timeline if r["t"] <= seconds]
    summary = {"what": "arm", "arm": arm.name, "seed": seed, "seconds": seconds, "trials": len(states),
               "complete": states.count("complete"), "pruned": states.count("pruned"),
               "failed": states.count("fail"), "best": best["value"] if best["value"] >= 0 else None,
               "best_number": best.get("number"), "best_t": best.get("t"), "best_params": best.get("params"),
               "timeline": [(r["t"], r["best_so_far"]) for r in timeline if r["t"] <= seconds],
               "storage": url}
    return summary


def read_answers(data_dir: Path) -> dict[str, str]:
    """Id -> speaker from the data folder's answer key (``answers.csv``, Kaggle's Id,Category)."""
    path = answer_key(data_dir)
    if path is None:
        raise SystemExit(f"{data_dir}: no answers.csv: the test set cannot be scored (make it with `search data synth`)")
    return read_rows(path)


def finalize_arm(summary: dict, task: Task, steps: int, answers: dict[str, str]) -> dict:
    """Retrain the arm's best configuration for ``steps`` steps; validation and test accuracy."""
    params, seed = summary["best_params"], summary["seed"]
    # the configurations `search finalize` trains (collapse recovery on), with the trial's own seed
    model_cfg, train_cfg = final_configs(params, task, steps, trial_seed(seed, summary["best_number"]))
    started = time.perf_counter()
    record = {"what": "final", "arm": summary["arm"], "seed": seed, "steps": steps, "params": params,
              "train_seed": trial_seed(seed, summary["best_number"])}
    try:
        result = train(model_cfg, train_cfg, task)
    except TrainingDiverged as err:  # what finalize would report: the arm's pick did not survive a long run
        return {**record, "valid": None, "test": None, "diverged": str(err),
                "seconds": round(time.perf_counter() - started, 1)}
    bank = task.bank
    test_ids = bank.test_ids()
    predicted = predict(result.model, bank, test_ids).cpu().tolist()
    names = [bank.names[i] for i in test_ids.cpu().tolist()]
    correct = sum(bank.id2speaker[p] == answers[n] for p, n in zip(predicted, names))
    return {**record, "valid": round(result.best_accuracy, 4), "best_step": result.best_step,
            "test": round(correct / len(names), 4), "test_utterances": len(names),
            "rollbacks": len(result.rollbacks), "seconds": round(time.perf_counter() - started, 1)}


def warm_up(task: Task) -> None:
    """A throwaway trial-sized run, so CUDA's and cuBLAS's start-up is paid before the first arm's clock."""
    from model import ModelConfig

    cfg = ModelConfig(n_mels=task.bank.n_mels, n_classes=task.bank.n_speakers)
    result = train(cfg, TrainConfig(steps=20, eval_every=20, warmup_steps=5), task)
    evaluate(result.model, task.bank, task.valid_ids)


def reach_time(timeline: list, target: float | None) -> float | None:
    """Seconds until the best-so-far first reached ``target`` (None: never)."""
    if target is None:
        return None
    return next((t for t, best in timeline if best is not None and best >= target - 1e-12), None)


def best_at(timeline: list, t_limit: float) -> float | None:
    values = [best for t, best in timeline if t <= t_limit and best is not None]
    return max(values) if values else None


def spread(values: list, digits: int = 3, unit: str = "", out_of: bool = False) -> str:
    """'mean (min-max)' over seeds, or '-' when missing; 'never' marks a seed that never got there (with
    ``out_of``, 'never in K of N'). ``digits`` and ``unit`` write the numbers: '12 s (9-15)'."""
    if not values:
        return "-"
    known = [v for v in values if v is not None]
    if not known:
        return "never"
    text = f"{statistics.mean(known):.{digits}f}{unit}"
    if len(known) > 1:
        text += f" ({min(known):.{digits}f}-{max(known):.{digits}f})"
    missing = len(values) - len(known)
    if missing:
        text += f", never in {missing}" + (f" of {len(values)}" if out_of else "")
    return text


def seconds_text(values: list) -> str:
    """Seconds to reach a target over seeds, as ``spread`` writes them."""
    return spread(values, digits=0, unit=" s", out_of=True)


def summarize(arms: list[dict], finals: list[dict]) -> tuple[list[dict], str]:
    """Per arm: seconds to reach the grid's (and random search's) final best of the same seed, best at
    25/50/100% of the budget, and the finalized test accuracy, as mean (min-max) over seeds."""
    by = {(a["arm"], a["seed"]): a for a in arms}
    final_by = {(f["arm"], f["seed"]): f for f in finals}
    rows = []
    for name in [n for n in ARMS.values() if any(a["arm"] == n for a in arms)]:
        mine = [a for a in arms if a["arm"] == name]
        row = {"what": "summary", "arm": name, "seeds": [a["seed"] for a in mine],
               "trials": [a["trials"] for a in mine], "complete": [a["complete"] for a in mine]}
        for ref in ("grid", "random"):
            # only seeds where the reference arm ran and completed a trial: else there is nothing to reach
            row[f"to_{ref}_best"] = [reach_time(a["timeline"], by[(ref, a["seed"])]["best"]) for a in mine
                                     if by.get((ref, a["seed"]), {}).get("best") is not None]
            row[f"{ref}_seconds"] = [by[(ref, a["seed"])]["best_t"] if (ref, a["seed"]) in by else None
                                     for a in mine]
        for share in (25, 50, 100):
            row[f"best_at_{share}"] = [best_at(a["timeline"], a["seconds"] * share / 100) for a in mine]
        # a diverged final scores chance at best: counted as 0 so it cannot flatter its arm
        row["test"] = [final_by[(name, a["seed"])]["test"] or 0.0 for a in mine if (name, a["seed"]) in final_by]
        row["final_valid"] = [final_by[(name, a["seed"])]["valid"] for a in mine if (name, a["seed"]) in final_by]
        rows.append(row)
    lines = ["| arm | trials (complete) | s to the grid's final best | s to random's final best | "
             "best valid at 25% | at 50% | at 100% | finalized test accuracy |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        trials = ", ".join(f"{t} ({c})" for t, c in zip(r["trials"], r["complete"]))
        lines.append(f"| {r['arm']} | {trials} | {seconds_text(r['to_grid_best'])} | "
                     f"{seconds_text(r['to_random_best'])} | {spread(r['best_at_25'])} | {spread(r['best_at_50'])} | "
                     f"{spread(r['best_at_100'])} | {spread(r['test'])} |")
    return rows, "\n".join(lines)


def write_figure(arms: list[dict], path: Path, title: str) -> None:
    """One self-contained HTML page (plotly.js inlined): best-so-far validation accuracy against seconds."""
    import plotly.graph_objects as go

    colours = {"grid": "#7f7f7f", "random": "#1f77b4", "tpe": "#2ca02c", "default": "#d62728", "asha": "#9467bd",
               "default-v1": "#ff7f0e"}
    figure = go.Figure()
    for a in arms:
        points = [(t, b) for t, b in a["timeline"] if b is not None]
        if not points:
            continue
        xs = [0.0] + [t for t, _ in points] + [a["seconds"]]
        ys = [None] + [b for _, b in points] + [points[-1][1]]
        figure.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line_shape="hv", name=f"{a['arm']} seed {a['seed']}",
                                    line={"color": colours.get(a["arm"]), "dash": "solid" if a["seed"] % 2 == 0 else "dot"}))
    figure.update_layout(title=title, xaxis_title="seconds of the arm's budget (one GPU, arms one after another)",
                         yaxis_title="best validation accuracy so far (completed trials)", legend_title="arm, seed")
    tmp = path.with_name(path.name + ".tmp")
    figure.write_html(tmp, include_plotlyjs=True, full_html=True)
    tmp.replace(path)


def main() -> None:
    parser = script_parser(__doc__, "HW04-layout folder with answers.csv (a `search data synth` set)", Path)
    parser.add_argument("--arms", default="abcdef", help="letters of the arms to run (see above)")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--seconds", type=float, default=90.0, help="wall-clock budget of each arm and seed")
    parser.add_argument("--budget", type=int, default=2000, help="training steps of a full trial")
    parser.add_argument("--profile", default="full", choices=search_space.PROFILES)
    parser.add_argument("--final-steps", type=int, default=10_000, help="steps of each arm's finalized model")
    parser.add_argument("--results", type=Path, default=None, help="folder of results.jsonl, studies and the figure")
    parser.add_argument("--stop-after", type=float, default=None,
                        help="start no arm or final that would end after this many seconds of this call")
    parser.add_argument("--smoke", action="store_true", help="tiny set on CPU, all arms, under a minute")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.seeds, args.seconds, args.budget, args.profile, args.final_steps = "cpu", "0", 5.0, 8, "cpu", 32
        args.results = args.results or Path(tempfile.mkdtemp(prefix="efficiency-"))
        if args.data is None:
            args.data = smoke_dataset(args.results / "Dataset")
    if args.results is None:
        parser.error("--results is required outside --smoke (and --data, unless every arm there is done)")
    call_started = time.perf_counter()
    args.results.mkdir(parents=True, exist_ok=True)
    log = args.results / "results.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def emit(record: dict, keep: bool = False) -> None:
        print(json.dumps({k: v for k, v in record.items() if k not in ("timeline", "params")}), flush=True)
        if keep:
            done.append(record)
            with open(log, "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def time_left(needed: float) -> bool:
        return args.stop_after is None or time.perf_counter() - call_started + needed <= args.stop_after

    device = torch.device(args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    loaded: dict = {}

    def task() -> Task:
        """The data, loaded (and CUDA warmed up) only when an arm or a final still has to run: a call that
        finds everything done only redraws the table and the figure."""
        if "task" not in loaded:
            if args.data is None:
                parser.error("--data: arms or finals are still to run in --results")
            loaded["task"] = load_task(args.data, seed=0, device=device)  # one split for every arm: seed 0
            t = loaded["task"]
            emit({"what": "environment", "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                  "torch": torch.__version__, "optuna": optuna.__version__, "data": str(args.data),
                  "speakers": t.bank.n_speakers, "train": len(t.train_ids), "valid": len(t.valid_ids),
                  "date": time.strftime("%Y-%m-%d"), "seconds_per_arm": args.seconds, "budget": args.budget},
                 keep=not any(r["what"] == "environment" for r in done))
            warm_up(t)
        return loaded["task"]

    for seed, letter in product(seeds, args.arms):
        name = ARMS[letter]
        if any(r["what"] == "arm" and r["arm"] == name and r["seed"] == seed for r in done):
            continue
        if not time_left(args.seconds + 15):
            print(f"# stopping: no time left in this call for {name} seed {seed}", flush=True)
            break
        settings = StudySettings(budget=args.budget, eval_every=max(1, args.budget // 8), data=str(args.data),
                                 seed=seed, profile=args.profile, pruning=True)
        emit(run_arm(letter, seed, task(), settings, args.seconds, args.results, emit), keep=True)

    for summary in [r for r in done if r["what"] == "arm" and r["best_params"]]:
        if any(r["what"] == "final" and (r["arm"], r["seed"]) == (summary["arm"], summary["seed"]) for r in done):
            continue
        # Arms that picked the same configuration with the same training seed (TPE's first trials are random
        # search's, seed for seed) share one final: the same training gives the same model.
        twin = next((r for r in done if r["what"] == "final" and r.get("params") == summary["best_params"]
                     and r.get("train_seed") == trial_seed(summary["seed"], summary["best_number"])), None)
        if twin is not None:
            emit({**twin, "arm": summary["arm"], "seed": summary["seed"], "same_as": f"{twin['arm']} seed {twin['seed']}"},
                 keep=True)
            continue
        if not time_left(30):
            print("# stopping: no time left in this call for the finals", flush=True)
            break
        emit(finalize_arm(summary, task(), args.final_steps, read_answers(args.data)), keep=True)

    arms = [r for r in done if r["what"] == "arm"]
    rows, table = summarize(arms, [r for r in done if r["what"] == "final"])
    for row in rows:
        emit(row)
    environment = next((r for r in done if r["what"] == "environment"), {})
    write_figure(arms, args.results / "efficiency.html",
                 f"Best-so-far validation accuracy, {arms[0]['seconds'] if arms else args.seconds:.0f} s per arm, "
                 f"{environment.get('speakers', '?')} speakers, {environment.get('device', '?')}")
    print(table)
    print(f"# figure: {args.results / 'efficiency.html'}")

if __name__ == "__main__":
    main()
