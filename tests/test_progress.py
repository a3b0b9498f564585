"""Progress as users see it in a terminal or a CI log: an ETA on every `search run` trial line, lines while a
trial or a finalize trains (every 10 s; ``SEARCH_PROGRESS_INTERVAL`` shortens it here so that tiny trials
show them), none with ``--quiet``; and `finalize --steps`'s default on a CPU.

CliRunner's output is not a terminal: these lines print there as they do in a CI log.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.helpers import SHARED, invoke, one_error_line, study_dbs

REPO = Path(__file__).resolve().parents[1]
TRIAL_LINE = re.compile(r"^trial (\d+)(?:/(\d+))?  #\d+ .*\|  \d+s, ETA (\d+s|\d+m\d\ds|\d+h\d\dm)$")
TRAINING_LINE = re.compile(r"^  #\d+ training: step (\d+)/8  [\d.]+ steps/s  (no validation yet|valid acc so far \d\.\d{4})"
                           r"  \|  trial ends in ~\S+$")


def run(data: Path, *extra: str):
    return invoke("run", "--study", "p", "--data", str(data), "--budget", "8", "--device", "cpu", *extra)


def test_every_trial_line_has_an_eta_and_a_training_trial_prints_lines(micro_dataset, workdir, monkeypatch):
    monkeypatch.setenv("SEARCH_PROGRESS_INTERVAL", "0.05")
    result = run(micro_dataset, "--trials", "2")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert len(trial_lines) == 2 and all(TRIAL_LINE.match(line) for line in trial_lines), trial_lines
    assert TRIAL_LINE.match(trial_lines[-1]).group(3) == "0s"  # the last trial: nothing left
    training = [TRAINING_LINE.match(line) for line in lines if " training: " in line]
    assert training and all(training), [line for line in lines if " training: " in line]
    assert "no validation yet" in training[0].group(2) or int(training[0].group(1)) > 1
    # in the log file too, and not on the terminal with --quiet
    assert " training: step" in (workdir / "studies" / "p" / "search.log").read_text()
    quiet = run(micro_dataset, "--trials", "1", "--quiet")
    assert quiet.exit_code == 0, quiet.output
    assert "training:" not in quiet.output and "ETA" not in quiet.output and "best trial #" in quiet.output


def test_with_timeout_alone_the_eta_is_the_time_left(micro_dataset, workdir, monkeypatch):
    monkeypatch.setenv("SEARCH_PROGRESS_INTERVAL", "1000")  # no training lines: only the trial lines
    result = run(micro_dataset, "--timeout", "2")
    assert result.exit_code == 0, result.output
    trial_lines = [line for line in result.output.splitlines() if line.startswith("trial ")]
    assert trial_lines and all(TRIAL_LINE.match(line) for line in trial_lines), result.output
    assert TRIAL_LINE.match(trial_lines[-1]).group(3) == "0s"  # 2 s have passed: no time left
    assert "training:" not in result.output


def test_a_bad_progress_interval_is_one_error_line_before_any_work(micro_dataset, workdir, monkeypatch):
    monkeypatch.setenv("SEARCH_PROGRESS_INTERVAL", "often")
    line = one_error_line(run(micro_dataset, "--trials", "1"), alone=True)
    assert line == "Error: SEARCH_PROGRESS_INTERVAL='often': not a number of seconds"
    assert study_dbs(workdir) == []


def test_finalize_prints_a_line_while_it_trains_and_quiet_silences_it(micro_dataset, workdir, monkeypatch):
    monkeypatch.setenv("SEARCH_PROGRESS_INTERVAL", "0.05")
    assert run(micro_dataset, "--trials", "1", "--quiet").exit_code == 0
    result = invoke("finalize", "best", "--study", "p", "--steps", "24")
    assert result.exit_code == 0, result.output
    timed = [line for line in result.output.splitlines() if re.fullmatch(
        r"step (\d+)/24  [\d.]+ steps/s  (no validation yet|valid acc so far \d\.\d{4})  ETA \S+", line)]
    evaluations = [line for line in result.output.splitlines() if line.startswith("step ") and " loss " in line]
    assert timed and evaluations, result.output  # between the evaluations' lines, the timed ones
    assert all(re.search(r"  ETA (\d+s|\d+m\d\ds|\d+h\d\dm)$", line) for line in timed + evaluations), result.output
    quiet = invoke("finalize", "best", "--study", "p", "--steps", "24", "--quiet", "--out", "q.csv")
    assert quiet.exit_code == 0, quiet.output
    assert not any(line.startswith("step ") for line in quiet.output.splitlines())
    assert "predictions written to q.csv" in quiet.output


def test_finalize_steps_default_fits_a_cpu(micro_dataset, workdir):
    """Without --steps on a CPU, finalize trains 2,000 steps (not the sample code's 70,000): its first line says
    so; the run is stopped there. --help says both defaults."""
    help_text = " ".join(invoke("finalize", "--help").output.split())
    assert "[default: 70,000 (the sample code's) on a GPU, 2,000 on a CPU" in help_text
    assert run(micro_dataset, "--trials", "1", "--quiet").exit_code == 0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "search.cli", "finalize", "best", "--study", "p", "--device", "cpu"],
                               cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        first = ""
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line or line.startswith("finalizing"):
                first = line
                break
        assert re.fullmatch(r"finalizing trial #\d+ of 'p' \(valid accuracy [\d.]+ in the search\): 2000 steps on cpu\n",
                            first), first
    finally:
        process.kill()
        process.wait(10)


def test_worker_processes_send_their_training_lines_to_the_parent(micro_dataset, workdir, monkeypatch):
    monkeypatch.setenv("SEARCH_PROGRESS_INTERVAL", "0.05")  # inherited by the spawned workers
    result = run(micro_dataset, "--trials", "2", "--workers", "2")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    training = [line for line in lines if " training: " in line]
    assert training and all(re.fullmatch(TRAINING_LINE.pattern[:-1] + r"  \|  worker [01]$", line) for line in training), \
        training
    trial_lines = [line for line in lines if line.startswith("trial ")]
    assert len(trial_lines) == 2 and all(", ETA " in line and "|  worker " in line for line in trial_lines), trial_lines


def test_a_finalize_evaluation_line_gives_a_long_eta_in_minutes_and_hours():
    """A 70,000-step finalize at 20 steps/s: its evaluation lines say `ETA 58m20s` as its 10-s lines do, not
    `ETA 3500s`."""
    from search.finalizing.finalize import echo_eval

    printed = []

    class Echo:
        def progress(self, line):
            printed.append(line)

    metrics = {"steps_per_second": 20.0, "train_loss": 1.25, "valid_accuracy": 0.5}
    echo_eval(Echo(), 1000, 71000, metrics)
    echo_eval(Echo(), 1000, 1000 + 20 * 7500, metrics, member="member 2/3")
    assert printed == ["step 1000/71000  loss 1.2500  valid acc 0.5000  20.0 steps/s  ETA 58m20s",
                       "member 2/3 valid step 1000/151000  loss 1.2500  valid acc 0.5000  20.0 steps/s  ETA 2h05m"]


def test_each_trial_says_where_it_came_from_and_a_pruned_one_what_it_lost_to(micro_dataset, tmp_path, workdir,
                                                                            monkeypatch):
    """A start line per trial (number, warm start or sampled, its key parameters rounded), training lines with the
    trial's number, a pruned trial's line with its accuracy and the value the pruner needed, and data preparation
    that says what it prepares."""
    import shutil

    from search.reporting.formats import config_line

    data = tmp_path / "Dataset"
    shutil.copytree(micro_dataset, data, ignore=shutil.ignore_patterns(".bank"))  # packed in this run
    monkeypatch.setenv("SEARCH_PROGRESS_INTERVAL", "0.05")
    result = run(data, "--trials", "5", "--seed", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert not any(line.startswith("preparing data") for line in lines), result.output
    assert any(line.startswith("packing the feature bank (train and test utterances): ") for line in lines)
    trials = optuna.load_study(study_name="p", storage=SHARED).trials
    origins = ["warm start: cpu-sample-code-stats-pooling", "warm start: sample-code", "sampled", "sampled", "sampled"]
    for t, origin in zip(trials, origins):
        start = [i for i, line in enumerate(lines) if line.startswith(f"#{t.number} starts ")]
        end = [i for i, line in enumerate(lines) if re.match(rf"trial \d+/5  #{t.number} ", line)]
        assert len(start) == len(end) == 1 and start[0] < end[0], result.output
        assert lines[start[0]] == f"#{t.number} starts ({origin}): {config_line(t.params)}"
        assert not re.search(r"\d\.\d{5}", lines[start[0]]), lines[start[0]]  # lr 3.0e-03, dropout 0.124: rounded
        training = [line for line in lines[start[0]:end[0]] if " training: " in line]
        assert all(line.startswith(f"  #{t.number} training: step ") for line in training), training
        if t.state.name == "PRUNED":
            value, needed = t.intermediate_values[t.last_step], t.user_attrs["prune_threshold"]
            assert value < needed
            assert f"#{t.number} pruned at step {t.last_step}: {value:.4f}, needed {needed:.4f}  |  " in lines[end[0]]
    assert any(t.state.name == "PRUNED" for t in trials), result.output  # the case above was seen


def _ask_until_pruned_or_done(study, values, steps):
    """One trial reporting ``values`` at ``steps`` until pruned: (the frozen trial after each decision, pruned?)."""
    from search.db import optuna_internals as internals

    trial, decisions = study.ask(), []
    for step, value in zip(steps, values):
        trial.report(value, step)
        pruned = trial.should_prune()
        decisions.append((internals.storage_of(study).get_trial(internals.trial_id(trial)), pruned))
        if pruned:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return decisions
    study.tell(trial, values[-1])
    return decisions


@pytest.mark.parametrize("second_look", [False, True])
def test_the_value_a_pruned_trial_needed_is_the_one_the_pruner_compared_against(second_look):
    """At every decision of the study's pruners (Optuna's Hyperband, and the cpu profile's second look), a trial
    that was stopped had less than the value printed as needed, and one that went on had at least as much."""
    import random

    from search.running.sampler import SecondLookPruner, StudyHyperband, needed_to_go_on

    hyperband = StudyHyperband(1, 27, 3)  # the factor of both profiles (search/running/sampler.py make_pruner)
    pruner = SecondLookPruner(hyperband, 3) if second_look else hyperband
    study = optuna.create_study(direction="maximize", pruner=pruner, study_name="needed")
    rng, decided = random.Random(0), {True: 0, False: 0}
    for _ in range(40):
        values = [rng.random() for _ in range(4)]
        for frozen, pruned in _ask_until_pruned_or_done(study, values, [1, 3, 9, 27]):
            needed = needed_to_go_on(pruner, study, frozen)
            if needed is None:  # no decision at this step (between rungs) for this trial's bracket
                assert not pruned
                continue
            value = frozen.intermediate_values[frozen.last_step]
            assert (value < needed) if pruned else (value >= needed), (frozen.number, frozen.last_step, value, needed)
            decided[pruned] += 1
    assert decided[True] > 5 and decided[False] > 5, decided


def test_the_eta_expects_the_steps_trials_have_run_past_each_rung():
    """4 finished trials of 500 steps, rungs at 62 and 186: 3 stopped at 62, one complete. A trial is expected to
    run 62 steps, on with (1 + 1) / (4 + 2) of them to 186, and on with (1 + 1) / (1 + 2) of those to 500."""
    from optuna.trial import TrialState, create_trial

    from search.reporting.logs import Progress

    def finished(state, last_step):
        return create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None,
                            intermediate_values={s: 0.5 for s in (62, 186, 500) if s <= last_step},
                            user_attrs={"last_step": last_step})

    trials = [finished(TrialState.COMPLETE, 500)] + [finished(TrialState.PRUNED, 62) for _ in range(3)]
    progress = Progress(10, print)
    progress.start(500, [62, 186])
    expected = 62 + (2 / 6) * (186 - 62) + (2 / 6) * (2 / 3) * (500 - 186)
    assert progress.expected_trial_steps(trials) == pytest.approx(expected)
    assert progress.expected_trial_steps([]) == pytest.approx(62 + 124 / 2 + 314 / 4)  # a half at each, before any
