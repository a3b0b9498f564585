"""How SIGINT (Ctrl-C) and SIGTERM stop a command: one state object, ``SIGNALS``, and the functions on it.

``interrupts()`` is what ``search run`` holds while it works (its workers: ``interrupt_once()`` for their whole
life): the first SIGINT raises KeyboardInterrupt, the first SIGTERM ``Terminated`` (a KeyboardInterrupt too);
the trial runner then records the running trial as FAIL (``ended: interrupted``), and a second signal cannot
break that clean-up. ``held()`` defers a signal over a stretch that must not be cut in two (creating a trial,
writing a finalize's outputs); ``raise_pending()`` / ``take_pending()`` deliver it afterwards.
``hold_until_exit(report)``: once a command's outputs are complete, a signal is only reported, and at exit
ignored (the ``search`` program only: ``own_process()``).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

from search.errors import Terminated

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class SignalState:
    """The process's signal state: signals reach the main thread only, so one per process."""

    holding: int = 0  # depth of held() blocks
    pending: int | None = None  # a signal that came while held, not raised yet
    owns_process: bool = False  # set by the ``search`` program itself (search/cli.py), never by an in-process caller
    ignore_at_exit: bool = False  # hold_until_exit registered the exit handler


SIGNALS = SignalState()


def signal_of(interrupt: KeyboardInterrupt) -> signal.Signals:
    """Which signal an interrupt came from: SIGTERM (``Terminated``) or SIGINT (Ctrl-C)."""
    return signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT


def signal_name(interrupt: KeyboardInterrupt | int) -> str:
    """``Ctrl-C`` or ``SIGTERM``, as messages name them (an interrupt, or a signal number)."""
    signum = interrupt if isinstance(interrupt, int) else signal_of(interrupt)
    return "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"


def _interrupt(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _ignore(_signum, _frame) -> None:
    """The handler of SIGINT and SIGTERM after the first of them (``interrupt_once``)."""


def interrupt_once() -> Callable[..., None]:
    """From now on (main thread only), the first SIGINT raises KeyboardInterrupt and the first SIGTERM
    ``Terminated``; after either, both are ignored, so that the clean-up (the running trial recorded as FAIL,
    workers stopping, the summary) is not cut short by a second Ctrl-C or a signal sent to the whole process
    group twice. Returns the undo: ``undo(signals=False)`` leaves the handlers installed since in place."""
    def once(signum, _frame):
        for sig in STOP_SIGNALS:
            # A handler that does nothing, not SIG_IGN: the other signal may already be pending, and CPython
            # reports a pending signal whose handler became SIG_IGN with a traceback ("... race condition").
            signal.signal(sig, _ignore)
        if SIGNALS.holding:  # inside held(): raised later by raise_pending()
            SIGNALS.pending = signum
            return
        raise _interrupt(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, once) for sig in STOP_SIGNALS}

    def undo(signals: bool = True) -> None:
        for sig, handler in previous.items() if signals else ():
            signal.signal(sig, handler)

    return undo


@contextmanager
def interrupts() -> Iterator[None]:
    """``interrupt_once`` while the block runs."""
    undo = interrupt_once()
    try:
        yield
    finally:
        undo()


@contextmanager
def held() -> Iterator[None]:
    """Inside, an ``interrupt_once`` signal is remembered instead of raised; ``raise_pending`` raises it.

    For asking for a trial: it is RUNNING in the storage as soon as it is created, before ``study.ask`` returns
    it; an interrupt in between would leave it RUNNING for good. Held, it is raised where the runner records
    the trial FAIL (``ended: interrupted``)."""
    SIGNALS.holding += 1
    try:
        yield
    finally:
        SIGNALS.holding -= 1


def raise_pending() -> None:
    """Raise the interrupt that came during ``held()``, if one did (and no hold is left)."""
    late = take_pending()
    if late is not None:
        raise late


def take_pending() -> KeyboardInterrupt | None:
    """The interrupt that came during ``held()``, taken (none is left for later code), or None (also while a
    hold is left)."""
    if SIGNALS.pending is None or SIGNALS.holding:
        return None
    signum, SIGNALS.pending = SIGNALS.pending, None
    return _interrupt(signum)


def own_process() -> None:
    """Say that this process is the ``search`` program: a command may then change process-wide signal handling
    for the rest of the process's life (``hold_until_exit``)."""
    SIGNALS.owns_process = True


def owns_process() -> bool:
    return SIGNALS.owns_process


def hold_until_exit(report: Callable[[int], None]) -> bool:
    """From now on SIGINT and SIGTERM only call ``report(signum)``, and at exit they are ignored (Python puts the
    default handlers back while it shuts down); True where that was done. Only in the ``search`` program's main
    thread: in-process callers (CliRunner, a notebook) get their own handlers back when the command returns."""
    if threading.current_thread() is not threading.main_thread() or not SIGNALS.owns_process:
        return False
    for sig in STOP_SIGNALS:
        signal.signal(sig, lambda signum, _frame: report(signum))
    if not SIGNALS.ignore_at_exit:
        import atexit

        atexit.register(_ignore_signals)
        SIGNALS.ignore_at_exit = True
    return True


def _ignore_signals() -> None:
    # Main thread: run the handlers of signals already caught (pthread_sigmask checks for them), then ignore
    # both; a blocked signal stays pending and is dropped once ignored.
    signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
