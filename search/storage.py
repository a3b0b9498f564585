"""Storage URLs -> Optuna storages, made safe for several workers.

- ``sqlite:///studies/hw04.db`` (default): one machine. WAL journal and a long busy timeout so several
  processes on one file wait for each other instead of failing with "database is locked".
- ``postgresql://...``, ``mysql+pymysql://...``: many workers on many machines.
- ``journal:///path/to/file.log`` (or any path ending in ``.log``): Optuna's journal file storage.

RDB storages get heartbeats: a worker that dies mid-trial stops beating, and after the grace period the
next worker to ask for a trial marks it FAIL and re-queues its parameters
(``RetryHeartbeatStaleTrialCallback``), so no trial stays RUNNING forever.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from search.errors import UserError

# Heartbeats and the retry callback are marked experimental in Optuna 5; we rely on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
GRACE_PERIOD = 30  # seconds without a heartbeat before a trial counts as dead
MAX_RETRY = 3  # times a dead trial's parameters are run again


def default_url(study: str) -> str:
    return f"sqlite:///studies/{study}.db"


def redact(url: str) -> str:
    """The URL with any password replaced, for messages and logs."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fewer fsyncs per write
    cursor.close()


def open_storage(url: str, heartbeat_interval: int | None = HEARTBEAT_INTERVAL,
                 grace_period: int | None = GRACE_PERIOD) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage at ``url``; a one-line UserError if that fails."""
    if url.startswith("journal:///") or ("://" not in url and url.endswith(".log")):
        # Like sqlite URLs: journal:///studies/hw04.log is relative, journal:////tmp/hw04.log absolute.
        path = Path(url.removeprefix("journal:///"))
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as err:
            raise UserError(f"--storage {url}: cannot open the journal file ({err.strerror})") from None
    try:
        sqlalchemy.engine.make_url(url)
    except sqlalchemy.exc.ArgumentError:
        raise UserError(f"--storage {redact(url)}: not a storage URL (e.g. sqlite:///studies/hw04.db, "
                        "postgresql://user@host/db, mysql+pymysql://user@host/db)") from None
    engine_kwargs: dict = {}
    if url.startswith("sqlite:"):
        database = sqlalchemy.engine.make_url(url).database
        if database and database != ":memory:":
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UserError(f"--storage {url}: cannot create {Path(database).parent} ({err.strerror})") from None
        engine_kwargs["connect_args"] = {"timeout": 120}  # seconds a writer waits for the lock
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY) if heartbeat_interval else None
    try:
        storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval,
                             grace_period=grace_period, heartbeat_stale_trial_callback=retry)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0]
        raise UserError(f"--storage {redact(url)}: cannot open the storage ({redact(reason)[:200]})") from None
    if url.startswith("sqlite:"):
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        with storage.engine.connect() as connection:  # WAL is a property of the file: set it now
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return storage
