"""Replay search strategies against a HW04-Bench table on a simulated clock: many searches of hours of GPU time in
minutes of CPU, each strategy on the same surrogate (bench/hw04bench/surrogate.py), budget and workers.

The clock. K workers (K = 1, 4) each run one training at a time. A strategy is asked for a configuration when a
worker is free; the surrogate draws that training's outcome (its curve with one seed's noise, its costs, whether
it fails); the worker's time then advances by the run's overhead, the training seconds up to each step the strategy
validates at plus one validation's seconds there, and at each validation the strategy sees the accuracy and may
stop the run (pruning). Events of all workers are handled in time order, so asynchronous strategies see exactly
the results that would have finished by then, and a strategy's own computing time (TPE, a GP, a forest) is not on
the clock (the real search's sampler time is small against minutes of training; a GP's is not always: noted).

The score. A training that reaches the full budget is a candidate, scored by its configuration's *noise-free*
final accuracy (the surrogate's mean): the anytime curve is the best such score among the candidates finished so
far (the best configuration found, without seed luck: monotone, and its regret against the surrogate's mean at the
table's best recorded configuration is >= 0 by construction, see surrogate.py). What a user would actually keep
is the strategy's own pick, chosen on what it observed (ours: the trial's value as ``search run`` records it, the
best validation accuracy of its evaluations, search/running/objective.py; peers: the accuracy at the end of the
budget), which seed luck can mislead: its regret is the table's second regret column ("pick").

Strategies. Ours run through Optuna's ask/tell with the search's own objects: ``default`` is the study exactly
as ``search run`` opens it (search/running/study.py ``open_study``: its sampler, its ``make_pruner``, the warm starts of
search/running/space.py enqueued first; only the storage is Optuna's in-memory one), each trial's parameters drawn by
search/running/space.py ``suggest`` and validated at search/running/schedule.py ``trial_steps`` of the study's pruner. Variants
change one thing of that study: the sampler (random, univariate TPE, multivariate TPE with groups, GP; Optuna 5's
TPE is already multivariate by default), no warm start, or the pruner (Hyperband / Successive Halving (ASHA) at
reduction factors 2, 3, 4, median). Peers run through their own libraries on the same space translated once into
ConfigSpace (``configspace``): DEHB, SMAC3, Syne Tune, NePS, as far as they install here (``peer_status``).

    python -m bench.hw04bench.replay --table bench/results/hw04bench-cpu.jsonl.gz --budgets 600,3600,14400 \
        --seeds 30 --workers 1,4 --out report.html
    python -m bench.hw04bench.replay --smoke      # every strategy on the tiny fixture table, in under a minute

A replay runs once per (strategy, workers, seed) to the largest budget; a smaller budget is the same run cut at
its time (a strategy here does not plan by the clock), so three budgets cost one run.
"""

from __future__ import annotations

import heapq
import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from bench.hw04bench import surrogate as bench_surrogate
from bench.hw04bench import table as bench_table

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "data" / "hw04bench-tiny.jsonl"


# ---------------------------------------------------------------------------------------------------------------
# The simulated clock


@dataclass
class Job:
    """One training a strategy asked for: its parameters and the steps it validates at (ascending; the last is where
    training ends: the budget, or a lower fidelity for a multi-fidelity peer)."""

    params: dict
    steps: list[int]
    handle: object = None  # the strategy's own (an Optuna trial, a DEHB job_info, ...)
    observed: list[float] = field(default_factory=list)  # accuracy at each validation so far


class Strategy:
    """What the clock needs of a strategy. ``report`` is called at each validation (True: stop the training here);
    ``finish`` once when it ends ("complete", "pruned" or "failed") and returns the value the strategy ranks a
    complete training by."""

    name = "?"

    def ask(self) -> Job:
        raise NotImplementedError

    def report(self, job: Job, step: int, accuracy: float) -> bool:
        return False

    def finish(self, job: Job, state: str, seconds: float) -> float | None:
        return job.observed[-1] if state == "complete" else None


@dataclass
class Trace:
    """What one replay produced: every training that ended, and the incumbent's score over time."""

    strategy: str
    workers: int
    seed: int
    horizon: float
    trials: list[dict] = field(default_factory=list)  # {asked, start, end, params, state, last_step, value, score}
    incumbent: list[tuple[float, float]] = field(default_factory=list)  # (time, best noise-free score so far)
    picked: list[tuple[float, float]] = field(default_factory=list)  # (time, score of the strategy's own pick)
    wall_seconds: float = 0.0  # real seconds the replay took (the strategy's own computing)

    def best_at(self, t: float, series: str = "incumbent") -> float:
        """The best score found by time ``t`` (``series`` "picked": the strategy's own pick's); nan before the
        first complete training."""
        score = math.nan
        for when, s in getattr(self, series):
            if when > t:
                break
            score = s
        return score


def replay(strategy: Strategy, surrogate: bench_surrogate.Surrogate, horizon: float, workers: int, seed: int,
           max_trials: int | None = None) -> Trace:
    """Run ``strategy`` with ``workers`` simulated workers until ``horizon`` simulated seconds (see the module
    docstring); ``max_trials``: stop asking after that many trainings (a guard for the smoke mode)."""
    rng = np.random.default_rng(seed)
    trace = Trace(strategy.name, workers, seed, horizon)
    events: list[tuple] = []  # (time, sequence, worker): the worker's next validation or failure
    running: dict[int, dict] = {}
    sequence = 0
    best_value, best_score = -math.inf, -math.inf
    started = time.perf_counter()
    asked = 0

    def schedule(w: int) -> None:
        nonlocal sequence
        run = running[w]
        job, outcome = run["job"], run["outcome"]
        step = job.steps[run["next"]]
        previous = job.steps[run["next"] - 1] if run["next"] else 0
        if outcome.fail_step is not None and outcome.fail_step <= step:
            t = run["t"] + (outcome.fail_step - previous) * outcome.seconds_per_step
            run["failing"] = True
        else:
            t = run["t"] + (step - previous) * outcome.seconds_per_step + outcome.seconds_per_eval
        heapq.heappush(events, (t, sequence, w))
        sequence += 1

    def start(w: int, t: float) -> None:
        nonlocal asked
        if max_trials is not None and asked >= max_trials:
            return
        asked += 1
        job = strategy.ask()
        outcome = surrogate.sample(job.params, rng)
        running[w] = {"job": job, "outcome": outcome, "next": 0, "t": t + outcome.overhead, "start": t,
                      "failing": False, "asked": asked - 1}
        schedule(w)

    def end(w: int, t: float, state: str) -> None:
        nonlocal best_value, best_score
        run = running.pop(w)
        job, outcome = run["job"], run["outcome"]
        value = strategy.finish(job, state, t - run["start"])
        last_step = job.steps[run["next"]] if state != "failed" else outcome.fail_step
        score = float(outcome.mean_curve[-1])
        trace.trials.append({"asked": run["asked"], "start": run["start"], "end": t, "params": job.params,
                             "state": state,
                             "last_step": last_step, "value": value, "score": score})
        if state == "complete" and last_step >= surrogate.budget and value is not None:
            if score > best_score:
                best_score = score
                trace.incumbent.append((t, score))
            if value > best_value:
                best_value = value
                trace.picked.append((t, score))
        start(w, t)

    for w in range(workers):
        start(w, 0.0)
    while events:
        t, _, w = heapq.heappop(events)
        if t > horizon:
            break
        run = running[w]
        if run["failing"]:
            end(w, t, "failed")
            continue
        job, outcome = run["job"], run["outcome"]
        step = job.steps[run["next"]]
        accuracy = outcome.accuracy(surrogate.steps, step)
        job.observed.append(accuracy)
        run["t"] = t
        last = run["next"] == len(job.steps) - 1
        stop = strategy.report(job, step, accuracy)
        if last:
            end(w, t, "complete")
        elif stop:
            end(w, t, "pruned")
        else:
            run["next"] += 1
            schedule(w)
    trace.wall_seconds = time.perf_counter() - started
    return trace


# ---------------------------------------------------------------------------------------------------------------
# Ours: Optuna with the search's own objects


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*independent sampl.*")


def default_study(surrogate: bench_surrogate.Surrogate, seed: int, warm_start: bool = True):
    """The study ``search run --seed SEED --budget B --space PROFILE`` opens for a new study (search/running/study.py
    ``open_study``, called as is), in Optuna's in-memory storage instead of a SQLite file: the replay asks and
    tells thousands of trials, and only the storage's speed differs. Returns (study, settings)."""
    from unittest import mock

    import optuna

    from search.running import study as search_study
    from search.running.settings import RequestedSettings

    _quiet_optuna()
    device_type = "cuda" if surrogate.profile == "full" else "cpu"
    settings = RequestedSettings(budget=surrogate.budget, seed=seed, profile=surrogate.profile,
                                              pruning=True).resolve("replay", None, device_type)
    storage = optuna.storages.InMemoryStorage()
    with mock.patch.object(search_study, "open_storage", lambda url, *a, **k: storage):
        study, settings, created = search_study.open_study("replay", "sqlite:///:memory:", settings, warm_start)
    assert created
    return study, settings


class OptunaStrategy(Strategy):
    """A study opened as ``search run`` opens it, with at most its sampler or pruner replaced (``variant``)."""

    def __init__(self, name: str, surrogate: bench_surrogate.Surrogate, seed: int,
                 sampler: Callable | None = None, pruner: Callable | None = None, warm_start: bool = True) -> None:
        from search.running import schedule
        from search.running import space as search_space

        self.name = name
        self.study, self.settings = default_study(surrogate, seed, warm_start)
        if sampler is not None:
            self.study.sampler = sampler(self.study.sampler, self.settings)
        if pruner is not None:
            self.study.pruner = pruner(self.settings)
        self.space = search_space.build_space(self.settings.profile)
        self.steps = schedule.trial_steps(self.settings.budget, self.study.pruner)  # as the objective validates
        self._suggest = search_space.suggest

    def ask(self) -> Job:
        trial = self.study.ask()
        return Job(self._suggest(trial, self.space), list(self.steps), trial)

    def report(self, job: Job, step: int, accuracy: float) -> bool:
        job.handle.report(accuracy, step)
        return job.handle.should_prune()

    def finish(self, job: Job, state: str, seconds: float) -> float | None:
        from optuna.trial import TrialState

        if state == "complete":
            value = max(job.observed)  # search/running/objective.py returns the run's best validation accuracy
            self.study.tell(job.handle, value)
            return value
        self.study.tell(job.handle, state=TrialState.PRUNED if state == "pruned" else TrialState.FAIL)
        return None


def _tpe(**changes) -> Callable:
    """A variant of the study's own sampler (TrialSeededTPESampler) with ``changes``; the rest read from it."""
    def build(default, settings):
        from search.running.sampler import TrialSeededTPESampler

        return TrialSeededTPESampler(settings.seed, n_startup_trials=default._n_startup_trials,
                                     constant_liar=default._constant_liar, **changes)
    return build


def _random(default, settings):
    import optuna

    return optuna.samplers.RandomSampler(seed=settings.seed)


def _gp(default, settings):
    import optuna

    return optuna.samplers.GPSampler(seed=settings.seed, n_startup_trials=default._n_startup_trials)


def _hyperband(factor: int) -> Callable:
    def build(settings):
        import optuna

        return optuna.pruners.HyperbandPruner(min_resource=settings.eval_every, max_resource=settings.budget,
                                              reduction_factor=factor)
    return build


def _asha(factor: int) -> Callable:
    def build(settings):
        import optuna

        return optuna.pruners.SuccessiveHalvingPruner(min_resource=settings.eval_every, reduction_factor=factor)
    return build


def _median(settings):
    import optuna

    # trials validate on the budget/8 grid with it (search/running/schedule.py: its decision points are not known ahead)
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=settings.eval_every)


def _cpu_one_bracket(settings):
    """The cpu profile's pruner before HW04-Bench set the factor to 3 (search/running/sampler.py ``make_pruner``):
    a factor above budget / first rung (9 at 500 steps): one bracket, one decision at budget/8 keeping the best
    ninth, then the second look and KEEP_COMPLETE as now. On the full profile: the default's."""
    from search.running.sampler import make_pruner

    return make_pruner(settings, settings.budget // settings.eval_every + 1) if settings.profile == "cpu" \
        else make_pruner(settings)


def _no_pruning(settings):
    import optuna

    return optuna.pruners.NopPruner()


OURS: dict[str, dict] = {
    "default": {},
    "no-warm-start": {"warm_start": False},
    "random": {"sampler": _random},
    "tpe-univariate": {"sampler": _tpe(multivariate=False)},
    "tpe-multivariate-group": {"sampler": _tpe(multivariate=True, group=True)},
    "gp": {"sampler": _gp},
    **{f"hyperband-rf{r}": {"pruner": _hyperband(r)} for r in (2, 3, 4)},
    **{f"asha-rf{r}": {"pruner": _asha(r)} for r in (2, 3, 4)},
    "median": {"pruner": _median},
}
# Run when named (--strategies), not by default: ours without the warm starts, one part changed at a time (which
# part of the cold search, sampler or pruner, is behind the peers where the warm starts are not among the best), and
# earlier or candidate defaults, with and without the warm starts.
EXTRA: dict[str, dict] = {
    "no-warm-start-random": {"warm_start": False, "sampler": _random},
    "no-warm-start-no-pruning": {"warm_start": False, "pruner": _no_pruning},
    "no-warm-start-asha-rf3": {"warm_start": False, "pruner": _asha(3)},
    "no-warm-start-hyperband-rf3": {"warm_start": False, "pruner": _hyperband(3)},
    "no-warm-start-median": {"warm_start": False, "pruner": _median},
    # the default before factor 3: BENCHMARKS.md's replays at commit eb9aef8 ran it as "default", factor 3 as
    # "cpu-factor-3"
    "cpu-one-bracket": {"pruner": _cpu_one_bracket},
    "no-warm-start-cpu-one-bracket": {"warm_start": False, "pruner": _cpu_one_bracket},
}
OPTUNA_STRATEGIES = {**OURS, **EXTRA}  # every strategy run through our own study


# ---------------------------------------------------------------------------------------------------------------
# The space in ConfigSpace, for the peers


def configspace(space, seed: int = 0):
    """search/running/space.py's parameters as a ConfigSpace ``ConfigurationSpace`` (the one translation every peer uses).

    Categorical choices become strings (ConfigSpace compares choices as values: True and 1 would collide) and are
    mapped back by ``from_configspace``; an int with a step becomes an integer index over its values; a parameter
    with one value (the cpu profile's layers, batch size, segment) a Constant. A condition (a ``when`` on earlier
    parameters) becomes an InCondition on its parent: the parent is the name its ``condition`` text starts with,
    and the values are those of the parent's range for which ``when`` holds (found by asking ``when``).
    """
    import ConfigSpace as CS

    cs = CS.ConfigurationSpace(seed=seed)
    hps = {}
    for p in space:
        values = _values(p)
        if values is not None and len(values) == 1:
            hp = CS.Constant(p.name, str(values[0]))
        elif p.kind == "categorical":
            hp = CS.CategoricalHyperparameter(p.name, [str(c) for c in p.choices])
        elif p.kind == "int" and (p.step or 1) > 1:
            hp = CS.UniformIntegerHyperparameter(p.name, 0, len(values) - 1)
        elif p.kind == "int":
            hp = CS.UniformIntegerHyperparameter(p.name, int(p.low), int(p.high), log=p.log)
        else:
            hp = CS.UniformFloatHyperparameter(p.name, p.low, p.high, log=p.log)
        hps[p.name] = hp
        cs.add(hp)
    for p in space:
        if p.when is None:
            continue
        parent = next(q for q in space if p.condition.split()[0] == q.name)
        holds = [v for v in _values(parent) if p.when({parent.name: v})]
        parent_hp = hps[parent.name]
        if isinstance(parent_hp, CS.CategoricalHyperparameter):
            cs.add(CS.InCondition(hps[p.name], parent_hp, [str(v) for v in holds]))
        else:
            cs.add(CS.InCondition(hps[p.name], parent_hp, holds))
    return cs


def _values(p) -> list | None:
    """Every value of a categorical or int parameter (None for a float)."""
    if p.kind == "categorical":
        return list(p.choices)
    if p.kind == "int":
        return list(range(int(p.low), int(p.high) + 1, p.step or 1))
    return None


def from_configspace(space, config) -> dict:
    """A ConfigSpace configuration (or dict of its active values) back to search/running/space.py parameters."""
    values = dict(config)
    params: dict = {}
    for p in space:
        if not p.applies(params) or p.name not in values:
            continue
        raw = values[p.name]
        choices = _values(p)
        if choices is not None and len(choices) == 1:
            params[p.name] = choices[0]
        elif p.kind == "categorical":
            params[p.name] = next(c for c in p.choices if str(c) == str(raw))
        elif p.kind == "int" and (p.step or 1) > 1:
            params[p.name] = choices[int(raw)]
        elif p.kind == "int":
            params[p.name] = int(raw)
        else:
            params[p.name] = float(min(max(float(raw), p.low), p.high))
    return params


def to_configspace(space, params: dict) -> dict:
    """search/running/space.py parameters as ConfigSpace values (for warm starts given to a peer)."""
    out = {}
    for p in space:
        if p.name not in params:
            continue
        choices = _values(p)
        if choices is not None and (len(choices) == 1 or p.kind == "categorical"):
            out[p.name] = str(params[p.name])
        elif p.kind == "int" and (p.step or 1) > 1:
            out[p.name] = choices.index(params[p.name])
        else:
            out[p.name] = params[p.name]
    return out


def _warm_starts(surrogate) -> list[dict]:
    from search.running import space as search_space

    return list(search_space.warm_start_configs(surrogate.space).values())


def _fidelities(surrogate) -> tuple[int, int]:
    """(min, max) training steps for a multi-fidelity peer: the study's first rung and its budget, as ours."""
    from search.running import schedule

    return schedule.min_resource(surrogate.budget), surrogate.budget


# ---------------------------------------------------------------------------------------------------------------
# Peers


class DEHBStrategy(Strategy):
    """DEHB (dehb) through its ask/tell interface: each job trains from scratch to the fidelity DEHB asks
    (min: the study's first rung, max: its budget, eta 3 as our default pruner's), one validation at its end;
    fitness = -accuracy, cost = the simulated seconds. DEHB has no warm-start input in 0.1.2 (``tell`` without an
    ``ask`` is refused: "Warmstarting with tell is not supported"), so it starts cold."""

    name = "dehb"

    def __init__(self, surrogate, seed: int, workers: int, output: Path) -> None:
        import logging

        from dehb import DEHB
        from loguru import logger

        logger.remove()  # DEHB logs every job through loguru to stderr
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="dehb")  # ConfigSpace 1.x names
        logging.getLogger("distributed").setLevel(logging.ERROR)
        self.space = surrogate.space
        low, high = _fidelities(surrogate)
        # n_workers=1 keeps Dask out (DEHB makes a Dask cluster for more); the clock's workers are asynchronous
        # already: several jobs are asked before their tells, which DEHB's ask/tell supports.
        self.dehb = DEHB(cs=configspace(self.space, seed), min_fidelity=low, max_fidelity=high, eta=3,
                         n_workers=1, seed=seed, output_path=str(output), save_freq=None, log_level="ERROR")

    def ask(self) -> Job:
        info = self.dehb.ask()
        steps = int(round(info["fidelity"]))
        return Job(from_configspace(self.space, info["config"]), [steps], info)

    def finish(self, job: Job, state: str, seconds: float) -> float | None:
        value = job.observed[-1] if state == "complete" else 0.0
        self.dehb.tell(job.handle, {"fitness": -value, "cost": seconds})
        return value if state == "complete" else None


class SMACStrategy(Strategy):
    """SMAC3 through its ask/tell interface: ``MultiFidelityFacade`` (random-forest BO + Hyperband) or
    ``HyperbandFacade`` (random configurations + Hyperband), budgets from the study's first rung to its budget,
    eta 3; the warm starts are the initial design's ``additional_configs`` (asked first). Each job trains from
    scratch to its budget with one validation at the end; cost = 1 - accuracy. ``n_trials`` is set far above
    what a replay can reach: the clock, not SMAC, ends the search."""

    def __init__(self, surrogate, seed: int, workers: int, output: Path, facade: str = "multi-fidelity",
                 warm_start: bool = True) -> None:
        import logging

        from ConfigSpace import Configuration
        from smac import HyperbandFacade, MultiFidelityFacade, Scenario

        logging.getLogger("smac").setLevel(logging.ERROR)
        self.name = ("smac-mf" if facade == "multi-fidelity" else "smac-hb") + ("" if warm_start else "-cold")
        self.space = surrogate.space
        cs = configspace(self.space, seed)
        low, high = _fidelities(surrogate)
        scenario = Scenario(cs, name=f"{self.name}-{seed}", output_directory=output, deterministic=False,
                            n_trials=10**6, min_budget=low, max_budget=high, seed=seed, n_workers=1)
        facade_cls = MultiFidelityFacade if facade == "multi-fidelity" else HyperbandFacade
        warm = [Configuration(cs, values=to_configspace(self.space, p))
                for p in (_warm_starts(surrogate) if warm_start else [])]
        self.smac = facade_cls(scenario, lambda config, seed=0, budget=None: 0.0, overwrite=True, logging_level=40,
                               intensifier=facade_cls.get_intensifier(scenario, eta=3),
                               initial_design=facade_cls.get_initial_design(scenario, additional_configs=warm))

    def ask(self) -> Job:
        info = self.smac.ask()
        return Job(from_configspace(self.space, info.config), [int(round(info.budget))], info)

    def finish(self, job: Job, state: str, seconds: float) -> float | None:
        from smac.runhistory import StatusType, TrialValue

        if state == "complete":
            value = job.observed[-1]
            self.smac.tell(job.handle, TrialValue(cost=1.0 - value, time=seconds), save=False)
            return value
        self.smac.tell(job.handle, TrialValue(cost=1.0, time=seconds, status=StatusType.CRASHED), save=False)
        return None


def synetune_space(space, seed: int = 0) -> dict:
    """The ConfigSpace translation (``configspace``) as a Syne Tune config space: Syne Tune's domains are flat
    (no conditions), so every parameter is always drawn and ``from_configspace`` drops the ones whose condition
    does not hold, as a conditional space would not have drawn them."""
    import ConfigSpace as CS
    from syne_tune import config_space as st

    out: dict = {}
    for hp in configspace(space, seed).values():
        if isinstance(hp, CS.Constant):
            out[hp.name] = hp.value
        elif isinstance(hp, CS.CategoricalHyperparameter):
            out[hp.name] = st.choice(list(hp.choices))
        elif isinstance(hp, CS.UniformIntegerHyperparameter):
            out[hp.name] = (st.lograndint if hp.log else st.randint)(int(hp.lower), int(hp.upper))
        else:
            out[hp.name] = (st.loguniform if hp.log else st.uniform)(float(hp.lower), float(hp.upper))
    return out


class SyneTuneStrategy(Strategy):
    """Syne Tune's ASHA (random search) or BOHB (ASHA with a KDE searcher), driven as its Tuner drives a scheduler
    (suggest, on_trial_add, on_trial_result at each validation: STOP or CONTINUE, on_trial_complete): stopping-type
    asynchronous successive halving from the study's first rung to its budget, reduction factor 3; a training
    validates at the rung levels and at the end. The warm starts are ``points_to_evaluate`` (suggested first)."""

    def __init__(self, surrogate, seed: int, workers: int, output: Path, kind: str = "asha",
                 warm_start: bool = True) -> None:
        import logging

        from syne_tune.optimizer.baselines import ASHA, BOHB

        logging.getLogger("syne_tune").setLevel(logging.ERROR)
        self.name = f"synetune-{kind}" + ("" if warm_start else "-cold")
        self.space = surrogate.space
        self.st_space = synetune_space(self.space, seed)
        low, high = _fidelities(surrogate)
        flat = [{k: v for k, v in to_configspace(self.space, p).items()}
                for p in (_warm_starts(surrogate) if warm_start else [])]
        # a warm start lacks the parameters whose condition does not hold: Syne Tune wants every key
        warm = [{**{k: (v.sample(random_state=np.random.RandomState(seed)) if hasattr(v, "sample") else v)
                    for k, v in self.st_space.items()}, **w} for w in flat]
        cls = ASHA if kind == "asha" else BOHB
        self.scheduler = cls(self.st_space, metric="accuracy", time_attr="step", max_t=high, do_minimize=False,
                             random_seed=seed, grace_period=low, reduction_factor=3, points_to_evaluate=warm)
        rungs = self.scheduler.brackets[0].rungs
        self.steps = sorted({int(m) for m, _ in rungs if m < high} | {high})
        self.count = 0

    def ask(self) -> Job:
        import datetime as dt

        from syne_tune.backend.trial_status import Trial

        suggestion = self.scheduler.suggest()
        trial = Trial(trial_id=self.count, config=suggestion.config, creation_time=dt.datetime.now())
        self.count += 1
        self.scheduler.on_trial_add(trial)
        return Job(from_configspace(self.space, suggestion.config), list(self.steps), trial)

    def report(self, job: Job, step: int, accuracy: float) -> bool:
        from syne_tune.optimizer.scheduler import SchedulerDecision

        if step == job.steps[-1]:
            return False  # the end: on_trial_complete reports it
        return self.scheduler.on_trial_result(job.handle, {"accuracy": accuracy, "step": step}) == \
            SchedulerDecision.STOP

    def finish(self, job: Job, state: str, seconds: float) -> float | None:
        if state == "complete":
            value = job.observed[-1]
            self.scheduler.on_trial_complete(job.handle, {"accuracy": value, "step": job.steps[-1]})
            return value
        if state == "failed":
            self.scheduler.on_trial_error(job.handle)
        return None


def neps_python() -> Path:
    """The Python of NePS's own virtual environment: $HW04BENCH_NEPS_PYTHON, else venv-neps beside the checkout."""
    import os

    return Path(os.environ.get("HW04BENCH_NEPS_PYTHON", Path(__file__).resolve().parents[3] / "venv-neps" / "bin" /
                               "python"))


class NePSStrategy(Strategy):
    """NePS PriorBand (Hyperband base, eta 3, fidelity from the study's first rung to its budget), run in its own
    virtual environment by bench/hw04bench/neps_driver.py over a JSON-lines pipe. The prior is the best-ranked
    warm start (search/running/space.py orders them by published score, best first), at "medium" confidence; parameters
    it lacks (a condition that does not hold there) have no prior. The space is the ConfigSpace translation,
    flat (NePS's classic space has no conditions; ``from_configspace`` drops what does not apply)."""

    name = "neps-priorband"

    def __init__(self, surrogate, seed: int, workers: int, output: Path) -> None:
        import json
        import os
        import subprocess

        import ConfigSpace as CS

        self.space = surrogate.space
        spec = []
        for hp in configspace(self.space, seed).values():
            if isinstance(hp, CS.Constant):
                spec.append({"name": hp.name, "type": "constant", "value": hp.value})
            elif isinstance(hp, CS.CategoricalHyperparameter):
                spec.append({"name": hp.name, "type": "categorical", "choices": list(hp.choices)})
            else:
                spec.append({"name": hp.name, "type": "int" if isinstance(hp, CS.UniformIntegerHyperparameter)
                             else "float", "lower": hp.lower, "upper": hp.upper, "log": bool(hp.log)})
        constants = {d["name"] for d in spec if d["type"] == "constant"}
        prior = {k: v for k, v in to_configspace(self.space, _warm_starts(surrogate)[0]).items() if k not in constants}
        low, high = _fidelities(surrogate)
        # its torch's deprecation warnings, once a replay, would bury the replay's own lines
        self.process = subprocess.Popen([str(neps_python()), str(Path(__file__).with_name("neps_driver.py"))],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env={**os.environ, "PYTHONWARNINGS": "ignore"})
        self._json = json
        self._call({"space": spec, "prior": prior, "fidelity": [low, high], "eta": 3, "seed": seed})

    def _call(self, message: dict) -> dict:
        self.process.stdin.write(self._json.dumps(message) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the NePS driver ended (exit status {self.process.wait()}); see its stderr")
        return self._json.loads(line)

    def ask(self) -> Job:
        reply = self._call({"op": "ask"})
        return Job(from_configspace(self.space, reply["config"]), [reply["steps"]], reply["id"])

    def finish(self, job: Job, state: str, seconds: float) -> float | None:
        value = job.observed[-1] if state == "complete" else None
        self._call({"op": "tell", "id": job.handle, "accuracy": value})
        return value

    def __del__(self) -> None:
        process = getattr(self, "process", None)
        if process is not None and process.poll() is None:
            process.stdin.close()
            process.wait(timeout=30)


PEERS: dict[str, tuple[str, Callable]] = {
    # name: (the module that must import, a constructor(surrogate, seed, workers, output))
    "dehb": ("dehb", lambda s, seed, workers, out: DEHBStrategy(s, seed, workers, out)),
    "smac-mf": ("smac", lambda s, seed, workers, out: SMACStrategy(s, seed, workers, out, "multi-fidelity")),
    "smac-hb": ("smac", lambda s, seed, workers, out: SMACStrategy(s, seed, workers, out, "hyperband")),
    "synetune-asha": ("syne_tune", lambda s, seed, workers, out: SyneTuneStrategy(s, seed, workers, out, "asha")),
    "synetune-bohb": ("syne_tune", lambda s, seed, workers, out: SyneTuneStrategy(s, seed, workers, out, "bohb")),
    "neps-priorband": ("<venv-neps>", lambda s, seed, workers, out: NePSStrategy(s, seed, workers, out)),
    # the peers that take our warm starts, without them: beside ours without them ("no-warm-start"), the search
    # methods compared on their own, as on data where the warm starts are not among the best
    "smac-hb-cold": ("smac", lambda s, seed, workers, out: SMACStrategy(s, seed, workers, out, "hyperband", False)),
    "synetune-asha-cold": ("syne_tune", lambda s, seed, workers, out: SyneTuneStrategy(s, seed, workers, out,
                                                                                         "asha", False)),
    "synetune-bohb-cold": ("syne_tune", lambda s, seed, workers, out: SyneTuneStrategy(s, seed, workers, out,
                                                                                         "bohb", False)),
}


def peer_status() -> dict[str, str | None]:
    """Each peer: None where its library imports, else why not (the import error)."""
    import importlib

    status = {}
    for name, (module, _) in PEERS.items():
        if module == "<venv-neps>":  # NePS runs in its own environment: ask that one (the space is still built here)
            try:
                importlib.import_module("ConfigSpace")
                status[name] = _neps_status()
            except Exception as err:  # noqa: BLE001 - any import failure is a reason to report
                status[name] = f"{type(err).__name__}: {err}"
            continue
        try:
            importlib.import_module(module)
            status[name] = None
        except Exception as err:  # noqa: BLE001 - any import failure is a reason to report
            status[name] = f"{type(err).__name__}: {err}"
    return status


def _neps_status() -> str | None:
    import subprocess

    python = neps_python()
    if not python.exists():
        return f"no NePS environment at {python} (set HW04BENCH_NEPS_PYTHON; bench/hw04bench/neps_driver.py says how)"
    done = subprocess.run([str(python), "-c", "import neps"], capture_output=True, text=True)
    return None if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


def make_strategy(name: str, surrogate, seed: int, workers: int, output: Path) -> Strategy:
    if name in OPTUNA_STRATEGIES:
        return OptunaStrategy(name, surrogate, seed, **OPTUNA_STRATEGIES[name])
    return PEERS[name][1](surrogate, seed, workers, output)


# ---------------------------------------------------------------------------------------------------------------
# Many replays, and what they say


def run_all(surrogate, strategies: list[str], seeds: int, workers: list[int], horizon: float, output: Path,
            max_trials: int | None = None, log: Callable[[str], None] = print, jobs: int = 1) -> list[Trace]:
    """Every (workers, strategy, seed) replay. ``jobs`` > 1: that many processes (forked, so they share the fitted
    surrogate), one BLAS thread each; each replay is seeded by its own seed alone, so the traces are the same
    whatever ``jobs`` is, in the same order."""
    import multiprocessing

    global _SHARED
    tasks = [(k, name, seed) for k in workers for name in strategies for seed in range(seeds)]
    _SHARED = (surrogate, horizon, output, max_trials)
    try:
        if jobs > 1:
            with multiprocessing.get_context("fork").Pool(jobs, initializer=_one_blas_thread) as pool:
                traces = pool.map(_replay_task, tasks, chunksize=1)
        else:
            traces = list(map(_replay_task, tasks))
    finally:
        _SHARED = ()
    for k in workers:
        for name in strategies:
            done = [t for t in traces if t.strategy == name and t.workers == k]
            log(f"  {name:24s} K={k}: {seeds} seeds, {np.mean([len(t.trials) for t in done]):.0f} trainings a "
                f"replay, {sum(t.wall_seconds for t in done):.1f} s of replay (summed over processes)")
    return traces


_SHARED: tuple = ()  # (surrogate, horizon, output, max_trials) of run_all's replays: forked processes inherit it


def _one_blas_thread() -> None:
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def _replay_task(task: tuple[int, str, int]) -> Trace:
    surrogate, horizon, output, max_trials = _SHARED
    k, name, seed = task
    return replay(make_strategy(name, surrogate, seed, k, output / f"{name}-{k}-{seed}"), surrogate, horizon, k,
                  seed, max_trials)


def summarize(traces: list[Trace], budget: float, best: float, grid_points: int = 60,
              validation_size: int | None = None) -> dict:
    """Per (workers, strategy) at ``budget`` simulated seconds: mean rank over time, final regret, the anytime
    curve (mean and 95% band over seeds, on a time grid), and the time to reach each other strategy's final best.
    With ``validation_size`` (n), ranks and reaching compare scores rounded to whole validation utterances (k/n):
    a surrogate's means differ by far less than one utterance, which no validation run could see."""
    grid = np.linspace(budget / grid_points, budget, grid_points)
    whole = (lambda x: np.round(np.asarray(x, dtype=float) * validation_size) / validation_size) \
        if validation_size else (lambda x: np.asarray(x, dtype=float))
    out: dict = {}
    for k in sorted({t.workers for t in traces}):
        group = [t for t in traces if t.workers == k]
        names = list(dict.fromkeys(t.strategy for t in group))
        seeds = sorted({t.seed for t in group})
        # curves[name][seed] = incumbent score on the grid (nan: nothing complete yet, ranked last)
        curves = {n: np.array([[t.best_at(g) for g in grid] for t in group if t.strategy == n]) for n in names}
        ranks = {n: [] for n in names}
        for i, _ in enumerate(seeds):
            at = np.stack([np.nan_to_num(whole(curves[n][i]), nan=-1.0) for n in names])  # [strategies, grid]
            from scipy.stats import rankdata

            r = rankdata(-at, axis=0)  # 1 = best; ties share
            for j, n in enumerate(names):
                ranks[n].append(r[j].mean())
        finals = {n: curves[n][:, -1] for n in names}
        picks = {n: np.array([t.best_at(budget, "picked") for t in group if t.strategy == n]) for n in names}
        rows = {}
        for n in names:
            c = curves[n]
            mean = np.nanmean(c, axis=0) if np.isfinite(c).any() else np.full(len(grid), np.nan)
            n_ok = np.isfinite(c).sum(axis=0)
            sd = np.nanstd(c, axis=0) if np.isfinite(c).any() else np.full(len(grid), np.nan)
            half = 1.96 * sd / np.sqrt(np.maximum(n_ok, 1))
            regret = best - np.nan_to_num(finals[n], nan=0.0)
            reach = {}
            for m in names:
                if not np.isfinite(finals[m]).any():  # X never completed a training in this budget
                    reach[m] = math.nan
                    continue
                target = whole(np.nanmean(finals[m]))
                times = []
                for t in (t for t in group if t.strategy == n):
                    # a mean of equal scores can come out one ulp above them: reaching it is reaching them
                    hit = next((when for when, s in t.incumbent if when <= budget and whole(s) >= target - 1e-9),
                               math.inf)
                    times.append(hit)
                reach[m] = float(np.median(times))
            rows[n] = {"mean_rank": float(np.mean(ranks[n])), "regret_mean": float(regret.mean()),
                       "regret_half": float(1.96 * regret.std() / math.sqrt(len(regret))),
                       "pick_regret_mean": float((best - np.nan_to_num(picks[n], nan=0.0)).mean()),
                       "final_mean": float(np.nanmean(finals[n])) if np.isfinite(finals[n]).any() else math.nan,
                       "grid": grid.tolist(), "mean": mean.tolist(), "low": (mean - half).tolist(),
                       "high": (mean + half).tolist(), "reach": reach,
                       "trainings": float(np.mean([sum(1 for x in t.trials if x["end"] <= budget)
                                                   for t in group if t.strategy == n]))}
        out[k] = rows
    return out


def format_table(summary: dict, budget: float, peers: list[str]) -> str:
    lines = []
    for k, rows in summary.items():
        targets = [m for m in ["default", *peers] if m in rows]
        width = {m: max(8, len("reach " + m)) for m in targets}
        head = f"{'strategy':24s} {'rank':>5s} {'regret':>15s} {'pick':>7s} {'final':>7s} {'trainings':>9s}" + "".join(
            f" {'reach ' + m:>{width[m]}s}" for m in targets)
        lines += [f"budget {budget:.0f} s, K={k} workers (rank: mean over time and seeds, 1 = best; regret: against "
                  f"the table's best, mean ± 95%; pick: the strategy's own pick's mean regret; final: mean best score; "
                  f"trainings: started and ended in the budget; reach X: median simulated seconds to X's mean final "
                  f"score)", head]
        for n, r in sorted(rows.items(), key=lambda kv: kv[1]["mean_rank"]):
            reach = "".join(f" {r['reach'][m]:{width[m]}.0f}" if math.isfinite(r["reach"][m]) else
                            f" {'never' if r['reach'][m] == math.inf else '-':>{width[m]}s}" for m in targets)
            lines.append(f"{n:24s} {r['mean_rank']:5.2f} {r['regret_mean']:7.4f} ± {r['regret_half']:.4f} "
                         f"{r['pick_regret_mean']:7.4f} "
                         f"{r['final_mean']:7.4f} {r['trainings']:9.1f}{reach}")
        lines.append("")
    return "\n".join(lines)


def write_html(summaries: dict, path: Path, title: str) -> None:
    """One self-contained page (plotly.js inlined once): per budget and K, the incumbent's score over time."""
    import plotly.graph_objects as go
    import plotly.io as pio

    parts, first = [], True
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354"]
    for budget, summary in summaries.items():
        for k, rows in summary.items():
            fig = go.Figure()
            for i, (n, r) in enumerate(rows.items()):
                color = palette[i % len(palette)]
                fig.add_trace(go.Scatter(x=r["grid"] + r["grid"][::-1], y=r["high"] + r["low"][::-1], fill="toself",
                                         fillcolor=color, opacity=0.15, line=dict(width=0), hoverinfo="skip",
                                         showlegend=False, legendgroup=n))
                fig.add_trace(go.Scatter(x=r["grid"], y=r["mean"], name=n, line=dict(color=color), legendgroup=n))
            fig.update_layout(title=f"{title}: budget {budget:.0f} s, {k} worker(s): best-so-far final accuracy of "
                              "the incumbent (mean, 95% band over seeds)", xaxis_title="simulated seconds",
                              yaxis_title="validation accuracy (noise-free)", height=520)
            parts.append(pio.to_html(fig, include_plotlyjs=first, full_html=False))
            first = False
    path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
                    f"<h1>{title}</h1>" + "\n".join(parts) + "</body></html>", encoding="utf-8")


@dataclass
class Evaluation:
    """What ``evaluate`` produced: the traces, the summary per budget, and what they were measured on."""

    surrogate: bench_surrogate.Surrogate
    table: bench_table.Table
    best: float  # the surrogate's best final accuracy at a recorded configuration (regret's zero)
    budgets: list[float]
    peers: list[str]  # the peers that ran
    skipped: dict[str, str]  # peers not run, and why
    traces: list[Trace]
    summaries: dict


def evaluate(tables: list[Path], budgets: list[float], seeds: int, workers: list[int],
             strategies: list[str] | None = None, trees: int = 100, smoke: bool = False,
             log: Callable[[str], None] = print, jobs: int = 1) -> Evaluation:
    """Replay ``strategies`` (default: all of ours and every peer that imports) on the table; ``smoke``: the
    fixture table's time scale (budgets of about 3 and 10 full trainings when ``budgets`` is empty) and at most
    SMOKE_MAX_TRIALS trainings a replay."""
    import tempfile

    for name in strategies or []:
        if name not in OPTUNA_STRATEGIES and name not in PEERS:
            known = ", ".join([*OPTUNA_STRATEGIES, *PEERS])
            raise SystemExit(f"--strategies: unknown strategy {name!r} (known: {known})")
    tbl = bench_table.load(*tables)
    surrogate = bench_surrogate.Surrogate(tbl, n_estimators=trees)
    best = surrogate.best
    budgets = budgets or smoke_budgets(surrogate)
    status = peer_status()
    skipped = {n: why for n, why in status.items() if why is not None}
    peers = [n for n, why in status.items() if why is None]
    strategies = strategies or [*OURS, *peers]
    for name in strategies:
        if name in skipped:
            raise SystemExit(f"peer {name} cannot run here: {skipped[name]}")
    log(f"table {' '.join(map(str, tables))}: {len(tbl.results())} runs, profile {tbl.profile}, {tbl.budget} steps, "
        f"card {surrogate.card}; best recorded final accuracy {bench_surrogate.table_best(tbl.results()):.4f} "
        f"(the surrogate's mean there, regret's zero: {best:.4f}); budgets {budgets}, workers {workers}, "
        f"{seeds} seeds")
    with tempfile.TemporaryDirectory(prefix="hw04bench-replay-") as tmp:
        traces = run_all(surrogate, strategies, seeds, workers, max(budgets), Path(tmp),
                         max_trials=SMOKE_MAX_TRIALS if smoke else None, log=log, jobs=jobs)
    with warnings.catch_warnings():  # a strategy with no complete training yet: nan means, on purpose
        warnings.simplefilter("ignore", RuntimeWarning)
        summaries = {b: summarize(traces, b, best, validation_size=surrogate.validation_size) for b in budgets}
    return Evaluation(surrogate, tbl, best, budgets, [p for p in peers if p in strategies], skipped, traces,
                      summaries)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.hw04bench.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("--table", nargs="+", type=Path, help="the table's files (default with --smoke: the fixture)")
    parser.add_argument("--budgets", help="simulated seconds, comma-separated (default 600,3600,14400; with "
                        "--smoke: about 3 and 10 of the fixture's full trainings)")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--workers", default="1,4")
    parser.add_argument("--strategies", help="comma-separated (default: all of ours and every installed peer)")
    parser.add_argument("--out", type=Path, default=Path("report.html"))
    parser.add_argument("--trees", type=int, default=100, help="the surrogate's failure classifier's forest size")
    parser.add_argument("--smoke", action="store_true", help="every strategy on the tiny fixture table, 2 seeds")
    parser.add_argument("--jobs", type=int, default=1, help="replay processes (the traces do not depend on it)")
    args = parser.parse_args(argv)

    if args.smoke:
        args.table = args.table or [FIXTURE]
        args.seeds, args.trees = min(args.seeds, 2), min(args.trees, 20)
    if not args.table:
        parser.error("--table is required (or --smoke)")
    budgets = [float(b) for b in args.budgets.split(",")] if args.budgets else ([] if args.smoke else
                                                                               [600.0, 3600.0, 14400.0])
    for name, why in peer_status().items():
        if why:
            print(f"peer {name}: not run ({why})")
    result = evaluate(args.table, budgets, args.seeds, [int(k) for k in args.workers.split(",")],
                      args.strategies.split(",") if args.strategies else None, args.trees, args.smoke,
                      jobs=args.jobs)
    for b in result.budgets:
        print(format_table(result.summaries[b], b, result.peers))
    write_html(result.summaries, args.out, f"HW04-Bench replay ({result.table.profile}, {result.surrogate.card})")
    print(f"wrote {args.out}")
    return 0


SMOKE_MAX_TRIALS = 40  # per replay: the GP sampler's cost grows with the trials


def smoke_budgets(surrogate) -> list[float]:
    """Budgets for the smoke mode, in the fixture's own time scale: about 3 and 10 full trainings."""
    _, costs, _ = surrogate.predict(_warm_starts(surrogate)[:1])
    full = surrogate.budget * costs[0, 0] + len(surrogate.steps) * costs[0, 1] + costs[0, 2]
    return [round(3 * full), round(10 * full)]


if __name__ == "__main__":
    raise SystemExit(main())
