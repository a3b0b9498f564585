"""``search run``: create or resume a study and run trials on it, in this process or in worker processes.

``run_search(request)`` works in this order, so that a mistake costs nothing:

1. Check the options: trials or a timeout, the budget, the device, the worker plan, the storage URL.
2. Read the study's stored settings, if the study exists, and merge the request with them
   (``RequestedSettings.resolve``): a resumed study keeps its data, budget, seed, space and pruning
   choice unless they are given, and a given one that differs is refused, before any data is generated,
   packed or loaded.
3. Prepare the data once, here (the workers then find its feature bank ready).
4. Create the study (enqueueing the warm start) or open it.
5. Run the plan (``search.running.workers.worker_devices``): one job runs in this process, several run as
   worker processes sharing the run's trials.
6. Print the best trial and what to do next.

SIGINT (Ctrl-C) and SIGTERM end the running trial(s) as FAIL (``ended: interrupted``); the run then prints
the study's summary and the exact command that resumes it, and exits with 130 (SIGINT) or 143 (SIGTERM).
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import dataclass, field

from search.errors import Stopped, UserError
from search.files import folder_kept_if, study_folder
from search.reporting.logs import Progress, progress_interval
from search.running.runner import fail_trials_of_gone_local_workers, gone_workers_text
from search.running.schedule import rung_steps
from search.running.settings import EVALUATIONS_PER_TRIAL, RequestedSettings, StudySettings
from search.processes.signals import interrupts, signal_name, signal_of
from search.db.storage import check_url, default_url, redact_url
from search.running.study import open_study, requeue_interrupted_warm_starts, stored_settings, with_space
from search.running.user_space import SpaceRequest, describe


@dataclass
class RunRequest:
    """What ``search run`` was asked to do; ``settings`` holds what the study keeps (None: not given)."""

    study_name: str
    trials: int | None = None  # None: until the timeout (or the total)
    timeout: float | None = None
    total_trials: int | None = None  # --total-trials: stop taking trials once the study holds this many
    storage: str | None = None  # None: storage.default_url
    settings: RequestedSettings = field(default_factory=RequestedSettings)
    space: SpaceRequest = field(default_factory=SpaceRequest)  # a space file, --set, --range (a new study's)
    device: str = "auto"
    warm_start: bool = True
    fail_fast: bool = False
    workers: int = 1
    gpus: str | None = None
    workers_per_gpu: int = 1
    mps: bool = True  # --mps/--no-mps: NVIDIA MPS for workers sharing a GPU (search/processes/mps.py)
    quiet: bool = False


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _stored(name: str, url: str, storage: str | None, echo) -> StudySettings | None:
    """The study's stored settings (``stored_settings``); None for a new study, and then, where the storage holds
    others, the run's first line says so (``creating new study 'hw4' (existing: hw04)``): a typo shows before any
    work."""
    from search.db.catalog import existing_others, is_default, others_text

    stored = stored_settings(name, url)
    others = existing_others(name, url, is_default(storage)) if stored is None else []
    if others:
        echo(f"creating new study {name!r} (existing: {others_text(others)})")
    return stored


def _check_request(request: RunRequest) -> None:
    """The request's own errors, one line each, before any work."""
    if request.trials is None and request.timeout is None and request.total_trials is None:
        raise UserError("--trials: give the number of trials to add, --timeout SECONDS to run trials until then, "
                        "or --total-trials N to run them until the study holds N")
    progress_interval()  # a bad $SEARCH_PROGRESS_INTERVAL fails now
    budget = request.settings.budget
    if budget is not None and budget < EVALUATIONS_PER_TRIAL:
        raise UserError(f"--budget {budget}: too small to evaluate a trial; use at least {EVALUATIONS_PER_TRIAL} steps")


def run_search(request: RunRequest) -> None:
    """Run ``request``; prints progress and a summary. Raises UserError (one line) on bad input, a failed
    worker or a ``--fail-fast`` trial, and ``Stopped`` after a signal (see the module's docstring)."""
    import torch

    from search.reporting.logs import open_console
    from search.running.task import resolve_device
    from search.running.workers import WorkerJob, worker_devices

    name, trials, timeout = request.study_name, request.trials, request.timeout
    _check_request(request)
    torch_device = resolve_device(request.device)
    devices = worker_devices(request.gpus, request.workers_per_gpu, request.workers, torch_device,
                             torch.cuda.device_count())
    devices = devices[:trials]  # fewer trials than workers: no idle worker is started (None: all of them)
    url = request.storage or default_url(name)
    check_url(url)
    requested = with_space(request.settings, request.space, name, url, torch_device.type)  # before any write
    folder_existed, state = study_folder(name).exists(), {"study": None, "started": None}
    echo = open_console(name, request.quiet)  # prints, and appends to studies/<study>/search.log
    progress = Progress(trials, echo.progress, timeout)  # a line per trial, with an ETA
    try:  # interrupts: SIGINT / SIGTERM end the running trial(s) as FAIL, not left RUNNING; a refused new study: no folder
        with interrupts(), folder_kept_if(study_folder(name), folder_existed, lambda: state["study"] is not None,
                                          echo.close):
            settings = requested.resolve(name, _stored(name, url, request.storage, echo), torch_device.type)
            jobs = [WorkerJob(i, name, url, settings, device, timeout=timeout, fail_fast=request.fail_fast)
                    for i, device in enumerate(devices)]
            fingerprint = _prepare_data(jobs, echo.data_progress)
            skipped: list[str] = []  # warm starts the user's space leaves out
            study, settings, created = open_study(name, url, settings, request.warm_start, report=skipped.append)
            state["study"] = study
            check_same_data(study, settings, fingerprint)
            if not created:
                gone = fail_trials_of_gone_local_workers(study)  # a storage without heartbeats: they stayed RUNNING
                if gone:
                    echo(f"{gone_workers_text(gone)}, left RUNNING: recorded as FAIL (ended: interrupted)")
            retried = [] if created else requeue_interrupted_warm_starts(study)
            before = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
            echo(f"{'created' if created else 'resuming'} study {name!r} in {redact_url(url)} "
                 f"({_plural(before, 'finished trial')} so far); {_plural(trials, 'trial') if trials else 'trials'} of "
                 f"{settings.budget} steps{'' if trials or timeout is None else f' until {timeout:g}s have passed'} on "
                 f"{', '.join(dict.fromkeys(devices))}, space {settings.profile}{_changes(settings)}, data "
                 f"{settings.data}" + ("" if settings.pruning else ", pruning off"))
            for line in skipped + [f"warm start {label!r} (trial #{n}) was interrupted: queued again" for label, n in retried]:
                echo(line)
            state["started"] = time.monotonic()
            progress.start(settings.budget, rung_steps(study.pruner, settings.budget) or [])
            report = _run_jobs(study, jobs, trials, echo, progress, request.mps, request.total_trials)
    except KeyboardInterrupt as interrupt:
        _stopped(request, url, interrupt, progress, state, echo)
    for line in _summary(study, url, request):
        echo(line)
    if progress.failed and echo.handler is not None:
        echo(f"{_plural(progress.failed, 'trial')} failed in this run (why: on its line above); the "
             f"traceback{'s are' if progress.failed > 1 else ' is'} in {echo.path}")
    if report is not None:
        raise UserError("; ".join(o.describe() for o in report.failed)
                        + f"; {report.finished} of {trials or 'the'} trials finished")


def _changes(settings) -> str:
    """The user's changes to the space's profile, for the run's first line (none: nothing)."""
    return f" ({describe(settings.space)})" if settings.space else ""


def _prepare_data(jobs, progress) -> None:
    """Validate the data and build its feature bank once, here: in this process's task when it trains
    itself (``load_task`` keeps it for the run), else only the bank (each worker loads its own task)."""
    from search.running.task import load_task, prepare_bank, use_device

    job = jobs[0]
    if len(jobs) == 1:
        return load_task(job.data_dir, job.settings.seed, use_device(job.device), progress=progress).bank.fingerprint
    return prepare_bank(job.data_dir, progress=progress).fingerprint


DATA_FINGERPRINT = "data_fingerprint"  # the study's user attribute: the fingerprint of the data its trials saw


def check_same_data(study, settings, fingerprint: str) -> None:
    """A study remembers the fingerprint of its data (data/bank.py ``fingerprint``: the json files and a sample of
    every feature file); a run on data that changed since (the folder regenerated, other files in its place) is
    refused: its trials would be ranked against trials of other data, without a word. A study made before
    fingerprints were kept takes the data's now."""
    saved = study.user_attrs.get(DATA_FINGERPRINT)
    if saved is None:
        study.set_user_attr(DATA_FINGERPRINT, fingerprint)
    elif fingerprint and saved != fingerprint:
        raise UserError(f"data {settings.data}: changed since study {study.study_name!r} ran on it (fingerprint "
                        f"{saved}, now {fingerprint}): its trials were trained on other data; run on a new study "
                        f"(--study {study.study_name}-2, say) or put the study's data back")


def _run_jobs(study, jobs, trials, echo, progress, mps: bool = True, total_trials: int | None = None):
    """Run the plan: its one job here, or every job in its own process, sharing one target (with
    ``total_trials``, at most that: the study-wide cap). Returns the workers' report when some failed, else None."""
    from search.training.train import report_progress
    from search.running.target import run_target, trial_count
    from search.running.workers import run_job, run_workers

    target = None if len(jobs) == 1 and total_trials is None else run_target(study, trials)
    if total_trials is not None:
        target = total_trials if target is None else min(target, total_trials)
        held = trial_count(study)[0]
        echo(f"--total-trials {total_trials}: the study holds {_plural(held, 'counted trial')}; "
             + ("no trial to start" if held >= total_trials else f"trials are taken until it holds {total_trials} "
                "(runs on other machines count too)"))
        if progress.total is None:  # this run's share, at most: the ETA's reckoning
            progress.total = max(0, total_trials - held)
    if len(jobs) == 1:
        jobs[0].n_trials = trials if target is None else None  # None: until --timeout (or the target)
        jobs[0].target = target
        with report_progress(progress.in_trial, progress_interval()):  # a line every 10 s while a trial trains
            run_job(jobs[0], progress, study, on_start=progress.trial_started)
        return None
    for job in jobs:
        job.target = target
    devices = [job.device for job in jobs]
    timeout = jobs[0].timeout
    echo((f"{_plural(trials, 'trial')} shared by " if trials else
          f"trials until {timeout:g}s have passed on " if timeout is not None else "trials shared by ")
         + f"{len(devices)} worker process{'' if len(devices) == 1 else 'es'} ({', '.join(devices)})")
    from search.processes.mps import gpu_sharing

    # Workers sharing a GPU run side by side under MPS instead of taking turns; the daemon's environment is
    # inherited by the workers and it is stopped on exit, Ctrl-C or failure (None: no GPU has two workers).
    with gpu_sharing(devices, enabled=mps) as mps_status:
        if mps_status:
            echo(mps_status)
        report = run_workers(study, jobs, echo.progress, progress)
    return report if report.failed else None


def _summary(study, url: str, request: RunRequest) -> list[str]:
    """The end of a run: the best trial, its score in context, where the study is and what comes next."""
    from search.reporting.inspection import reference_note
    from search.reporting.queries import best_or_none

    best = best_or_none(study)
    if best is None:
        lines = ["no trial completed."]
    else:
        note = reference_note(study, best)
        lines = [f"best trial #{best.number}: valid accuracy {best.value:.4f}" + (f" ({note})" if note else ""),
                 "  " + json.dumps(best.params)]
    for t in study.get_trials(deepcopy=False):  # warm starts run again after an interrupt: which, and how it went
        if t.user_attrs.get("warm_start") and t.user_attrs.get("retry_of") is not None:
            how = (f"valid accuracy {t.value:.4f}" if t.value is not None and t.state.name == "COMPLETE"
                   else t.user_attrs.get("ended", t.state.name.lower()))
            lines.append(f"warm start {t.user_attrs['warm_start']!r}: trial #{t.number}, the retry of interrupted "
                         f"trial #{t.user_attrs['retry_of']}: {how}")
    # Shell words, quoted as the resume line is (shlex): a study name or data path with a space, a quote or a
    # ';' is pasted back as one word, never run as a second command.
    words = ["--study", study.study_name] + (["--storage", redact_url(url)] if request.storage else [])
    flags = " " + shlex.join(words)
    data = request.settings.data
    return lines + [f"study stored in {redact_url(url)}",
                    f"next: search dashboard{flags}    |    search finalize best{flags}"
                    + (f" --data {shlex.quote(str(data))}" if data else "")]


def _stopped(request: RunRequest, url: str, interrupt: KeyboardInterrupt, progress: Progress, state: dict,
             echo) -> None:
    """After SIGINT or SIGTERM: what the run did, the study's summary and the command that resumes it;
    then ``Stopped`` (exit 128 + the signal)."""
    from search.reporting.report import counts_line

    sig, what = signal_of(interrupt), signal_name(interrupt)
    total = f" of {request.trials}" if request.trials else ""
    echo(f"interrupted by {what}: {progress.done}{total} trials of this run finished; any trial that was running "
         "ended FAIL (ended: interrupted)")
    study = state["study"]
    if study is not None:
        echo(f"study {study.study_name!r}: {counts_line(study)}")
        for line in _summary(study, url, request)[:-1]:  # all but "next:": the resume command instead
            echo(line)
    else:
        echo(f"study {request.study_name!r}: not created yet (stopped while preparing)")
    elapsed = 0.0 if state["started"] is None else time.monotonic() - state["started"]
    echo("resume: " + resume_command(request, study is not None, progress.done, elapsed))
    raise Stopped(f"search run: stopped by {what} (a running trial ended FAIL, ended: interrupted)",
                  128 + sig) from None


def resume_command(request: RunRequest, study_exists: bool, done: int, elapsed: float) -> str:
    """The ``search run`` that carries on where ``request`` stopped: the trials (and seconds) left, and the
    options the study does not remember (all of them, if the study was not created yet)."""
    words = ["search", "run", "--study", request.study_name]
    if request.storage:
        words += ["--storage", redact_url(request.storage)]
    if request.trials is not None:
        words += ["--trials", str(max(1, request.trials - done))]
    if request.total_trials is not None:  # study-wide: the same cap
        words += ["--total-trials", str(request.total_trials)]
    if request.timeout is not None:
        words += ["--timeout", f"{max(1.0, request.timeout - elapsed):.0f}"]
    given = request.settings
    if not study_exists:  # nothing is remembered yet: the settings as given
        for option, value in (("--data", given.data), ("--budget", given.budget), ("--seed", given.seed),
                              ("--space", None if request.space.file else given.profile)):
            if value is not None and value != "embedded":
                words += [option, str(value)]
        if request.space.file is not None:
            words += ["--space", str(request.space.file)]
        words += [w for text in request.space.sets for w in ("--set", text)]
        words += [w for text in request.space.ranges for w in ("--range", text)]
        if given.pruning is not None:
            words.append("--pruning" if given.pruning else "--no-pruning")
        if not request.warm_start:
            words.append("--no-warm-start")
    if request.device != "auto":
        words += ["--device", request.device]
    if request.workers > 1:
        words += ["--workers", str(request.workers)]
    if request.gpus is not None:
        words += ["--gpus", request.gpus]
    if request.workers_per_gpu > 1:
        words += ["--workers-per-gpu", str(request.workers_per_gpu)]
    if not request.mps:
        words.append("--no-mps")
    words += ["--fail-fast"] * request.fail_fast + ["--quiet"] * request.quiet
    return shlex.join(words)
