"""What several test modules share: the CLI run in-process, the check of a refused command's error line, the
sample-code configuration, the database servers of CI, a new study made the way ``search run`` makes it, a
study of chosen configurations run through the CLI, and ``search dashboard`` running in a subprocess.

Fixtures (the synthetic datasets, an empty working folder) are in ``conftest.py``; these are plain functions
and constants, imported as ``from tests.helpers import ...``, so no test module imports another.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from click.testing import CliRunner, Result

# The library is imported where it is used: conftest imports TINY from here, and a library module that does
# not import (mid-change) must fail only the tests that use it, not every test through conftest.
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"  # CI's servers; tests that need one skip without it
MARIADB = "mysql+pymysql://root@127.0.0.1:3306/test"
SHARED = "sqlite:///studies/studies.sqlite3"  # the default storage of every study of the working folder
# conftest's tiny dataset: 6 speakers, 10 utterances each (the split and sizes some tests count on)
TINY = dict(speakers=6, utterances_per_speaker=10, length_scale=0.25, seed=3)


def __getattr__(name: str):
    """``SAMPLE``: the sample code's configuration (``KNOWN_CONFIGS["sample-code"]``), the cheapest sure trial
    to enqueue; read from search.running.space on first use (see above)."""
    if name == "SAMPLE":
        from search.running.space import KNOWN_CONFIGS

        return KNOWN_CONFIGS["sample-code"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def invoke(*args: str, **extra) -> Result:
    """``search ARGS...`` in this process (click's CliRunner); ``extra`` goes to ``CliRunner.invoke``."""
    from search.cli import main

    return CliRunner().invoke(main, list(args), **extra)


def one_error_line(result: Result, alone: bool = False) -> str:
    """The error line of a refused command, checked: a non-zero exit, no traceback, and exactly one line that
    starts with ``Error:``, the last one (click's usage errors print their usage lines above it). With
    ``alone``, nothing else was printed either: a refusal before any work."""
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output
    if alone:
        assert len(lines) == 1, result.output
    return lines[-1]


def study_dbs(folder: Path) -> list[Path]:
    """The SQLite study files under ``folder/studies`` (the shared file, old per-study files): none after a refused
    command."""
    return sorted([*(folder / "studies").rglob("*.db"), *(folder / "studies").rglob("*.sqlite3")])


def reachable(url: str) -> str | None:
    """None if a database answers at ``url``, else why not (the skip reason)."""
    import sqlalchemy

    from search.db.storage import _with_installed_driver

    try:
        engine = sqlalchemy.create_engine(_with_installed_driver(sqlalchemy.engine.make_url(url)),
                                          connect_args={"connect_timeout": 3})
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        engine.dispose()
        return None
    except Exception as err:  # noqa: BLE001 - any reason to skip is reported
        return f"{url} not reachable ({type(err).__name__}: {str(err).strip().splitlines()[0][:120]})"


def delete_study(url: str, study: str) -> None:
    """Remove study ``study`` from the database at ``url`` (a test's own, on a shared server); none there: nothing."""
    import optuna

    from search.db.storage import open_storage

    try:
        optuna.delete_study(study_name=study, storage=open_storage(url, heartbeat_interval=None))
    except KeyError:
        pass


def settings_for(data: Path, budget: int = 8, pruning: bool = True):
    """The settings ``search run --budget BUDGET --device cpu --seed 0`` gives a new study on ``data``."""
    from search.running.settings import RequestedSettings

    requested = RequestedSettings(budget=budget, data=str(Path(data).resolve()), seed=0, profile="cpu",
                                  pruning=pruning)
    return requested.resolve("new", None, "cpu")


def new_study(data: Path, url: str, name: str, budget: int = 8, pruning: bool = True):
    """A new ``optuna.Study`` as ``search run`` creates it, without its warm-start trials (tests enqueue their
    own); fails if the study exists already."""
    from search.running.study import open_study

    study, _, created = open_study(name, url, settings_for(data, budget, pruning), warm_start=False)
    assert created, f"study {name!r} exists already at {url}"
    return study


def wait_running(url: str, name: str, count: int, process, seconds: float = 120) -> None:
    """Wait until study ``name`` at ``url`` has ``count`` RUNNING trials (``process`` still alive), else fail."""
    import time

    import optuna
    from optuna.trial import TrialState

    from search.db.storage import open_storage

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
            if sum(t.state == TrialState.RUNNING for t in trials) >= count:
                return
        except Exception:  # noqa: BLE001 - not created yet
            pass
        time.sleep(0.3)
    raise AssertionError(f"no {count} running trials: {process.poll()}")


def kill_once_written(process, path: Path, seconds: float, missing: str) -> None:
    """SIGKILL ``process`` as soon as ``path`` exists (a checkpoint: the run is mid-way); fail with ``missing``
    if it never appears."""
    import os
    import signal
    import time

    deadline = time.monotonic() + seconds
    while not path.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.exists(), missing
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)


def run_configs(data: Path, name: str, configs: list[dict], *flags: str) -> Result:
    """A new study ``name`` in the working folder's ``studies/``, whose trials are exactly ``configs`` (enqueued,
    in order), run through ``search run`` (budget 8, the smallest; CPU; seed 1; no warm start); ``flags`` go to
    the command. Fails the test if the run fails."""
    import optuna

    Path("studies").mkdir(exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///studies/{name}.db", direction="maximize")
    for params in configs:
        study.enqueue_trial({k: v for k, v in params.items() if v is not None})
    result = invoke("run", "--trials", str(len(configs)), "--study", name, "--data", str(data), "--budget", "8",
                    "--device", "cpu", "--seed", "1", "--no-warm-start", *flags)
    assert result.exit_code == 0, result.output
    return result


@contextmanager
def in_folder(folder: Path) -> Iterator[Path]:
    """The working folder is ``folder`` inside the block (for module-scoped fixtures: pytest's monkeypatch.chdir
    is per test; contextlib.chdir needs Python 3.11)."""
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(previous)


# The figures of `search report`'s page, in order: the titles of its <h2> sections.
REPORT_FIGURES = ["Optimisation history", "Intermediate values", "Parameter importances", "Parallel coordinates",
                  "Slices", "Encoders, poolings and losses compared", "Timeline"]


@contextmanager
def dashboard_server(folder: Path, study: str, seconds: float = 90) -> Iterator[str]:
    """``search dashboard --study STUDY`` as users start it, in a subprocess working in ``folder`` on a free
    port; yields its base URL once it answers, and stops it when the block ends. Its output goes to
    ``folder/dashboard.out``, shown when it exits early or does not answer within ``seconds``."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    out = folder / "dashboard.out"
    with open(out, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", "--study", study,
                                    "--port", str(port)], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + seconds
        while True:
            assert process.poll() is None, f"search dashboard exited with {process.returncode}: {out.read_text()}"
            try:
                with urllib.request.urlopen(base + "/api/studies", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"search dashboard did not answer within {seconds} s: {out.read_text()}"
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def signal_while_running(args: list[str], url: str, name: str, sig, pause: float = 0.0, seconds: float = 120,
                         timeout: float = 60) -> tuple[int, str]:
    """``search ARGS...`` in a real process: once study ``name`` at ``url`` has a RUNNING trial (and ``pause``
    seconds more), send it ``sig`` (a tuple: each, back to back); (exit code, everything it printed) once it has
    ended, within ``timeout``."""
    import os
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-m", "search.cli", *args], env={**os.environ, "PYTHONPATH": str(repo)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_running(url, name, 1, process, seconds=seconds)
        time.sleep(pause)
        for each in sig if isinstance(sig, tuple) else (sig,):
            process.send_signal(each)
        output = process.communicate(timeout=timeout)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
    return process.returncode, output
