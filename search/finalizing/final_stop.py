"""How a signal ends ``search finalize``: where it stopped, what is kept, and never half of the outputs.

SIGINT (Ctrl-C) and SIGTERM stop the training: the checkpoints written so far stay (they are written atomically,
and the first signal makes the process ignore further ones while it stops), and the command ends with one
``Error:`` line naming the step it stopped at and the step of the checkpoint on disk, and exit code 130 (SIGINT) or
143 (SIGTERM); the same command resumes. A signal that comes once the outputs (model, CSV, config, artifacts)
are being written waits until they all are, and the command ends normally (``outputs_begin``).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from search.training.checkpoints import saved_step
from search.errors import Stopped
from search.processes import signals
from search.processes.signals import interrupt_once, signal_name, signal_of


@dataclass
class _Stop:
    """Where a finalize is (set by ``training_run``), for the line a signal ends it with (``message``)."""

    what: str | None = None  # the training run in progress or the last one done: "trial #4", "member 2/3"
    checkpoint: Path | None = None
    steps: int = 0
    training: bool = False  # inside that run's train(); False: it is done
    after_others: bool = False  # runs trained before it (an ensemble's earlier members) are kept
    holding: ExitStack | None = None  # closed at the end of ``stoppable``: ``outputs_begin``'s hold
    writing: bool = False  # ``outputs_begin`` was called: a signal no longer stops the command

    def message(self, interrupt: KeyboardInterrupt) -> str:
        head = f"search finalize: stopped by {signal_name(signal_of(interrupt))}"
        if self.what is None:
            return f"{head} before training started: run the same command to start again"
        kept = saved_step(self.checkpoint) if self.checkpoint is not None else None  # what is on disk now
        if not self.training:
            return (f"{head} after {self.what} finished training, before the predictions were written; "
                    + (f"its checkpoint at step {kept} is kept: run the same command to finish (it is not "
                       "trained again)" if kept is not None else "run the same command to finish"))
        step = getattr(interrupt, "step", None)  # set by train() (search/training/train.py) when it came in its loop
        head += (f" at step {step} of {self.steps}" if step is not None else "") + f" ({self.what})"
        if kept is not None:
            return f"{head}; the checkpoint at step {kept} is kept: run the same command to resume"
        return (f"{head}; no checkpoint was written yet: run the same command to start it again"
                + (" (what was trained before it is kept)" if self.after_others else ""))


_STOP: ContextVar[_Stop | None] = ContextVar("finalize_stop", default=None)  # set by ``stoppable``


@contextmanager
def training_run(what: str, checkpoint: Path, steps: int, after_others: bool = False) -> Iterator[None]:
    """Around one checkpointed train() of a finalize: a signal inside it is reported as stopping ``what`` at
    its step, with the checkpoint then on disk (``_Stop.message``). Nothing outside ``stoppable``."""
    stop = _STOP.get()
    if stop is None:
        yield
        return
    stop.what, stop.checkpoint, stop.steps, stop.after_others, stop.training = (what, checkpoint, steps, after_others,
                                                                                True)
    yield  # an exception (the signal) leaves ``training`` set: it came inside this run
    stop.training = False


def outputs_begin() -> None:
    """The outputs of a finalize (model, CSV, config, artifacts, the study's record) are written from here on:
    a signal now waits until the end of the command (search/processes/guard.py ``held_signals``), so that none of them is
    half-written or half-uploaded, and the command ends normally, saying so. Nothing outside ``stoppable``."""
    stop = _STOP.get()
    if stop is not None and stop.holding is not None and not stop.writing:
        stop.writing = True
        stop.holding.enter_context(signals.held())


def stoppable(work: Callable[[], None], echo) -> None:
    """Run a finalize's ``work`` so that SIGINT / SIGTERM stop its training (search/processes/guard.py: the first raises,
    later ones are ignored while it stops, so no clean-up is cut short): one Error line naming where it stopped
    and the checkpoint kept, exit 128 + the signal (the CLI's guard turns Stopped into that). Once the outputs
    are being written, a signal waits, and is reported after them."""
    stop = _Stop()
    complete = False
    token = _STOP.set(stop)
    undo = interrupt_once()
    try:
        late = None
        try:
            with ExitStack() as stop.holding:
                work()
                complete = complete_from_here(echo)  # the outputs are complete: no signal ends the command now
        except KeyboardInterrupt as interrupt:
            if not stop.writing:
                message = stop.message(interrupt)  # here: a second signal is still ignored while it reads
                echo.logger.info(message)  # the log file says why the finalize ended too
                raise Stopped(message, 128 + signal_of(interrupt)) from None
            late = interrupt  # after the hold ended: everything was written already
        finally:
            late = signals.take_pending() or late  # also after a failure: no signal is left pending
    finally:
        undo(signals=not complete)
        _STOP.reset(token)
    if late is not None:
        echo(f"{signal_name(signal_of(late))} came while the outputs were being written: they were all written "
             "first, and the finalize is complete")


def complete_from_here(echo) -> bool:
    """Once a finalize's outputs are complete, SIGINT and SIGTERM only say so, until the process ends (exit 0):
    a signal in the command's last moments (closing the log, click's exit) must not make a script take a finished
    finalize for a failed one. True where it could (the ``search`` program's main thread: search/processes/signals.py)."""

    def complete(signum: int) -> None:
        try:
            echo(f"{signal_name(signum)} came after the finalize was complete: its outputs are all written")
        except Exception:  # noqa: BLE001 - the console may be closed already: the exit code says it
            pass

    return signals.hold_until_exit(complete)
