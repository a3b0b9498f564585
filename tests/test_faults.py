"""Faults inside a trial, bad input through the CLI, a killed finalize, passwords in storage URLs.

Divergence is provoked through the real training path: a trial enqueued with a learning rate far
outside the search space (lr=1e30, as a user typing a configuration by hand could) makes AdamW blow the
weights up to inf after one step, the loss becomes NaN, the trainer raises TrainingDiverged at the next
evaluation. Nothing is monkeypatched there. CUDA out-of-memory cannot be provoked on a CPU-only machine: one test
has the training raise cuBLAS's allocation error, as a GPU beside other workers did (BENCHMARKS.md, call 13).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.cli import main
from search.db.storage import open_storage
from search.running.runner import run_trials
from search.running.settings import StudySettings
from search.running.study import open_study
from search.running.task import load_task
from tests.helpers import (SAMPLE, SHARED, invoke, kill_once_written, new_study, one_error_line, reachable,
                           signal_while_running, study_dbs, wait_running)

REPO = Path(__file__).resolve().parents[1]
URL = "sqlite:///studies/f.db"


def make_study(data: Path) -> optuna.Study:
    """A new study ``f`` in ``studies/f.db``, budget 8, no trials yet."""
    return new_study(data, URL, "f")


def n_trials(url: str = URL, name: str = "f") -> int:
    return len(optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False))


@pytest.fixture
def finished_study(tiny_dataset, workdir) -> optuna.Study:
    """A study in studies/f.db with one completed sample-code trial."""
    study = make_study(tiny_dataset)
    study.enqueue_trial(SAMPLE)
    settings = StudySettings.from_attrs(study.user_attrs)
    import torch

    run_trials(study, settings, load_task(tiny_dataset, 0, torch.device("cpu")), 1)
    assert study.trials[0].state == TrialState.COMPLETE
    return study


# --- faults inside a trial -------------------------------------------------------------------------

def test_diverging_trial_fails_with_its_reason_and_the_study_goes_on(tiny_dataset, workdir):
    study = make_study(tiny_dataset)
    study.enqueue_trial(dict(SAMPLE, lr=1e30), user_attrs={"deliberately": "diverges"})
    study.enqueue_trial(SAMPLE)
    result = invoke("run", "--trials", "2", "--study", "f", "--data", str(tiny_dataset), "--device", "cpu")
    assert result.exit_code == 0, result.output
    first, second = optuna.load_study(study_name="f", storage=URL).trials
    assert first.user_attrs["deliberately"] == "diverges"
    assert first.state == TrialState.FAIL
    assert first.user_attrs["ended"].startswith("failed: training loss became nan"), first.user_attrs["ended"]
    assert "failed: training loss became nan" in result.output  # the progress line says why
    assert second.state == TrialState.COMPLETE
    # one line of ours says why (above) and the run's end says where the traceback is: no line in Optuna's format
    # (`[W <time>] Trial 0 failed with parameters: ...`, twice), no Python warning with its source line
    assert "1 trial failed in this run (why: on its line above); the traceback is in studies/f/search.log" \
        in result.output, result.output
    assert "[W " not in result.output and "Trial 0 failed" not in result.output, result.output
    assert "warning: Fixed parameter lr with value 1e+30 is out of range" in result.stderr, result.stderr
    assert "optuna_warn(" not in result.stderr and "_trial.py" not in result.stderr, result.stderr
    assert "#0 starts (enqueued): transformer" in result.output and "lr 1.0e+30," in result.output, result.output
    assert "Traceback" not in result.output, result.output
    assert "Traceback (most recent call last)" in (workdir / "studies" / "f" / "search.log").read_text()


def test_any_other_exception_fails_only_that_trial(tiny_dataset, workdir):
    """A configuration the model refuses (enqueued by hand, outside the space: Optuna only warns)."""
    study = make_study(tiny_dataset)
    study.enqueue_trial(dict(SAMPLE, dropout=1.5))
    study.enqueue_trial(SAMPLE)
    result = invoke("run", "--trials", "2", "--study", "f", "--data", str(tiny_dataset), "--device", "cpu")
    assert result.exit_code == 0, result.output
    first, second = optuna.load_study(study_name="f", storage=URL).trials
    assert first.state == TrialState.FAIL
    ended = first.user_attrs["ended"]  # the model's own refusal, as the trial's reason
    assert ended.startswith("failed: ValueError: ") and "dropout" in ended and "1.5" in ended, ended
    assert second.state == TrialState.COMPLETE


@pytest.mark.parametrize("workers", ["1", "2"])
def test_fail_fast_stops_at_the_first_failed_trial(workers, tiny_dataset, workdir):
    study = make_study(tiny_dataset)
    study.enqueue_trial(dict(SAMPLE, lr=1e30))
    for _ in range(3):
        study.enqueue_trial(SAMPLE)
    result = invoke("run", "--trials", "2", "--workers", workers, "--study", "f", "--data", str(tiny_dataset),
                    "--device", "cpu", "--fail-fast")
    line = one_error_line(result)
    assert "--fail-fast: trial #0 failed: training loss became nan" in line
    trials = optuna.load_study(study_name="f", storage=URL).trials
    assert trials[0].state == TrialState.FAIL
    assert not any(t.state == TrialState.RUNNING for t in trials)
    if workers == "1":
        assert [t.state for t in trials[1:]] == [TrialState.WAITING] * 3  # nothing ran after it


# --- bad input: one line, non-zero exit, no traceback, nothing written, storage unchanged --------------

@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:1/test", "mysql+pymysql://root@127.0.0.1:1/test"],
                         ids=["postgresql", "mysql"])
def test_unreachable_storage_is_one_quick_line(url, tiny_dataset, workdir):
    started = time.perf_counter()
    line = one_error_line(invoke("run", "--trials", "2", "--storage", url, "--data", str(tiny_dataset),
                                 "--device", "cpu"))
    assert time.perf_counter() - started < 15
    assert line.startswith(f"Error: --storage {url}: cannot open the storage (") and "refused" in line.lower()
    line = one_error_line(invoke("finalize", "best", "--storage", url))
    assert "cannot open the storage" in line
    assert not (workdir / "studies").exists() or not study_dbs(workdir)


def test_unwritable_output_path(finished_study, workdir):
    (workdir / "somefile").write_text("a file, not a folder\n")  # tests run as root: permissions won't do
    before = n_trials()
    line = one_error_line(invoke("finalize", "best", "--study", "f", "--steps", "16", "--out", "somefile/pred.csv"))
    assert "--out somefile/pred.csv" in line and "somefile" in line
    assert (workdir / "somefile").read_text() == "a file, not a folder\n"
    assert not (workdir / "studies" / "f" / "final").exists()  # no checkpoint, no model: nothing ran
    assert n_trials() == before


# --- a killed finalize resumes from its checkpoint ---------------------------------------------------

def test_killed_finalize_resumes_from_its_checkpoint(finished_study, workdir):
    steps, every = 96, 8
    command = [sys.executable, "-m", "search.cli", "finalize", "best", "--study", "f", "--steps", str(steps),
               "--checkpoint-every", str(every), "--device", "cpu", "--out", "resumed.csv"]
    checkpoint = workdir / "studies" / "f" / "final" / f"checkpoint-trial0-steps{steps}.pt"
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        kill_once_written(process, checkpoint, 120, "no checkpoint was written")
    finally:
        if process.poll() is None:
            process.kill()
    assert not (workdir / "resumed.csv").exists()  # killed before the end: no partial CSV

    result = invoke(*command[3:])
    assert result.exit_code == 0, result.output
    assert "resumed from the checkpoint at step " in result.output, result.output
    resumed_step = int(result.output.split("resumed from the checkpoint at step ")[1].split()[0])
    assert 0 < resumed_step < steps and resumed_step % every == 0
    config = json.loads((checkpoint.parent / "config.json").read_text())
    assert config["resumed_from_step"] == resumed_step
    assert [h["step"] for h in config["history"]] == list(range(steps // 8, steps + 1, steps // 8))

    # The same finalize without interruption: the same kind of result, here even the same predictions.
    for leftover in checkpoint.parent.iterdir():
        leftover.unlink()
    result = invoke(*command[3:-1], "straight.csv")
    assert result.exit_code == 0, result.output
    assert "resumed from" not in result.output
    assert json.loads((checkpoint.parent / "config.json").read_text())["resumed_from_step"] is None
    resumed = list(csv.reader(open(workdir / "resumed.csv")))
    straight = list(csv.reader(open(workdir / "straight.csv")))
    assert resumed[0] == ["Id", "Category"] and len(resumed) == len(straight) > 1
    assert [r[0] for r in resumed] == [r[0] for r in straight]
    assert resumed == straight  # CPU training is deterministic and the checkpoint holds every RNG state


# --- passwords in storage URLs ------------------------------------------------------------------------

# Trust auth ignores the password. The second holds what URL finders stop at (quotes, '<', '>', a space) and
# what looks like a query ('?', '&', '='), typed raw: a run that connects printed it three times, and its log four.
@pytest.mark.parametrize("password", ["Sup3rSecretPw", "ab'cd\"e<f>g h?x=1&Sup3rSecretPw"], ids=["plain", "url-syntax"])
def test_storage_password_is_never_shown_or_stored(password, tiny_dataset, workdir, capfd):
    url = f"postgresql://postgres:{password}@127.0.0.1:5432/test"
    why = reachable(url)
    if why:
        pytest.skip(why.replace("Sup3rSecretPw", "***"))
    name = f"test-secret-{uuid.uuid4().hex[:12]}"
    try:
        result = invoke("run", "--trials", "2", "--workers", "2", "--study", name, "--storage",
                        url, "--data", str(tiny_dataset), "--budget", "8", "--device", "cpu")
        assert result.exit_code == 0, result.output.replace("Sup3rSecretPw", "<LEAKED>")
        assert "postgres:***@127.0.0.1" in result.output
        missing = invoke("finalize", "best", "--study", name + "-nope", "--storage", url)
        unreachable = invoke("run", "--trials", "1", "--storage", url.replace("5432", "1"),
                             "--data", str(tiny_dataset))
        assert "no study" in one_error_line(missing) and "cannot open" in one_error_line(unreachable)
        captured = capfd.readouterr()  # what the workers and Optuna's logger wrote
        for text in (result.output, missing.output, unreachable.output, captured.out, captured.err):
            assert "Sup3rSecretPw" not in text and password not in text
        for path in workdir.rglob("*"):  # logs and anything else written under studies/
            assert not path.is_file() or b"Sup3rSecretPw" not in path.read_bytes(), path
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        stored = json.dumps([study.user_attrs, study._storage.get_study_system_attrs(study._study_id)]
                            + [[t.user_attrs, t.system_attrs, t.params] for t in study.trials], default=str)
        assert "Sup3rSecretPw" not in stored
    finally:
        try:
            optuna.delete_study(study_name=name, storage=open_storage(url))
        except KeyError:
            pass


def test_sqlite_file_stays_sound_after_faults(tiny_dataset, workdir):
    """Bad trials and refused input leave a SQLite storage that passes its integrity check."""
    study = make_study(tiny_dataset)
    study.enqueue_trial(dict(SAMPLE, lr=1e30))
    assert invoke("run", "--trials", "1", "--study", "f", "--data", str(tiny_dataset), "--device", "cpu").exit_code == 0
    one_error_line(invoke("run", "--trials", "1", "--study", "f", "--data", str(tiny_dataset), "--budget", "999"))
    assert n_trials() == 1
    assert sqlite3.connect("studies/f.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# --- issue 10: any exception is one line; names, secrets, read-only commands, races, processes --------

def test_any_unexpected_exception_is_one_line_with_its_traceback_in_the_log(workdir):
    """The top level, not each command: a command added later that raises anything still gives one line."""
    from search.cli import study_option
    from search.processes.guard import SafeCommand

    @main.command("kaput-for-test")
    @study_option
    def kaput(study_name):
        raise RuntimeError("deliberately broken\nsecond line")

    @main.command("interrupt-for-test")
    def interrupt():
        raise KeyboardInterrupt

    try:
        assert isinstance(kaput, SafeCommand)
        line = one_error_line(invoke("kaput-for-test", "--study", "k"))
        assert line == ("Error: search kaput-for-test failed: RuntimeError: deliberately broken "
                        "(traceback in studies/k/search.log)"), line
        log = (workdir / "studies" / "k" / "search.log").read_text()
        assert "Traceback (most recent call last)" in log and "deliberately broken" in log
        result = invoke("interrupt-for-test")  # Ctrl-C keeps click's behaviour
        assert result.exit_code == 1 and result.output.strip() == "Aborted!", result.output
    finally:
        main.commands.pop("kaput-for-test", None)
        main.commands.pop("interrupt-for-test", None)
    usage = invoke("run", "--trials", "x")  # click's own usage errors are left as they are
    assert usage.exit_code == 2 and "Usage:" in usage.output and "'--trials'" in usage.output


@pytest.mark.parametrize("args, message", [
    (["run", "--trials", "1", "--storage", "postgresql://postgres@127.0.0.1:abc/test"], "a port must be a number"),
    (["run", "--trials", "1", "--storage", "postgresql://postgres@[::1/test"], "--storage postgresql://postgres@[::1/test"),
    (["run", "--trials", "1", "--storage", "sqlite://"], "in-memory SQLite database cannot be shared"),
    (["run", "--trials", "1", "--storage", "sqlite:///:memory:"], "in-memory SQLite database cannot be shared"),
    (["run", "--trials", "1", "--seed", "-1"], "'--seed'"),
    (["run", "--trials", "1", "--seed", "99999999999999999999"], "'--seed'"),
    (["finalize", "\u00b2", "--study", "f"], "Error: TRIAL '\u00b2': expected 'best', 'top' or a trial number"),
    (["dashboard", "--study", "f", "--host", "999.1.1.1"], "--host 999.1.1.1: not an address"),
], ids=["port-abc", "ipv6-unclosed", "sqlite-memory", "sqlite-memory-2", "seed-negative", "seed-huge",
        "finalize-superscript", "host-999"])
def test_bad_input_is_one_line(args, message, finished_study, workdir):
    line = one_error_line(invoke(*args, "--data", str(workdir)) if args[0] == "run" else invoke(*args))
    assert message in line, line
    assert n_trials() == 1  # the study is untouched
    assert sorted(p.name for p in (workdir / "studies").glob("*.db")) == ["f.db"]


def test_dashboard_port_in_use_is_one_line(finished_study, workdir):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = one_error_line(invoke("dashboard", "--study", "f", "--port", str(port)))
    assert line == f"Error: --port {port}: already in use on 127.0.0.1", line


@pytest.mark.parametrize("name", ["../x", "ABSOLUTE", "", " ", ".hidden", "a/b", "a\\b", "tab\there", "nl\nx",
                                  "x" * 101], ids=["dotdot", "absolute", "empty", "blank", "leading-dot", "slash",
                                                   "backslash", "tab", "newline", "long"])
def test_a_study_name_is_a_name(name, tiny_dataset, workdir):
    name = str(workdir.parent / "abs" / "x") if name == "ABSOLUTE" else name  # never / on the real file system
    before = set(workdir.parent.rglob("*"))
    for args in (["run", "--trials", "1", "--data", str(tiny_dataset), "--budget", "8", "--device", "cpu"],
                 ["show"], ["finalize", "best"], ["report"], ["dashboard"]):
        line = one_error_line(invoke(*args, "--study", name))
        assert line.startswith("Error: --study ") and "study name" in line, line
    assert set(workdir.parent.rglob("*")) == before  # nothing written, in studies/ or anywhere else


@pytest.mark.parametrize("url", ["postgresql://postgres@127.0.0.1:5432/test", "mysql+pymysql://root@127.0.0.1:3306/test"],
                         ids=["postgresql", "mysql"])
def test_an_over_long_study_name_on_a_database_is_one_line(url, tiny_dataset, workdir):
    why = reachable(url)
    if why:
        pytest.skip(why)
    line = one_error_line(invoke("run", "--trials", "1", "--study", "n" * 600, "--storage", url,
                                 "--data", str(tiny_dataset), "--budget", "8", "--device", "cpu"))
    assert "a study name has at most 100 characters, this one 600" in line


@pytest.mark.parametrize("command", [["show"], ["finalize", "best"], ["report"], ["dashboard"]])
def test_a_read_only_command_never_creates_a_study(command, workdir):
    line = one_error_line(invoke(*command, "--study", "typo"))
    assert line == ("Error: --study: no study 'typo' in sqlite:///studies/studies.sqlite3; it holds no study yet "
                    "(`search run --study NAME` creates one)"), line
    assert not (workdir / "studies").exists()
    line = one_error_line(invoke(*command, "--study", "typo", "--storage", "journal://studies/typo.log"))
    assert f"no such file {workdir / 'studies' / 'typo.log'}" in line and not (workdir / "studies").exists()


@pytest.mark.parametrize("url, secret", [
    ("postgresql://postgres@127.0.0.1:1/test?password=QuerySecret1", "QuerySecret1"),
    ("postgresql://:EmptyUserSecret2@127.0.0.1:1/test", "EmptyUserSecret2"),
    ("postgresql://postgres:pa@AtSecret3@127.0.0.1:1/test", "AtSecret3"),
    ("postgresql://postgres:pa%40EncSecret4@127.0.0.1:1/test", "EncSecret4"),
    ("mysql+pymysql://root@127.0.0.1:1/test?passwd=MySecret5&charset=utf8mb4", "MySecret5"),
], ids=["query", "empty-user", "at-sign", "percent-encoded", "mysql-passwd"])
def test_no_form_of_password_is_shown_or_logged(url, secret, tiny_dataset, workdir, capfd):
    results = [invoke("run", "--trials", "1", "--storage", url, "--data", str(tiny_dataset), "--device", "cpu"),
               invoke("show", "--storage", url), invoke("studies", "--storage", url)]
    for result in results:
        one_error_line(result)
    captured = capfd.readouterr()
    for text in [r.output for r in results] + [captured.out, captured.err]:
        assert secret not in text, text
    for path in workdir.rglob("*"):
        assert not path.is_file() or secret.encode() not in path.read_bytes(), path
    from search.db.storage import redact

    assert secret not in redact(url) and "***" in redact(url)


def _foreign_study(direction: str, with_settings: bool) -> None:
    (Path("studies")).mkdir(exist_ok=True)
    study = optuna.create_study(study_name="foreign", storage="sqlite:///studies/foreign.db", direction=direction)
    if with_settings:  # as `search run` would have stored them
        for key, value in dict(budget=8, eval_every=1, data="embedded", seed=0, profile="cpu").items():
            study.set_user_attr(key, value)
    for value in (0.9, 0.1):  # complete trials: under minimize, 0.1 would be "best"
        study.enqueue_trial(SAMPLE)
        study.optimize(lambda t, v=value: (t.suggest_categorical("encoder", ["transformer"]), v)[1], n_trials=1)


@pytest.mark.parametrize("direction, with_settings", [("minimize", True), ("minimize", False), ("maximize", False)])
def test_a_study_that_is_not_ours_is_not_adopted(direction, with_settings, tiny_dataset, workdir):
    _foreign_study(direction, with_settings)
    before = n_trials("sqlite:///studies/foreign.db", "foreign")
    line = one_error_line(invoke("run", "--trials", "1", "--study", "foreign", "--data", str(tiny_dataset),
                                 "--budget", "8", "--device", "cpu"))
    assert ("direction minimize" if direction == "minimize" else "not created by `search run`") in line, line
    if direction == "minimize":  # its "best" trial would be the worst: refused by every command that ranks
        for args in (["finalize", "best"], ["show"], ["report", "--out", "r.html"]):
            assert "direction minimize" in one_error_line(invoke(*args, "--study", "foreign"))
    assert n_trials("sqlite:///studies/foreign.db", "foreign") == before


def test_a_read_only_study_file_is_one_line(finished_study, workdir):
    """chattr +i: read-only even for root (tests run as root, so permissions won't do)."""
    path = workdir / "studies" / "f.db"
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        line = one_error_line(invoke("run", "--trials", "1", "--study", "f", "--device", "cpu", "--data",
                                     finished_study.user_attrs["data"]))
        assert "studies/f.db is read-only" in line, line
        shown = invoke("show", "--study", "f")  # reading it still works
        assert shown.exit_code == 0, shown.output
    finally:
        subprocess.run(["chattr", "-i", str(path)])
    assert n_trials() == 1


def test_a_full_disk_is_one_line(tiny_dataset, workdir):
    """A file-size limit (prlimit --fsize) makes every write past 300 kB fail, as a full disk does."""
    prlimit = subprocess.run(["which", "prlimit"], capture_output=True, text=True).stdout.strip()
    if not prlimit:
        pytest.skip("prlimit is not installed")
    result = subprocess.run([prlimit, "--fsize=300000", sys.executable, "-m", "search.cli", "run", "--trials", "2",
                             "--study", "fd", "--data", str(tiny_dataset), "--budget", "8", "--device", "cpu"],
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output and "Logging error" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and "search run failed" in errors[0], output
    assert "disk I/O error" in errors[0] or "File too large" in errors[0] or "full" in errors[0], errors[0]


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04truncated", b"hello"], ids=["empty", "truncated", "text"])
def test_an_unusable_finalize_checkpoint_is_moved_aside_and_training_starts_over(content, finished_study, workdir):
    final = workdir / "studies" / "f" / "final"
    final.mkdir(parents=True)
    checkpoint = final / "checkpoint-trial0-steps16.pt"
    checkpoint.write_bytes(content)
    result = invoke("finalize", "best", "--study", "f", "--steps", "16", "--device", "cpu", "--out", "p.csv")
    assert result.exit_code == 0, result.output
    assert f"warning: {checkpoint.relative_to(workdir)}: unusable checkpoint" in result.output, result.output
    assert "resumed from" not in result.output and (workdir / "p.csv").exists()
    [aside] = final.glob("checkpoint-trial0-steps16.pt.unusable-*")
    assert aside.read_bytes() == content  # kept for a look, never read again


# --- races: several `search run` starting together on a new study ---------------------------------------

def _open_at(url: str, name: str, data: str, start: float) -> bool:
    """In a fresh process: wait for the common start time, then create-or-load the study like `search run`."""
    settings = StudySettings(budget=8, eval_every=1, data=data, seed=0, profile="cpu")
    time.sleep(max(0.0, start - time.time()))
    return open_study(name, url, settings, warm_start=True)[2]


def _race(url: str, name: str, n: int, data: str) -> list[bool]:
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    with ProcessPoolExecutor(n, mp_context=get_context("spawn")) as pool:
        for _ in pool.map(time.sleep, [0] * n):  # every process started and its imports done
            pass
        start = time.time() + 1.5
        return list(pool.map(_open_at, [url] * n, [name] * n, [data] * n, [start] * n))


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_several_runs_creating_one_new_study_at_once(backend, workdir):
    """The schema of a new storage and the study are created once; warm-start trials are enqueued once."""
    if backend == "sqlite":
        url, name, n = "sqlite:///studies/race.db", "race", 3
    else:
        admin = "postgresql://postgres@127.0.0.1:5432/test"
        why = reachable(admin)
        if why:
            pytest.skip(why)
        import sqlalchemy

        database = f"race_{uuid.uuid4().hex[:10]}"  # a new database: the schema is created in the race too
        engine = sqlalchemy.create_engine(admin,
                                          isolation_level="AUTOCOMMIT")
        with engine.connect() as connection:
            connection.exec_driver_sql(f"CREATE DATABASE {database}")
        url, name, n = f"postgresql://postgres@127.0.0.1:5432/{database}", "race", 3
    try:
        for attempt in range(2):
            created = _race(url, name + str(attempt), n, "embedded")
            assert sorted(created) == [False] * (n - 1) + [True], created
            trials = optuna.load_study(study_name=name + str(attempt), storage=open_storage(url)).trials
            assert [t.user_attrs.get("warm_start") for t in trials] == ["cpu-sample-code-stats-pooling",
                                                                         "sample-code"], trials
    finally:
        if backend == "postgresql":
            engine.dispose()
            optuna_engines = sqlalchemy.create_engine(admin,
                                                      isolation_level="AUTOCOMMIT")
            with optuna_engines.connect() as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
            optuna_engines.dispose()


# --- processes: a killed parent, SIGTERM -----------------------------------------------------------------

def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_workers_stop_with_their_killed_parent(tiny_dataset, workdir):
    """SIGKILL to the parent of --workers 2: the workers get SIGTERM from the kernel (PR_SET_PDEATHSIG),
    end their trials FAIL (ended: interrupted) and exit; no orphan runs on, no BrokenPipeError."""
    command = [sys.executable, "-m", "search.cli", "run", "--trials", "6", "--workers", "2", "--study", "o",
               "--data", str(tiny_dataset), "--budget", "2000", "--device", "cpu", "--no-warm-start"]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_running(SHARED, "o", 2, process)
        children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
        workers = [int(pid) for pid in children
                   if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
        assert len(workers) == 2, children
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), "orphaned workers run on"
        output = process.stdout.read().decode()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert "BrokenPipeError" not in output and "Traceback" not in output, output
    trials = optuna.load_study(study_name="o", storage=SHARED).trials
    assert len(trials) == 2 and all(t.state == TrialState.FAIL for t in trials), trials
    assert all(t.user_attrs.get("ended") == "interrupted" for t in trials)


class _SigtermWhileAsking(optuna.samplers.RandomSampler):
    """SIGTERM to this process from inside ``study.ask()``, once the trial exists in the storage (RUNNING)
    but before Optuna's guard around the objective: where a killed parent's SIGTERM reached a worker in CI."""

    def before_trial(self, study, trial):
        os.kill(os.getpid(), signal.SIGTERM)
        super().before_trial(study, trial)


def _the_trial_a_sigterm_ended(study: optuna.Study, data: Path) -> optuna.trial.FrozenTrial:
    """Run trials of ``study`` until the SIGTERM the test arranged stops the run; its one trial, as stored."""
    from search.processes.signals import interrupt_once
    from search.errors import Terminated

    undo = interrupt_once()
    try:
        with pytest.raises(Terminated):
            run_trials(study, StudySettings.from_attrs(study.user_attrs), load_task(data, 0, torch.device("cpu")), 2)
    finally:
        undo()
    [trial] = optuna.load_study(study_name="f", storage=open_storage(URL)).trials
    return trial


def test_a_signal_while_a_trial_is_being_created_fails_that_trial(tiny_dataset, workdir):
    study = make_study(tiny_dataset)
    study.sampler = _SigtermWhileAsking(seed=0)
    trial = _the_trial_a_sigterm_ended(study, tiny_dataset)
    assert trial.state == TrialState.FAIL and trial.user_attrs["ended"] == "interrupted", trial


def test_a_signal_while_the_trials_heartbeat_starts_fails_that_trial_and_leaves_no_beat(tiny_dataset, workdir,
                                                                                        monkeypatch):
    """A killed parent's SIGTERM reaches its workers just after their trials are created, as their heartbeat
    threads start: raised there, it left Optuna's heartbeat thread (not a daemon) beating, and the worker could
    not exit (an orphan seen in test_workers_stop_with_their_killed_parent)."""
    import threading

    from optuna.storages import _heartbeat

    start = _heartbeat.HeartbeatThread.start

    def start_then_signal(self):
        start(self)
        os.kill(os.getpid(), signal.SIGTERM)  # delivered before start() returns to the runner

    monkeypatch.setattr(_heartbeat.HeartbeatThread, "start", start_then_signal)
    trial = _the_trial_a_sigterm_ended(make_study(tiny_dataset), tiny_dataset)
    assert trial.state == TrialState.FAIL and trial.user_attrs["ended"] == "interrupted", trial
    beating = [t for t in threading.enumerate()
               if t.is_alive() and "_record_heartbeat" in repr(getattr(t, "_target", ""))]
    assert not beating, beating


def test_sigterm_fails_the_running_trial_of_a_single_process_run(tiny_dataset, workdir):
    returncode, output = signal_while_running(
        ["run", "--trials", "3", "--study", "t", "--data", str(tiny_dataset), "--budget", "2000", "--device", "cpu",
         "--no-warm-start"], SHARED, "t", signal.SIGTERM)
    assert returncode == 143, output
    assert output.strip().splitlines()[-1] == ("Error: search run: stopped by SIGTERM (a running trial ended FAIL, "
                                               "ended: interrupted)"), output
    assert "Traceback" not in output
    [trial] = optuna.load_study(study_name="t", storage=SHARED).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["ended"] == "interrupted"


def test_a_background_thread_that_dies_is_one_warning_line_not_a_traceback():
    """Optuna's heartbeat thread died on a full disk with Python's thread traceback on the terminal (seen in the
    suite: test_a_full_disk_is_one_line, when the file-size limit struck in that thread first)."""
    import threading

    import click
    from click.testing import CliRunner

    from search.processes.guard import SafeGroup

    @click.group(cls=SafeGroup)
    def group():
        pass

    @group.command()
    def work():
        def beat():
            raise OSError(28, "No space left on device")

        thread = threading.Thread(target=beat, name="Thread-1 (_record_heartbeat)")
        thread.start()
        thread.join()
        click.echo("the command went on")

    hook = threading.excepthook
    result = CliRunner().invoke(group, ["work"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output, result.output
    assert "warning: Thread-1 (_record_heartbeat) stopped: OSError: No space left on device" in result.output
    assert "the command went on" in result.output
    assert threading.excepthook is hook  # the caller's hook is back after the command


@pytest.mark.parametrize("error", [
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    torch.AcceleratorError("CUDA error: out of memory\nSearch for `cudaErrorMemoryAllocation' in https://docs.nvidia.com"
                           "/cuda/cuda-runtime-api/group__CUDART__TYPES.html for more information."),
], ids=["cublas", "cuda"])
def test_cublas_failing_to_allocate_ends_the_trial_as_out_of_gpu_memory(micro_dataset, workdir, monkeypatch, error):
    # cuBLAS, and CUDA outside PyTorch's allocator, say "the GPU is full" as a RuntimeError of their own: the trial
    # must read "out of GPU memory" (and the worker give its cached memory back) as for PyTorch's OutOfMemoryError,
    # not show a CUDA error code
    import search.running.objective as objective

    def full_gpu(*args, **kwargs):
        raise error

    monkeypatch.setattr(objective, "train", full_gpu)
    result = invoke("run", "--trials", "1", "--study", "oom", "--storage", URL, "--data", str(micro_dataset),
                    "--budget", "8", "--device", "cpu", "--no-warm-start")
    assert "Traceback" not in result.output, result.output
    [trial] = optuna.load_study(study_name="oom", storage=URL).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["ended"] == "failed: out of GPU memory"
