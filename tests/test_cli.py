"""The user's path end to end through the CLI, in-process with click's CliRunner."""

from __future__ import annotations

import csv
import json
import re

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import SHARED, invoke, one_error_line, study_dbs

TINY_RUN = ["--budget", "16", "--device", "cpu", "--seed", "1"]


def test_run_then_finalize_writes_a_submission(tiny_dataset, workdir):
    result = invoke("run", "--trials", "3", "--data", str(tiny_dataset), "--study", "s", *TINY_RUN)
    assert result.exit_code == 0, result.output
    assert "trial 3/3" in result.output
    assert "best trial #" in result.output and "search finalize best --study s" in result.output
    # the best score means something beside the sample code's own trial (a CPU study's warm start: the CPU
    # configuration #0, the sample code #1) and chance (6 speakers)
    best_line = next(line for line in result.output.splitlines() if line.startswith("best trial #"))
    assert re.search(r"\(sample-code trial #1: (0\.\d{4}|pruned at step \d+); chance 1/6 = 0\.167\)$", best_line), best_line
    assert (workdir / "studies" / "studies.sqlite3").exists()  # every study of the folder in one file

    result = invoke("finalize", "best", "--study", "s", "--steps", "24", "--out", "sub/predictions.csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(open(workdir / "sub" / "predictions.csv")))
    test_ids = [u["feature_path"] for u in json.loads((tiny_dataset / "testdata.json").read_text())["utterances"]]
    speakers = set(json.loads((tiny_dataset / "mapping.json").read_text())["speaker2id"])
    assert rows[0] == ["Id", "Category"]
    assert [r[0] for r in rows[1:]] == test_ids
    assert {r[1] for r in rows[1:]} <= speakers
    assert (workdir / "studies" / "s" / "final" / "model.pt").exists()


def test_trials_record_what_users_browse(tiny_dataset, workdir):
    assert invoke("run", "--trials", "2", "--data", str(tiny_dataset), "--study", "s", *TINY_RUN).exit_code == 0
    study = optuna.load_study(study_name="s", storage=SHARED)
    trial = study.trials[0]
    assert trial.user_attrs["warm_start"] == "cpu-sample-code-stats-pooling"  # a CPU study's warm start, first
    assert trial.user_attrs["model.n_classes"] > 0 and trial.params["d_model"] == 80  # flat: search/reporting/attrs.py
    assert trial.user_attrs["parameters"] > 0
    assert trial.user_attrs["steps_per_second"] > 0
    assert trial.user_attrs["device"] == "cpu"
    assert len(trial.intermediate_values) >= 2  # the validation curve


def test_resume_adds_trials_to_the_study(tiny_dataset, workdir):
    assert invoke("run", "--trials", "2", "--data", str(tiny_dataset), "--study", "r", *TINY_RUN).exit_code == 0
    result = invoke("run", "--trials", "2", "--data", str(tiny_dataset), "--study", "r", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "resuming study 'r'" in result.output
    study = optuna.load_study(study_name="r", storage=SHARED)
    assert len([t for t in study.trials if t.state.is_finished()]) == 4
    assert study.user_attrs["budget"] == 16  # kept from the first run


def test_a_bad_trial_is_pruned(four_speakers, workdir):
    """Good trials first, then one whose learning rate (1e-7, enqueued outside the space) leaves it at its
    random initialisation: at its first rung it ranks below the good ones and the pruner stops it."""
    from search.running.space import KNOWN_CONFIGS

    good = dict(KNOWN_CONFIGS["sample-code"], lr=3e-3)
    storage = SHARED
    args = ["--data", str(four_speakers), "--study", "p", "--budget", "64", "--device", "cpu"]
    assert invoke("run", "--trials", "1", "--no-warm-start", *args).exit_code == 0
    study = optuna.load_study(study_name="p", storage=storage)
    for _ in range(5):
        study.enqueue_trial(good)
    study.enqueue_trial(dict(good, lr=1e-7), user_attrs={"deliberately": "bad"})
    result = invoke("run", "--trials", "6", *args)
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="p", storage=storage)
    bad = next(t for t in study.trials if t.user_attrs.get("deliberately") == "bad")
    assert bad.state == TrialState.PRUNED, [(t.number, t.state, t.intermediate_values) for t in study.trials]
    assert bad.user_attrs["ended"].startswith("pruned at step")
    assert max(bad.intermediate_values) < 64  # stopped before its full budget
    # where a pruned trial got to, written once as it ended (search/running/objective.py): its last validation step, the
    # training loss there (the loss curve's last value) and its speed
    assert bad.user_attrs["last_step"] == max(bad.intermediate_values)
    assert bad.user_attrs["train_loss"] == pytest.approx(bad.user_attrs["train_loss_curve"][-1], rel=1e-3)
    assert len(bad.user_attrs["train_loss_curve"]) == len(bad.intermediate_values)
    assert bad.user_attrs["steps_per_second"] > 0


def test_finalize_without_completed_trials_fails_clearly(workdir):
    """A study whose only trial failed: one line that names the study and the next step; nothing written."""
    (workdir / "studies").mkdir()
    study = optuna.create_study(study_name="empty", storage="sqlite:///studies/empty.db", direction="maximize")
    study.tell(study.ask(), state=TrialState.FAIL)
    line = one_error_line(invoke("finalize", "best", "--study", "empty"))
    assert line == "Error: study 'empty' has no completed trial yet: run `search run` first", line
    assert not (workdir / "studies" / "empty" / "final").exists()
    assert not (workdir / "studies" / "empty" / "predictions.csv").exists()
    assert len(optuna.load_study(study_name="empty", storage="sqlite:///studies/empty.db").trials) == 1


def test_unknown_study_is_named(workdir):
    (workdir / "studies").mkdir()
    optuna.create_study(study_name="exists", storage="sqlite:///studies/x.db")
    line = one_error_line(invoke("finalize", "best", "--study", "nope", "--storage", "sqlite:///studies/x.db"))
    assert line == "Error: --study: no study 'nope' in sqlite:///studies/x.db; studies there: exists", line


@pytest.mark.parametrize("args, message", [
    (["--budget", "3"], "Error: --budget 3: too small to evaluate a trial; use at least "),
    (["--storage", "nonsense"], "Error: --storage nonsense: not a storage URL"),
], ids=["budget-too-small", "storage-not-a-url"])
def test_bad_options_are_one_line_errors(args, message, tiny_dataset, workdir):
    line = one_error_line(invoke("run", "--trials", "2", *args, "--data", str(tiny_dataset)), alone=True)
    assert line.startswith(message), line
    assert not study_dbs(workdir)


def test_no_pruning_is_kept_by_the_study(tiny_dataset, workdir):
    data = ["--data", str(tiny_dataset), "--study", "np", *TINY_RUN]
    result = invoke("run", "--trials", "4", "--no-pruning", *data)
    assert result.exit_code == 0, result.output
    assert "pruning off" in result.output
    study = optuna.load_study(study_name="np", storage=SHARED)
    assert study.user_attrs["pruning"] is False
    # every trial ran its whole budget: validations at the learning curve's points (search/running/schedule.py), no rungs
    assert all(t.state == TrialState.COMPLETE and sorted(t.intermediate_values) == [4, 8, 12, 16] for t in study.trials)

    resumed = invoke("run", "--trials", "1", *data)  # no flag: the study's own choice
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "pruning off" in resumed.output

    line = one_error_line(invoke("run", "--trials", "1", "--pruning", *data))
    assert "--pruning" in line and "pruning off" in line
    assert len(optuna.load_study(study_name="np", storage=SHARED).trials) == 5  # nothing added
