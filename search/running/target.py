"""How many trials a run takes: one study-wide count, shared by the workers of every run on the study.

A run of N trials (``--trials N``) ends when the study holds N more counted trials than when it started
(``run_target``); ``--total-trials`` caps the study itself. Each worker asks ``SharedTarget`` before each trial.
"""

from __future__ import annotations

import os
import tempfile
import time
from contextlib import nullcontext
from typing import Callable

import optuna
from filelock import FileLock
from optuna.trial import TrialState

from search.db import optuna_internals as internals
from search.running.runner import TargetReached, fail_stale_trials

# Which trials count towards a run's target (``run_target``, ``SharedTarget``):
# - COMPLETE, PRUNED and FAIL: a trial of the run that ended, whatever its result. A trial that fails (a
#   diverging configuration, out of memory) is one of the N trials; it is not run again.
# - RUNNING: a trial a worker is running now. Counting it is what keeps K workers from all starting one
#   more trial at the end (the count is checked, and the trial asked for, under one lock).
# - not WAITING: a queued trial (warm start, enqueued by hand, a retry) has not run yet; the workers run
#   it as one of the N when they pop it.
# - not a FAIL that the heartbeat re-queued: a killed worker's trial is failed after the grace period
#   and its parameters re-queued as a new WAITING trial (RetryHeartbeatStaleTrialCallback, which lists
#   the failed numbers in the retry's ``retry_history``); the retry takes its place in the count once a
#   worker runs it, so the killed attempt does not use up one of the N (no undershoot) and the retry is
#   not one too many (no overshoot). After the last retry (storage.MAX_RETRY) nothing is re-queued, and
#   the last FAIL counts.
COUNTED_STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
WAIT_POLL = 1.0  # seconds between looks at the study while the target is reached but trials still run


def trial_count(study: optuna.Study) -> tuple[int, int]:
    """(trials that count towards a run's target, how many of them are RUNNING): see COUNTED_STATES."""
    trials = internals.storage_of(study).get_all_trials(internals.study_id(study), deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", ())}
    counted = [t for t in trials if t.state in COUNTED_STATES and t.number not in retried]
    return len(counted), sum(t.state == TrialState.RUNNING for t in counted)


def run_target(study: optuna.Study, trials: int | None) -> int | None:
    """The count (``trial_count``) at which the study holds this run's ``trials`` new trials: the count
    now plus ``trials``. Dead workers' trials past their grace period are failed and re-queued first, so
    that they don't drop out of the count during the run. None: no target (``--timeout`` alone)."""
    if trials is None:
        return None
    fail_stale_trials(study)
    return trial_count(study)[0] + trials


class SharedTarget:
    """Run by a worker before each trial, around ``study.ask``: take a trial while the study's count
    (``trial_count``) is below ``target``, else raise TargetReached (the worker's run ends).

    Checking the count and asking for the trial happen under one file lock (``study_lock_path``) shared by the
    workers of every run on this machine and study, so two of them cannot both take the last trial. When the target is reached while trials are still
    RUNNING (and the storage has heartbeats), the worker waits instead of leaving: one of them may be a
    dead worker's trial, which the grace period fails and re-queues, and then someone must run it.
    Without heartbeats (journal storage) a dead worker's trial would count as running forever: it leaves.
    """

    def __init__(self, target: int | None, lock_path: str | None = None, timeout: float | None = None) -> None:
        self.target = target
        # the OS releases the lock if this process is killed; None: no lock (a test of one process)
        self.lock = nullcontext() if lock_path is None else FileLock(lock_path)
        self.deadline = None if timeout is None else time.monotonic() + timeout

    def __call__(self, study: optuna.Study, ask: Callable[[], optuna.Trial]) -> optuna.Trial:
        if self.target is None:
            return ask()
        first = True
        while True:
            if not first:  # the runner did it just before the first look
                fail_stale_trials(study)
            first = False
            with self.lock:
                count, running = trial_count(study)
                if count < self.target:
                    return ask()
            if not running or not internals.heartbeat_enabled(internals.storage_of(study)):
                raise TargetReached
            if self.deadline is not None and time.monotonic() >= self.deadline:
                raise TargetReached
            time.sleep(WAIT_POLL)


def study_lock_path(url: str, study_name: str) -> str:
    """A lock file for "count, then ask" (``SharedTarget``) shared by the workers of every ``search run`` on this
    machine on the same study: their trials are taken one at a time, so they stop at their target (or the
    ``--total-trials`` cap) exactly. It stays in the temp folder: removing a lock file that another process may be
    about to open would let two processes hold "the" lock at once.
    Runs on other machines do not share it: each may overshoot the cap by one trial at the very end."""
    import hashlib

    key = hashlib.sha256(f"{url}\0{study_name}".encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"search-study-{key}.lock")
