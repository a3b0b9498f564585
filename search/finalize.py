"""Retrain the best trial's configuration on the full budget and write the Kaggle predictions CSV.

Writes under ``studies/<study>/final/``: ``checkpoint-trial<N>-steps<S>.pt`` (training state, saved atomically every
``checkpoint_every`` steps: a killed finalize resumes from it), ``model.pt`` (the best weights and
their config, loadable with ``weights_only=True``), ``config.json``; and the CSV at ``out``
(``Id,Category``, one row per test utterance in testdata.json order), written to a temporary file and
renamed so a failure never leaves half a CSV. Then model.pt, config.json and the CSV are uploaded to the
study's artifact store, ``studies/<study>/artifacts/`` (see search/artifacts.py), where `search dashboard`
lists and serves them. With an answer key (``answers.csv``) in the data folder, the CSV is scored and the
test accuracy recorded in config.json. Ensembles (``finalize top``) and ``--all-data``: search/ensemble.py.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import optuna
import torch

from search import space as search_space
from search.errors import UserError
from search.objective import trial_seed
from search.study import best_trial_or_none
from search.scoring import answer_key, score_files, score_rows
from search.task import Task
from search.train import TrainResult, predict, predict_proba, train


@dataclass
class FinalResult:
    trial: int
    valid_accuracy: float
    best_step: int
    model_path: Path
    predictions_path: Path
    steps_per_second: float
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> Optuna artifact id
    resumed_from_step: int | None = None  # training went on from the checkpoint of a killed finalize
    test_accuracy: float | None = None  # with an answer key (answers.csv) in the data folder
    test_utterances: int | None = None
    answers: Path | None = None


def pick_trial(study: optuna.Study, which: str) -> optuna.trial.FrozenTrial:
    """``best`` or a trial number; only completed trials have a configuration worth retraining."""
    if which == "best":
        best = best_trial_or_none(study)
        if best is None:
            raise UserError(f"study {study.study_name!r} has no completed trial yet: run `search run` first")
        return best
    if not (which.isascii() and which.isdigit()):  # str.isdigit() also takes '²', which int() refuses
        raise UserError(f"TRIAL {which!r}: expected 'best', 'top' or a trial number")
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(int(which))
    if trial is None or trial.state != optuna.trial.TrialState.COMPLETE:
        raise UserError(f"TRIAL {which}: no completed trial #{which} in study {study.study_name!r}")
    return trial


def check_writable(path: Path, option: str) -> None:
    """Fail before hours of training, not after: the output's folder must exist or be creatable."""
    folder = path.parent if str(path.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"{option} {path}: cannot create folder {folder} ({err.strerror})") from None
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)) or path.is_dir():
        raise UserError(f"{option} {path}: not writable")


def write_predictions(task: Task, model, out: Path) -> None:
    write_labels(task, predict(model, task.bank, task.bank.test_ids()).cpu().tolist(), out)


def write_labels(task: Task, labels: list[int], out: Path) -> None:
    """The Kaggle CSV of predicted labels for the test utterances (testdata.json order), renamed into place."""
    bank = task.bank
    test_ids = bank.test_ids()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Id", "Category"])
        for utt, label in zip(test_ids.cpu().tolist(), labels):
            writer.writerow([bank.names[utt], bank.id2speaker[label]])
    os.replace(tmp, out)


def finalize(study: optuna.Study, trial: optuna.trial.FrozenTrial, task: Task, steps: int, out: Path,
             folder: Path, seed: int, on_eval: Callable[[int, dict], None] | None = None,
             checkpoint_every: int = 1000) -> FinalResult:
    answers = answer_key(task.source)  # a broken answer key fails now, before any training or folder
    check_writable(out, "--out")
    check_writable(folder / "model.pt", "study folder")
    model_cfg, train_cfg = final_configs(trial.params, task, steps, trial_seed(seed, trial.number))
    checkpoint = folder / f"checkpoint-trial{trial.number}-steps{steps}.pt"
    resumed = _checkpoint_step(checkpoint)
    result: TrainResult = train(model_cfg, train_cfg, task, on_eval=on_eval, checkpoint=checkpoint,
                                checkpoint_every=checkpoint_every)
    model_path = folder / "model.pt"
    tmp = model_path.with_name(f"model.pt.tmp{os.getpid()}")
    torch.save({"model_config": model_cfg.to_dict(), "state_dict": result.model.state_dict(),
                "id2speaker": task.bank.id2speaker}, tmp)
    os.replace(tmp, model_path)
    write_predictions(task, result.model, out)
    test_accuracy, test_n = score_files(out, answers, task.bank.id2speaker) if answers else (None, None)
    config_path = folder / "config.json"
    tmp = config_path.with_name(f"config.json.tmp{os.getpid()}")  # renamed into place, like model.pt and the CSV
    tmp.write_text(json.dumps({
        "study": study.study_name, "trial": trial.number, "params": trial.params,
        "model_config": model_cfg.to_dict(), "train_config": asdict(train_cfg),
        "valid_accuracy": result.best_accuracy, "best_step": result.best_step, "history": result.history,
        "resumed_from_step": resumed, "test_accuracy": test_accuracy, "test_utterances": test_n,
        "answers": str(answers) if answers else None,
    }, indent=2))
    os.replace(tmp, config_path)
    from search.artifacts import upload_final  # into studies/<study>/artifacts, served by `search dashboard`

    summary = {"steps": steps, "valid_accuracy": result.best_accuracy, "best_step": result.best_step}
    if answers:
        summary["test_accuracy"] = test_accuracy
    artifacts = upload_final(study, trial.number, [model_path, config_path, out], folder.parent / "artifacts", summary)
    return FinalResult(trial.number, result.best_accuracy, result.best_step, model_path, out, result.steps_per_second,
                       artifacts, resumed_from_step=resumed, test_accuracy=test_accuracy, test_utterances=test_n,
                       answers=answers)


def final_configs(params: dict, task: Task, steps: int, seed: int):
    """The model and training configurations of a finalize run of ``steps`` steps (evaluations every
    steps/8, at most every 2,000; warm-up a tenth of the steps, at most 1,000)."""
    model_cfg, train_cfg = search_space.build_configs(
        params, task.bank.n_mels, task.bank.n_speakers, steps, seed, eval_every=min(2000, max(1, steps // 8)))
    train_cfg.warmup_steps = max(1, min(1000, steps // 10))
    train_cfg.recover_collapse = True  # a long run: roll back a collapse (search/train.py CollapseGuard)
    return model_cfg, train_cfg


def _checkpoint_step(path: Path) -> int | None:
    """The step a checkpoint left by an earlier (killed) finalize holds, or None without one."""
    if not path.exists():
        return None
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["step"])
    except Exception:  # noqa: BLE001 - train() reports an unusable checkpoint itself
        return None
