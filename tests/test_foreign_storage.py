"""Read-only commands write nothing to what is not ours (issue 23): another program's SQLite file, an empty
file in studies/, an empty PostgreSQL database, a study file in a read-only folder. They never create Optuna's
tables; where there are none they say, in one line, that the storage holds no study.

What is compared is what the user would notice: the file's bytes and modification time, the files beside it
(SQLite's -wal, -shm and -journal), the tables of the database.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import uuid
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from tests.helpers import invoke, one_error_line

NO_STUDY = "holds no study (no Optuna tables there; this command creates none"


def snapshot(path: Path) -> tuple:
    """What a write would change: the file's bytes and mtime, and which files are beside it."""
    return path.read_bytes(), path.stat().st_mtime_ns, sorted(p.name for p in path.parent.iterdir())


def test_studies_on_another_programs_database_changes_nothing(workdir):
    other = workdir / "other.db"  # another program's SQLite file: one table of its own, rollback journal
    with sqlite3.connect(other) as connection:
        connection.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        connection.execute("INSERT INTO notes (text) VALUES ('mine')")
    connection.close()
    before = snapshot(other)
    results = [invoke(*args) for args in (
        ["studies", "--storage", "sqlite:///other.db"], ["studies", "--storage", "sqlite:///other.db", "--json"],
        ["trials", "--study", "x", "--storage", "sqlite:///other.db"],
        ["show", "--study", "x", "--storage", "sqlite:///other.db"],
        ["report", "--study", "x", "--storage", "sqlite:///other.db"])]
    with sqlite3.connect(other) as connection:
        assert [r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")] == ["notes"]
    connection.close()
    assert snapshot(other) == before  # 8 KB, one table, no WAL switch, nothing beside it
    for result in results:
        line = one_error_line(result, alone=True)
        assert line == f"Error: --storage sqlite:///other.db: {NO_STUDY}: `search run` makes a study)", line


def test_an_empty_file_in_studies_stays_empty(workdir):
    (workdir / "studies").mkdir()
    zero = workdir / "studies" / "zero.db"
    zero.touch()
    before = snapshot(zero)
    commands = (["trials"], ["show"], ["report"], ["finalize", "best"], ["dashboard"])
    results = [invoke(*command, "--study", "zero") for command in commands]
    listed = invoke("studies")  # every studies/*.db: this one is not a study, so none is found
    assert snapshot(zero) == before and zero.stat().st_size == 0
    for command, result in zip(commands, results):
        assert NO_STUDY in one_error_line(result), (command, result.output)
    assert listed.exit_code == 0 and listed.output.strip() == "no study found", listed.output


def test_studies_on_an_empty_postgresql_database_creates_no_table(postgres, workdir):
    import sqlalchemy

    from search.db.storage import _with_installed_driver

    name = f"empty_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(_with_installed_driver(sqlalchemy.engine.make_url(postgres)),
                                     isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = postgres.rsplit("/", 1)[0] + f"/{name}"
    try:
        results = [invoke(*args) for args in (
            ["studies", "--storage", url], ["trials", "--study", "x", "--storage", url],
            ["show", "--study", "x", "--storage", url], ["finalize", "best", "--study", "x", "--storage", url])]
        engine = sqlalchemy.create_engine(_with_installed_driver(sqlalchemy.engine.make_url(url)))
        try:
            assert sqlalchemy.inspect(engine).get_table_names() == []
        finally:
            engine.dispose()
        for result in results:
            assert NO_STUDY in one_error_line(result), result.output
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


def test_a_study_in_a_read_only_folder_is_read_and_left_as_it_is(workdir, tmp_path):
    """trials, show and report read a study whose file and folder are read-only.

    Tests run as root here, and root writes through any permission bits: the old code *succeeded* on this
    folder, switching the file to WAL and leaving -wal/-shm files beside it. So the test does not prove that a
    non-root user can read such a study (chmod cannot take write access from root); it proves that the file's
    bytes and mtime do not change and that no file appears beside it, i.e. that nothing was written, which
    is what lets a non-root user read it (SQLite opens it with immutable=1 there, needing no -shm file).
    """
    folder = workdir / "readonly"
    folder.mkdir()
    url = f"sqlite:///{folder / 'ro.db'}"
    storage = optuna.storages.RDBStorage(url)  # Optuna's plain storage: rollback journal, as a copied study may be
    study = optuna.create_study(study_name="ro", storage=storage, direction="maximize")
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.5, params={"encoder": "transformer"},
                                 distributions={"encoder": CategoricalDistribution(["transformer", "conformer"])}))
    storage.engine.dispose()
    del study, storage
    database = folder / "ro.db"
    database.chmod(0o444)
    folder.chmod(0o555)
    try:
        before = snapshot(database)
        trials = invoke("trials", "--study", "ro", "--storage", url)
        assert trials.exit_code == 0 and "transformer" in trials.output, trials.output
        show = invoke("show", "--study", "ro", "--storage", url)
        assert show.exit_code == 0 and "value        0.5000" in show.output, show.output
        report = invoke("report", "--study", "ro", "--storage", url, "--out", str(tmp_path / "report.html"))
        assert report.exit_code == 0 and (tmp_path / "report.html").is_file(), report.output
        assert snapshot(database) == before
        assert stat.S_IMODE(database.stat().st_mode) == 0o444
    finally:
        folder.chmod(0o755)
        os.chmod(database, 0o644)
