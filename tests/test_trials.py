"""`search trials`: every trial of a study in one table (text, JSON or CSV), read from Optuna's storage."""

from __future__ import annotations

import csv
import io
import json
import os
import re

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


def test_trials_prints_one_row_per_trial_with_its_results(inside, monkeypatch):
    from search.reporting.formats import param_count

    monkeypatch.setenv("COLUMNS", "200")  # a terminal wide enough for every default column
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
            assert f"{t.value:.4f}" in line and f" {param_count(t.user_attrs['parameters'])} " in line
            assert "complete after 8 steps" in line
            assert f"{t.params['lr']:.1e}" in line and t.params["pooling"] in line
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
        assert list(row)[:len(COLUMNS)] == COLUMNS
        for name, value in t.params.items():  # every sampled parameter, under its own name
            assert row[name] == value
        for key, value in t.user_attrs.items():  # every attribute recorded, under its stored name
            assert row[key] == value, key
        assert row["number"] == t.number and row["state"] == t.state.name.lower() and row["value"] == t.value
        assert row["ended"] == t.user_attrs.get("ended")
        assert row["parameters"] == t.user_attrs.get("parameters")
        assert row["wall_seconds"] == t.user_attrs.get("wall_seconds")
        assert row["steps_per_second"] == t.user_attrs.get("steps_per_second")
        assert row["finalize_seconds"] == t.user_attrs.get("finalize_seconds")  # search/finalizing/budget.py
        assert t.state != TrialState.COMPLETE or row["finalize_seconds"] > 0
    assert rows[1]["d_model"] == 64 and rows[1]["pooling"] == "sap" and rows[1]["lr"] == 2e-3
    assert rows[2]["layers"] == 2 and rows[0]["encoder"] == "transformer" and rows[0]["loss"] == "ce"

    result = invoke("trials", "--study", STUDY, "--csv")
    assert result.exit_code == 0, result.output
    table = list(csv.reader(io.StringIO(result.output)))
    assert table[0] == list(rows[0])  # the same columns as the JSON, in its order
    for name in ("nhead", "dropout", "head", "weight_decay", "batch_size", "time_masks", "freq_masks", "train_loss",
                 "train_loss_curve", "best_step", "device", "model.n_classes", "train.steps"):
        assert name in table[0], name
    assert all(len(r) == len(table[0]) for r in table)
    by_name = dict(zip(table[0], table[1]))
    assert float(by_name["dropout"]) == trials[0].params["dropout"]
    assert json.loads(by_name["train_loss_curve"]) == trials[0].user_attrs["train_loss_curve"]
    assert [int(r[0]) for r in table[1:]] == [t.number for t in trials]
    assert float(table[1][2]) == pytest.approx(trials[0].value)


def test_trials_of_a_missing_study_is_one_line_and_creates_nothing(workdir):
    line = one_error_line(invoke("trials", "--study", "nope"))
    assert "--study: no study 'nope' in sqlite:///studies/studies.sqlite3" in line, line
    assert not (workdir / "studies").exists() or not list((workdir / "studies").iterdir())
    (workdir / "studies").mkdir(exist_ok=True)
    optuna.create_study(study_name="other", storage="sqlite:///studies/x.db")
    line = one_error_line(invoke("trials", "--study", "nope", "--storage", "sqlite:///studies/x.db"))
    assert line == "Error: --study: no study 'nope' in sqlite:///studies/x.db; studies there: other", line
    assert [s.study_name for s in optuna.get_all_study_summaries("sqlite:///studies/x.db")] == ["other"]


def test_trials_bad_options_are_one_line(inside):
    line = one_error_line(invoke("trials", "--study", STUDY, "--json", "--csv"), alone=True)
    assert "--json" in line and "--csv" in line
    for option, value in (("--state", "finished"), ("--sort", "speed")):  # click's usage errors: exit 2
        bad = invoke("trials", "--study", STUDY, option, value)
        assert bad.exit_code == 2, bad.output
        line = one_error_line(bad)
        assert f"'{option}'" in line and f"'{value}' is not one of" in line, line


@pytest.mark.parametrize("columns", [60, 80, 100])
def test_the_table_fits_the_terminal_and_wide_shows_every_column(inside, monkeypatch, columns):
    """At 60, 80 or 100 columns no line is wider than the terminal; the last line names the columns left out,
    by priority (wall time first, the trial's number never); ``--wide`` has every sampled parameter, rounded."""
    from search.reporting.formats import number

    monkeypatch.setenv("COLUMNS", str(columns))
    lines = invoke("trials", "--study", STUDY).output.rstrip("\n").splitlines()
    assert all(len(line) <= columns for line in lines[:-1]), "\n".join(lines)
    assert lines[-1].startswith(f"(left out to fit {columns} columns: wall s") and "--wide" in lines[-1]
    header = lines[0].split()
    assert header[:3] == ["#", "state", "value"] and header[-1] == "ended" and "wall" not in header
    assert len(lines) == 1 + len(stored_trials()) + 1

    wide = invoke("trials", "--study", STUDY, "--wide").output.splitlines()
    assert not wide[-1].startswith("(left out")
    header = wide[0].split()
    for name in ("nhead", "dropout", "head", "weight_decay", "batch_size", "time_masks", "train_loss", "wall"):
        assert name in header, name
    assert "train_loss_curve" not in header  # lists: in --json and --csv
    trial = stored_trials()[1]
    row = wide[2]  # trial #1: lr 2e-3 as 2.0e-03, dropout and weight decay rounded the same way
    assert " 2.0e-03 " in row and f" {number(trial.params['dropout'])} " in row
    assert f" {number(trial.params['weight_decay'])} " in row
    assert not re.search(r"\d\.\d{5}", row), row  # no float unrounded
