"""The GPU budget (search/finalizing/budget.py): each trial's finalize estimate at the default steps on its device (`trials`,
`show`, the dashboard note, the report), `finalize` saying how long it should take before it starts, `finalize
--time` planning its steps from a speed measured on this device, and a warning for --steps below the search's."""

from __future__ import annotations

import json
import re

import optuna
import pytest

from search.finalizing import budget
from tests.helpers import SAMPLE, in_folder, invoke, one_error_line, run_configs

STUDY = "gpu"


def test_planned_steps_fit_the_time_and_durations_read_as_people_write_them():
    # 10 steps/s, 2 s per validation: 1,000 steps take 100 s + 8 validations (every 125 steps) 16 s
    assert budget.validations(1000) == 8 and budget.finalize_seconds(1000, 10, 2) == 116
    assert budget.validations(70_000) == 35  # every 2,000 steps
    steps = budget.steps_within(3600, 10, 2)
    assert steps % 100 == 0 and budget.finalize_seconds(steps, 10, 2) <= 3600 < budget.finalize_seconds(steps + 100, 10, 2)
    assert budget.plan_for(7200, 20, 1, "--time 2h").steps == budget.steps_within(7200, 20, 1)
    assert "fewer than 100 steps fit" in str(pytest.raises(Exception, budget.plan_for, 5, 10, 2, "--time 5s").value)
    assert [budget.parse_duration(t) for t in ("2h", "90m", "1h30m", "45s", "5400", "1.5h")] == \
        [7200, 5400, 5400, 45, 5400, 5400]
    for bad in ("2 hours", "h", "-5", "0", "31d", "nan"):
        with pytest.raises(Exception, match="--time"):
            budget.parse_duration(bad)
    assert [budget.duration_text(s) for s in (45, 750, 11100)] == ["45s", "12m30s", "3h05m"]


@pytest.fixture(scope="module")
def studied(tmp_path_factory, tiny_dataset):
    folder = tmp_path_factory.mktemp("budget")
    with in_folder(folder):
        run_configs(tiny_dataset, STUDY, [SAMPLE, {**SAMPLE, "pooling": "sap"}], "--no-pruning")
    return folder


def test_each_trial_records_and_shows_what_its_finalize_would_take(studied, monkeypatch):
    monkeypatch.chdir(studied)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///studies/{STUDY}.db")
    for t in study.trials:
        a = t.user_attrs
        # 2,000 steps (a CPU's default) at the trial's speed, and 8 validations at the time its own took
        per = max(0.0, a["wall_seconds"] - a["last_step"] / a["steps_per_second"]) / len(t.intermediate_values)
        assert a[budget.ATTR] == pytest.approx(2000 / a["steps_per_second"] + 8 * per, rel=0.05, abs=0.5)
    best = study.best_trial
    shown = invoke("show", "--study", STUDY, "--trial", str(best.number))
    assert f"finalize     ~{budget.duration_text(best.user_attrs[budget.ATTR])} at 2,000 steps on cpu" in shown.output
    table = invoke("trials", "--study", STUDY).output.splitlines()
    assert "finalize" in table[0] and budget.duration_text(best.user_attrs[budget.ATTR]) in table[1 + best.number]
    rows = json.loads(invoke("trials", "--study", STUDY, "--json").output)
    assert [r[budget.ATTR] for r in rows] == [t.user_attrs[budget.ATTR] for t in study.trials]
    from search.reporting.notes import study_note, trial_note

    assert "**finalize** ~" in trial_note(study, best) and "at 2,000 steps" in study_note(study)
    assert invoke("report", "--study", STUDY, "--out", "r.html").exit_code == 0
    assert "finalize (default steps" in (studied / "r.html").read_text()


def test_finalize_says_how_long_it_should_take_and_warns_below_the_search_budget(studied, monkeypatch):
    monkeypatch.chdir(studied)
    result = invoke("finalize", "best", "--study", STUDY, "--steps", "4", "--device", "cpu", "--out", "short.csv")
    assert result.exit_code == 0, result.output
    assert re.search(r"^expected duration: about \d+s \(trial #\d's [\d.]+ steps/s in the search, on this device\)$",
                     result.output, re.M), result.output
    assert "warning: --steps 4 is below the search budget (8 steps a trial)" in result.output


def test_finalize_time_trains_as_many_steps_as_fit(studied, monkeypatch):
    monkeypatch.chdir(studied)
    # a shorter measurement and a lower floor than a real finalize's: seconds of a test, not minutes
    monkeypatch.setattr(budget, "MEASURE_STEPS", 16)
    monkeypatch.setattr(budget, "MIN_STEPS", 8)
    result = invoke("finalize", "best", "--study", STUDY, "--time", "30s", "--device", "cpu", "--out", "timed.csv",
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert "--time 30s: measuring trial #" in result.output and "(16 steps and one validation)" in result.output
    found = re.search(r"expected duration: about \S+: ([\d,]+) steps fit in the \S+ left of 30s at [\d.]+ steps/s",
                      result.output)
    assert found, result.output
    steps = int(found.group(1).replace(",", ""))
    assert steps >= 8
    config = json.loads((studied / "studies" / STUDY / "final" / "config.json").read_text())
    assert config["train_config"]["steps"] == steps and config["train_config"]["warmup_steps"] <= steps
    for args, message in ((["--time", "2h", "--steps", "100"], "give --steps or --time, not both"),
                          (["--time", "soon"], "--time soon: expected a duration"),
                          (["top", "--k", "2", "--time", "1h"], "--time: plans the steps of one model")):
        line = one_error_line(invoke("finalize", *([] if args[0] == "top" else ["best"]), *args, "--study", STUDY))
        assert message in line, line
