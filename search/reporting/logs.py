"""What a command prints, and its log file ``studies/<study>/search.log``.

``run`` and ``finalize`` print two kinds of lines:

- summary lines (what was created or resumed, the best trial, where the results are): always printed;
- progress lines (one per finished trial, one per evaluation of ``finalize``, data preparation):
  printed unless ``--quiet``.

Progress lines are printed whether or not the output is a terminal, so a piped or CI log shows them
too; ``--quiet`` is the one switch that silences them. Every line, printed or not, is appended to the
study's log file with a timestamp and the process id (several workers may share one file), as are
Optuna's own warnings; on the console those are one line each (a failed trial's traceback goes to the
log file only: a diverged trial is an ordinary outcome of a search, not a crash).

``Progress`` writes a run's progress lines: one per finished trial, with an ETA, and one every
``progress_interval()`` seconds while a trial trains.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Callable

import click

from search.errors import UserError

LOGGER = "search"
FORMAT = "%(asctime)s %(process)d %(levelname)s %(message)s"


class _Scrubbed(logging.Formatter):
    """Any password seen in a storage URL (e.g. echoed in a driver's error) is written as ``***``."""

    def format(self, record: logging.LogRecord) -> str:
        from search.db.storage import redact

        return redact(super().format(record))


class _FileHandler(logging.FileHandler):
    """A log file that stops quietly when it cannot be written (full disk, file-size limit): one warning
    line on stderr instead of ``logging``'s "--- Logging error ---" traceback for every record."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if getattr(self, "_failed", False):
            return
        self._failed = True
        import sys

        err = sys.exc_info()[1]
        why = getattr(err, "strerror", None) or str(err) or type(err).__name__
        try:
            sys.stderr.write(f"warning: cannot write the log file {self.baseFilename} ({why}); "
                             "logging to it stopped\n")
        except Exception:  # noqa: BLE001 - stderr itself gone: nothing left to tell
            pass

    def emit(self, record: logging.LogRecord) -> None:
        if not getattr(self, "_failed", False):
            super().emit(record)

    def close(self) -> None:
        # FileHandler.close flushes, which raises the same OSError again once the disk is full: the warning
        # was given, the command must not end in an error because of its log.
        try:
            super().close()
        except OSError:
            if not getattr(self, "_failed", False):
                raise


LOG_ONLY = {"console": False}  # ``extra`` of a record for the log file alone (the console says it its own way)


class _WithoutTraceback(logging.Formatter):
    """One console line per record, in this tool's words (``warning: ...``), not Optuna's ``[W <time>] ...``: a
    failed trial's traceback (a diverged trial is an ordinary outcome of a search, not a crash) goes to the log
    file only."""

    def __init__(self, where: str) -> None:
        super().__init__("%(message)s")
        self.where = where

    def format(self, record: logging.LogRecord) -> str:
        from search.db.storage import redact

        level = "warning" if record.levelno < logging.ERROR else "error"
        if not record.exc_info:
            return f"{level}: " + redact(super().format(record))
        bare = logging.makeLogRecord({**record.__dict__, "exc_info": None, "exc_text": None})
        return f"{level}: " + redact(super().format(bare)) + f" (traceback in {self.where})"


def _for_the_console(record: logging.LogRecord) -> bool:
    return getattr(record, "console", True)


def optuna_console_one_line(log_file: Path | None) -> Callable[[], None]:
    """Until the returned undo is called: Optuna's log records as one ``warning:`` line each on stderr (not those
    marked ``LOG_ONLY``), and Python warnings (Optuna's "Fixed parameter ... is out of range", say) as one line,
    without the file and source line Python prints with them."""
    import warnings

    import optuna

    handler = logging.StreamHandler()  # the current sys.stderr (CliRunner's, under test)
    handler.setFormatter(_WithoutTraceback(str(log_file) if log_file else "no log file: it could not be written"))
    handler.addFilter(_for_the_console)
    optuna_logger = logging.getLogger("optuna")
    before = list(optuna_logger.handlers)
    optuna.logging.disable_default_handler()
    optuna_logger.addHandler(handler)
    shown = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None) -> None:
        from search.db.storage import redact

        click.echo(f"warning: {redact(str(message))}", err=True)

    warnings.showwarning = one_line

    def undo() -> None:
        # Put back exactly the handlers that were there, in their order: enable_default_handler() would append
        # Optuna's handler after any added since (a caller's, pytest's), and would add it even where the caller
        # had disabled it. Handlers others added meanwhile stay, after them.
        optuna_logger.removeHandler(handler)
        added = [h for h in optuna_logger.handlers if h not in before]
        optuna_logger.handlers[:] = before + added
        if warnings.showwarning is one_line:
            warnings.showwarning = shown

    return undo


def log_path(study_name: str) -> Path:
    return Path("studies") / study_name / "search.log"


class Console:
    """``console(line)`` prints and logs a summary line; ``console.progress(line)`` logs it and prints it
    unless quiet. ``close()`` detaches the log file (done when the click command ends)."""

    def __init__(self, study_name: str, quiet: bool = False) -> None:
        self.quiet = quiet
        self.path = log_path(study_name)
        self.logger = logging.getLogger(LOGGER)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.handler: logging.Handler | None = None
        self.handler = attach_log_file(self.path, self.logger)
        self.restore_optuna_console = optuna_console_one_line(self.path if self.handler else None)

    def __call__(self, line: str, err: bool = False) -> None:
        self.logger.info(line)
        click.echo(line, err=err)

    def progress(self, line: str, err: bool = False) -> None:
        self.logger.info(line)
        if not self.quiet:
            click.echo(line, err=err)

    def data_progress(self, label: str):
        """A ``progress(done, total)`` callback for data preparation: a line at each tenth, and the end."""
        return throttled(lambda done, total: self.progress(f"{label}: {done}/{total}", err=True))

    def close(self) -> None:
        self.restore_optuna_console()
        self.restore_optuna_console = lambda: None
        if self.handler is not None:
            self.logger.removeHandler(self.handler)
            logging.getLogger("optuna").removeHandler(self.handler)
            self.handler.close()
            self.handler = None


def attach_log_file(path: Path, logger: logging.Logger | None = None) -> logging.Handler | None:
    """Append ``logger``'s lines (if given) and Optuna's to ``path``; None (after one warning line)
    when the file cannot be written: a read-only folder must not stop a search."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = _FileHandler(path, mode="a", encoding="utf-8")
    except OSError as err:
        click.echo(f"warning: cannot write the log file {path} ({err.strerror})", err=True)
        return None
    handler.setFormatter(_Scrubbed(FORMAT))
    if logger is not None:
        logger.addHandler(handler)
    logging.getLogger("optuna").addHandler(handler)
    return handler


def throttled(report):
    """Wrap ``report(done, total)`` so it runs only when ``done`` reaches the next tenth of ``total``."""
    last = {"tenth": -1}

    def progress(done: int, total: int) -> None:
        tenth = 10 * done // max(1, total)
        if tenth != last["tenth"]:
            last["tenth"] = tenth
            report(done, total)
    return progress


def open_console(study_name: str, quiet: bool) -> Console:
    """A Console for the running click command, closed when the command ends (also on errors)."""
    console = Console(study_name, quiet)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(console.close)
        from search.db.storage import redact  # a --storage password must not reach the log file

        console.logger.info(redact(" ".join([ctx.command_path.split(" ", 1)[-1], *_words(ctx)])))
    return console


def _words(ctx: click.Context) -> list[str]:
    """The command's arguments and options as one would type them (defaults included), for the log."""
    words = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False:
            continue
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif value is True and getattr(param, "is_flag", False):
            words.append(param.opts[0])
        else:
            words += [param.opts[0], str(value)]
    return words


def progress_interval() -> float:
    """Seconds between the progress lines printed while a trial or a finalize trains (none for a shorter one):
    10, or ``$SEARCH_PROGRESS_INTERVAL``."""
    try:
        seconds = float(os.environ.get("SEARCH_PROGRESS_INTERVAL", "10"))
    except ValueError:
        raise UserError(f"SEARCH_PROGRESS_INTERVAL={os.environ['SEARCH_PROGRESS_INTERVAL']!r}: not a number of "
                        "seconds") from None
    if not 0 < seconds <= 86_400:  # nan and inf too (bounded, as every number a user types)
        raise UserError(f"SEARCH_PROGRESS_INTERVAL={os.environ['SEARCH_PROGRESS_INTERVAL']!r}: must be above 0 and at "
                        "most 86,400 seconds")
    return seconds


class Progress:
    """Prints a line as each trial starts (its number, where its configuration came from, the configuration), one
    per finished trial (n/N, how it ended, best so far, elapsed time, ETA) and, through ``in_trial``, a line every
    ~10 s while a trial trains (search/training/train.py ``report_progress``), with the trial's number.

    The ETA counts steps, not trials: a trial is expected to run to the pruner's first rung, and past each rung with
    the share of the study's finished trials that went past it so far (Laplace's rule, (passed + 1) / (reached + 2):
    a half before any trial reached it), so a study whose trials are mostly pruned is not reckoned as if each ran its
    budget. The trials left times those expected steps, at the seconds per step this run has taken (start-up and
    validation included); with ``timeout``, at most the time left until then. With worker processes the pace is the
    run's, all workers together."""

    def __init__(self, total: int | None, echo: Callable[[str], None], timeout: float | None = None) -> None:
        self.total, self.echo, self.timeout, self.done = total, echo, timeout, 0  # total None: until the timeout
        self.started = self.trials_started = time.perf_counter()
        self.budget: int | None = None  # steps per trial, and where the pruner decides (``start``)
        self.rungs: list[int] = []
        self.steps_done = 0  # steps trained by the trials this run finished
        self.expected_steps: float | None = None  # per trial still to run, from the study's trials so far
        self.running: dict[int | None, int] = {}  # worker (None: this process) -> the trial it runs
        self.failed = 0  # trials of this run that failed (their tracebacks are in the log file)

    def start(self, budget: int | None = None, rungs: list[int] | None = None) -> None:
        """The trials start now (the data is ready): the pace and the timeout count from here. ``budget``: a
        trial's steps; ``rungs``: the steps where the pruner may stop one (search/running/schedule.py ``rung_steps``)."""
        self.trials_started = time.perf_counter()
        self.budget, self.rungs = budget, sorted(r for r in rungs or [] if budget is None or r < budget)

    def trial_started(self, info: dict, worker: int | None = None) -> None:
        """The line for a trial that starts (search/running/objective.py gives ``info``: number, origin, params)."""
        from search.reporting.formats import config_line

        self.running[worker] = info["number"]
        self.echo(f"#{info['number']} starts ({info['origin']}): {config_line(info['params'])}"
                  + (f"  |  worker {worker}" if worker is not None else ""))

    def eta(self) -> float | None:
        """Seconds until the run is done, or None before a trial finished (no pace yet) without a timeout."""
        elapsed = time.perf_counter() - self.trials_started
        left = []
        if self.total is not None and self.done:
            trials_left = max(0, self.total - self.done)
            if self.expected_steps is not None and self.steps_done > 0:
                left.append(trials_left * self.expected_steps * elapsed / self.steps_done)
            else:  # no steps to count (trials failed before training): the pace per trial
                left.append(elapsed / self.done * trials_left)
        if self.timeout is not None:
            left.append(max(0.0, self.timeout - elapsed))
        return min(left) if left else None

    def expected_trial_steps(self, trials) -> float | None:
        """The steps a trial is expected to train, given the pruner's rungs and how many of the finished
        ``trials`` went past each (None without a budget)."""
        if self.budget is None:
            return None
        ends = [_steps_of(t) for t in trials if t.state.name in ("COMPLETE", "PRUNED")]
        expected, surviving, previous = 0.0, 1.0, 0
        for rung in self.rungs:
            expected += surviving * (rung - previous)
            reached = sum(end >= rung for end in ends)
            passed = sum(end > rung for end in ends)
            surviving *= (passed + 1) / (reached + 2)
            previous = rung
        return expected + surviving * (self.budget - previous)

    def __call__(self, study, trial, worker: int | None = None) -> None:
        """The line for ``trial`` (a FrozenTrial of ``study``) that just ended."""
        from search.reporting.formats import ended_text
        from search.reporting.queries import best_or_none

        self.done += 1
        self.failed += trial.state.name == "FAIL"
        self.steps_done += _steps_of(trial)
        self.running.pop(worker, None)
        trials = study.get_trials(deepcopy=False)
        self.expected_steps = self.expected_trial_steps(trials)
        c = {state: sum(t.state.name == state for t in trials) for state in ("COMPLETE", "PRUNED", "FAIL")}
        best = best_or_none(study)
        if trial.state.name == "COMPLETE":
            value = f"complete acc {trial.value:.4f}"
        else:
            value = ended_text(trial.state.name, trial.user_attrs.get("ended"), trial.value, trial.user_attrs)
        best_text = f"best {best.value:.4f} (#{best.number})" if best else "no complete trial yet"
        eta = self.eta()
        self.echo(f"trial {self.done}{'' if self.total is None else f'/{self.total}'}  #{trial.number} {value}  |  "
                  f"{best_text}  |  complete {c['COMPLETE']} pruned {c['PRUNED']} failed {c['FAIL']}  |  "
                  f"{time.perf_counter() - self.started:.0f}s" + ("" if eta is None else f", ETA {self.format_seconds(eta)}")
                  + (f"  |  worker {worker}" if worker is not None else ""))

    def in_trial(self, info: dict, worker: int | None = None) -> None:
        """A line while a trial trains: its number, its step of the total, speed, best validation accuracy so far,
        and the time the trial has left at that speed (search/training/train.py ``report_progress`` gives ``info``)."""
        left = self.format_seconds(self.training_left(info))
        number = self.running.get(worker)
        self.echo(f"  {'' if number is None else f'#{number} '}training: {self.training_text(info)}  |  "
                  f"trial ends in ~{left}" + (f"  |  worker {worker}" if worker is not None else ""))

    @staticmethod
    def training_text(info: dict) -> str:
        """``step 1200/2000  850.3 steps/s  valid acc so far 0.4213`` (or ``no validation yet``): how a training
        stands, from search/training/train.py ``report_progress``'s ``info`` (trials' lines here, finalize's too)."""
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
        """``42s``, ``3m05s``, ``2h07m``: an ETA at a glance (search/reporting/formats.py)."""
        from search.reporting.formats import duration_text

        return duration_text(seconds)


def _steps_of(trial) -> int:
    """The steps a finished trial trained: its last validation's step (0 for one that failed before any)."""
    step = trial.user_attrs.get("last_step")
    if not isinstance(step, int):
        step = max(trial.intermediate_values, default=0)
    return step
