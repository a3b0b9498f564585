"""Where a study's files live, and writing them so that nothing is ever half-written.

Every study of a folder has its default storage in ``studies/studies.sqlite3`` (search/db/storage.py) and its own
folder ``studies/<study>/`` holding its
log (``search.log``), its finalized models (``final/``), its artifact store (``artifacts/``) and its
default predictions CSV. The user's cache directory (``cache_dir``: ``~/.cache/hw04-search``, or ``studies/.cache/``
where that cannot be written) holds what is shared by all studies (the embedded dataset, the feature banks of
read-only data folders). Paths are relative to the working directory, as the default
SQLite URL is.

A file a command produces (a checkpoint, the final model, a CSV, the report) is written to a temporary
file beside it and renamed into place (``replaced``): a kill, a full disk or an exception leaves either
the old file or the new one, never a truncated one, and no temporary file (one a SIGKILL left is removed by the
next write in that folder: data/tempfiles.py).
"""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from data.errors import DataError
from data.tempfiles import remove_stale, temp_name
from search.errors import UserError

STUDIES = Path("studies")
CACHE = STUDIES / ".cache"  # the fallback cache folder, where the user's (``cache_dir``) cannot be written
CACHE_NAME = "hw04-search"  # the folder in the user's cache directory


def user_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/hw04-search``, else ``~/.cache/hw04-search`` (a relative XDG_CACHE_HOME is ignored, as the
    XDG spec says)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(base) if os.path.isabs(base) else Path.home() / ".cache") / CACHE_NAME


def cache_dir() -> Path:
    """The cache shared by every study of every folder (the embedded dataset and its feature bank, banks of read-only
    data folders): the user's cache directory, made on first use, so that a new folder does not generate the
    embedded dataset again; ``studies/.cache`` where that cannot be made or written."""
    user = user_cache_dir()
    try:
        user.mkdir(parents=True, exist_ok=True)
        if os.access(user, os.W_OK | os.X_OK):
            return user
    except (OSError, RuntimeError):  # RuntimeError: no home directory to expand ~ in
        pass
    return CACHE


def study_folder(study_name: str) -> Path:
    return STUDIES / study_name


def final_folder(study_name: str) -> Path:
    """What ``search finalize`` trains and writes: checkpoints, ``model.pt``, ``config.json``, ensembles."""
    return study_folder(study_name) / "final"


def artifact_folder(study_name: str) -> Path:
    """The study's Optuna artifact store (search/finalizing/artifacts.py), served by ``search dashboard``."""
    return study_folder(study_name) / "artifacts"


def predictions_path(study_name: str) -> Path:
    """The study's ``predictions.csv``: a copy of the best finalized result's CSV (by validation accuracy)."""
    return study_folder(study_name) / "predictions.csv"


def result_predictions_path(study_name: str, name: str) -> Path:
    """The CSV of one finalized result (``trial4-steps2000``, ``top3-steps2000``): each finalize its own file."""
    return study_folder(study_name) / f"predictions-{name}.csv"


@contextmanager
def replaced(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; when the block ends it is renamed onto ``path``
    (atomic on one filesystem); if the block fails the temporary file is removed and the error goes on."""
    # A process killed meanwhile (SIGKILL runs no clean-up) left its temporary file beside ours: remove such files
    # of dead processes now (a checkpoint's can be gigabytes), or they would stay forever (data/tempfiles.py).
    remove_stale(path.parent if str(path.parent) else Path("."), f".{path.name}")
    tmp = path.with_name(temp_name(f".{path.name}"))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        full = _full(err)
        if full is not None:  # the space it took is free again: say how much
            raise UserError(f"{path}: cannot write it: {_FULL[full]} ({_free(path.parent)} free there)") from None
        raise


# A write that fails for want of room: one line naming the file (an OSError of a write often has no file name,
# and torch.save to a path says only "[enforce fail at inline_container.cc:672]": see save_torch)
_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
         errno.EFBIG: "file too large (over the file-size limit, ulimit -f)"}


def _full(err: BaseException) -> int | None:
    """The errno of ``_FULL`` behind ``err``: itself, or its cause or context (torch.save to a file object raises
    either the OSError or its own RuntimeError with the OSError as context); None for any other failure."""
    for _ in range(5):
        if isinstance(err, OSError) and err.errno in _FULL:
            return err.errno
        err = err.__cause__ or err.__context__
        if err is None:
            return None
    return None


def _free(folder: Path) -> str:
    try:
        stat = os.statvfs(folder if str(folder) else ".")
    except OSError:
        return "unknown"
    free = stat.f_bavail * stat.f_frsize
    return next(f"{free / 1024 ** i:.1f} {unit}" for i, unit in ((3, "GB"), (2, "MB"), (1, "kB"), (0, "bytes"))
                if free >= 1024 ** i or i == 0)


def save_torch(obj: object, path: Path) -> None:
    """``torch.save(obj, path)``, atomically (see ``replaced``). Through a Python file object, not the path: then a
    failed write raises an OSError with its errno (no space left on device, file too large), which ``replaced``
    turns into one line naming ``path``; torch writing to a path itself fails with only "[enforce fail at
    inline_container.cc:672] ... unexpected pos", which says neither what nor where."""
    import torch

    with replaced(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def write_text(path: Path, text: str) -> None:
    """``path.write_text(text)``, atomically (see ``replaced``)."""
    with replaced(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_only_part(path: Path) -> Path | None:
    """The part of ``path`` that keeps it from being written (the existing file, or its folder), or None."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.exists() and not os.access(path, os.W_OK):
        return path
    if folder.exists() and not os.access(folder, os.W_OK):
        return folder
    return None


def check_writable(path: Path, option: str) -> None:
    """Fail before hours of training, not after: the output's folder must exist or be creatable, and the
    file (if it exists) and folder writable."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{option} {path}: cannot create folder {folder} ({err.strerror})") from None
    if read_only_part(path) is not None or path.is_dir():
        raise UserError(f"{option} {path}: not writable")


SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def is_sqlite_file(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(SQLITE_MAGIC)) == SQLITE_MAGIC
    except OSError:
        return False


def _storage_files(url: str | None) -> list[Path]:
    """The files of a storage URL (a SQLite database with its -wal, -shm and -journal files, or a journal file),
    absolute; none for a server."""
    from search.db.sqlite import sqlite_path
    from search.db.storage import is_journal, journal_path

    if not url:
        return []
    if is_journal(url):
        return [journal_path(url)]
    database = sqlite_path(url)
    if database is None:
        return []
    database = database.resolve()
    return [database, *(database.with_name(database.name + end) for end in ("-wal", "-shm", "-journal"))]


def check_out(path: Path, option: str, storage: str | None = None, data: str | Path | None = None,
              answers: Path | None = None) -> None:
    """An output file must not be one of the command's own inputs: writing it would replace a study's database,
    break the data folder, or replace the answer key that then scores its own copy. Refused: a file of the storage
    in use, any existing SQLite database (some study's storage), anything inside the data folder, the answer key.
    One line naming the option, the file and what it is."""
    from search.db.storage import redact

    target = path.resolve()
    if target in _storage_files(storage):
        raise UserError(f"{option} {path}: is the study's storage ({redact(storage)}); writing there would replace "
                        "the study: choose another file")
    if target.is_file() and is_sqlite_file(target):
        raise UserError(f"{option} {path}: is an SQLite database (a study's storage?); writing there would replace "
                        "it: choose another file")
    if answers is not None and target == Path(answers).resolve():
        raise UserError(f"{option} {path}: is the answer key that scores the predictions: choose another file")
    if data is not None:
        folder = Path(data).resolve()
        if target == folder or folder in target.parents:
            raise UserError(f"{option} {path}: is inside the data folder {data}, which the command reads: choose a "
                            "file outside it")


@contextmanager
def folder_kept_if(folder: Path, existed: bool, kept: Callable[[], bool], close: Callable[[], None]) -> Iterator[None]:
    """For a command that made ``folder`` (a new study's, for its log): if the block fails with a one-line error
    while ``kept()`` is False (no study made yet: bad ``--data``, say), ``close()`` (the log file) and remove the
    folder, where it had not ``existed`` and holds nothing but that log: nothing half-made is left behind."""
    try:
        yield
    except (UserError, DataError):
        if not existed and not kept() and {p.name for p in folder.iterdir()} <= {"search.log"}:
            close()
            shutil.rmtree(folder, ignore_errors=True)
            if folder.parent == STUDIES and STUDIES.is_dir() and not any(STUDIES.iterdir()):
                STUDIES.rmdir()  # made for this folder only
        raise
