"""`search run --total-trials N`: a study-wide cap shared by every run on the study (machines, or here two real
processes on one SQLite study): each stops taking trials once the study holds N counted trials
(search/running/workers.py ``trial_count``)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna

from tests.helpers import SHARED, delete_study, invoke, one_error_line, study_dbs

REPO = Path(__file__).resolve().parents[1]


def search_run(folder: Path, data: Path, *extra: str, study: str = "cap", **env_extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **env_extra}
    return subprocess.Popen([sys.executable, "-m", "search.cli", "run", "--study", study, "--data", str(data),
                             "--budget", "8", "--device", "cpu", *extra], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_processes_stop_together_at_the_studys_total(micro_dataset, workdir):
    from search.running.target import trial_count

    processes = [search_run(workdir, micro_dataset, "--total-trials", "4") for _ in range(2)]
    outputs = [p.communicate(timeout=540)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    study = optuna.load_study(study_name="cap", storage=SHARED)
    assert trial_count(study) == (4, 0)  # exactly the cap: the two runs took their trials one at a time
    assert all(t.state.is_finished() for t in study.trials) and len(study.trials) == 4
    ran = [sum(line.startswith("trial ") for line in out.splitlines()) for out in outputs]
    assert sum(ran) == 4, outputs
    assert all("--total-trials 4: the study holds " in out for out in outputs), outputs

    # the cap is the study's: a later run (another machine, a resubmitted job) starts nothing; --trials does not
    # take it past the cap either
    again = search_run(workdir, micro_dataset, "--total-trials", "4", "--trials", "3")
    out = again.communicate(timeout=300)[0]
    assert again.returncode == 0, out
    assert "--total-trials 4: the study holds 4 counted trials; no trial to start" in out
    assert not any(line.startswith("trial ") for line in out.splitlines()) and "best trial #" in out
    assert len(optuna.load_study(study_name="cap", storage=SHARED).trials) == 4


def test_a_bad_total_is_one_error_line_and_creates_nothing(micro_dataset, workdir):
    for value in ("0", "-3", "many"):
        result = invoke("run", "--total-trials", value, "--study", "cap", "--data", str(micro_dataset))
        line = one_error_line(result)
        assert "'--total-trials'" in line, line
    assert study_dbs(workdir) == []


def test_two_machines_on_postgresql_overshoot_the_total_by_at_most_one(postgres, micro_dataset, workdir, tmp_path):
    """Runs on two machines share no lock file (search/running/workers.py ``study_lock_path``: a temp folder each, as two
    machines have): on one PostgreSQL study each may take the last trial at once, so the study holds the cap or one
    trial more (machines - 1), never each run's own share of it."""
    from search.db.storage import open_storage
    from search.running.target import trial_count

    study = f"cap-{uuid.uuid4().hex[:10]}"
    temps = [tmp_path / f"machine{i}" for i in range(2)]
    for folder in temps:
        folder.mkdir()
    processes = [search_run(workdir, micro_dataset, "--total-trials", "5", "--storage", postgres, "--workers", "2",
                            study=study, TMPDIR=str(folder)) for folder in temps]
    try:
        outputs = [p.communicate(timeout=540)[0] for p in processes]
        assert [p.returncode for p in processes] == [0, 0], outputs
        loaded = optuna.load_study(study_name=study, storage=open_storage(postgres, heartbeat_interval=None))
        count, running = trial_count(loaded)
        assert running == 0 and count in (5, 6), (count, outputs)
        ran = [sum(line.startswith("trial ") for line in out.splitlines()) for out in outputs]
        assert sum(ran) == count and all(ran), outputs  # both machines took trials
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
        delete_study(postgres, study)
