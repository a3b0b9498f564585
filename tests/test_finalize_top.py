"""The answer key and `search score`; finalize's test accuracy; `search finalize top --k K` (an ensemble of
the best distinct configurations, or of seeds), resumable after a kill, on SQLite and PostgreSQL; `--all-data`.

Everything goes through the CLI (in-process, click's CliRunner; a real subprocess for the kill) on the tiny
synthetic dataset with a few training steps. Nothing is mocked: member probabilities are recomputed from the
saved member models to check the ensemble's predictions.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest
import torch
from optuna.trial import TrialState

from model import ModelConfig, build_model
from search.db.storage import open_storage
from search.running.runner import run_trials
from search.running.settings import StudySettings
from search.running.task import load_task
from search.training.train import predict_proba
from tests.helpers import SAMPLE, delete_study, invoke, kill_once_written, new_study, one_error_line

REPO = Path(__file__).resolve().parents[1]
SQLITE = "sqlite:///studies/t.db"
# three distinct configurations; the fourth is a copy of the first (as Optuna's retry of a killed trial is)
CONFIGS = [dict(SAMPLE, lr=3e-3), dict(SAMPLE, lr=1e-3), dict(SAMPLE, lr=2e-3), dict(SAMPLE, lr=3e-3)]


def make_study(data: Path, url: str, name: str, configs: list[dict]) -> optuna.Study:
    """A study whose trials are ``configs``, run to completion (no pruning), 8 steps each."""
    study = new_study(data, url, name, pruning=False)
    for params in configs:
        study.enqueue_trial(params)
    run_trials(study, StudySettings.from_attrs(study.user_attrs), load_task(data, 0, torch.device("cpu")), len(configs))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    return study


def top_distinct(study: optuna.Study, k: int) -> list[int]:
    seen, numbers = set(), []
    for t in sorted(study.trials, key=lambda t: (-t.value, t.number)):
        key = json.dumps(t.params, sort_keys=True)
        if key not in seen:
            seen.add(key)
            numbers.append(t.number)
    return numbers[:k]


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def member_predictions(data: Path, members: list[Path], weights: list[int]) -> list[str]:
    """Recompute the ensemble's labels from the saved member models: argmax of the weighted mean probabilities."""
    task = load_task(data, 0, torch.device("cpu"))
    total = None
    for path, weight in zip(members, weights):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model = build_model(ModelConfig.from_dict(saved["model_config"]))
        model.load_state_dict(saved["state_dict"])
        probs = predict_proba(model, task.bank, task.bank.test_ids())
        assert torch.allclose(probs.sum(-1), torch.ones(len(probs)), atol=1e-5)
        total = weight * probs if total is None else total + weight * probs
    return [task.bank.id2speaker[i] for i in total.argmax(-1).tolist()]


def saved_members(config: dict) -> tuple[list[Path], list[int]]:
    """An ensemble config.json's member model files and their weights (also recorded per member)."""
    assert config["weights"] == [m["weight"] for m in config["members"]]
    return [Path(m["model_file"]) for m in config["members"]], config["weights"]


def check_weights_shown(config: dict, output: str) -> None:
    """The ensemble is never below its best member on validation, and the printed table and combine line give
    each member's weight (picks out of all picks; 0: left out)."""
    assert config["valid_accuracy"] >= max(m["valid_accuracy"] for m in config["members"])
    picks = sum(config["weights"])
    for i, m in enumerate(config["members"], 1):
        row = next(x for x in output.splitlines() if x.startswith(f"member {i}: #{m['trial']} seed {m['seed']} "))
        assert row.split()[-1 if m["weight"] else -3] == f"{m['weight']}/{picks}", row
        assert row.endswith("left out") == (m["weight"] == 0), row
    kept = ", ".join(f"member {i} x{w}" for i, w in enumerate(config["weights"], 1) if w)
    line = next(x for x in output.splitlines() if x.startswith("weights chosen on the validation split"))
    assert f": {kept}" in line and f"(valid accuracy {config['valid_accuracy']:.4f}; " in line, line


# --- the answer key and `search score` ------------------------------------------------------------------

def test_synthetic_sets_carry_an_answer_key_that_data_check_ignores(tiny_dataset):
    answers = rows(tiny_dataset / "answers.csv")
    test = json.loads((tiny_dataset / "testdata.json").read_text())["utterances"]
    assert answers[0] == ["Id", "Category"] and [r[0] for r in answers[1:]] == [e["feature_path"] for e in test]
    assert not (tiny_dataset / "test_labels.csv").exists()
    result = invoke("data", "check", str(tiny_dataset))
    assert result.exit_code == 0 and ": OK," in result.output, result.output


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_score_prints_accuracy_with_four_decimals_and_thousands(tmp_path):
    speakers = [f"id{i:05d}" for i in range(7)]
    key = [f"uttr-{i:04d}.pt,{speakers[i % 7]}" for i in range(1589)]
    answers = _write(tmp_path / "answers.csv", ["Id,Category", *key])
    # right on every utterance but those whose number is a multiple of 8: 1589 - 199 = 1390 right
    guesses = [f"uttr-{i:04d}.pt,{speakers[(i + (i % 8 == 0)) % 7]}" for i in range(1589)]
    predictions = _write(tmp_path / "p.csv", ["Id,Category", *reversed(guesses)])  # any row order
    result = invoke("score", str(predictions), "--answers", str(answers))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"accuracy {1390 / 1589:.4f} on 1,589 utterances" == "accuracy 0.8748 on 1,589 utterances"
    perfect = invoke("score", str(answers), "--answers", str(answers))
    assert perfect.output.strip() == "accuracy 1.0000 on 1,589 utterances"


def test_score_on_a_dataset_allows_its_speakers_that_the_key_never_names(dataset_copy):
    """Known speakers are mapping.json's beside the key: a model may predict a speaker absent from the test set."""
    answers = rows(dataset_copy / "answers.csv")
    speakers = sorted(json.loads((dataset_copy / "mapping.json").read_text())["speaker2id"])
    _write(dataset_copy / "answers.csv", ["Id,Category", *(f"{u},{speakers[0]}" for u, _ in answers[1:])])
    predictions = _write(dataset_copy.parent / "p.csv", ["Id,Category", *(f"{u},{speakers[1]}" for u, _ in answers[1:])])
    result = invoke("score", str(predictions), "--answers", str(dataset_copy / "answers.csv"))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"accuracy 0.0000 on {len(answers) - 1} utterances"
    (dataset_copy / "mapping.json").unlink()  # without a dataset beside it, the key's speakers are all there is
    line = one_error_line(invoke("score", str(predictions), "--answers", str(dataset_copy / "answers.csv")))
    assert line == f"Error: {predictions}: 1 unknown speaker (not in the answer key's dataset): {speakers[1]}"


KEY = ["Id,Category", "a.pt,id00001", "b.pt,id00002", "c.pt,id00001"]
FOLDER = "a folder where the file should be"
BAD_PREDICTIONS = {
    "missing file": (None, "p.csv: file not found"),
    "wrong header": (["Id,Speaker", "a.pt,id00001", "b.pt,id00002", "c.pt,id00001"],
                     "p.csv: the header must be Id,Category, found 'Id,Speaker'"),
    "no header": (["a.pt,id00001", "b.pt,id00002", "c.pt,id00001"], "p.csv: the header must be Id,Category"),
    "missing ids": (["Id,Category", "a.pt,id00001"], "p.csv: 2 of the answer key's 3 Ids have no prediction: b.pt, c.pt"),
    "extra ids": (["Id,Category", "a.pt,id00001", "b.pt,id00002", "c.pt,id00001", "z.pt,id00001"],
                  "p.csv: 1 Id is not in the answer key: z.pt"),
    "duplicate ids": (["Id,Category", "a.pt,id00001", "b.pt,id00002", "c.pt,id00001", "a.pt,id00002"],
                      "p.csv: 1 duplicate Id: a.pt"),
    "unknown speaker": (["Id,Category", "a.pt,id00001", "b.pt,id99999", "c.pt,id00001"],
                        "p.csv: 1 unknown speaker (not in the answer key's dataset): id99999"),
    "empty file": ([], "p.csv: empty file"),
    "header only": (["Id,Category"], "p.csv: no rows after the header"),
    "three cells": (["Id,Category", "a.pt,id00001,x", "b.pt,id00002", "c.pt,id00001"],
                    "p.csv: row 2 has 3 cells, expected 2"),
    "empty category": (["Id,Category", "a.pt,", "b.pt,id00002", "c.pt,id00001"], "p.csv: row 2 has an empty Category"),
    "not utf-8": (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "p.csv: not a UTF-8 text file"),
    "a folder": (FOLDER, "p.csv: not a file"),
    # several of a kind: counted, named in the plural, the first three shown
    "two extra ids": (["Id,Category", *KEY[1:], "y.pt,id00001", "z.pt,id00002"],
                      "p.csv: 2 Ids are not in the answer key: y.pt, z.pt"),
    "four duplicate ids": (["Id,Category", *KEY[1:], *KEY[1:], "a.pt,id00001"],
                           "p.csv: 4 duplicate Ids: a.pt, b.pt, c.pt, ..."),
    "two unknown speakers": (["Id,Category", "a.pt,id99999", "b.pt,id88888", "c.pt,id00001"],
                             "p.csv: 2 unknown speakers (not in the answer key's dataset): id88888, id99999"),
}


@pytest.mark.parametrize("case", list(BAD_PREDICTIONS))
def test_score_refuses_bad_predictions_in_one_line(case, tmp_path):
    content, message = BAD_PREDICTIONS[case]
    answers = _write(tmp_path / "answers.csv", KEY)
    predictions = tmp_path / "p.csv"
    if isinstance(content, bytes):
        predictions.write_bytes(content)
    elif content == FOLDER:
        predictions.mkdir()
    elif content is not None:
        _write(predictions, content)
    line = one_error_line(invoke("score", str(predictions), "--answers", str(answers)))
    assert line.startswith(f"Error: {tmp_path}/{message}"), line


@pytest.mark.parametrize("case", ["missing", "wrong header", "empty", "garbage"])
def test_score_refuses_a_bad_answer_key_in_one_line(case, tmp_path):
    predictions = _write(tmp_path / "p.csv", KEY)
    answers = tmp_path / "answers.csv"
    if case == "wrong header":
        _write(answers, ["Id,Predicted", *KEY[1:]])
    elif case == "empty":
        answers.write_bytes(b"")
    elif case == "garbage":
        answers.write_bytes(bytes(range(128, 256)))
    line = one_error_line(invoke("score", str(predictions), "--answers", str(answers)))
    assert line.startswith(f"Error: {answers}: "), line
    assert invoke("score", str(predictions)).exit_code != 0  # --answers is required


# --- finalize scores itself with an answer key ----------------------------------------------------------

def test_finalize_prints_and_records_the_test_accuracy(tiny_dataset, workdir):
    make_study(tiny_dataset, SQLITE, "t", CONFIGS[:1])
    result = invoke("finalize", "best", "--study", "t", "--storage", SQLITE, "--steps", "8", "--device", "cpu")
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("test accuracy "))
    accuracy = float(line.split()[2])
    n = len(rows(tiny_dataset / "answers.csv")) - 1
    assert line.startswith(f"test accuracy {accuracy:.4f} on {n:,} utterances (answers.csv")
    config = json.loads((workdir / "studies" / "t" / "final" / "config.json").read_text())
    assert config["test_accuracy"] == pytest.approx(accuracy, abs=5e-5) and config["test_utterances"] == n
    scored = invoke("score", "studies/t/predictions.csv", "--answers", str(tiny_dataset / "answers.csv"))
    assert scored.output.strip() == f"accuracy {accuracy:.4f} on {n:,} utterances"


def test_finalize_fails_before_training_on_a_broken_answer_key(dataset_copy, workdir):
    make_study(dataset_copy, SQLITE, "t", CONFIGS[:1])
    (dataset_copy / "answers.csv").write_text("Id,Category\nuttr-x.pt,id00001\nuttr-x.pt,id00001\n")
    for args in (["best"], ["top", "--k", "1"]):
        line = one_error_line(invoke("finalize", *args, "--study", "t", "--storage", SQLITE, "--steps", "8",
                                     "--device", "cpu"))
        assert line == f"Error: {dataset_copy / 'answers.csv'}: 1 duplicate Id: uttr-x.pt"
        assert not (workdir / "studies" / "t" / "final").exists()  # nothing trained, nothing written


# --- finalize top --k K ----------------------------------------------------------------------------------

def check_top3(study: optuna.Study, data: Path, workdir: Path, output: str, url: str) -> None:
    expected = top_distinct(study, 3)
    assert len(expected) == 3
    assert f"(trials #{expected[0]}, #{expected[1]}, #{expected[2]})" in output, output
    home = workdir / "studies" / study.study_name / "final" / "top3"
    config = json.loads((home / "config.json").read_text())
    assert [m["trial"] for m in config["members"]] == expected
    # the table: each member's valid and test accuracy, then the ensemble's
    for i, m in enumerate(config["members"], 1):
        assert f"member {i}: #{m['trial']} seed {m['seed']}" in output
        assert f"{m['valid_accuracy']:6.4f}  {m['test_accuracy']:6.4f}" in output
    assert f"ensemble of 3             {config['valid_accuracy']:6.4f}  {config['test_accuracy']:6.4f}" in output, output
    # the CSV is the argmax of the members' mean probabilities
    predictions = rows(workdir / "studies" / study.study_name / "predictions.csv")
    test = json.loads((data / "testdata.json").read_text())["utterances"]
    assert predictions[0] == ["Id", "Category"] and [r[0] for r in predictions[1:]] == [e["feature_path"] for e in test]
    members, weights = saved_members(config)
    assert [r[1] for r in predictions[1:]] == member_predictions(data, members, weights)
    check_weights_shown(config, output)
    scored = invoke("score", f"studies/{study.study_name}/predictions.csv", "--answers", str(data / "answers.csv"))
    assert scored.output.startswith(f"accuracy {config['test_accuracy']:.4f} on "), scored.output
    # artifacts and `search show` record the members
    stored = optuna.load_study(study_name=study.study_name, storage=open_storage(url)).user_attrs["final_ensemble"]
    assert [m["trial"] for m in stored["members"]] == expected
    assert [m["weight"] for m in stored["members"]] == weights
    # the dashboard's study note and the report (search/reporting/notes.py) give each member's weight
    from search.reporting.notes import study_note

    note = study_note(optuna.load_study(study_name=study.study_name, storage=open_storage(url)))
    for m in stored["members"]:
        share = f" weight {m['weight']}/{sum(weights)}" if m["weight"] else " left out (weight 0)"
        assert f"#{m['trial']} seed {m['seed']}{share}" in note, note
    # versioned names: label, steps, the upload's UTC minute (and -2, -3 for a second set that minute), file
    version = re.compile(r"top3-steps8-\d{8}T\d{4}(-\d+)?-(.+)")
    named = [version.fullmatch(name) for name in stored["artifacts"]]
    assert all(named), stored["artifacts"]
    assert {m.group(2) for m in named} == {p.name for p in members} | {"config.json", "predictions.csv"}
    for number in expected:
        shown = invoke("show", "--study", study.study_name, "--storage", url, "--trial", str(number))
        assert shown.exit_code == 0, shown.output
        assert "ensemble top3: 3 member(s), 8 steps each" in shown.output and "(this trial)" in shown.output
        assert re.search(r"top3-steps8-\S+-predictions\.csv", shown.output), shown.output


def test_finalize_top3_on_sqlite(tiny_dataset, workdir):
    study = make_study(tiny_dataset, SQLITE, "t", CONFIGS)
    result = invoke("finalize", "top", "--k", "3", "--study", "t", "--storage", SQLITE, "--steps", "8",
                    "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    check_top3(study, tiny_dataset, workdir, result.output, SQLITE)
    # four distinct configurations are not there (one trial is a copy): one line, nothing trained
    line = one_error_line(invoke("finalize", "top", "--k", "4", "--study", "t", "--storage", SQLITE, "--steps", "8"))
    assert line.startswith("Error: --k 4: study 't' has only 3 distinct completed configurations")
    line = one_error_line(invoke("finalize", "best", "--k", "2", "--study", "t", "--storage", SQLITE))
    assert line == "Error: --k goes with `search finalize top`, not 'best'"


def test_finalize_top3_on_postgresql(postgres, tiny_dataset, workdir):
    name = f"test-top-{uuid.uuid4().hex[:12]}"
    try:
        study = make_study(tiny_dataset, postgres, name, CONFIGS)
        result = invoke("finalize", "top", "--k", "3", "--study", name, "--storage", postgres, "--steps", "8",
                        "--device", "cpu", "--quiet")
        assert result.exit_code == 0, result.output
        check_top3(study, tiny_dataset, workdir, result.output, postgres)
    finally:
        delete_study(postgres, name)


def test_finalize_top_with_seeds(tiny_dataset, workdir):
    study = make_study(tiny_dataset, SQLITE, "t", CONFIGS[:2])
    best = study.best_trial.number
    result = invoke("finalize", "top", "--k", "2", "--seeds", "--study", "t", "--storage", SQLITE, "--steps", "8",
                    "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert f"the best configuration (trial #{best}) with 2 seeds" in result.output
    config = json.loads((workdir / "studies" / "t" / "final" / f"trial{best}-seeds2" / "config.json").read_text())
    assert [m["trial"] for m in config["members"]] == [best, best]
    assert len({m["seed"] for m in config["members"]}) == 2
    assert config["selection"]["chosen_on"] == "validation"
    check_weights_shown(config, result.output)
    predictions = rows(workdir / "studies" / "t" / "predictions.csv")
    assert [r[1] for r in predictions[1:]] == member_predictions(tiny_dataset, *saved_members(config))


# --- the weights: ensemble selection on the validation split -------------------------------------------------

def test_a_clearly_worse_member_is_left_out(four_speakers, workdir):
    # lr 1e-4 learns next to nothing in 8 steps: about half the others' validation accuracy. An unweighted mean
    # lets it drag the ensemble below its best member; the selection gives it weight 0.
    study = make_study(four_speakers, SQLITE, "t", [dict(SAMPLE, lr=3e-3), dict(SAMPLE, lr=2e-3), dict(SAMPLE, lr=1e-4)])
    bad = next(t.number for t in study.trials if t.params["lr"] == 1e-4)
    result = invoke("finalize", "top", "--k", "3", "--study", "t", "--storage", SQLITE, "--steps", "8",
                    "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    config = json.loads((workdir / "studies" / "t" / "final" / "top3" / "config.json").read_text())
    members = config["members"]
    worst = next(i for i, m in enumerate(members, 1) if m["trial"] == bad)
    best_member = max(m["valid_accuracy"] for m in members)
    assert members[worst - 1]["valid_accuracy"] < 0.6 * best_member  # clearly worse, on validation
    assert members[worst - 1]["weight"] == 0
    check_weights_shown(config, result.output)
    line = next(x for x in result.output.splitlines() if x.startswith("weights chosen on the validation split: "))
    assert f"member {worst} left out" in line or (f"members " in line and f"{worst} left out" in line), line
    # the plain mean of these members was below the best one: what the selection is there for
    assert config["selection"]["equal_mean_valid_accuracy"] < best_member <= config["valid_accuracy"]
    assert f"the equal mean's: {config['selection']['equal_mean_valid_accuracy']:.4f})" in line
    predictions = rows(workdir / "studies" / "t" / "predictions.csv")
    assert [r[1] for r in predictions[1:]] == member_predictions(four_speakers, *saved_members(config))
    # `search show` gives the weights and how they were chosen, under each member trial
    shown = invoke("show", "--study", "t", "--storage", SQLITE, "--trial", str(bad))
    assert shown.exit_code == 0, shown.output
    assert f"  member {worst}: trial #{bad} seed {members[worst - 1]['seed']}  valid " in shown.output
    assert "  weight 0 (left out)" in shown.output and f"  {line}" in shown.output, shown.output


def test_selection_is_never_below_the_best_member_on_validation():
    """The selection itself, on random probabilities: members of every quality, correlated or not."""
    from search.finalizing.ensemble import _scores, combine, select_weights

    generator = torch.Generator().manual_seed(0)
    for case in range(40):
        n, classes, k = 30, 5, int(torch.randint(2, 6, (1,), generator=generator))
        labels = torch.randint(classes, (n,), generator=generator)
        signal = torch.nn.functional.one_hot(labels, classes).float()
        probs = [torch.softmax(float(torch.rand(1, generator=generator)) * 4 * signal
                               + 2 * torch.randn(n, classes, generator=generator), -1) for _ in range(k)]
        weights, picks = select_weights(probs, labels)
        mix = sum(w * p for w, p in zip(weights, probs))
        accuracy = _scores(mix, labels)[0] / n
        assert accuracy == picks[-1]["valid_accuracy"]
        assert accuracy >= max(_scores(p, labels)[0] / n for p in probs), case
        assert sum(weights) == len(picks) and all(w >= 0 for w in weights)
    # a member that is another one exactly adds nothing: it is never picked beside it
    assert select_weights([probs[0], probs[0].clone()], labels)[0] == [1, 0]
    # no validation split: nothing to choose on, equal weights, and the line says so
    equal = combine(probs, torch.zeros(0, dtype=torch.long), all_data=True)
    assert equal.weights == [1] * k and equal.describe().startswith("equal weights: no validation split")


# --- a killed ensemble finalize resumes ------------------------------------------------------------------

def test_killed_ensemble_finalize_resumes(tiny_dataset, workdir):
    study = make_study(tiny_dataset, SQLITE, "t", CONFIGS[:3])
    first, second, third = top_distinct(study, 3)
    steps = 16
    command = [sys.executable, "-m", "search.cli", "finalize", "top", "--k", "3", "--study", "t", "--storage", SQLITE,
               "--steps", str(steps), "--checkpoint-every", "2", "--device", "cpu", "--out", "resumed.csv"]
    final = workdir / "studies" / "t" / "final"
    done = final / f"checkpoint-trial{first}-steps{steps}.pt"
    killed = final / f"checkpoint-trial{second}-steps{steps}.pt"
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        kill_once_written(process, killed, 300, "the second member wrote no checkpoint")
    finally:
        if process.poll() is None:
            process.kill()
    assert not (workdir / "resumed.csv").exists()  # killed before the end: no CSV
    first_state = torch.load(done, weights_only=True)
    assert first_state["step"] == steps  # the first member had finished

    result = invoke(*command[3:])
    assert result.exit_code == 0, result.output
    assert f"member 1/3: already trained (its checkpoint is at step {steps}): not retrained" in result.output
    assert "member 2/3: resumed from the checkpoint at step " in result.output, result.output
    resumed = int(result.output.split("member 2/3: resumed from the checkpoint at step ")[1].split()[0])
    assert 0 < resumed < steps
    assert "member 3/3: already" not in result.output and "member 3/3: resumed" not in result.output
    # the outputs stored, every member's full checkpoint became its finished form: the best weights alone
    assert not list(final.glob("checkpoint-*.pt"))
    for checkpoint in (done, killed):
        finished = torch.load(final / checkpoint.name.replace("checkpoint-", "finished-"), weights_only=True)
        assert finished["finished"] and finished["step"] == steps and "optimizer" not in finished
    finished_first = torch.load(final / done.name.replace("checkpoint-", "finished-"), weights_only=True)
    assert all(torch.equal(finished_first["model"][k], v) for k, v in first_state["best_model"].items())
    config = json.loads((final / "top3" / "config.json").read_text())
    assert [(m["already_trained"], m["resumed_from_step"]) for m in config["members"]] == \
        [(True, None), (False, resumed), (False, None)]

    # The same ensemble without interruption gives the same predictions (CPU training is deterministic).
    for leftover in [*final.glob("checkpoint-*.pt"), *final.glob("finished-*.pt")]:
        leftover.unlink()
    straight = invoke(*command[3:-1], "straight.csv")
    assert straight.exit_code == 0, straight.output
    assert "resumed" not in straight.output and "already trained" not in straight.output
    assert rows(workdir / "resumed.csv") == rows(workdir / "straight.csv")


# --- --all-data --------------------------------------------------------------------------------------------

def test_all_data_retrains_on_train_and_validation_for_the_chosen_steps(tiny_dataset, workdir):
    study = make_study(tiny_dataset, SQLITE, "t", CONFIGS[:2])
    result = invoke("finalize", "top", "--k", "2", "--all-data", "--study", "t", "--storage", SQLITE,
                    "--steps", "8", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert "the validation split no longer scores them" in result.output
    final = workdir / "studies" / "t" / "final"
    config = json.loads((final / "top2-all-data" / "config.json").read_text())
    assert config["all_data"] is True
    task = load_task(tiny_dataset, 0, torch.device("cpu"))
    for i, m in enumerate(config["members"], 1):
        chosen = m["best_step"]
        assert m["all_data_steps"] == chosen >= 1
        assert f"member {i}/2: training again on train + validation for {chosen} steps" in result.output
        assert m["all_data_train_config"]["steps"] == chosen and m["all_data_train_config"]["eval_every"] == chosen
        checkpoint = final / f"finished-trial{m['trial']}-steps8-alldata{chosen}.pt"
        state = torch.load(checkpoint, weights_only=True)
        assert state["step"] == chosen
        saved = torch.load(m["model_file"], weights_only=True)
        # the submitted weights are the all-data run's last ones, not the validation run's best
        assert all(torch.equal(saved["state_dict"][k], v) for k, v in state["model"].items())
    assert len(task.train_ids) + len(task.valid_ids) == task.bank.n_train
    # the weights were chosen on the validation runs' models (validation never trained them) and applied to the
    # all-data models
    assert config["selection"]["chosen_on"] == "validation runs"
    assert "weights chosen on the validation split by the validation runs' models (before the train + " \
           "validation retrain): " in result.output
    assert config["valid_accuracy"] >= max(m["valid_accuracy"] for m in config["members"])
    predictions = rows(workdir / "studies" / "t" / "predictions.csv")
    assert [r[1] for r in predictions[1:]] == member_predictions(tiny_dataset, *saved_members(config))
    # `search finalize best --all-data`: one model, same wording
    single = invoke("finalize", "best", "--all-data", "--study", "t", "--storage", SQLITE, "--steps", "8",
                    "--device", "cpu", "--quiet")
    assert single.exit_code == 0, single.output
    assert "no longer scores them" in single.output and "ensemble of" not in single.output
    best = optuna.load_study(study_name="t", storage=SQLITE).best_trial.number
    single_config = json.loads((final / f"trial{best}-all-data" / "config.json").read_text())
    assert single_config["all_data"] and [m["trial"] for m in single_config["members"]] == [best]
    assert "member 1/1: already trained" in single.output  # its validation run is one of the top-2 members
