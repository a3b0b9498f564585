"""SQLite files as a study storage: which file a URL names, and how its connections are opened.

Several processes (a run's workers) share one file: WAL journal, a long busy timeout and ``BEGIN IMMEDIATE``
transactions, so they wait for each other instead of failing with "database is locked". Commands that write
nothing open the file read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

import sqlalchemy

from search.errors import UserError

BUSY_TIMEOUT = 120  # seconds a SQLite writer waits for another process's lock


def sqlite_path(url: str | None) -> Path | None:
    """The SQLite file a storage URL names (as given: relative to the current folder where the URL is), or None
    for another storage, an in-memory database or a URL that does not parse (search/db/storage.py ``check_url`` names that)."""
    if not url or not url.startswith("sqlite"):
        return None
    try:
        database = sqlalchemy.engine.make_url(url).database
    except Exception:  # noqa: BLE001 - a malformed URL: check_url and open_storage say why
        return None
    return Path(database) if database and database != ":memory:" else None


def engine_kwargs(database: str | None, label: str, create: bool, read_only: bool) -> dict:
    """SQLAlchemy's engine arguments for the SQLite file ``database`` (``label``: how messages name the storage);
    its folder is made where it may be created, a missing file refused where it may not."""
    if not create and database and not Path(database).is_file():
        raise UserError(f"{label}: no such file {database}")
    if database and database != ":memory:":
        try:
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"{label}: cannot create {Path(database).parent} ({err.strerror})") from None
    if read_only:
        return {"creator": _read_only(Path(database))}
    return {"connect_args": {"timeout": BUSY_TIMEOUT}}


def pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # the driver's own implicit BEGIN off: begin_immediate decides
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fewer fsyncs per write
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT * 1000}")
    cursor.close()


def begin_immediate(connection) -> None:
    """Every transaction takes SQLite's write lock up front (waiting up to the busy timeout for it).

    SQLite ignores ``SELECT ... FOR UPDATE``, so without this two workers can both read a WAITING trial
    and both start it; and a deferred transaction that reads, then writes after another process
    committed fails at once with "database is locked" whatever the busy timeout. Serialising the
    (short) transactions of a study's workers costs nothing next to a trial's training time.
    """
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _read_only(path: Path):
    """A connection factory that opens the SQLite file read-only (a URI: ``mode=ro``), for commands that write
    nothing: the file is not switched to WAL and no write lock is taken.

    Where the file or its folder is read-only (no write permission bit, or not writable by this user: chattr +i
    too) and no -wal file holds commits beside it, with ``immutable=1``: SQLite then reads the file as it is,
    without the -wal and -shm files it cannot create there (a WAL file read with ``mode=ro`` needs them).
    Nobody can be writing a read-only file, which is what ``immutable`` assumes. Permission bits are asked
    too, not only access(2): root may write anything. With commits in a -wal file (a writer has it open, or
    was killed), ``immutable`` would not read them: ``mode=ro`` then, which reads them.
    """
    import sqlite3

    absolute = path.resolve()

    def writable(p: Path) -> bool:
        try:
            return bool(p.stat().st_mode & 0o222) and os.access(p, os.W_OK)
        except OSError:
            return False

    wal = absolute.with_name(absolute.name + "-wal")
    pending = wal.is_file() and wal.stat().st_size > 0
    immutable = not pending and not (writable(absolute) and writable(absolute.parent))
    uri = absolute.as_uri() + ("?immutable=1" if immutable else "?mode=ro")
    return lambda: sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT, check_same_thread=False)
