"""`search trials`: every trial of a study in one table (text, JSON or CSV), read from Optuna's storage."""

from __future__ import annotations

import csv
import io
import json
import os

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import SAMPLE, invoke, one_error_line

STUDY = "tr"
STORAGE = f"sqlite:///studies/{STUDY}.db"
CONFIGS = [SAMPLE, {**SAMPLE, "d_model": 64, "pooling": "sap", "lr": 2e-3}, {**SAMPLE, "layers": 2}]
BROKEN = {**SAMPLE, "d_model": 64, "nhead": 3}  # 3 heads: not a choice of the space, the trial FAILs
COLUMNS = ["number", "state", "value", "ended", "parameters", "steps_per_second", "wall_seconds", "finalize_seconds",
           "encoder", "d_model", "layers", "pooling", "loss", "lr"]


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_dataset):
    """3 complete trials of chosen configurations and a failed one, run through `search run`; then one
    trial left RUNNING (asked for, never told) as a worker in progress leaves it."""
    folder = tmp_path_factory.mktemp("trials")
    previous = os.getcwd()
    os.chdir(folder)
    try:
        (folder / "studies").mkdir()
        study = optuna.create_study(study_name=STUDY, storage=STORAGE, direction="maximize")
        for params in [*CONFIGS, BROKEN]:
            study.enqueue_trial({k: v for k, v in params.items() if v is not None})
        result = invoke("run", "--trials", "4", "--study", STUDY, "--data", str(tiny_dataset), "--budget", "8",
                        "--device", "cpu", "--seed", "1", "--no-warm-start", "--no-pruning")
        assert result.exit_code == 0, result.output
        optuna.load_study(study_name=STUDY, storage=STORAGE).ask()  # trial #4, RUNNING
    finally:
        os.chdir(previous)
    return folder


@pytest.fixture
def inside(searched, monkeypatch):
    monkeypatch.chdir(searched)
    return searched


def stored_trials():
    return optuna.load_study(study_name=STUDY, storage=STORAGE).trials


def test_trials_prints_one_row_per_trial_with_its_results(inside):
    result = invoke("trials", "--study", STUDY)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    header = lines[0].split()
    for column in ("#", "state", "value", "size", "steps/s", "wall", "encoder", "d_model", "layers", "pooling",
                   "loss", "lr", "ended"):
        assert column in header, lines[0]
    trials = stored_trials()
    assert len(lines) == 1 + len(trials) == 6
    assert [int(line.split()[0]) for line in lines[1:]] == [0, 1, 2, 3, 4]  # by number by default
    for t, line in zip(trials, lines[1:]):
        assert line.split()[1] == t.state.name.lower()
        if t.state == TrialState.COMPLETE:
            assert f"{t.value:.4f}" in line and f"{t.user_attrs['parameters']:,}" in line
            assert "complete after 8 steps" in line
            assert f"{t.params['lr']:.2e}" in line and t.params["pooling"] in line
    assert lines[4].split()[1] == "fail" and "failed: ValueError" in lines[4]
    assert "running" in lines[5]


def test_trials_sorts_by_value_or_duration(inside):
    trials = stored_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    by_value = invoke("trials", "--study", STUDY, "--sort", "value", "--json")
    assert by_value.exit_code == 0, by_value.output
    rows = json.loads(by_value.output)
    best_first = sorted(complete, key=lambda t: t.value, reverse=True)
    assert [r["number"] for r in rows[:3]] == [t.number for t in best_first]
    assert all(r["value"] is None for r in rows[3:])  # the failed and the running trial last

    text = invoke("trials", "--study", STUDY, "--sort", "value").output.strip().splitlines()
    assert int(text[1].split()[0]) == optuna.load_study(study_name=STUDY, storage=STORAGE).best_trial.number

    by_time = json.loads(invoke("trials", "--study", STUDY, "--sort", "duration", "--state", "complete",
                                "--json").output)
    slowest_first = sorted(complete, key=lambda t: t.user_attrs["wall_seconds"], reverse=True)
    assert [r["number"] for r in by_time] == [t.number for t in slowest_first]


def test_trials_filters_by_state(inside):
    rows = json.loads(invoke("trials", "--study", STUDY, "--state", "complete", "--json").output)
    assert [r["state"] for r in rows] == ["complete"] * 3
    rows = json.loads(invoke("trials", "--study", STUDY, "--state", "fail", "--state", "running", "--json").output)
    assert [(r["number"], r["state"]) for r in rows] == [(3, "fail"), (4, "running")]
    result = invoke("trials", "--study", STUDY, "--state", "pruned")
    assert result.exit_code == 0 and "no trial in state pruned" in result.output
    assert json.loads(invoke("trials", "--study", STUDY, "--state", "waiting", "--json").output) == []


def test_trials_json_and_csv_hold_optunas_values(inside):
    trials = stored_trials()
    result = invoke("trials", "--study", STUDY, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert isinstance(rows, list) and len(rows) == len(trials)
    for t, row in zip(trials, rows):
        assert list(row) == COLUMNS
        assert row["number"] == t.number and row["state"] == t.state.name.lower() and row["value"] == t.value
        assert row["ended"] == t.user_attrs.get("ended")
        assert row["parameters"] == t.user_attrs.get("parameters")
        assert row["wall_seconds"] == t.user_attrs.get("wall_seconds")
        assert row["steps_per_second"] == t.user_attrs.get("steps_per_second")
        assert row["finalize_seconds"] == t.user_attrs.get("finalize_seconds")  # search/budget.py
        assert t.state != TrialState.COMPLETE or row["finalize_seconds"] > 0
    assert rows[1]["d_model"] == 64 and rows[1]["pooling"] == "sap" and rows[1]["lr"] == 2e-3
    assert rows[2]["layers"] == 2 and rows[0]["encoder"] == "transformer" and rows[0]["loss"] == "ce"

    result = invoke("trials", "--study", STUDY, "--csv")
    assert result.exit_code == 0, result.output
    table = list(csv.reader(io.StringIO(result.output)))
    assert table[0] == COLUMNS
    assert [int(r[0]) for r in table[1:]] == [t.number for t in trials]
    assert float(table[1][2]) == pytest.approx(trials[0].value)


def test_trials_of_a_missing_study_is_one_line_and_creates_nothing(workdir):
    line = one_error_line(invoke("trials", "--study", "nope"))
    assert "--study nope: no such study" in line
    assert not (workdir / "studies").exists() or not list((workdir / "studies").iterdir())
    (workdir / "studies").mkdir(exist_ok=True)
    optuna.create_study(study_name="other", storage="sqlite:///studies/x.db")
    line = one_error_line(invoke("trials", "--study", "nope", "--storage", "sqlite:///studies/x.db"))
    assert "no such study" in line and "other" in line
    assert [s.study_name for s in optuna.get_all_study_summaries("sqlite:///studies/x.db")] == ["other"]


def test_trials_bad_options_are_one_line(inside):
    line = one_error_line(invoke("trials", "--study", STUDY, "--json", "--csv"), alone=True)
    assert "--json" in line and "--csv" in line
    for option, value in (("--state", "finished"), ("--sort", "speed")):  # click's usage errors: exit 2
        bad = invoke("trials", "--study", STUDY, option, value)
        assert bad.exit_code == 2, bad.output
        line = one_error_line(bad)
        assert f"'{option}'" in line and f"'{value}' is not one of" in line, line
