"""Several worker processes on one study: ``search run --workers N``.

The parent creates (or resumes) the study first, so the warm-start trials are enqueued once and the
data's feature-bank cache is built once; then it starts N processes with the ``spawn`` start method.
Each worker loads the task itself, opens the storage itself (its own connections, its own heartbeat
thread), opens the study with its own sampler (seeded per trial number: search/running/sampler.py TrialSeededTPESampler) and takes trials
from one study-wide count until the run's ``--trials`` are all taken (search/running/target.py ``SharedTarget``): a fast worker
takes more, and the trials a dead worker would have run are run by the others. Workers on other
machines are the same thing started by hand: ``search run --storage postgresql://... --study NAME`` on
each machine. A run without workers is the plan's one-job case: ``run_job`` in the run's own process.

On GPUs (``--gpus [all|LIST] [--workers-per-gpu K]``), ``worker_devices`` plans one worker per selected
GPU, K times over, interleaved; a worker on ``cuda:i`` makes GPU i its current device before it loads
anything, so its CUDA context lives on that GPU only.

Each worker reports every finished trial to the parent through its own pipe; the parent prints the
progress lines and waits. A worker that dies (killed, out of host memory, a crash in native code)
closes its pipe: the parent notices at once, reports it and goes on waiting for the others; it never
hangs on a dead worker. The trial the dead worker was running is failed and re-queued by the next
worker that asks for a trial once the grace period has passed (heartbeats, RDB storages only).
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import optuna

from search.db import optuna_internals as internals
from search.errors import UserError
from search.processes.cores import usable_cores
from search.reporting.logs import Progress
from search.running.runner import run_trials
from search.running.settings import StudySettings
from search.db.storage import redact
from search.running.study import open_study
from search.running.target import SharedTarget, study_lock_path

if TYPE_CHECKING:
    import torch

STOP_GRACE = 30  # seconds workers get to finish the trial they are in after an interrupt, before SIGKILL


def worker_devices(gpus: str | None, workers_per_gpu: int, workers: int, device: str | torch.device,
                   visible_gpus: int) -> list[str]:
    """The device of each worker of ``search run``, one string per worker process (pure: no CUDA calls).

    ``gpus`` is ``--gpus`` (None: not given; ``"all"``: every visible GPU; ``"0,2"``: those CUDA indices),
    ``workers_per_gpu`` is ``--workers-per-gpu`` (K), ``workers`` is ``--workers``, ``device`` the device
    ``--device`` resolved to and ``visible_gpus`` ``torch.cuda.device_count()``. With GPUs, the list is
    interleaved (``cuda:0, cuda:1, cuda:0, cuda:1``) so that the first workers, the only ones started
    when there are fewer trials than workers, spread over the GPUs.
    Raises UserError, naming the option, on a combination that makes no sense.
    """
    device = str(device)
    if workers > 1 and (gpus is not None or workers_per_gpu > 1):
        raise UserError("--workers cannot be combined with --gpus/--workers-per-gpu: "
                        "the worker count is GPUs x K")
    if gpus is None:
        if workers_per_gpu > 1:
            if not device.startswith("cuda"):
                raise UserError(f"--workers-per-gpu: no GPU here (device {device}); "
                                f"use --workers for CPU processes")
            return [device] * workers_per_gpu
        return [device] * workers
    indices = _parse_gpus(gpus, visible_gpus)
    if not device.startswith("cuda"):
        raise UserError(f"--gpus cannot be combined with --device {device}: drop one of them")
    return [f"cuda:{i}" for _ in range(workers_per_gpu) for i in indices]


def _parse_gpus(gpus: str, visible_gpus: int) -> list[int]:
    """``--gpus all`` or a comma-separated list of distinct CUDA indices below ``visible_gpus``."""
    if gpus.strip().lower() == "all":
        indices = None
    else:
        parts = [p.strip() for p in gpus.split(",")]
        if any(not p.isdigit() or not p.isascii() for p in parts):
            raise UserError(f"--gpus {gpus!r}: not a list of GPU indices; give all, or indices like 0,2")
        indices = [int(p) for p in parts]
        repeated = sorted({i for i in indices if indices.count(i) > 1})
        if repeated:
            raise UserError(f"--gpus {gpus}: GPU {', '.join(map(str, repeated))} given more than once; "
                            f"use --workers-per-gpu for several workers on one GPU")
    if visible_gpus < 1:
        raise UserError("--gpus: no GPU visible on this machine (torch.cuda.device_count() is 0); "
                        "use --workers for CPU processes")
    if indices is None:
        return list(range(visible_gpus))
    missing = [i for i in indices if i >= visible_gpus]
    if missing:
        raise UserError(f"--gpus {gpus}: no GPU {', '.join(map(str, missing))}; this machine sees {visible_gpus} "
                        f"GPU{'s' if visible_gpus > 1 else ''} "
                        f"({'0' if visible_gpus == 1 else f'0-{visible_gpus - 1}'})")
    return indices


@dataclass
class WorkerJob:
    """Everything a worker needs, picklable (a spawned process starts from nothing). The one job of a
    run without workers runs in the run's own process (``run_job``), ``n_trials`` trials of its own."""

    index: int
    study_name: str
    url: str
    settings: StudySettings  # the study's (search/running/settings.py RequestedSettings.resolve)
    device: str
    target: int | None = None  # take trials until the study's count reaches this (run_target); None: no target
    n_trials: int | None = None  # or run this many trials (None: until the timeout, or the target)
    timeout: float | None = None
    fail_fast: bool = False
    parent_pid: int = field(default_factory=os.getpid)  # the worker stops when this process dies

    @property
    def data_dir(self) -> str | None:
        return None if self.settings.data == "embedded" else self.settings.data


def run_job(job: WorkerJob, on_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None],
            study: optuna.Study | None = None, on_start: Callable[[dict], None] | None = None) -> None:
    """Run a job's trials in this process: on its device, on the study (``study``: the caller's handle,
    already opened for worker ``job.index``), sharing the run's target with the other workers if it has one."""
    from search.running.task import load_task, use_device

    task = load_task(job.data_dir, job.settings.seed, use_device(job.device))
    if study is None:
        study = open_study(job.study_name, job.url, job.settings, warm_start=False)[0]
    gate = None if job.target is None else SharedTarget(job.target, study_lock_path(job.url, job.study_name),
                                                        job.timeout)
    run_trials(study, job.settings, task, job.n_trials, timeout=job.timeout, fail_fast=job.fail_fast,
               on_trial=on_trial, gate=gate, on_start=on_start)


@dataclass
class WorkerOutcome:
    index: int
    finished: int = 0  # trials this worker finished (complete, pruned or failed)
    exitcode: int | None = None
    error: str | None = None  # why it stopped early, if it did

    def describe(self) -> str:
        if self.error:
            reason = self.error
        elif self.exitcode is not None and self.exitcode < 0:
            try:
                reason = f"killed by {signal.Signals(-self.exitcode).name}"
            except ValueError:
                reason = f"killed by signal {-self.exitcode}"
        else:
            reason = f"exited with code {self.exitcode}"
        return f"worker {self.index} stopped after {self.finished} trials ({reason})"


@dataclass
class WorkersReport:
    outcomes: list[WorkerOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[WorkerOutcome]:
        return [o for o in self.outcomes if o.error or o.exitcode != 0]

    @property
    def finished(self) -> int:
        return sum(o.finished for o in self.outcomes)


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def stop_with_parent(parent_pid: int) -> None:
    """Workers stop with their parent: on Linux the kernel sends SIGTERM when the parent dies (even by
    SIGKILL), which ends the running trial as FAIL (``ended: interrupted``) and exits, instead of running on
    unseen and dying on a broken pipe. Elsewhere a thread watches the parent and does the same."""
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0:
                if os.getppid() != parent_pid:  # the parent died before the prctl: too late for the signal
                    os.kill(os.getpid(), signal.SIGTERM)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _send(conn, message) -> None:
    """Tell the parent; a parent that is gone (its pipe broken) is not an error of this worker."""
    try:
        conn.send(message)
    except (BrokenPipeError, EOFError, OSError):
        pass


def _worker_main(job: WorkerJob, conn, cpu_threads: int) -> None:
    """Body of one worker process. Sends ("start", info) as a trial starts, ("trial", trial_id) per finished trial,
    ("step", info) every ~10 s while a trial trains, then ("done", None) or ("error", message); the exit code says the rest."""
    import torch

    from data.errors import DataError
    from search.processes.signals import interrupt_once
    from search.reporting.logs import attach_log_file, log_path, optuna_console_one_line

    # The first SIGINT (a terminal's Ctrl-C reaches every worker) or SIGTERM (the parent stopping the workers,
    # a batch system's kill, the kernel when the parent dies) ends the trial in progress: Optuna records it as
    # FAIL instead of leaving it RUNNING, and a second signal cannot cut that short.
    interrupt_once()  # for the life of this process
    stop_with_parent(job.parent_pid)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Optuna's warnings (a failed trial's traceback) into the study's log file, one line each on stderr
    log_file = log_path(job.study_name)
    optuna_console_one_line(log_file if attach_log_file(log_file) else None)
    if job.device == "cpu":  # N workers on one CPU share its cores instead of each taking all of them
        torch.set_num_threads(cpu_threads)

    def on_trial(_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        _send(conn, ("trial", internals.trial_id(trial)))

    from search.reporting.logs import progress_interval
    from search.training.train import report_progress

    code = 0
    try:
        with report_progress(lambda info: _send(conn, ("step", info)), progress_interval()):  # the parent prints it
            run_job(job, on_trial, on_start=lambda info: _send(conn, ("start", info)))
        _send(conn, ("done", None))
    except (UserError, DataError) as err:
        _send(conn, ("error", redact(str(err))))
        code = 1
    except KeyboardInterrupt:
        _send(conn, ("error", "interrupted"))
        code = 130
    except Exception as err:  # --fail-fast, or the storage failing under the worker
        _send(conn, ("error", redact(f"{type(err).__name__}: {err}".strip().splitlines()[0][:300])))
        code = 1
    finally:
        try:
            conn.close()
        except OSError:
            pass
    sys.exit(code)


def run_workers(study: optuna.Study, jobs: list[WorkerJob], echo: Callable[[str], None],
                progress: Progress) -> WorkersReport:
    """Start one process per job, print a progress line per finished trial (``progress``), wait for all of
    them. The jobs share one target (``run_target``).

    ``study`` is the parent's handle on the same study (for the progress lines). With ``fail_fast``
    jobs, the first worker that stops on a failed trial makes the parent stop the others.
    """
    if not internals.heartbeat_enabled(internals.storage_of(study)):
        echo("note: this storage has no heartbeats (journal): a trial of a worker that is killed stays RUNNING until "
             "a later trial or run on this machine fails it; use sqlite://, postgresql:// or mysql+pymysql:// where workers may be killed")
    context = multiprocessing.get_context("spawn")
    report = WorkersReport([WorkerOutcome(j.index) for j in jobs])
    outcomes = {j.index: o for j, o in zip(jobs, report.outcomes)}
    processes: dict[int, multiprocessing.Process] = {}
    readers: dict = {}
    started = time.perf_counter()
    cpu_threads = max(1, usable_cores() // max(1, len(jobs)))  # the job's cores, not the machine's
    try:
        for job in jobs:
            reader, writer = context.Pipe(duplex=False)
            process = context.Process(target=_worker_main, args=(job, writer, cpu_threads), name=f"search-worker-{job.index}")
            process.start()
            writer.close()  # the worker holds the only write end: its death reads as EOF here
            processes[job.index], readers[reader] = process, job.index
        while readers:
            for reader in multiprocessing.connection.wait(list(readers), timeout=5):
                index = readers[reader]
                try:
                    kind, payload = reader.recv()
                except (EOFError, OSError):
                    del readers[reader]
                    reader.close()
                    continue
                if kind == "trial":
                    outcomes[index].finished += 1
                    progress(study, internals.storage_of(study).get_trial(payload), worker=index)
                elif kind == "start":  # a trial's number, origin and configuration (search/running/objective.py)
                    progress.trial_started(payload, worker=index)
                elif kind == "step":  # a line while the worker's trial trains (search/training/train.py report_progress)
                    progress.in_trial(payload, worker=index)
                elif kind == "error":
                    outcomes[index].error = payload
                    if any(j.fail_fast for j in jobs):
                        _stop(processes, signal.SIGTERM, but=index)
        for index, process in processes.items():
            process.join()
            outcomes[index].exitcode = process.exitcode
    except BaseException:  # Ctrl-C: the workers end their trials as FAIL (not RUNNING), then go
        _join_all(processes, 5)  # a terminal's Ctrl-C reached the workers too
        _stop(processes, signal.SIGTERM)
        _join_all(processes, STOP_GRACE)
        _stop(processes, signal.SIGKILL)
        raise
    report.seconds = time.perf_counter() - started
    return report


def _join_all(processes: dict[int, multiprocessing.Process], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for process in processes.values():
        process.join(max(0.0, deadline - time.monotonic()))


def _stop(processes: dict[int, multiprocessing.Process], sig: signal.Signals, but: int | None = None) -> None:
    for index, process in processes.items():
        if index != but and process.is_alive() and process.pid is not None:
            try:
                os.kill(process.pid, sig)
            except ProcessLookupError:
                pass
