"""Creating, resuming and running a study: sampler, pruner and the settings a study keeps.

A study remembers (in its user attributes) the settings its trials must share to be comparable: the
step budget, the evaluation interval the pruner's resource counts in, the data, the seed and the space
profile. Running it again adds trials with those settings; asking for different ones is an error
rather than a silently mixed study.
"""

from __future__ import annotations

import gc
import time
from dataclasses import MISSING, dataclass
from typing import TYPE_CHECKING, Callable

import optuna
from optuna.trial import TrialState

from search import schedule
from search.errors import UserError
from search.guard import held_signals, raise_pending
from search.pruners import SecondLookPruner
from search.queries import best_or_none, counts, has_trials
from search.sqlite_path import sqlite_path as _sqlite_file
from search.storage import check_study_name, default_url, open_storage, redact_url

# Training (torch, the model, the space built from its registries) is imported where a run needs it, not here:
# `search trials`, `show`, `studies` load studies through this module and print in a second without torch.
if TYPE_CHECKING:
    from search.task import Task

# The smallest budget (search/schedule.py GRID): a trial's first rung is budget/8 steps. Where a trial validates:
# schedule.trial_steps, from this study's pruner.
EVALUATIONS_PER_TRIAL = schedule.GRID
CPU_BUDGET = 500  # a new study's steps per trial on a CPU (see make_pruner)
GPU_BUDGET = 2000  # a new study's steps per trial on a GPU
# `search finalize --steps` by default (search/finalize.py default_steps); here, not there, so that the command
# line's help reads them without importing torch
GPU_FINALIZE_STEPS = 70_000  # the sample code's total_steps
# On a CPU 70,000 steps take hours. 2,000 steps (the quick start's) take 2-3 minutes for the `cpu` profile's models
# on this project's 2-core machine (measured quiet on 2026-11-26: the sample model ~14 steps/s, the CPU warm start
# ~20 in a trial, a one-layer Conformer ~7); --steps says otherwise.
CPU_FINALIZE_STEPS = 2_000


class TrialFailed(UserError):
    """A trial failed under ``--fail-fast``: the run stops, the message names the trial and why."""


class TargetReached(Exception):
    """Raised by a ``run_trials`` gate instead of asking for a trial: the run's trials are all taken."""


@dataclass
class StudySettings:
    budget: int  # training steps of a full trial
    eval_every: int  # the pruner's first rung (min_resource), budget/8; trials validate at its rungs and the end
    data: str  # the data folder, or "embedded"
    seed: int
    profile: str  # search-space profile: full or cpu
    pruning: bool = True  # Hyperband stops bad trials early; off: every trial runs its whole budget

    @classmethod
    def from_attrs(cls, attrs: dict) -> "StudySettings | None":
        """The settings a study was created with (None for a study this tool did not create). Settings
        added later (pruning) take their default in studies made before them."""
        fields = cls.__dataclass_fields__.values()
        required = [f.name for f in fields if f.default is MISSING]
        if not all(k in attrs for k in required):
            return None
        return cls(**{f.name: attrs[f.name] for f in fields if f.name in attrs})


@dataclass
class RequestedSettings:
    """The settings ``search run`` was given, None where the user gave none. ``resolve`` merges them with
    the stored study's: an existing study keeps its own values (its data, budget, seed, space and pruning
    choice) and refuses a different one given explicitly; a new study takes the defaults of the device.
    """

    budget: int | None = None
    data: str | None = None  # a data folder (absolute), or "embedded"
    seed: int | None = None
    profile: str | None = None  # full or cpu
    pruning: bool | None = None

    def resolve(self, name: str, stored: StudySettings | None, device_type: str) -> StudySettings:
        """The settings a run uses; a one-line UserError naming the option that contradicts the study."""
        if stored is not None:
            check_same(name, stored, self)
            return stored
        budget = self.budget or (GPU_BUDGET if device_type == "cuda" else CPU_BUDGET)
        requested = StudySettings(
            budget=budget, eval_every=0, data=self.data or "embedded", seed=self.seed or 0,
            profile=self.profile or ("full" if device_type == "cuda" else "cpu"), pruning=self.pruning is not False)
        requested.eval_every = schedule.min_resource(requested.budget)
        return requested


def check_same(name: str, stored: StudySettings, given: StudySettings | RequestedSettings) -> None:
    """Refuse a setting given for an existing study that differs from the one it was created with: its
    trials must stay comparable. Settings not given (None) are not compared."""
    for field, option, created, advice in (
            ("budget", f"--budget {given.budget}", f"with --budget {stored.budget}",
             "trials of one study must share a budget (use another --study)"),
            ("pruning", f"--{'' if given.pruning else 'no-'}pruning", f"with pruning {'on' if stored.pruning else 'off'}",
             "use another --study"),
            ("data", f"--data {given.data}", f"on {stored.data}", "use the same data or another --study"),
            ("seed", f"--seed {given.seed}", f"with --seed {stored.seed}",
             "its trials share that seed's train/valid split and sampler (use another --study)"),
            ("profile", f"--space {given.profile}", f"with --space {stored.profile}", "use another --study")):
        if getattr(given, field) is not None and getattr(given, field) != getattr(stored, field):
            raise UserError(f"{option}: study {name!r} was created {created}; {advice}")


def make_pruner(settings: StudySettings) -> optuna.pruners.BasePruner:
    """Hyperband over training steps, with explicit resources: every worker computes the same brackets
    (``max_resource='auto'`` would be guessed per process from the trials it happens to see).

    The full profile (a GPU) keeps reduction factor 3: with budget/8 as the first rung, two brackets (rungs at
    budget/8 and 3/8 of the budget, and a bracket whose first decision is at 3/8). A CPU study (the cpu profile)
    is 20 trials in a few minutes, where that second bracket (2 trials in 5, each running 3/8 of its budget before
    any decision, three times the first bracket's 1/8) is a large share of the steps: there the factor is above
    budget / first rung (9 for budget/8), which leaves one bracket and one decision, at budget/8. The CPU warm
    start (search/space.py CPU_CONFIGS) is above chance by then (0.05-0.06 against 1/32 at step 62 of 500 on the
    embedded data), so a trial goes on only when it learns at least as fast as the best trial so far at that step
    (once 18 trials have reached it: the top ninth). Those scores are a few right answers apart, so the cpu profile
    takes a second look at 3/8 of the budget (search/pruners.py ``SecondLookPruner``), with the same rule, before a
    trial trains its whole budget. The factor and the second look are not stored settings: a cpu study made before
    them is pruned this way from then on (its budget, stored, stays its own).
    """
    if not settings.pruning:
        return optuna.pruners.NopPruner()
    cpu = settings.profile == "cpu"
    reduction_factor = settings.budget // settings.eval_every + 1 if cpu else 3
    hyperband = optuna.pruners.HyperbandPruner(min_resource=settings.eval_every, max_resource=settings.budget,
                                               reduction_factor=reduction_factor)
    second_look = 3 * settings.eval_every
    return SecondLookPruner(hyperband, second_look) if cpu and second_look < settings.budget else hyperband


def load_study(name: str, url: str | None, any_direction: bool = False, read_only: bool = False) -> optuna.Study:
    """An existing study, or a one-line UserError listing the studies that do exist. Never creates
    anything: a SQLite or journal file that is not there is an error, not a new empty storage, and a database
    without Optuna's tables (another program's, an empty one) is one line, not a new schema.
    ``url`` None: the study's default storage, ``studies/<name>.db``. ``read_only``: for commands that write
    nothing (show, trials, report), a SQLite file is opened read-only (``open_storage``).

    A study that minimizes (or has several objectives) and holds trials is refused unless
    ``any_direction``: its "best" trial would be the one with the lowest accuracy.
    """
    check_study_name(name)
    url = url or default_url(name)
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None and not sqlite_file.is_file():
        raise UserError(f"--study {name}: no such study ({sqlite_file} does not exist)")
    storage = open_storage(url, create=False, read_only=read_only)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]  # not get_all_study_summaries: it reads every trial
        known = f"; studies there: {', '.join(names)}" if names else "; it holds no study"
        raise UserError(f"--study {name}: no such study in {redact_url(url)}{known}") from None
    if not any_direction and has_trials(study):  # a count, not every trial read (a study may hold thousands)
        _check_direction(study, url)
    return study


def _check_writable_sqlite(url: str) -> None:
    """A search writes its trials: refuse a read-only SQLite file (or folder, where SQLite keeps its -wal
    and -shm files) at once, not at the first write."""
    from search.files import read_only_part

    path = _sqlite_file(url)
    what = read_only_part(path) if path is not None and path.exists() else None
    if what is not None:
        raise UserError(f"--storage {redact_url(url)}: {what} is read-only; a search writes its trials there "
                        "(make it writable, or use another --study or --storage)")


def _check_direction(study: optuna.Study, url: str) -> None:
    directions = [d.name.lower() for d in study.directions]
    if directions != ["maximize"]:
        raise UserError(f"--study {study.study_name}: the study in {redact_url(url)} has direction "
                        f"{', '.join(directions)}; a search study maximizes validation accuracy (this one was "
                        "not created by `search run`: use another --study)")


CREATE_WAIT = 10  # seconds a worker waits for the process that created a study to record its settings


def stored_settings(name: str, url: str) -> StudySettings | None:
    """The settings of the study ``name`` at ``url`` if it exists and has them, creating nothing: what a
    run must check (and take) before it prepares any data. Refuses a read-only SQLite file, a study
    that does not maximize, and a storage that cannot be opened, as ``open_study`` would later."""
    check_study_name(name)
    _check_writable_sqlite(url)
    sqlite_file = _sqlite_file(url)
    if sqlite_file is not None and not sqlite_file.is_file():  # a new study: no file made before it is needed
        return None
    storage = open_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    _check_direction(study, url)
    settings = StudySettings.from_attrs(study.user_attrs)
    return settings if settings is not None else _wait_for_settings(study, name, url)  # refuses a foreign study


def open_study(name: str, url: str, requested: StudySettings, warm_start: bool = True) -> tuple[optuna.Study, StudySettings, bool]:
    """Create the study with the ``requested`` settings, or load it to add trials (refusing settings that
    differ from its own: see ``RequestedSettings.resolve`` for a run's merge). Returns (study, settings in
    force, created)."""
    check_study_name(name)
    _check_writable_sqlite(url)
    storage = open_storage(url)
    study, created = _create_or_load(name, storage)
    _check_direction(study, url)
    settings = StudySettings.from_attrs(study.user_attrs) if not created else None
    if not created and settings is None:
        settings = _wait_for_settings(study, name, url)
        created = settings is None  # a study made by hand (only queued trials, if any): adopted
    if created:
        settings = requested
        # The settings' optional fields first: a process that loads the study meanwhile sees the settings
        # once the last required one is written, and then all of them.
        optional = [f.name for f in StudySettings.__dataclass_fields__.values() if f.default is not MISSING]
        for key, value in sorted(vars(settings).items(), key=lambda kv: kv[0] not in optional):
            study.set_user_attr(key, value)
        if warm_start:  # only the process that created the study enqueues them: each runs once
            from search import space as search_space

            space = search_space.build_space(settings.profile)
            queued = {t.user_attrs.get("warm_start") for t in study.get_trials(deepcopy=False)}
            for label, params in search_space.warm_start_configs(space).items():
                if label not in queued:
                    study.enqueue_trial(params, user_attrs={"warm_start": label})
    else:
        check_same(name, settings, requested)
    # constant_liar: with several workers, a running trial counts as a bad result for the sampler, so
    # workers don't all sample next to the same promising point (no effect with one worker).
    sampler = TrialSeededTPESampler(settings.seed, n_startup_trials=10, constant_liar=True)
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=make_pruner(settings))
    return study, settings, created


def requeue_interrupted_warm_starts(study: optuna.Study) -> list[tuple[str, int]]:
    """Queue again each warm-start trial that was interrupted (Ctrl-C, SIGTERM, a worker whose parent was killed:
    FAIL with ``ended: interrupted``) and has no other trial of its label that ran or will run; returns (label,
    interrupted trial number) of each.

    Warm starts are enqueued once, by the process that creates the study: an interrupted one was never run
    again, so the study lost its strongest CPU configuration and the sample-code reference read ``interrupted``
    for good. The copy has the same parameters (those it was enqueued with) and the ``warm_start`` label, and
    ``retry_of`` the interrupted trial's number."""
    trials = study.get_trials(deepcopy=False)
    alive = {t.user_attrs.get("warm_start") for t in trials
             if t.user_attrs.get("warm_start") and not (t.state == TrialState.FAIL
                                                         and t.user_attrs.get("ended") == "interrupted")}
    requeued = []
    for t in trials:
        label = t.user_attrs.get("warm_start")
        if (label and label not in alive and t.state == TrialState.FAIL
                and t.user_attrs.get("ended") == "interrupted"):
            params = t.system_attrs.get("fixed_params") or t.params
            study.enqueue_trial(params, user_attrs={"warm_start": label, "retry_of": t.number})
            alive.add(label)
            requeued.append((label, t.number))
    return requeued


class TrialSeededTPESampler(optuna.samplers.TPESampler):
    """Optuna's TPE sampler whose random draws for trial N are seeded by (study seed, N), not by one seed per
    process.

    Each process that joins a study (a worker, another machine, a resumed run) opens it with its own sampler.
    Seeded per process, two processes with the same ``--seed`` would draw the same random configurations
    (all ten start-up trials would be run twice); seeded per process *and* something that differs between
    them (a worker index, the trial count when it joined), the first trials would depend on how many
    processes ran and when they started. Seeded per trial number (unique in a study), no two trials share
    their draws, and trial N's start-up configuration is the same on any machine with any number of
    processes. After the start-up trials TPE's draws also depend on the trials finished (and, with
    ``constant_liar``, running) at that moment, as they must.
    """

    def __init__(self, seed: int, **kwargs) -> None:
        super().__init__(seed=seed, **kwargs)
        self.study_seed = seed

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        # TPE draws from ``_rng`` and its start-up sampler from ``_random_sampler._rng`` (Optuna 5's names;
        # test_workers checks the effect): reseed both for this trial.
        trial_seed = (self.study_seed * 7919 + trial.number * 1_000_003) % 2**32
        self._rng.rng.seed(trial_seed)
        self._random_sampler._rng.rng.seed((trial_seed + 1) % 2**32)
        super().before_trial(study, trial)


def _create_or_load(name: str, storage) -> tuple[optuna.Study, bool]:
    """(study, created): exactly one of several processes starting together on a new study creates it
    (the storage's UNIQUE study name decides); the others load it."""
    for _ in range(5):
        try:
            return optuna.create_study(study_name=name, storage=storage, direction="maximize"), True
        except optuna.exceptions.DuplicatedStudyError:
            pass
        try:
            return optuna.load_study(study_name=name, storage=storage), False
        except KeyError:  # deleted in between: try again
            time.sleep(0.1)
    raise UserError(f"--study {name}: the study keeps appearing and disappearing in the storage; try again")


def _wait_for_settings(study: optuna.Study, name: str, url: str) -> StudySettings | None:
    """The settings of a study without them yet: another `search run` may have just created it (it writes
    them right after creating it, before enqueuing anything): wait for them. None: a study made by hand
    (with queued trials only, or still empty after the wait) that may be adopted. A study whose trials
    ran under settings nobody recorded is refused: its results cannot be compared with new ones."""
    deadline = time.monotonic() + CREATE_WAIT
    while True:
        settings = StudySettings.from_attrs(study._storage.get_study_user_attrs(study._study_id))
        if settings is not None:
            return settings
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        if any(t.state != TrialState.WAITING for t in trials):
            raise UserError(f"--study {name}: the study in {redact_url(url)} was not created by `search run` (its trials "
                            "ran without search settings: budget, data, seed, space); use another --study")
        if trials or time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def run_trials(study: optuna.Study, settings: StudySettings, task: Task, n_trials: int | None,
               timeout: float | None = None, fail_fast: bool = False,
               on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
               gate: Callable[[optuna.Study, Callable[[], optuna.Trial]], optuna.Trial] | None = None) -> None:
    """Run ``n_trials`` trials in this process (None: until ``timeout``). A trial that fails (divergence, out of memory, a bug in
    one configuration) is recorded as FAIL with its reason and the study goes on, unless ``fail_fast``.

    ``gate`` (the workers' shared target, search.workers.SharedTarget) is called instead of each
    ``study.ask()`` with the study and the real ask; it returns the trial, or raises TargetReached, which
    ends the run here quietly."""
    from search import space as search_space
    from search.notes import with_notes
    from search.objective import Objective

    objective = Objective(task, settings.budget, search_space.build_space(settings.profile), settings.seed)
    # gc_after_trial collects after every trial (a pruned trial's model, optimizer and graph pool can sit in
    # reference cycles, holding GPU memory the next trial needs). A full collection walks every tracked object:
    # what torch, optuna and the data created at start-up, and what the first trial imported lazily (AdamW's
    # first use pulls in ~120,000 objects of torch's compiler stack). They live as long as the process anyway:
    # move them out of the collector's sight now and again after the first trial's collection. Measured on
    # this project's CPU: a collection after each trial took ~75 ms with the first trial's objects in sight.
    gc.collect()
    gc.freeze()
    on_trial = with_notes(_freeze_after_first(on_trial))  # and the notes, in optuna-dashboard (search/notes.py)

    def fail_fast_objective(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:  # Optuna records the trial as FAIL, then this stops the run
            reason = trial.user_attrs.get("ended") or f"failed: {type(err).__name__}: {err}"
            raise TrialFailed(f"--fail-fast: trial #{trial.number} {reason}") from err

    func, catch = (fail_fast_objective, ()) if fail_fast else (objective, (Exception,))
    ask = study.ask

    def held_ask(*args, **kwargs) -> optuna.Trial:  # an interrupt here is raised by the objective (search/guard.py)
        with held_signals():
            return ask(*args, **kwargs)

    # study.optimize asks for each trial with ``study.ask()`` (after failing stale trials, before the
    # objective and its heartbeat): an instance attribute puts the held ask, and the gate, there. TargetReached
    # raised by the gate leaves optimize before any trial is created; it is not the objective's, so ``catch``
    # never sees it.
    study.ask = held_ask if gate is None else (lambda *args, **kwargs: gate(study, lambda: held_ask(*args, **kwargs)))
    try:
        study.optimize(func, n_trials=n_trials, timeout=timeout, catch=catch,
                       callbacks=[on_trial] if on_trial else None, gc_after_trial=True)
    except TargetReached:
        pass
    except KeyboardInterrupt:
        _fail_if_running(study, objective.current_trial_id)
        raise
    finally:
        del study.ask
    raise_pending()  # a signal held in an ask that then created no trial still stops the run


def _freeze_after_first(callback: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None
                        ) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """``callback``, and after the first trial of this process ``gc.freeze()``: Optuna's ``gc_after_trial``
    collection has just run (it runs before the callbacks), so what is still tracked outlived a trial."""
    first = [True]

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if first[0]:
            first[0] = False
            gc.freeze()
        if callback is not None:
            callback(study, trial)

    return after_trial


def _fail_if_running(study: optuna.Study, trial_id: int | None) -> None:
    """An interrupt that came after the objective returned, while Optuna recorded the result, escapes
    Optuna's guard and leaves the trial RUNNING: record it FAIL (``ended: interrupted``) here."""
    if trial_id is None:
        return
    try:
        if study._storage.get_trial(trial_id).state != TrialState.RUNNING:
            return
        study._storage.set_trial_user_attr(trial_id, "ended", "interrupted")
        study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):  # finished by someone else meanwhile
        pass


class Progress:
    """Prints one line per finished trial (n/N, state, value, best so far, elapsed time, ETA) and, through
    ``in_trial``, a line every ~10 s while a trial trains (search/train.py ``report_progress``).

    The ETA is the study's pace in this run: the mean seconds per finished trial since the trials started
    (``start``) times the trials left; with ``timeout``, the time left until then (the smaller of the two
    when both are given). With worker processes the pace is the run's, all workers together."""

    def __init__(self, total: int | None, echo: Callable[[str], None], timeout: float | None = None) -> None:
        self.total, self.echo, self.timeout, self.done = total, echo, timeout, 0  # total None: until the timeout
        self.started = self.trials_started = time.perf_counter()

    def start(self) -> None:
        """The trials start now (the data is ready): the pace and the timeout count from here."""
        self.trials_started = time.perf_counter()

    def eta(self) -> float | None:
        """Seconds until the run is done, or None before a trial finished (no pace yet) without a timeout."""
        elapsed = time.perf_counter() - self.trials_started
        left = []
        if self.total is not None and self.done:
            left.append(elapsed / self.done * max(0, self.total - self.done))
        if self.timeout is not None:
            left.append(max(0.0, self.timeout - elapsed))
        return min(left) if left else None

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial, worker: int | None = None) -> None:
        self.done += 1
        c = counts(study)
        best = best_or_none(study)
        if trial.state == TrialState.COMPLETE:
            value = f"acc {trial.value:.4f}"
        else:
            value = trial.user_attrs.get("ended", "")
        best_text = f"best {best.value:.4f} (#{best.number})" if best else "no complete trial yet"
        eta = self.eta()
        self.echo(f"trial {self.done}{'' if self.total is None else f'/{self.total}'}  #{trial.number} {trial.state.name.lower():8s} {value}  |  "
                  f"{best_text}  |  complete {c['complete']} pruned {c['pruned']} failed {c['fail']}  |  "
                  f"{time.perf_counter() - self.started:.0f}s" + ("" if eta is None else f", ETA {self.format_seconds(eta)}")
                  + (f"  |  worker {worker}" if worker is not None else ""))

    def in_trial(self, info: dict, worker: int | None = None) -> None:
        """A line while a trial trains: its step of the total, speed, best validation accuracy so far, and
        the time the trial has left at that speed (search/train.py ``report_progress`` gives ``info``)."""
        left = self.format_seconds(self.training_left(info))
        self.echo(f"  training: {self.training_text(info)}  |  trial ends in ~{left}"
                  + (f"  |  worker {worker}" if worker is not None else ""))

    @staticmethod
    def training_text(info: dict) -> str:
        """``step 1200/2000  850.3 steps/s  valid acc so far 0.4213`` (or ``no validation yet``): how a training
        stands, from search/train.py ``report_progress``'s ``info`` (trials' lines here, finalize's too)."""
        accuracy = info.get("valid_accuracy")
        return (f"step {info['step']}/{info['steps']}  {info['steps_per_second']:.1f} steps/s  "
                + ("no validation yet" if accuracy is None else f"valid acc so far {accuracy:.4f}"))

    @staticmethod
    def training_left(info: dict) -> float:
        """Seconds the training of ``info`` has left at its pace so far (0 before it has one)."""
        rate = info["steps_per_second"]
        return (info["steps"] - info["step"]) / rate if rate > 0 else 0.0

    @staticmethod
    def format_seconds(seconds: float) -> str:
        """``42s``, ``3m05s``, ``2h07m``: an ETA at a glance."""
        seconds = max(0, round(seconds))
        if seconds < 60:
            return f"{seconds}s"
        if seconds < 3600:
            return f"{seconds // 60}m{seconds % 60:02d}s"
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
