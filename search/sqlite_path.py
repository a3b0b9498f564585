"""Which SQLite file a storage URL names: the one answer that study.py, storage.py, files.py and inspection.py use."""

from __future__ import annotations

from pathlib import Path


def sqlite_path(url: str | None) -> Path | None:
    """The database file of a ``sqlite:`` URL as SQLAlchemy reads it (relative to the working directory unless
    absolute); None for any other URL, an in-memory database, or a URL SQLAlchemy cannot parse (``open_storage``
    names that problem)."""
    import sqlalchemy

    if not url or not url.startswith("sqlite"):
        return None
    try:
        database = sqlalchemy.engine.make_url(url).database
    except Exception:  # noqa: BLE001 - malformed: the storage's own check says so
        return None
    return Path(database) if database and database != ":memory:" else None
