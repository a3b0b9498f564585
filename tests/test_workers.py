"""Several workers on one study: PostgreSQL, MariaDB, one SQLite file, journal storage; Hyperband's
brackets across processes; a worker killed with SIGKILL mid-trial.

The 100-trial tests need the PostgreSQL and MariaDB servers of CI on 127.0.0.1 (skipped, saying so,
when they are not reachable). Trials are the real objective with a tiny budget (8 steps) on a
micro dataset; most are the sample-code configuration, enqueued, so a trial takes well under a second.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.running.settings import StudySettings
from search.db.storage import open_storage
from search.running.target import run_target, trial_count
from tests.helpers import MARIADB, POSTGRES, SAMPLE, delete_study, invoke, new_study, reachable

REPO = Path(__file__).resolve().parents[1]


def states(study: optuna.Study) -> dict[str, int]:
    found: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        found[t.state.name] = found.get(t.state.name, 0) + 1
    return found


def test_the_shared_count_skips_queued_trials_and_re_queued_failures(workdir):
    """What counts towards a run's target: finished and running trials, not queued ones, and not a
    killed trial that the heartbeat re-queued (its retry takes its place once it runs)."""
    study = optuna.create_study(study_name="count", storage=open_storage("sqlite:///studies/count.db"))
    study.enqueue_trial({"x": 0.5})  # WAITING: not counted
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)  # the queued one and a sampled one
    assert trial_count(study) == (2, 0)
    dead = study.ask()  # a worker's trial, then the worker is killed...
    assert trial_count(study) == (3, 1)
    study._storage.set_trial_state_values(dead._trial_id, TrialState.FAIL)  # ...the grace period passes
    assert trial_count(study) == (3, 0)
    retry = {"failed_trial": dead.number, "retry_history": [dead.number]}  # RetryHeartbeatStaleTrialCallback's
    study.add_trial(optuna.create_trial(state=TrialState.WAITING, params={}, distributions={}, system_attrs=retry))
    assert trial_count(study) == (2, 0)  # the retry waits: the killed attempt no longer counts
    study.tell(study.ask(), 1.0)  # the retry runs
    assert trial_count(study) == (3, 0)
    assert run_target(study, 5) == 8
    assert run_target(study, None) is None
    study.tell(study.ask(), float("nan"))  # a trial that fails (not killed) counts: it is not run again
    assert trial_count(study) == (4, 0)


def _sampled(handles: list[optuna.Study], n: int) -> dict[int, dict]:
    """Ask ``n`` trials, taking turns between ``handles`` (processes on one study), and sample each one's
    configuration from the space as a trial does; {trial number: parameters}."""
    from search.running import space as search_space

    space, params = search_space.build_space("cpu"), {}
    for i in range(n):
        trial = handles[i % len(handles)].ask()
        params[trial.number] = search_space.suggest(trial, space)
    return params


def test_processes_joining_a_study_together_sample_different_trials_and_the_first_trials_are_the_seeds(
        tiny_dataset, workdir):
    """Two processes opening one study at the same moment with the same --seed (two machines, two Slurm
    tasks) must not draw the same configurations; and trial N's start-up configuration is the same whether
    one process or two ran the study."""
    from search.running.study import open_study
    from tests.helpers import settings_for

    url = "sqlite:///studies/seeded.db"
    alone = _sampled([new_study(tiny_dataset, url, "one")], 6)
    first = new_study(tiny_dataset, url, "two")
    second = open_study("two", url, settings_for(tiny_dataset), warm_start=False)[0]  # joins at the same count
    together = _sampled([first, second], 6)
    assert len({repr(sorted(p.items())) for p in together.values()}) == 6, together  # no two alike
    assert together == alone


@pytest.mark.parametrize("url", [POSTGRES, MARIADB], ids=["postgresql", "mariadb"])
def test_four_workers_run_100_trials_on_a_database_server(url, micro_dataset, workdir):
    why = reachable(url)
    if why:
        pytest.skip(why)
    name = f"test-workers-{uuid.uuid4().hex[:12]}"
    study = new_study(micro_dataset, url, name)
    try:
        for _ in range(80):  # 80 enqueued (the pop race: FOR UPDATE), 20 sampled (the trial-number race)
            study.enqueue_trial(SAMPLE)
        result = invoke("run", "--trials", "100", "--workers", "4", "--study", name,
                        "--storage", url, "--data", str(micro_dataset), "--budget", "8",
                        "--device", "cpu", "--no-warm-start")
        assert result.exit_code == 0, result.output
        assert "100 trials shared by 4 worker processes (cpu, cpu, cpu, cpu)" in result.output
        assert "trial 100/100" in result.output
        trials = optuna.load_study(study_name=name, storage=open_storage(url)).get_trials(deepcopy=False)
        numbers = [t.number for t in trials]
        assert len(trials) == 100
        assert sorted(numbers) == list(range(100))  # no duplicate, none missing
        assert all(t.state.is_finished() for t in trials), states(study)  # none RUNNING or WAITING
        assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 100
        assert len({t.user_attrs["worker"] for t in trials}) == 4  # all four workers ran trials
    finally:
        optuna.delete_study(study_name=name, storage=open_storage(url))


def test_two_workers_share_one_sqlite_file(micro_dataset, workdir):
    url = "sqlite:///studies/two.db"
    study = new_study(micro_dataset, url, "two")
    for _ in range(12):  # enqueued trials: each must run exactly once (SQLite has no SELECT FOR UPDATE)
        study.enqueue_trial(SAMPLE)
    result = invoke("run", "--trials", "20", "--workers", "2", "--study", "two",
                    "--data", str(micro_dataset), "--budget", "8", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "20 trials shared by 2 worker processes (cpu, cpu)" in result.output
    assert "locked" not in result.output
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 20 and sorted(t.number for t in trials) == list(range(20))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), states(study)
    assert sum(t.params == SAMPLE for t in trials) >= 12


def _hammer(url: str, name: str, n: int) -> int:
    """A worker process asking for and finishing ``n`` trials as fast as the storage allows."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=n)
    return n


def test_sqlite_under_load_has_no_lock_errors(workdir):
    """Four processes, a trivial objective, every storage call contending for one SQLite file."""
    url = "sqlite:///studies/load.db"
    study = optuna.create_study(study_name="load", storage=open_storage(url))
    for i in range(40):
        study.enqueue_trial({"x": i / 40})
    with ProcessPoolExecutor(4, mp_context=get_context("spawn")) as pool:
        assert sum(pool.map(_hammer, [url] * 4, ["load"] * 4, [50] * 4)) == 200
    trials = study.get_trials(deepcopy=False)
    assert len(trials) == 200 and sorted(t.number for t in trials) == list(range(200))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.params["x"] for t in trials if t.params["x"] in {i / 40 for i in range(40)})[:40] == \
        [i / 40 for i in range(40)]  # each enqueued point ran (exactly once: 200 trials in all)
    assert sqlite3.connect("studies/load.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_journal_storage_with_two_workers(micro_dataset, workdir):
    result = invoke("run", "--trials", "6", "--workers", "2", "--study", "j", "--storage",
                    "journal://studies/j.log", "--data", str(micro_dataset), "--budget", "8",
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    trials = optuna.load_study(study_name="j", storage=open_storage("journal://studies/j.log")).trials
    assert len(trials) == 6 and all(t.state.is_finished() for t in trials)


def _brackets(url: str, name: str, budget: int) -> tuple:
    """In a fresh process: the pruner a worker builds, initialised on the study as that process sees it."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    from search.running.sampler import make_pruner

    pruner = make_pruner(StudySettings.from_attrs(study.user_attrs))
    pruner = getattr(pruner, "hyperband", pruner)  # a cpu study's second look wraps it (search/running/sampler.py)
    pruner._try_initialization(study)  # what its first prune() call does
    fake = [optuna.trial.FrozenTrial(number=n, state=TrialState.RUNNING, value=None, datetime_start=None,
                                     datetime_complete=None, params={}, distributions={}, user_attrs={},
                                     system_attrs={}, intermediate_values={}, trial_id=n) for n in range(60)]
    return (pruner._max_resource, pruner._n_brackets, tuple(pruner._trial_allocation_budgets),
            tuple(pruner._get_bracket_id(study, t) for t in fake))


def test_hyperband_brackets_are_the_same_in_every_process(micro_dataset, workdir):
    """With max_resource='auto' each process would guess it from the trials it has seen so far; ours is
    the budget, so a worker that starts early and one that starts late put each trial in the same bracket."""
    from dataclasses import replace

    from search.running.study import open_study
    from tests.helpers import settings_for

    url, budget = "sqlite:///studies/hb.db", 64
    # a GPU study's (full profile) Hyperband, of two brackets; a CPU study's pruner has one (search/running/study.py)
    study = open_study("hb", url, replace(settings_for(micro_dataset, budget), profile="full"), warm_start=False)[0]
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        early = pool.submit(_brackets, url, "hb", budget).result()
    study = optuna.load_study(study_name="hb", storage=open_storage(url, heartbeat_interval=None))  # ask/tell by hand
    for last_step in (8, 16, 24):  # completed trials that stopped early: 'auto' would take 25 as max
        trial = study.ask()
        for step in range(8, last_step + 1, 8):
            trial.report(0.5, step)
        study.tell(trial, 0.5)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        late = pool.submit(_brackets, url, "hb", budget).result()
    assert early == late
    assert early[0] == budget and early[1] == 2  # floor(log3(64 / 8)) + 1 brackets
    assert set(early[3]) == {0, 1}  # trials do land in both brackets


# ---------------------------------------------------------------------------------------------------
# SIGKILL mid-trial: the heartbeat marks the trial FAIL after the grace period, the retry callback
# re-queues it (WAITING), and a later worker runs it. Heartbeat 1 s, grace 3 s through the environment.

FAST_HEARTBEATS = {"SEARCH_HEARTBEAT_INTERVAL": "1", "SEARCH_GRACE_PERIOD": "3"}


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_killed_workers_trials_are_failed_and_rerun(tiny_dataset, workdir, monkeypatch):
    for key, value in FAST_HEARTBEATS.items():
        monkeypatch.setenv(key, value)  # this process's storage handles and every subprocess's
    url, name, budget = "sqlite:///studies/kill.db", "kill", 48
    study = new_study(tiny_dataset, url, name, budget)
    for _ in range(12):
        study.enqueue_trial(SAMPLE)
    command = [sys.executable, "-m", "search.cli", "run", "--trials", "4", "--workers", "2", "--study", name,
               "--data", str(tiny_dataset), "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    rng = random.Random(5)
    killed: list[int] = []  # trial numbers running in the worker at the moment it was killed
    for _round in range(3):
        parent = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            victim = None
            while victim is None and time.monotonic() < deadline and parent.poll() is None:
                time.sleep(0.1)
                running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                workers = {p for p in _children(parent.pid) if _is_worker(p)}
                mine = [t for t in running if int(t.user_attrs.get("worker", ":0").split(":")[1]) in workers
                        and "failed_trial" not in t.system_attrs]  # an original trial, not a retry
                if mine:
                    time.sleep(rng.uniform(0.0, 1.5))  # somewhere in the trial (~2-3 s long)
                    trial = study._storage.get_trial(mine[0]._trial_id)
                    if trial.state == TrialState.RUNNING:
                        victim = int(trial.user_attrs["worker"].split(":")[1])
                        os.kill(victim, signal.SIGKILL)
                        killed.append(trial.number)
            assert victim is not None, "no running trial to kill"
            output, _ = parent.communicate(timeout=180)  # the parent must not hang on its dead worker
        finally:
            if parent.poll() is None:
                parent.kill()
        assert parent.returncode == 1, output
        assert "killed by SIGKILL" in output and "Traceback" not in output, output
        assert output.strip().splitlines()[-1].startswith("Error: worker "), output

    time.sleep(4)  # past the grace period: the killed trials are stale now
    left = [t for t in study.get_trials(deepcopy=False) if not t.state.is_finished()]
    final = subprocess.run([*command[:5], str(max(1, len(left))), "--workers", "1", *command[8:]],
                           env=env, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stdout + final.stderr

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) for t in trials.values()), \
        states(study)  # none RUNNING, none WAITING
    retried = {t.system_attrs["failed_trial"]: t for t in trials.values() if "failed_trial" in t.system_attrs}
    for number in killed:
        assert trials[number].state == TrialState.FAIL
        assert number in retried, f"killed trial #{number} was not re-queued"
        assert retried[number].params == trials[number].params
        assert retried[number].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert [t.number for t in trials.values() if t.state == TrialState.FAIL] == sorted(killed)
    assert sqlite3.connect("studies/kill.db").execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# ---------------------------------------------------------------------------------------------------
# No idle workers: the workers take trials from one study-wide count (search.running.target.SharedTarget)
# until the study holds the run's --trials new ones, instead of a fixed share each.

def _new_trials(study: optuna.Study, before: set[int]) -> dict[int, optuna.trial.FrozenTrial]:
    """The trials that ran since ``before`` (a queued one that is still WAITING has not)."""
    return {t.number: t for t in study.get_trials(deepcopy=False)
            if t.number not in before and t.state != TrialState.WAITING}


@pytest.mark.parametrize("n, k", [(2, 3), (5, 2), (7, 3)])
def test_k_workers_add_exactly_n_trials(n, k, micro_dataset, workdir):
    """Exactly N trials per run, twice on one study (the second run's target counts the first run's
    trials), with fewer trials than workers too (then only N workers are started)."""
    url, name = f"sqlite:///studies/exact{n}.db", f"exact{n}"
    study = new_study(micro_dataset, url, name)
    for _ in range(3):  # queued trials are run as some of the N, not on top of them
        study.enqueue_trial(SAMPLE)
    before: set[int] = set()
    for run in range(2):
        result = invoke("run", "--trials", str(n), "--workers", str(k), "--study", name,
                        "--data", str(micro_dataset), "--device", "cpu")
        assert result.exit_code == 0, result.output
        started = min(n, k)
        assert f"{n} trial{'s' if n > 1 else ''} shared by {started} worker process" in result.output
        assert f"trial {n}/{n}" in result.output and f"trial {n + 1}/" not in result.output
        new = _new_trials(study, before)
        assert len(new) == n, (run, states(study))
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in new.values()), states(study)
        before |= set(new)
    assert sum(t.params == SAMPLE for t in study.get_trials(deepcopy=False)) >= 3


def test_a_killed_workers_remaining_trials_are_run_by_the_other(micro_dataset, workdir, monkeypatch):
    """Worker killed (SIGKILL) in its second trial: with fixed shares the rest of its share was lost; now
    the other worker runs the rest, and the run still ends with exactly N new trials: the trial the killed
    worker was in is failed after the grace period, re-queued and run again (the survivor waits for it),
    and the killed attempt does not count as one of the N."""
    for key, value in FAST_HEARTBEATS.items():
        monkeypatch.setenv(key, value)
    url, name, n = "sqlite:///studies/share.db", "share", 10
    study = new_study(micro_dataset, url, name)
    for _ in range(n):
        study.enqueue_trial(SAMPLE)
    command = [sys.executable, "-m", "search.cli", "run", "--trials", str(n), "--workers", "2", "--study", name,
               "--data", str(micro_dataset), "--device", "cpu"]
    parent = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    victim = None
    try:
        deadline = time.monotonic() + 120
        while victim is None and time.monotonic() < deadline and parent.poll() is None:
            time.sleep(0.05)
            workers = {p for p in _children(parent.pid) if _is_worker(p)}
            done = {int(t.user_attrs["worker"].split(":")[1])
                    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))}
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                pid = int(t.user_attrs.get("worker", ":0").split(":")[1])
                if pid in workers and pid in done:  # in its second trial (or later)
                    os.kill(pid, signal.SIGKILL)
                    victim = pid
                    break
        output, _ = parent.communicate(timeout=240)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert victim is not None, "no worker finished a trial"
    assert parent.returncode == 1 and "killed by SIGKILL" in output, output
    trials = study.get_trials(deepcopy=False)
    by_worker = {}
    for t in trials:
        by_worker.setdefault(int(t.user_attrs.get("worker", ":0").split(":")[1]), []).append(t)
    ran = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(ran) == n, states(study)  # exactly N: none lost with the killed worker, none too many
    assert not any(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in trials), states(study)
    retried = {m for t in trials for m in t.system_attrs.get("retry_history", ())}
    assert all(t.number in retried for t in trials if t.state == TrialState.FAIL)  # only killed attempts
    assert len(trials) == n + len(retried) and len(retried) == 1, states(study)  # the killed attempt
    survivor = [t for pid, ts in by_worker.items() if pid != victim for t in ts if t in ran]
    assert len(survivor) > n // 2  # more than its old fixed share
    assert f"{n} trials shared by 2 worker processes (cpu, cpu)" in output


def test_a_trial_killed_before_its_first_heartbeat_is_failed_and_re_queued(workdir):
    """Optuna's fail_stale_trials never fails a RUNNING trial without any heartbeat (a worker killed
    right after asking for it): the shared count's waiting workers would wait for it forever."""
    from search.running.runner import fail_stale_trials

    storage = open_storage("sqlite:///studies/nobeat.db", heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name="nobeat", storage=storage)
    dead = study.ask()  # RUNNING, no heartbeat recorded (the worker died before its heartbeat thread ran)
    study.tell(study.ask(), 1.0)
    fail_stale_trials(study)
    assert study._storage.get_trial(dead._trial_id).state == TrialState.RUNNING  # within the grace period
    time.sleep(2.5)
    fail_stale_trials(study)
    assert study._storage.get_trial(dead._trial_id).state == TrialState.FAIL
    assert trial_count(study) == (1, 0)  # its re-queued copy waits; the killed attempt does not count
    assert [t.system_attrs["failed_trial"] for t in study.get_trials(states=(TrialState.WAITING,))] == [dead.number]


def test_the_runner_beats_and_recovers_dead_workers_trials_on_postgresql(micro_dataset, workdir, monkeypatch):
    """The runner's own ask/tell loop (search/running/runner.py) on PostgreSQL: each trial it runs has a heartbeat, and a
    dead worker's trials (one that beat once, one that never beat) are failed after the grace period, re-queued
    and run as this run's trials, the killed attempts not counted."""
    why = reachable(POSTGRES)
    if why:
        pytest.skip(why)
    from search.db import optuna_internals as internals
    from search.running.runner import run_trials
    from search.running.target import SharedTarget
    from search.running.task import load_task

    for key, value in FAST_HEARTBEATS.items():
        monkeypatch.setenv(key, value)
    name = f"test-beats-{uuid.uuid4().hex[:12]}"
    study = new_study(micro_dataset, POSTGRES, name)
    try:
        study.enqueue_trial(SAMPLE)
        study.enqueue_trial(SAMPLE)
        beat_once, never_beat = study.ask(), study.ask()  # a dead worker's two trials, RUNNING
        internals.storage_of(study).record_heartbeat(internals.trial_id(beat_once))
        time.sleep(3.5)  # past the grace period
        settings = StudySettings.from_attrs(study.user_attrs)
        target = run_target(study, 2)  # fails both and re-queues them
        assert target == 2 and trial_count(study) == (0, 0), states(study)
        run_trials(study, settings, load_task(micro_dataset, 0, torch.device("cpu")), None,
                   gate=SharedTarget(target))
        trials = study.get_trials(deepcopy=False)
        assert [t.state for t in trials[:2]] == [TrialState.FAIL, TrialState.FAIL]
        ran = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert sorted(t.system_attrs["failed_trial"] for t in ran) == [0, 1], states(study)
        assert len(trials) == 4 and trial_count(study) == (2, 0)
        models, rdb = internals.rdb_models(), internals.rdb_storage(study)
        session = rdb.scoped_session()
        try:
            beating = {trial_id for (trial_id,) in session.query(models.TrialHeartbeatModel.trial_id)}
        finally:
            session.close()
        assert {internals.trial_id(t) for t in ran} <= beating  # the runner's heartbeat thread beat for each
    finally:
        delete_study(POSTGRES, name)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2, reason="needs Linux, 2+ cores")
def test_thread_counts_start_from_the_cores_the_job_may_use_not_the_machines():
    # A batch system's CPU set (SLURM, a container) or taskset gives the job fewer cores than the node has:
    # workers splitting os.cpu_count() threads among them would oversubscribe the cores they actually have.
    code = "import os; os.sched_setaffinity(0, {0}); from search.processes.cores import usable_cores; print(usable_cores())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "1"
