"""search/reporting/inspection.py: the text of `search studies`, `search show` and `search trials`, and the note beside
`search run`'s best trial, read from studies built by hand (``optuna.create_trial``: every state, both
directions, in milliseconds). The same commands on a real search are in test_report.py and test_trials.py.
"""

from __future__ import annotations

import re

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from search.errors import UserError
from search.reporting.inspection import pick_any_trial, reference_note, studies_lines, study_rows, trial_lines
from search.reporting.trial_table import trial_rows, trials_lines

DISTRIBUTIONS = {"encoder": CategoricalDistribution(["transformer", "conformer"]),
                 "lr": FloatDistribution(1e-4, 1e-2, log=True)}


def add(study: optuna.Study, state: TrialState, value: float | None = None, lr: float = 1e-3, **user_attrs) -> None:
    curve = user_attrs.pop("curve", {})
    study.add_trial(create_trial(state=state, value=value, params={"encoder": "transformer", "lr": lr},
                                 distributions=DISTRIBUTIONS, user_attrs=user_attrs, intermediate_values=curve))


def every_state(study: optuna.Study) -> optuna.Study:
    """#0 complete 0.5, #1 complete 0.75, #2 pruned, #3 failed, #4 running, #5 waiting."""
    add(study, TrialState.COMPLETE, 0.5, curve={8: 0.25, 16: 0.5})
    add(study, TrialState.COMPLETE, 0.75, lr=3e-3, ended="complete after 16 steps", parameters=1_234_567,
        wall_seconds=12.34, curve={16: 0.75, 8: 0.5})
    add(study, TrialState.PRUNED, None, ended="pruned at step 8", curve={8: 0.125})
    add(study, TrialState.FAIL, None, ended="failed: training loss became nan")
    add(study, TrialState.RUNNING, None)
    add(study, TrialState.WAITING, None)
    return study


# --- search studies --------------------------------------------------------------------------------------

def test_the_studies_table_counts_every_state_and_names_each_studys_best(tmp_path):
    url = f"sqlite:///{tmp_path}/many.db"
    every_state(optuna.create_study(study_name="hw04", storage=url, direction="maximize"))
    lowest = optuna.create_study(study_name="a-study-with-a-long-name", storage=url, direction="minimize")
    add(lowest, TrialState.COMPLETE, 0.9)
    add(lowest, TrialState.COMPLETE, 0.2)
    add(optuna.create_study(study_name="none-yet", storage=url, direction="maximize"), TrialState.FAIL)
    lines = studies_lines(study_rows(url))
    assert lines[0].split() == ["study", "trials", "complete", "pruned", "failed", "running", "best", "(trial)",
                                "storage"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert rows["hw04"] == ["6", "2", "1", "1", "1", "0.7500", "(#1)", url]  # 6 trials: the waiting one too
    assert rows["a-study-with-a-long-name"] == ["2", "2", "0", "0", "0", "0.2000", "(#1)", url]  # its direction's best
    assert rows["none-yet"] == ["1", "0", "0", "1", "0", "-", url]
    # the columns line up under their heads, however long a study's name: counts end where "trials" ends
    assert len({re.match(r"\S+\s+\S+", line).end() for line in lines}) == 1
    assert len({line.index(" " + url) for line in lines[1:]} | {lines[0].index(" storage")}) == 1


def test_a_storage_without_studies_says_so_and_a_missing_file_is_not_created(tmp_path):
    url = f"sqlite:///{tmp_path}/empty.db"
    optuna.delete_study(study_name="x", storage=optuna.create_study(study_name="x", storage=url)._storage)
    assert studies_lines(study_rows(url)) == ["no study found"]
    missing = tmp_path / "nothere.db"
    with pytest.raises(UserError, match=f"--storage sqlite:///{missing}: no such file {missing}$"):
        study_rows(f"sqlite:///{missing}")
    assert not missing.exists()


# --- search show -----------------------------------------------------------------------------------------

def test_show_marks_the_best_trial_and_prints_its_curve_in_step_order():
    study = every_state(optuna.create_study(study_name="s", direction="maximize"))
    best = pick_any_trial(study, None)
    assert best.number == 1
    lines = trial_lines(study, best)
    assert lines[:3] == ["study 's', trial #1  (best)", "  state        complete", "  value        0.7500 (validation accuracy)"]
    assert "  ended        complete after 16 steps" in lines and "  parameters   1.23M" in lines
    assert "  wall seconds 12.3" in lines
    curve = lines.index("validation curve (step: accuracy):")
    assert lines[curve + 1:curve + 4] == ["  step  valid acc  train loss", "     8     0.5000           -",
                                          "    16     0.7500           -"]
    assert lines[lines.index("parameters (sampled):") + 1:][:2] == ["  encoder          transformer",
                                                                     "  lr               3.0e-03"]


def test_show_prints_the_configuration_as_aligned_rows_and_a_pruned_trial_what_it_lost_to():
    """The resolved configuration is one ``name value`` row per field (not a JSON line), floats rounded; a pruned
    trial says where, its accuracy there and the value the pruner needed."""
    study = optuna.create_study(study_name="s", direction="maximize")
    study.add_trial(create_trial(state=TrialState.PRUNED, value=0.2436, params={"lr": 0.00032123456},
                                 distributions={"lr": DISTRIBUTIONS["lr"]}, intermediate_values={62: 0.3, 186: 0.2436},
                                 user_attrs={"ended": "pruned at step 186", "last_step": 186, "prune_threshold": 0.3397,
                                             "train_loss_curve": [2.5, 1.25], "model.dropout": 0.12380309051410399,
                                             "model.n_classes": 600, "train.eval_steps": [62, 186, 500]}))
    lines = trial_lines(study, study.trials[0])
    assert "  ended        pruned at step 186: 0.2436, needed 0.3397" in lines
    assert "  lr               3.2e-04" in lines
    assert lines[lines.index("model config (resolved):") + 1:][:2] == ["  dropout          0.124",
                                                                        "  n_classes        600"]
    assert "  eval_steps       62, 186, 500" in lines
    curve = lines.index("validation curve (step: accuracy):")
    assert lines[curve + 2:curve + 4] == ["    62     0.3000         2.5", "   186     0.2436        1.25"]
    assert not any("{" in line for line in lines)


def test_show_of_a_failed_trial_says_why_and_has_no_value():
    study = every_state(optuna.create_study(study_name="s", direction="maximize"))
    lines = trial_lines(study, pick_any_trial(study, 3))
    assert lines[0] == "study 's', trial #3"  # not the best
    assert lines[1:3] == ["  state        fail", "  ended        failed: training loss became nan"]
    assert not any(line.startswith("  value") or line.startswith("validation curve") for line in lines)


def test_show_names_the_final_model_and_the_ensemble_a_trial_is_in():
    study = every_state(optuna.create_study(study_name="s", direction="maximize"))
    study.set_user_attr("final", {"trial": 1, "steps": 8, "valid_accuracy": 0.8, "artifact_dir": "studies/s/artifacts",
                                  "artifacts": {"trial1-model.pt": "id-1"}})
    study.set_user_attr("final_ensemble", {"label": "top2", "steps": 8, "valid_accuracy": 0.85, "test_accuracy": 0.8,
                                           "artifact_dir": "studies/s/artifacts", "artifacts": {"top2-config.json": "id-2"},
                                           "members": [{"trial": 1, "seed": 0, "valid_accuracy": 0.8, "test_accuracy": 0.7},
                                                       {"trial": 0, "seed": 0, "valid_accuracy": 0.6, "test_accuracy": None}]})
    lines = trial_lines(study, pick_any_trial(study, 0))
    assert "finalized" not in "\n".join(lines)  # trial #1 was finalized, not this one
    start = lines.index("ensemble top2: 2 member(s), 8 steps each; valid accuracy 0.8500, test accuracy 0.8000:")
    assert lines[start + 1:] == ["  member 1: trial #1 seed 0  valid 0.8000  test 0.7000",
                                 "  member 2: trial #0 seed 0  valid 0.6000  test -  (this trial)",
                                 "  artifacts in studies/s/artifacts:", "  top2-config.json  (id id-2)"]
    best = trial_lines(study, pick_any_trial(study, 1))
    assert "finalized: 8 steps, valid accuracy 0.8000; artifacts in studies/s/artifacts:" in best
    assert "  trial1-model.pt  (id id-1)" in best


def test_show_refuses_a_trial_that_is_not_there_in_one_line():
    study = every_state(optuna.create_study(study_name="s", direction="maximize"))
    with pytest.raises(UserError) as info:
        pick_any_trial(study, 9)
    assert str(info.value) == "--trial 9: no such trial in study 's' (it has trials #0 to #5)"
    empty = optuna.create_study(study_name="e", direction="maximize")
    add(empty, TrialState.FAIL)
    with pytest.raises(UserError) as info:
        pick_any_trial(empty, None)
    assert str(info.value) == "study 'e' has no completed trial yet: pass --trial N to see another"
    assert pick_any_trial(empty, 0).state == TrialState.FAIL  # any state, by its number


# --- the note beside `search run`'s best trial -------------------------------------------------------------

@pytest.mark.parametrize("state, value, note", [
    (TrialState.COMPLETE, 0.31206, "sample-code trial #0: 0.3121; chance 1/6 = 0.167"),
    (TrialState.PRUNED, None, "sample-code trial #0: pruned at step 16; chance 1/6 = 0.167"),
])
def test_the_best_trial_is_set_beside_the_sample_code_and_chance(state, value, note):
    study = optuna.create_study(direction="maximize")
    add(study, state, value, warm_start="sample-code", ended="pruned at step 16")
    add(study, TrialState.COMPLETE, 0.5, model_config={"n_classes": 6})  # a study recorded with the dict shape
    best = study.best_trial
    assert reference_note(study, best) == note


def test_without_a_sample_code_trial_or_a_speaker_count_the_note_is_shorter():
    study = optuna.create_study(direction="maximize")
    add(study, TrialState.COMPLETE, 0.5, model_config={"n_classes": 600})
    assert reference_note(study, study.best_trial) == "chance 1/600 = 0.002"
    bare = optuna.create_study(direction="maximize")
    add(bare, TrialState.COMPLETE, 0.5)
    assert reference_note(bare, bare.best_trial) == ""


# --- search trials -----------------------------------------------------------------------------------------

def test_the_trials_table_formats_each_column_and_shows_missing_values_as_a_dash():
    study = every_state(optuna.create_study(study_name="s", direction="maximize"))
    lines = trials_lines(trial_rows(study), "s", width=None)
    assert lines[0].split() == ["#", "state", "value", "size", "steps/s", "wall", "s", "finalize", "encoder", "d_model",
                                "layers", "pooling", "loss", "lr", "ended"]
    row = lines[2].split()  # trial #1
    assert row[:6] == ["1", "complete", "0.7500", "1.23M", "-", "12.3"]
    assert lines[2].endswith("3.0e-03  complete after 16 steps")  # the free text last
    assert lines[4].split()[:3] == ["3", "fail", "-"] and lines[4].endswith("failed: training loss became nan")


def test_sorting_by_value_puts_the_best_first_in_the_studys_direction():
    for direction, order in (("maximize", [1, 0]), ("minimize", [0, 1])):
        study = every_state(optuna.create_study(study_name="s", direction=direction))
        numbers = [row["number"] for row in trial_rows(study, "value")]
        assert numbers[:2] == order and sorted(numbers[2:]) == [2, 3, 4, 5]  # trials without a value last
    rows = trial_rows(study, "number", ("fail", "running"))
    assert [(r["number"], r["state"]) for r in rows] == [(3, "fail"), (4, "running")]
    assert trials_lines([], "s", ("pruned",)) == ["study 's' has no trial in state pruned"]


def test_json_output_is_json_even_where_a_value_is_not_finite(workdir):
    """A diverged trial's NaN training loss, an infinite value or intermediate value: ``--json`` writes them as
    null (JSON has no NaN or Infinity), so that strict parsers (JavaScript's JSON.parse, jq) read the output."""
    import json

    from tests.helpers import invoke

    workdir.joinpath("studies").mkdir()
    study = optuna.create_study(study_name="nan", storage="sqlite:///studies/nan.db", direction="maximize")
    add(study, TrialState.COMPLETE, float("inf"), train_loss=float("nan"), steps_per_second=float("inf"),
        wall_seconds=float("-inf"), curve={8: float("nan"), 16: float("-inf")})

    def refuse(word: str):
        raise ValueError(f"not JSON: {word}")

    for args in (["trials", "--study", "nan", "--json"], ["show", "--study", "nan", "--trial", "0", "--json"],
                 ["studies", "--json"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        parsed = json.loads(result.output, parse_constant=refuse)
        assert parsed, args
    trial = json.loads(invoke("show", "--study", "nan", "--trial", "0", "--json").output)
    assert trial["value"] is None and trial["user_attrs"]["train_loss"] is None
    assert trial["intermediate_values"] == {"8": None, "16": None}
    row = json.loads(invoke("trials", "--study", "nan", "--json").output)[0]
    assert row["value"] is None and row["steps_per_second"] is None and row["wall_seconds"] is None
    assert json.loads(invoke("studies", "--json").output)[0]["best_value"] is None
