"""Running trials in this process: an ask-and-tell loop that owns each trial from its creation to its end.

For each trial the loop fails the trials of dead workers (heartbeats: ``fail_stale_trials``), asks for a trial
with signals held (an interrupt while the trial is being created is raised once the runner guards it), runs the
objective with the trial's heartbeat beating, tells the study how it ended, logs it as Optuna's own loop does,
and calls back (progress lines, notes). A trial that fails (divergence, out of memory, a bug in one
configuration) is recorded as FAIL with its reason and the run goes on, unless ``fail_fast``. An interrupt ends
the running trial as FAIL (``ended: interrupted``) and stops the run.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import logging
import socket
import sys
import warnings
from typing import TYPE_CHECKING, Callable

import optuna
from optuna.trial import TrialState

from search.db import optuna_internals as internals
from search.processes import signals
from search.errors import UserError
from search.reporting.logs import LOG_ONLY
from search.running.settings import StudySettings

if TYPE_CHECKING:
    from search.running.task import Task

OnTrial = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]
Ask = Callable[[], optuna.Trial]
Gate = Callable[[optuna.Study, Ask], optuna.Trial]
_log = optuna.logging.get_logger("optuna.search.runner")  # beside Optuna's own lines, at Optuna's verbosity


class TrialFailed(UserError):
    """A trial failed under ``--fail-fast``: the run stops, the message names the trial and why."""


class TargetReached(Exception):
    """Raised by a ``run_trials`` gate instead of asking for a trial: the run's trials are all taken."""


def run_trials(study: optuna.Study, settings: StudySettings, task: Task, n_trials: int | None,
               timeout: float | None = None, fail_fast: bool = False, on_trial: OnTrial | None = None,
               gate: Gate | None = None, on_start: Callable[[dict], None] | None = None) -> None:
    """Run ``n_trials`` trials in this process (None: until ``timeout``); ``on_start`` is told each trial's number,
    origin and parameters as it starts (search/running/objective.py), ``on_trial`` each trial that ended.

    ``gate`` (the workers' shared target, search/running/target.py ``SharedTarget``) is called instead of each ask with
    the study and the real ask; it returns the trial, or raises TargetReached, which ends the run quietly."""
    from search.running import space as search_space
    from search.reporting.notes import with_notes
    from search.running.objective import Objective

    objective = Objective(task, settings.budget, search_space.build_space(settings.profile, settings.space),
                          settings.seed, on_start=on_start)
    # A collection after every trial frees what a pruned trial's model and graphs hold in reference cycles.
    # What start-up (and, below, the first trial) created lives as long as the process: freezing it keeps those
    # collections short (BENCHMARKS.md: "On an H100: the per-trial overhead cut" and "Figures from code comments").
    gc.collect()
    gc.freeze()
    on_trial = with_notes(_freeze_after_first(on_trial))  # and the notes, in optuna-dashboard (search/reporting/notes.py)
    func = _fail_fast(objective) if fail_fast else objective
    try:
        _loop(study, func, n_trials, timeout, () if fail_fast else (Exception,), on_trial, gate)
    finally:
        internals.storage_of(study).remove_session()
    signals.raise_pending()  # a signal held in an ask that then created no trial still stops the run


def _loop(study: optuna.Study, func, n_trials: int | None, timeout: float | None, catch: tuple, on_trial: OnTrial,
          gate: Gate | None) -> None:
    """Optuna's optimize loop, with our ask: trials until ``n_trials`` were asked for or ``timeout`` passed."""
    started, asked = datetime.datetime.now(), 0
    while n_trials is None or asked < n_trials:
        if timeout is not None and (datetime.datetime.now() - started).total_seconds() >= timeout:
            break
        asked += 1
        try:
            trial = _ask(study, gate)
        except TargetReached:
            break
        try:
            frozen = _run_trial(study, trial, func, catch)
        finally:
            gc.collect()
        on_trial(study, frozen)  # tell's own copy, read back from the storage


def _ask(study: optuna.Study, gate: Gate | None) -> optuna.Trial:
    """A new trial (a queued one first), after failing dead workers' trials."""
    if internals.heartbeat_enabled(internals.storage_of(study)):
        _fail_stale_by_heartbeat(study)

    def ask() -> optuna.Trial:
        with signals.held(), warnings.catch_warnings():  # a signal is raised once the trial is guarded (_run_trial)
            # Optuna warns that heartbeats go with study.optimize: this loop runs them itself (_run_trial)
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used", UserWarning)
            return study.ask()

    return ask() if gate is None else gate(study, ask)


def _run_trial(study: optuna.Study, trial: optuna.Trial, func, catch: tuple) -> optuna.trial.FrozenTrial:
    """Run the objective on ``trial``, record how it ended, log it; re-raise what ``catch`` does not take."""
    value, state, error, exc_info = None, None, None, None
    try:
        with contextlib.ExitStack() as beating:
            # Optuna's heartbeat thread is not a daemon: a signal while it starts (a killed parent's SIGTERM comes
            # just after the trial is created) would leave it beating and the worker unable to exit. Held, the
            # signal is raised just below, inside the guard, where the trial is recorded FAIL.
            with signals.held():
                beating.enter_context(internals.heartbeat(study, trial))
            try:
                signals.raise_pending()  # an interrupt that came while the trial was created
                value = func(trial)
            except optuna.TrialPruned as err:
                state, error = TrialState.PRUNED, err
            except (Exception, KeyboardInterrupt) as err:
                state, error, exc_info = TrialState.FAIL, err, sys.exc_info()
                if isinstance(err, KeyboardInterrupt) and "ended" not in trial.user_attrs:
                    trial.set_user_attr("ended", "interrupted")
        with warnings.catch_warnings(record=True) as told:
            warnings.simplefilter("always")
            frozen = study.tell(trial, value, state)
        _log_end(study, frozen, error, exc_info, value, [str(w.message) for w in told])
    except KeyboardInterrupt:  # after the objective: Optuna's tell may not have finished
        _fail_if_running(study, internals.trial_id(trial))
        raise
    if frozen.state == TrialState.FAIL and error is not None and not isinstance(error, catch):
        raise error
    return frozen


def _log_end(study: optuna.Study, frozen: optuna.trial.FrozenTrial, error, exc_info, value,
             told: list[str]) -> None:
    """The lines Optuna's optimize logs for a trial that ended; an interrupted one is a single short line."""
    number, params = frozen.number, frozen.params
    if frozen.state == TrialState.COMPLETE:
        if _log.isEnabledFor(logging.INFO):  # the best trial is read only for a line that is shown
            best = study.best_trial
            _log.info(f"Trial {number} finished with value: {frozen.value} and parameters: {params}. "
                      f"Best is trial {best.number} with value: {best.value}.")
    elif frozen.state == TrialState.PRUNED:
        _log.info(f"Trial {number} pruned. {error}")
    elif isinstance(error, KeyboardInterrupt):  # the user's doing, not a failure to explain
        _log.warning(f"trial #{number} interrupted: recorded as FAIL (ended: interrupted)")  # which trial it was
    else:
        # the log file's lines; `search run` prints its own (`#3 failed: <why>`, search/reporting/logs.py Progress)
        why = repr(error) if error is not None else (told[-1] if told else "unknown")
        _log.warning(f"Trial {number} failed with parameters: {params} because of the following error: {why}.",
                     exc_info=exc_info, extra=LOG_ONLY)
        _log.warning(f"Trial {number} failed with value {value!r}.", extra=LOG_ONLY)


def _fail_fast(objective):
    """``objective``, whose failures (not prunes) become TrialFailed naming the trial: the run stops there."""
    def fail_fast_objective(trial: optuna.Trial) -> float:
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:  # recorded as FAIL, then this stops the run
            reason = trial.user_attrs.get("ended") or f"failed: {type(err).__name__}: {err}"
            raise TrialFailed(f"--fail-fast: trial #{trial.number} {reason}") from err

    return fail_fast_objective


def _freeze_after_first(callback: OnTrial | None) -> OnTrial:
    """``callback``, and after the first trial of this process ``gc.freeze()``: the collection after the trial
    has just run, so what is still tracked outlived a trial."""
    first = [True]

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if first[0]:
            first[0] = False
            gc.freeze()
        if callback is not None:
            callback(study, trial)

    return after_trial


def _fail_if_running(study: optuna.Study, trial_id: int) -> None:
    """An interrupt that came after the objective returned, while the result was being recorded, leaves the
    trial RUNNING: record it FAIL (``ended: interrupted``) here."""
    storage = internals.storage_of(study)
    try:
        running = storage.get_trial(trial_id).state == TrialState.RUNNING
    except KeyError:
        return
    if running:
        _record_interrupted(storage, trial_id)


def _record_interrupted(storage: optuna.storages.BaseStorage, trial_id: int) -> bool:
    """Record a RUNNING trial FAIL with ``ended: interrupted``; False where it finished meanwhile (someone else
    recorded it first)."""
    try:
        storage.set_trial_user_attr(trial_id, "ended", "interrupted")
        return storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, KeyError):
        return False


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and re-queue) the trials of dead workers whose grace period has passed (RDB storages), those that
    never beat included; where the storage keeps no heartbeats, those of this machine's dead workers."""
    _fail_stale_by_heartbeat(study)
    _fail_unbeating_trials(study)
    failed = fail_trials_of_gone_local_workers(study)
    if failed:
        _log.warning(f"{gone_workers_text(failed)}: recorded as FAIL (ended: interrupted)")


def fail_trials_of_gone_local_workers(study: optuna.Study) -> list[int]:
    """A storage without heartbeats (a ``search proxy``, a journal file) cannot tell a dead worker's trial from
    a running one, so a worker killed there, or one whose proxy went away, left its trial RUNNING for good. A
    RUNNING trial whose ``worker`` (``HOST:PID``, search/running/objective.py) is a process of this machine that no
    longer runs, or whose id now belongs to a process started after the trial, is failed here with ``ended:
    interrupted`` (so an interrupted warm start is queued again). Another machine's dead worker is seen by the
    next run on that machine. Returns the numbers of the trials failed."""
    rdb = internals.rdb_storage(study)
    if rdb is not None and internals.heartbeat_enabled(rdb):
        return []  # heartbeats say it, for every machine
    from data.processes import alive, started_after

    host, failed = socket.gethostname(), []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
        if worker_host != host or not pid.isdigit() or trial.datetime_start is None:
            continue
        if alive(int(pid)) and not started_after(int(pid), trial.datetime_start.timestamp()):
            continue
        if _record_interrupted(internals.storage_of(study), internals.trial_id(trial)):
            failed.append(trial.number)
    return failed


def gone_workers_text(numbers: list[int]) -> str:
    return (f"trial{'s' if len(numbers) > 1 else ''} {', '.join(f'#{n}' for n in numbers)} of a worker of this "
            "machine that no longer runs")


def _fail_stale_by_heartbeat(study: optuna.Study) -> None:
    with warnings.catch_warnings():  # "experimental" in Optuna 5, used knowingly (as study.optimize does)
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def _fail_unbeating_trials(study: optuna.Study) -> None:
    """Optuna's fail_stale_trials skips a RUNNING trial with no heartbeat at all: a worker killed between
    asking for the trial and its first heartbeat leaves it RUNNING forever, and a run waiting for its
    re-queued copy would wait forever. Such a trial that started more than the grace period ago is
    failed and re-queued here the same way. (A trial asked for by hand, without heartbeats, and running
    longer than the grace period, would be failed too.)"""
    storage = internals.rdb_storage(study)
    if storage is None or not internals.heartbeat_enabled(storage):
        return
    grace = storage.grace_period or 2 * storage.heartbeat_interval
    old = datetime.datetime.now() - datetime.timedelta(seconds=grace)
    running = [t for t in storage.get_all_trials(internals.study_id(study), deepcopy=False,
                                                 states=(TrialState.RUNNING,))
               if t.datetime_start is not None and t.datetime_start < old]
    if not running:
        return
    beating = _beating(storage, [internals.trial_id(t) for t in running])
    callback = storage.get_heartbeat_stale_trial_callback()
    for trial in running:
        trial_id = internals.trial_id(trial)
        if trial_id in beating:
            continue
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker failed (or finished) it first
            continue
        if callback is not None:
            callback(study, storage.get_trial(trial_id))


def _beating(storage: optuna.storages.RDBStorage, trial_ids: list[int]) -> set[int]:
    """Those of ``trial_ids`` that have a heartbeat row."""
    heartbeats = internals.rdb_models().TrialHeartbeatModel
    session = storage.scoped_session()
    try:
        return {trial_id for (trial_id,) in session.query(heartbeats.trial_id)
                .filter(heartbeats.trial_id.in_(trial_ids))}
    finally:
        session.close()
