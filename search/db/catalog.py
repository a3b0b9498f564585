"""The studies of a storage and of the ``studies/`` folder: their names (a missing study's "did you mean"), the
per-study files of earlier versions, and deleting a study.

Without ``--storage`` (and ``$SEARCH_STORAGE``), every study of the folder is in one SQLite file,
``studies/studies.sqlite3``; a study of an earlier version may still be in its own file, ``studies/<study>.db``,
which is opened when the study is named (``storage.default_url``) until ``search migrate`` moves it.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import optuna

from search.errors import NoStudyStorage, UserError
from search.db.sqlite import sqlite_path
from search.db.storage import env_url, is_journal, journal_path, old_study_file, open_storage, redact_url

SUGGESTIONS = 3  # close names a missing study's line suggests
LISTED = 10  # a storage with at most this many studies has them all named when none is close


def old_study_files(folder: Path = Path("studies")) -> list[Path]:
    """The per-study SQLite files of earlier versions, ``studies/<study>.db``, sorted."""
    return sorted(p for p in folder.glob("*.db") if p.is_file())


def is_default(storage: str | None) -> bool:
    """Whether a command given ``storage`` (its --storage) uses the folder's default: neither --storage nor
    ``$SEARCH_STORAGE``."""
    return storage is None and env_url() is None


def storage_names(url: str) -> list[str]:
    """The names of the studies at ``url``, read without writing or creating anything: none where the file is
    not there or holds no Optuna tables."""
    path = journal_path(url) if is_journal(url) else sqlite_path(url)
    if path is not None and not path.is_file():
        return []
    try:
        storage = open_storage(url, read_only=True)
    except NoStudyStorage:
        return []
    # get_all_studies, not get_all_study_summaries: that one reads every trial of every study
    return [s.study_name for s in storage.get_all_studies()]


def known_studies(url: str, default: bool) -> list[str]:
    """The studies a command could mean: those at ``url``, and with the ``default`` storage the studies of the old
    per-study files too (named by their files, as earlier versions named them)."""
    names = storage_names(url)
    if default:
        names += [p.stem for p in old_study_files() if p.stem not in names]
    return names


def missing_study(name: str, url: str, default: bool, why: str = "", option: str = "--study") -> UserError:
    """The one line for a study that is not there (``option``: what the user typed its name as): the close names
    (``did you mean 'hw04'?``), else every study there when they are few."""
    names = [n for n in known_studies(url, default) if n != name]
    where = redact_url(url) + ("" if default or not why else f" ({why})")  # the default file: made by a first run
    close = difflib.get_close_matches(name, names, n=SUGGESTIONS, cutoff=0.6)
    if close:
        hint = "; did you mean " + " or ".join(repr(n) for n in close) + "?"
    elif not names:
        hint = "; it holds no study yet (`search run --study NAME` creates one)"
    elif len(names) <= LISTED:
        hint = "; studies there: " + ", ".join(names)
    else:
        hint = f"; {len(names)} studies there (`search studies` lists them)"
    return UserError(f"{option}: no study {name!r} in {where}{hint}")


def existing_others(name: str, url: str, default: bool) -> list[str]:
    """The other studies where a run is about to create study ``name`` (closest names first): a typo shows beside
    them. None where ``name`` is there already (a study made by hand, which the run adopts)."""
    names = known_studies(url, default)
    if name in names:
        return []
    close = difflib.get_close_matches(name, names, n=SUGGESTIONS, cutoff=0.6)
    return close + [n for n in names if n not in close]


def others_text(names: list[str]) -> str:
    shown = ", ".join(names[:LISTED])
    return shown + (f" and {len(names) - LISTED} more" if len(names) > LISTED else "")


def delete_study(name: str, url: str) -> str:
    """Delete study ``name`` from the storage at ``url`` (it must be there); an old per-study file left holding no
    study is removed too (it was the study's own). Returns what was done, one line."""
    storage = open_storage(url, create=False, heartbeat_interval=None)
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        raise UserError(f"--study: no study {name!r} in {redact_url(url)}") from None
    done = f"deleted study {name!r} from {redact_url(url)}"
    path = sqlite_path(url)
    if path is not None and path == old_study_file(name) and not storage.get_all_studies():
        storage.engine.dispose()
        for end in ("", "-wal", "-shm", "-journal"):
            Path(f"{path}{end}").unlink(missing_ok=True)
        done += f"; removed {path}, which held no other study"
    return done


def outputs_text(name: str) -> str | None:
    """The study's folder as a question names it (``studies/hw04/ (12 files: predictions.csv, final/, ...)``), or
    None where it is not there."""
    from search.files import study_folder

    folder = study_folder(name)
    if not folder.is_dir():
        return None
    files = sum(1 for p in folder.rglob("*") if p.is_file())
    top = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    shown = ", ".join(top[:4]) + (", ..." if len(top) > 4 else "")
    return f"{folder}/ ({files} file{'' if files == 1 else 's'}: {shown})" if top else f"{folder}/ (empty)"


def remove_outputs(name: str) -> str:
    """Remove the study's folder ``studies/<study>/``; the line saying so."""
    import shutil

    from search.files import study_folder

    folder = study_folder(name)
    try:
        shutil.rmtree(folder)
    except OSError as err:
        raise UserError(f"{folder}: cannot remove it ({err.strerror or err}); the study is deleted, the folder is "
                        "not, or not all of it") from None
    return f"removed {folder}/"
