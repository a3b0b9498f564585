"""Many machines: the README's recipes run for real (a Slurm job array's script, two `search run` on one
PostgreSQL server read back by Optuna's CLI and optuna-dashboard, a `search proxy` with two workers on
SQLite and on PostgreSQL), and the storage URL rules behind them: journal paths made absolute,
``SEARCH_STORAGE``, grpc:// addresses, a missing driver named with its extra.

The recipes are read from README.md's "Many machines" section and run line by line as real processes,
with this machine's servers, a small dataset and one trial per worker substituted in: the README cannot
hold a command that does not work.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import optuna
import pytest

from tests.helpers import POSTGRES, delete_study, invoke, one_error_line, reachable, study_dbs

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
README_URL = "postgresql://search:PASSWORD@dbhost/optuna"  # the recipes' database
PROCESS_TIMEOUT = 900  # seconds for one `search run` of one trial, on a loaded 2-core CI machine


# --- the README's recipes -----------------------------------------------------------------------------

def recipe_blocks() -> list[str]:
    """The bash blocks of the README's "Many machines" section, in order."""
    text = README.read_text()
    section = re.search(r"^### Many machines\n(.*?)^##", text, flags=re.S | re.M)
    assert section, "README.md has no '### Many machines' section"
    return re.findall(r"```bash\n(.*?)```", section.group(1), flags=re.S)


def block_with(word: str) -> list[str]:
    """The command lines (comments dropped) of the one recipe block that holds ``word``."""
    blocks = [b for b in recipe_blocks() if word in b]
    assert len(blocks) == 1, (word, blocks)
    return [line for line in blocks[0].splitlines()]


def adapt(line: str, url: str, study: str, data: Path, port: int = 0) -> str:
    """A recipe line as run here: this machine's storage and ports, the test's study, a small dataset, one
    trial per worker at 8 steps on the CPU. Everything else is the README's."""
    line = line.split("   #")[0].rstrip()  # the trailing comment ("# on machine-a")
    line = line.replace(README_URL, url).replace("Dataset/", str(data))
    line = line.replace("--study hw04", f"--study {study}").replace("--study-name hw04", f"--study-name {study}")
    line = line.replace("--host 0.0.0.0", "--host 127.0.0.1").replace("machine-a", "127.0.0.1")
    line = line.replace(":13000", f":{port}").replace("--port 13000", f"--port {port}").replace("--port 8080", f"--port {port}")
    if line.startswith("search run"):
        line = re.sub(r"--trials \d+", "--trials 1", line) + " --budget 8 --device cpu"
    return line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SEARCH_STORAGE"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `search`, `optuna` here
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def start(line: str, cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(shlex.split(line), cwd=cwd, env=environment(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, what: str) -> str:
    out, _ = process.communicate(timeout=PROCESS_TIMEOUT)
    assert process.returncode == 0, f"{what} exited {process.returncode}:\n{out}"
    assert "Traceback" not in out, out
    return out


def trials_of(url: str, study: str) -> list[optuna.trial.FrozenTrial]:
    from search.db.storage import open_storage

    return optuna.load_study(study_name=study, storage=open_storage(url, heartbeat_interval=None)).trials


def check_both_ran(url: str, study: str, outputs: list[str]) -> list[optuna.trial.FrozenTrial]:
    """The study holds one finished trial of each of the two processes."""
    trials = trials_of(url, study)
    assert len(trials) == 2 and all(t.state.is_finished() for t in trials), [(t.number, t.state) for t in trials]
    assert len({t.user_attrs["worker"] for t in trials}) == 2, [t.user_attrs.get("worker") for t in trials]
    for out in outputs:
        assert "trial 1/1" in out, out
    return trials


def test_the_slurm_array_script_runs_its_tasks_on_one_study(postgres, micro_dataset, workdir):
    """The README's sbatch script, run by bash as two array tasks at once (as Slurm would start them)."""
    lines = block_with("#SBATCH")
    assert lines[0] == "#!/bin/bash" and any(line.startswith("#SBATCH --array=") for line in lines)
    study = f"slurm-{uuid.uuid4().hex[:10]}"
    script = workdir / "hw04.sbatch"
    script.write_text("\n".join(adapt(line, postgres, study, micro_dataset) for line in lines) + "\n")
    assert f"export SEARCH_STORAGE={postgres}" in script.read_text()
    try:
        tasks = [start(f"bash {script}", workdir, SLURM_ARRAY_TASK_ID=str(i), SLURM_ARRAY_JOB_ID="7")
                 for i in range(2)]
        outputs = [finish(task, f"array task {i}") for i, task in enumerate(tasks)]
        check_both_ran(postgres, study, outputs)
        assert sum("created study" in out for out in outputs) == 1  # one creates it, the other joins
        assert all(f"in {postgres}" in out for out in outputs)  # SEARCH_STORAGE, not studies/<study>.db
        assert not study_dbs(workdir)
    finally:
        delete_study(postgres, study)


def test_two_machines_on_postgresql_and_optuna_and_optuna_dashboard_read_it(postgres, micro_dataset, workdir):
    """Two `search run` on one PostgreSQL study; Optuna's CLI and optuna-dashboard open the same plain
    postgresql:// URL (psycopg 3, the db extra's driver)."""
    run, optuna_cli, dashboard = block_with("optuna-dashboard")
    study = f"two-{uuid.uuid4().hex[:10]}"
    try:
        workers = [start(adapt(run, postgres, study, micro_dataset), workdir) for _ in range(2)]
        check_both_ran(postgres, study, [finish(w, "search run") for w in workers])

        listed = subprocess.run(shlex.split(adapt(optuna_cli, postgres, study, micro_dataset)), cwd=workdir,
                                env=environment(), capture_output=True, text=True, timeout=300)
        assert listed.returncode == 0, listed.stderr
        rows = [line for line in listed.stdout.splitlines() if re.match(r"\|\s+\d+\s+\|", line)]
        assert len(rows) == 2 and all("COMPLETE" in r or "PRUNED" in r for r in rows), listed.stdout

        port = free_port()
        server = start(adapt(dashboard, postgres, study, micro_dataset, port), workdir)
        try:
            summaries = wait_json(f"http://127.0.0.1:{port}/api/studies", server)["study_summaries"]
            mine = [s for s in summaries if s["study_name"] == study]
            assert len(mine) == 1, summaries
            detail = wait_json(f"http://127.0.0.1:{port}/api/studies/{mine[0]['study_id']}", server)
            assert len(detail["trials"]) == 2
        finally:
            server.terminate()
            server.communicate(timeout=30)
    finally:
        delete_study(postgres, study)


def wait_json(address: str, server: subprocess.Popen, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        assert server.poll() is None, server.communicate()[0]
        try:
            with urllib.request.urlopen(address, timeout=10) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_proxy_serves_two_workers(backend, micro_dataset, workdir):
    """`search proxy` in front of a SQLite file or a PostgreSQL server; two `search run` through
    grpc://; read commands work through it too; Ctrl-C stops it with 130."""
    if backend == "postgresql":
        url = POSTGRES
        why = reachable(url)
        if why:
            pytest.skip(why)
    else:
        url = "sqlite:///studies/hw04.db"  # the proxy's own file, as the README says it may serve
    serve, run = block_with("search proxy")
    port, study = free_port(), f"proxied-{uuid.uuid4().hex[:10]}"
    proxy = start(adapt(serve, url, study, micro_dataset, port), workdir)
    try:
        banner = proxy.stdout.readline()
        assert f"search proxy: serving {url} on 127.0.0.1:{port}" in banner, banner + proxy.stdout.read()
        assert f"--storage grpc://127.0.0.1:{port}" in banner
        workers = [start(adapt(run, url, study, micro_dataset, port), workdir) for _ in range(2)]
        outputs = [finish(w, "search run through the proxy") for w in workers]
        assert all(f"in grpc://127.0.0.1:{port}" in out for out in outputs)
        check_both_ran(url, study, outputs)

        listed = invoke("trials", "--study", study, "--storage", f"grpc://127.0.0.1:{port}", "--json")
        assert listed.exit_code == 0, listed.output
        assert len(json.loads(listed.output)) == 2

        proxy.send_signal(signal.SIGINT)
        out, _ = proxy.communicate(timeout=60)
        assert proxy.returncode == 130, out
        assert "search proxy: stopped (Ctrl-C)" in out and "Traceback" not in out, out
    finally:
        if proxy.poll() is None:
            proxy.kill()
            proxy.communicate()
        if backend == "postgresql":
            delete_study(url, study)


def _read_until(process: subprocess.Popen, text: str, timeout: float = PROCESS_TIMEOUT) -> str:
    """The process's output lines up to and including the first that holds ``text`` (all of it if it ends)."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            break
    return "".join(seen)


def test_a_killed_proxy_is_one_line_and_its_trial_is_failed_once_it_is_back(micro_dataset, workdir):
    """SIGKILL to `search proxy` under a running worker: the worker ends with one line naming the proxy (not
    Optuna's gRPC client's UnboundLocalError), its trial stays RUNNING in the database; with the proxy back, the
    next `search run` on this machine records that trial as FAIL (ended: interrupted) and says so."""
    from search.db.storage import open_storage

    port, study, url = free_port(), "lost", "sqlite:///studies/lost.db"
    serve = f"search proxy --storage {url} --port {port}"
    run = (f"search run --storage grpc://127.0.0.1:{port} --study {study} --data {micro_dataset} --trials 1 "
           "--budget 400 --device cpu")
    processes = [start(serve, workdir)]
    try:
        assert "search proxy: serving" in processes[0].stdout.readline()
        processes.append(start(run, workdir))
        out = _read_until(processes[1], "training:")
        assert "training:" in out, out + processes[1].communicate()[0]
        processes[0].kill()
        processes[0].communicate()
        rest, _ = processes[1].communicate(timeout=PROCESS_TIMEOUT)
        out += rest
        assert processes[1].returncode == 1, out
        errors = [line for line in out.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1, out
        assert errors[0].startswith(f"Error: search run: the storage proxy at grpc://127.0.0.1:{port} stopped "
                                    "answering (gRPC UNAVAILABLE)"), out
        assert "Traceback" not in out and "UnboundLocalError" not in out, out
        stored = optuna.load_study(study_name=study, storage=open_storage(url, heartbeat_interval=None))
        assert [t.state for t in stored.trials if t.number == 0] == [optuna.trial.TrialState.RUNNING]

        processes.append(start(serve, workdir))
        assert "search proxy: serving" in processes[2].stdout.readline()
        processes.append(start(run, workdir))
        out = _read_until(processes[3], "recorded as FAIL")
        assert ("trial #0 of a worker of this machine that no longer runs, left RUNNING: recorded as FAIL "
                "(ended: interrupted)") in out, out + processes[3].communicate()[0]
        stored = optuna.load_study(study_name=study, storage=open_storage(url, heartbeat_interval=None))
        first = stored.trials[0]
        assert first.state == optuna.trial.TrialState.FAIL and first.user_attrs["ended"] == "interrupted"
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()


# --- storage URLs -------------------------------------------------------------------------------------

def test_a_journal_url_with_three_slashes_is_absolute(micro_dataset, workdir, tmp_path, monkeypatch):
    """journal:///tmp/ux/j.log is /tmp/ux/j.log (not ./tmp/ux/j.log: on several machines that silently
    makes one study per machine); journal://rel/j.log is relative to the current folder; both print as
    the absolute journal:/// URL."""
    journal = tmp_path / "shared" / "j.log"
    absolute = f"journal://{journal.as_posix()}"
    assert absolute.startswith("journal:///")
    # --no-warm-start: one trial run, none left queued (a CPU study queues two warm-start trials)
    result = invoke("run", "--trials", "1", "--study", "j", "--storage", absolute, "--data", str(micro_dataset),
                    "--budget", "8", "--device", "cpu", "--no-warm-start")
    assert result.exit_code == 0, result.output
    assert journal.is_file()
    assert not (workdir / tmp_path.relative_to("/")).exists()  # not ./tmp/.../shared/j.log
    assert f"created study 'j' in {absolute}" in result.output

    monkeypatch.chdir(tmp_path)  # the same file, relative: journal://shared/j.log
    listed = invoke("studies", "--storage", "journal://shared/j.log", "--json")
    assert listed.exit_code == 0, listed.output
    assert [(r["storage"], r["study"], r["trials"]) for r in json.loads(listed.output)] == [(absolute, "j", 1)]
    missing = one_error_line(invoke("trials", "--study", "j", "--storage", "journal://elsewhere/j.log"))
    assert f"journal://{(tmp_path / 'elsewhere' / 'j.log').as_posix()}" in missing  # named absolute
    assert not (tmp_path / "elsewhere").exists()  # a read command creates nothing


def test_search_storage_is_every_commands_default_and_storage_wins(micro_dataset, workdir, monkeypatch):
    monkeypatch.setenv("SEARCH_STORAGE", "sqlite:///shared/all.db")
    result = invoke("run", "--trials", "1", "--study", "env", "--data", str(micro_dataset), "--budget", "8",
                    "--device", "cpu", "--no-warm-start")  # one trial, none left queued
    assert result.exit_code == 0, result.output
    assert "created study 'env' in sqlite:///shared/all.db" in result.output
    assert (workdir / "shared" / "all.db").is_file() and not (workdir / "studies" / "env.db").exists()

    listed = invoke("trials", "--study", "env", "--json")  # found through SEARCH_STORAGE
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.output)) == 1
    studies = invoke("studies", "--json")
    assert [(r["storage"], r["study"]) for r in json.loads(studies.output)] == [("sqlite:///shared/all.db", "env")]

    line = one_error_line(invoke("trials", "--study", "env", "--storage", "sqlite:///studies/env.db"))
    assert "studies/env.db does not exist" in line  # --storage wins over SEARCH_STORAGE

    monkeypatch.setenv("SEARCH_STORAGE", "nonsense")
    line = one_error_line(invoke("trials", "--study", "env"), alone=True)
    assert line.startswith("Error: --storage nonsense (from SEARCH_STORAGE): not a storage URL"), line
    monkeypatch.setenv("SEARCH_STORAGE", "journal://rel/j.log")  # resolved like --storage
    line = one_error_line(invoke("show", "--study", "env"))
    assert f"journal://{(workdir / 'rel' / 'j.log').as_posix()} (from SEARCH_STORAGE): no such file" in line


@pytest.mark.parametrize("url, blocked, says", [
    ("postgresql://postgres@127.0.0.1:5432/test", ["psycopg", "psycopg2"], "the PostgreSQL driver is not installed"),
    ("mysql+pymysql://root@127.0.0.1:3306/test", ["pymysql", "MySQLdb"], "the MySQL driver is not installed"),
    ("grpc://127.0.0.1:13000", ["grpc"], "the gRPC client (grpcio, protobuf) is not installed"),
], ids=["postgresql", "mysql", "grpc"])
def test_a_missing_driver_names_the_extra(url, blocked, says, workdir):
    """In a process where the driver cannot be imported (as where the db extra is not installed)."""
    code = (f"import sys; sys.modules.update(dict.fromkeys({blocked!r})); sys.argv[0] = 'search'; "
            "from search.cli import main; main()")
    result = subprocess.run([sys.executable, "-c", code, "trials", "--study", "x", "--storage", url], cwd=workdir,
                            env=environment(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines() == [f'Error: --storage {url}: {says}; pip install -e ".[db]"'], \
        result.stderr


def test_grpc_addresses_and_proxy_mistakes_are_one_line(workdir):
    port = free_port()
    line = one_error_line(invoke("trials", "--study", "x", "--storage", f"grpc://127.0.0.1:{port}"), alone=True)
    assert f"no storage proxy answers at 127.0.0.1:{port} within 10 s (start one there: search proxy" in line
    for url in ("grpc://proxyhost/db", "grpc://proxyhost:99999", "grpc://"):
        line = one_error_line(invoke("trials", "--study", "x", "--storage", url), alone=True)
        assert f"--storage {url}: expected grpc://HOST:PORT" in line, line

    line = one_error_line(invoke("proxy"), alone=True)
    assert line.startswith("Error: --storage: give the database to serve")
    line = one_error_line(invoke("proxy", "--storage", "journal://j.log"), alone=True)
    assert "a proxy serves a database storage" in line and not (workdir / "j.log").exists()
    with socket.socket() as busy:  # another server listens there: refused, not shared
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        line = one_error_line(invoke("proxy", "--storage", "sqlite:///studies/p.db", "--port", str(taken)), alone=True)
    assert line == f"Error: --port {taken}: already in use on 127.0.0.1"
