"""Creating, opening and resuming a study (with the SQLite checks), and the warm starts it is given.

A study keeps the settings its trials share (search/running/settings.py); the process that creates it writes them and
enqueues the warm starts once. Its sampler and pruner are built from those settings (search/running/sampler.py) by
every process that opens it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

import optuna
from optuna.trial import TrialState

from search.db import optuna_internals as internals
from search.db.catalog import is_default, missing_study
from search.errors import UserError
from search.reporting.queries import has_trials
from search.running.sampler import make_pruner, make_sampler
from search.running.settings import StudySettings, check_same, default_profile
from search.db.sqlite import sqlite_path
from search.db.storage import check_study_name, default_url, open_storage, redact_url
from search.running.user_space import SpaceRequest, read_space_file, resolve


def load_study(name: str, url: str | None, any_direction: bool = False, read_only: bool = False,
               option: str = "--study") -> optuna.Study:
    """An existing study, or a one-line UserError listing the studies that do exist. Never creates
    anything: a SQLite or journal file that is not there is an error, not a new empty storage, and a database
    without Optuna's tables (another program's, an empty one) is one line, not a new schema.
    ``url`` None: the study's default storage (``storage.default_url``). A study that is not there is one line
    naming the close names there (``did you mean 'hw04'?``: search/db/catalog.py). ``read_only``: for commands that write
    nothing (show, trials, report), a SQLite file is opened read-only (``open_storage``). ``option``: what the
    user typed the name as, for the line.

    A study that minimizes (or has several objectives) and holds trials is refused unless
    ``any_direction``: its "best" trial would be the one with the lowest accuracy.
    """
    check_study_name(name)
    default = is_default(url)
    url = url or default_url(name)
    sqlite_file = sqlite_path(url)
    if sqlite_file is not None and not sqlite_file.is_file():
        raise missing_study(name, url, default, f"{sqlite_file} does not exist", option)
    storage = open_storage(url, create=False, read_only=read_only)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise missing_study(name, url, default, option=option) from None
    if not any_direction and has_trials(study):  # a count, not every trial read (a study may hold thousands)
        _check_direction(study, url)
    return study


def _check_writable_sqlite(url: str) -> None:
    """A search writes its trials: refuse a read-only SQLite file (or folder, where SQLite keeps its -wal
    and -shm files) at once, not at the first write."""
    from search.files import read_only_part

    path = sqlite_path(url)
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
    sqlite_file = sqlite_path(url)
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


def open_study(name: str, url: str, requested: StudySettings, warm_start: bool = True,
               report: Callable[[str], None] | None = None) -> tuple[optuna.Study, StudySettings, bool]:
    """Create the study with the ``requested`` settings, or load it to add trials (refusing settings that
    differ from its own: see ``RequestedSettings.resolve`` for a run's merge). Returns (study, settings in
    force, created). A new study queues its warm starts; ``report`` gets a line for each that does not fit the
    study's space."""
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
        # once the last required one is written, and then all of them. A setting left at None is not written.
        optional = StudySettings.optional_fields()
        for key, value in sorted(vars(settings).items(), key=lambda kv: kv[0] not in optional):
            if value is not None:
                study.set_user_attr(key, value)
        if warm_start:  # only the process that created the study queues them: each runs once
            queue_configs(study, settings, warm_start_queue(settings.profile), report or (lambda line: None))
    else:
        check_same(name, settings, requested)
    name_the_metric(study)
    study = optuna.load_study(study_name=name, storage=storage, sampler=make_sampler(settings),
                              pruner=make_pruner(settings))
    return study, settings, created


@dataclass(frozen=True)
class QueuedConfig:
    """A configuration to run next in a study: what it is called in messages, its parameters and the user
    attributes its trial starts with (``warm_start``, or ``enqueued_from``)."""

    name: str
    params: dict
    attrs: dict = field(default_factory=dict)


def warm_start_queue(profile: str) -> list[QueuedConfig]:
    """The warm starts of a new study of ``profile``: the known configurations that are points of the profile
    (search/running/space.py ``warm_start_configs``); those the user's changes leave out are skipped by ``queue_configs``."""
    from search.running import space as search_space

    configs = search_space.warm_start_configs(search_space.build_space(profile))
    return [QueuedConfig(f"warm start {label!r}", params, {"warm_start": label}) for label, params in configs.items()]


def queue_configs(study: optuna.Study, settings: StudySettings, configs: Sequence[QueuedConfig],
                  report: Callable[[str], None]) -> list[QueuedConfig]:
    """Queue each configuration that is a point of the study's space (Optuna's ``enqueue_trial``: the next
    trials asked for run them, in this order): the one path of the warm start and ``search enqueue``. A
    configuration that does not fit, or is queued already (same parameters waiting, or a warm start's label), is
    skipped with one ``report`` line saying why. Returns those queued."""
    from search.running import space as search_space

    space = search_space.build_space(settings.profile, settings.space)
    trials = study.get_trials(deepcopy=False)
    waiting = [internals.queued_params(t) for t in trials if t.state == TrialState.WAITING]
    labels = {t.user_attrs.get("warm_start") for t in trials}
    queued = []
    for config in configs:
        why = search_space.misfit(space, config.params)
        label = config.attrs.get("warm_start")
        if why is not None:
            report(f"{config.name}: skipped, it does not fit the study's space: {why}")
        elif config.params in waiting or (label is not None and label in labels):
            report(f"{config.name}: skipped, queued already")
        else:
            study.enqueue_trial(config.params, user_attrs=config.attrs)
            waiting.append(config.params)
            queued.append(config)
    return queued


METRIC_NAME = "validation accuracy"  # what a trial's value is: optuna-dashboard's charts say "Objective 0" without it


def name_the_metric(study: optuna.Study) -> None:
    """Name the study's objective (``study.set_metric_names``), in a study created before it was named too: a run
    writes to its study anyway; read-only commands leave an older study unnamed."""
    if study.metric_names != [METRIC_NAME]:
        with warnings.catch_warnings():  # experimental in Optuna (since 3.2) and unchanged since
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])


def requeue_interrupted_warm_starts(study: optuna.Study) -> list[tuple[str, int]]:
    """Queue again each warm-start trial that was interrupted (Ctrl-C, SIGTERM, a worker whose parent was killed:
    FAIL with ``ended: interrupted``) and has no other trial of its label that ran or will run; returns (label,
    interrupted trial number) of each.

    Warm starts are enqueued once, by the process that creates the study: an interrupted one was never run
    again, so the study lost its strongest CPU configuration and the sample-code reference read ``interrupted``
    for good. The copy has the same parameters (those it was enqueued with) and the ``warm_start`` label, and
    ``retry_of`` the interrupted trial's number."""
    trials = study.get_trials(deepcopy=False)
    alive = {t.user_attrs.get("warm_start") for t in trials if t.user_attrs.get("warm_start") and not _dead(t)}
    requeued = []
    for t in trials:
        label = t.user_attrs.get("warm_start")
        if label and label not in alive and t.state == TrialState.FAIL and t.user_attrs.get("ended") == "interrupted":
            params = internals.queued_params(t) or t.params
            study.enqueue_trial(params, user_attrs={"warm_start": label, "retry_of": t.number})
            alive.add(label)
            requeued.append((label, t.number))
    if requeued or _duplicates(trials):
        for duplicate, first in _duplicates(study.get_trials(deepcopy=False)):
            _drop_queued(study, duplicate, first)
    return requeued


def _dead(trial: optuna.trial.FrozenTrial) -> bool:
    """An interrupted trial, or a queued copy dropped as a duplicate: neither runs again."""
    ended = str(trial.user_attrs.get("ended", ""))
    return trial.state == TrialState.FAIL and (ended == "interrupted" or ended.startswith("duplicate"))


def _duplicates(trials: list[optuna.trial.FrozenTrial]) -> list[tuple[optuna.trial.FrozenTrial, int]]:
    """(queued copy, number of the first live copy) for each queued retry of a warm start beyond its first live
    copy. Two runs resuming together may both see the warm start interrupted and both queue it again: each re-reads
    the study after queueing, and the one that sees two copies drops the later one."""
    copies: dict[str, list] = {}
    for t in trials:
        if t.user_attrs.get("warm_start") and "retry_of" in t.user_attrs and not _dead(t):
            copies.setdefault(t.user_attrs["warm_start"], []).append(t)
    found = []
    for live in copies.values():
        first = min(c.number for c in live)
        found += [(t, first) for t in live if t.number != first and t.state == TrialState.WAITING]
    return found


def _drop_queued(study: optuna.Study, trial: optuna.trial.FrozenTrial, first: int) -> None:
    """Take a queued trial off the queue: claimed the way a worker claims one (WAITING -> RUNNING, which exactly
    one process wins, with the row locked on a database server), then recorded FAIL with ``ended: duplicate of
    #N``. A copy a worker claimed first is left to run, and one another run dropped first is left as it is."""
    storage, trial_id = internals.storage_of(study), internals.trial_id(trial)
    try:
        if storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
            storage.set_trial_user_attr(trial_id, "ended", f"duplicate of #{first}: queued again by two runs at once")
            storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:  # SQLite has no row lock: two runs claimed it, one failed it
        pass


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
        storage, study_id = internals.storage_of(study), internals.study_id(study)
        settings = StudySettings.from_attrs(storage.get_study_user_attrs(study_id))
        if settings is not None:
            return settings
        trials = storage.get_all_trials(study_id, deepcopy=False)
        if any(t.state != TrialState.WAITING for t in trials):
            raise UserError(f"--study {name}: the study in {redact_url(url)} was not created by `search run` (its trials "
                            "ran without search settings: budget, data, seed, space); use another --study")
        if trials or time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def with_space(requested, space: SpaceRequest, name: str, url: str, device_type: str):
    """``requested`` (search/running/settings.py RequestedSettings) with the space ``space`` asks for, resolved on the
    profile it will have: the file's, else ``--space``'s, else the existing study's, else the device's. Checked
    before anything is written; an existing study with another space is refused later, by ``check_same``."""
    if not space.given():
        return requested
    file_profile = read_space_file(space.file)[0] if space.file is not None else None
    if file_profile and requested.profile and file_profile != requested.profile:
        raise UserError(f"--space {requested.profile}: the space file says profile {file_profile}")
    profile = file_profile or requested.profile
    if profile is None:
        stored = stored_settings(name, url)
        profile = stored.profile if stored is not None else default_profile(device_type)
    return replace(requested, profile=file_profile or requested.profile, space=resolve(space, profile) or {})
