"""Whether a process is alive, and when it started (psutil): the one place that asks.

A process id can be reused once its process is gone, so a file that records a process (a temporary file's name,
an MPS session's run file) keeps its start time too where that matters (``started``).
"""

from __future__ import annotations

import os

import psutil


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an ended child not yet reaped). Another user's process
    counts as alive; so does a number that cannot be a process id (leave what it names alone)."""
    if pid == os.getpid() or not 0 < pid < 2**31:
        return True
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


def started(pid: int) -> str:
    """A process's start time, as text (for a file that must name this process and no later one with its id);
    "" for no such process."""
    try:
        return repr(psutil.Process(pid).create_time())
    except (psutil.Error, OverflowError, ValueError):
        return ""


def started_after(pid: int, when: float) -> bool:
    """Whether process ``pid`` started after ``when`` (seconds since the epoch): then it is not the process that
    was given that id before ``when``. False for no such process or one that cannot be asked."""
    try:
        return psutil.Process(pid).create_time() > when + 1.0  # create_time is rounded to clock ticks
    except (psutil.Error, OverflowError, ValueError):
        return False
