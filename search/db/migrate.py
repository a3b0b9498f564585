"""``search migrate``: the per-study SQLite files of earlier versions, ``studies/<study>.db``, moved into one
storage (the folder's shared file, ``studies/studies.sqlite3``, by default), with nothing lost.

Each study is copied with Optuna's ``copy_study``, and the copy is compared with the original (every trial's
number, state, values, parameters, intermediate values and attributes, and the study's attributes); only once
every study of a file is copied and checked is the old file renamed ``<study>.db.migrated`` (kept: removing it is
the user's choice). Until then the old file is the study's storage (``storage.default_url`` opens it first), so a
migrate killed halfway leaves every study where commands find it. A marker, ``studies/.migrating-<study>``, says a
copy was begun: a rerun replaces such a partial copy and finishes; a study of the same name that no migrate made
is left alone.
"""

from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Callable

import optuna
from optuna.trial import TrialState

from search.db.catalog import old_study_files
from search.errors import NoStudyStorage, UserError
from search.db.sqlite import BUSY_TIMEOUT, sqlite_path
from search.db.storage import open_storage, redact_url

FOLDER = Path("studies")


def migrate(target: str, echo: Callable[[str], None]) -> int:
    """Move every study of the old per-study files into the storage at ``target``; returns how many studies are
    now there (moved now or by an earlier, interrupted migrate). One line per study and per file to ``echo``."""
    files = old_study_files(FOLDER)
    if not files:
        echo(f"no per-study file of an earlier version (studies/<study>.db) in {FOLDER}/: nothing to move")
        return 0
    path = sqlite_path(target)
    if path is not None and path.resolve() in {f.resolve() for f in files}:
        raise UserError(f"--storage {redact_url(target)}: is one of the per-study files to move; name the storage "
                        "they move into (default: sqlite:///studies/studies.sqlite3)")
    destination = open_storage(target, heartbeat_interval=None)
    return sum(_migrate_file(f, destination, target, echo) for f in files)


def _migrate_file(path: Path, destination, target: str, echo: Callable[[str], None]) -> int:
    """Move the studies of one old file; the file is renamed once all of them are in ``destination``."""
    try:
        source = open_storage(f"sqlite:///{path.as_posix()}", read_only=True)
    except NoStudyStorage:
        echo(f"{path}: holds no study (no Optuna tables): left as it is")
        return 0
    except UserError as err:
        echo(f"{path}: left as it is: {err}")
        return 0
    names = [s.study_name for s in source.get_all_studies()]
    moved = [name for name in names if _move_study(name, source, path, destination, target, echo)]
    source.engine.dispose()  # closed before the rename: no connection holds the old name
    if len(moved) == len(names):
        kept = _rename(path)
        for name in moved:
            _marker(name).unlink(missing_ok=True)
        echo(f"{path}: {_plural(len(moved), 'study')} moved; the old file is kept as {kept} (remove it when you like)")
    return len(moved)


def _move_study(name: str, source, path: Path, destination, target: str, echo: Callable[[str], None]) -> bool:
    """Copy study ``name`` into ``destination`` and check the copy; False (and a line why) where it stays put."""
    original = optuna.load_study(study_name=name, storage=source)
    running = [t.number for t in original.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    if running:
        echo(f"{path}: study {name!r} left as it is: trial #{running[0]} is running (a `search run` on it?); run "
             f"`search migrate` again once it has ended (a killed run's trial: `search run --study {name}` "
             "records it as FAIL)")
        return False
    where = redact_url(target)
    marker = _marker(name)
    if name in {s.study_name for s in destination.get_all_studies()}:
        if _same(original, optuna.load_study(study_name=name, storage=destination)):
            return True  # copied and checked by a migrate that stopped before the rename
        if not (marker.is_file() and marker.read_text() == _key(target)):
            echo(f"{path}: study {name!r} left as it is: {where} holds another study of that name (rename or delete "
                 "one of them first)")
            return False
        optuna.delete_study(study_name=name, storage=destination)  # the partial copy of a killed migrate
    marker.write_text(_key(target))
    optuna.copy_study(from_study_name=name, from_storage=source, to_storage=destination)
    if not _same(original, optuna.load_study(study_name=name, storage=destination)):
        optuna.delete_study(study_name=name, storage=destination)
        marker.unlink(missing_ok=True)
        echo(f"{path}: study {name!r} left as it is: its copy in {where} differed from it (was a run adding trials?); "
             "the copy is removed")
        return False
    echo(f"study {name!r}: {_plural(len(original.get_trials(deepcopy=False)), 'trial')} copied from {path} into "
         f"{where} and checked")
    return True


def _same(original: optuna.Study, copy: optuna.Study) -> bool:
    """Whether ``copy`` holds what ``original`` holds: the study's attributes and every trial's record."""
    def record(study: optuna.Study) -> tuple:
        trials = [(t.number, t.state, t.values, t.params, t.intermediate_values, t.user_attrs)
                  for t in study.get_trials(deepcopy=False)]
        return study.user_attrs, [d.name for d in study.directions], trials

    return record(original) == record(copy)


def _marker(name: str) -> Path:
    return FOLDER / f".migrating-{name}"


def _key(target: str) -> str:
    """Which storage a copy was begun in, without writing its URL (a password) to a file."""
    return hashlib.sha256(target.encode()).hexdigest()


def _rename(path: Path) -> Path:
    """``studies/hw04.db`` -> ``studies/hw04.db.migrated`` (with the time where that is taken)."""
    kept = path.with_name(path.name + ".migrated")
    if kept.exists():
        kept = path.with_name(f"{path.name}.migrated-{datetime.datetime.now():%Y%m%dT%H%M%S}")
    import sqlite3

    try:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT)
        try:  # the -wal file's commits into the database first: the renamed file holds everything by itself
            connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            connection.close()
        for end in ("", "-wal", "-shm"):  # what the last close left beside it, if anything, goes with it
            if Path(f"{path}{end}").exists():
                Path(f"{path}{end}").rename(f"{kept}{end}")
    except (OSError, sqlite3.Error) as err:
        raise UserError(f"{path}: cannot rename it to {kept} ({getattr(err, 'strerror', None) or err}); its studies are copied and checked: "
                        "run `search migrate` again once the folder is writable") from None
    return kept


def _plural(n: int, word: str) -> str:
    return f"{n} {word if n == 1 else ('studies' if word == 'study' else word + 's')}"
