"""Heartbeats of running trials on an RDB storage: how often a trial beats, and when a silent one counts as dead.

A worker that dies mid-trial stops beating; after the grace period the next worker to ask for a trial marks it
FAIL and re-queues its parameters (search/db/storage.py opens the storage with Optuna's
``RetryHeartbeatStaleTrialCallback``; search/running/runner.py fails them).
"""

from __future__ import annotations

import os

from search.errors import UserError

HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
GRACE_PERIOD = 30  # seconds without a heartbeat before a trial counts as dead
MAX_RETRY = 3  # times a dead trial's parameters are run again
# Overrides (whole seconds), e.g. for tests: SEARCH_HEARTBEAT_INTERVAL=1 SEARCH_GRACE_PERIOD=3.
# Worker processes inherit them from the environment.
HEARTBEAT_ENV, GRACE_ENV = "SEARCH_HEARTBEAT_INTERVAL", "SEARCH_GRACE_PERIOD"

def _seconds_from_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    # bounded above too, as every number a user types (search/commands/base.py Bounded): a day
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 86_400:
        raise UserError(f"{name}={text}: expected a whole number of seconds from 1 to 86,400")
    return int(text)


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: the defaults or the environment's overrides."""
    interval = _seconds_from_env(HEARTBEAT_ENV, HEARTBEAT_INTERVAL)
    grace = _seconds_from_env(GRACE_ENV, max(GRACE_PERIOD, 3 * interval) if HEARTBEAT_ENV in os.environ
                              else GRACE_PERIOD)
    if grace <= interval:
        raise UserError(f"{GRACE_ENV}={grace}: the grace period must be longer than the heartbeat interval "
                        f"({interval} s), or live trials would be taken for dead ones")
    return interval, grace
