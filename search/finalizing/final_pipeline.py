"""The finalize pipeline, one for a trial and an ensemble alike: a single trial is a one-member ensemble.

``prepare`` checks, before any training, the answer key and that the outputs can be written; ``train_run``
trains (or resumes) one member from its checkpoint (``checkpoint_path``:
``studies/<study>/final/checkpoint-trial<N>-steps<S>[-alldata<B>][-seed<s>].pt``, saved atomically every
``checkpoint_every`` steps: a killed finalize resumes from it; once the outputs are stored it becomes
``finished-...pt``, the best weights alone, which a later finalize of the same run reads instead of training);
``write_outputs`` writes the predictions CSV
(``Id,Category``, one row per test utterance in testdata.json order, renamed into place), scores it with an
answer key (``answers.csv`` in the data folder), writes ``config.json``, uploads the files as one set of study
artifacts (search/finalizing/artifacts.py), records the result (search/finalizing/final_record.py) and rewrites the dashboard's study
note. ``finalize`` is the single trial's run (``final/model.pt``: the best weights and their config, loadable
with ``weights_only=True``); ensembles and ``--all-data``: search/finalizing/ensemble.py.
"""

from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import optuna

from search.running import schedule

from search.running import space as search_space
from search.finalizing.artifacts import upload_record
from search.training.checkpoints import finish, finished_path, saved_step
from search.errors import UserError
from search.files import artifact_folder, check_writable, replaced, save_torch, write_text
from search.finalizing.final_record import FINAL, FinalRecord
from search.finalizing.final_stop import outputs_begin, training_run
from search.reporting.notes import write_study_note
from search.running.objective import trial_seed
from search.finalizing.scoring import answer_key, score_files
from search.running.task import Task
from search.training.train import TrainResult, predict, train


@dataclass
class Member:
    trial: optuna.trial.FrozenTrial
    seed: int
    default_seed: bool  # the seed `search finalize N` uses: the same checkpoint file

    @property
    def name(self) -> str:
        return f"trial{self.trial.number}-seed{self.seed}"


def single(trial: optuna.trial.FrozenTrial, study_seed: int) -> list[Member]:
    """One trial as an ensemble of one, trained with the trial's own seed."""
    return [Member(trial, trial_seed(study_seed, trial.number), True)]


def checkpoint_path(folder: Path, member: Member, steps: int, all_data_steps: int | None = None) -> Path:
    name = f"checkpoint-trial{member.trial.number}-steps{steps}"
    if all_data_steps is not None:
        name += f"-alldata{all_data_steps}"
    if not member.default_seed:
        name += f"-seed{member.seed}"
    return folder / f"{name}.pt"


def test_names(task: Task) -> list[str]:
    """testdata.json's utterance Ids, in its order: the Ids of the predictions CSV and of an answer key."""
    return [task.bank.names[i] for i in range(task.bank.n_train, len(task.bank.names))]


def final_configs(params: dict, task: Task, steps: int, seed: int):
    """The model and training configurations of a finalize run of ``steps`` steps: evaluations every steps/8,
    at most every 2,000 (periodic, unlike a trial's: collapse detection compares them; search/running/schedule.py)."""
    model_cfg, train_cfg = search_space.build_configs(
        params, task.bank.n_mels, task.bank.n_speakers, steps, seed, eval_every=schedule.periodic_every(steps))
    train_cfg.recover_collapse = True  # a long run: roll back a collapse (search/training/train.py CollapseGuard)
    train_cfg.precision = "tf32"  # long bf16 runs can diverge where fp32 does not (TrainConfig.precision)
    return model_cfg, search_space.as_run_on(train_cfg, task.device.type)  # config.json: what ran (CPU: fp32)


def measure_speed(params: dict, task: Task, seed: int, steps: int) -> tuple[float, float]:
    """(steps/s, seconds of one validation) of a finalize of ``params`` on this device, measured over ``steps``
    steps and one validation (``finalize --time``: search/finalizing/budget.py); start-up counts in, on the safe side."""
    model_cfg, train_cfg = final_configs(params, task, steps, seed)
    result = train(model_cfg, replace(train_cfg, eval_steps=(steps,), recover_collapse=False), task)
    return result.steps_per_second, result.eval_seconds


def prepare(task: Task, out: Path, first_output: Path) -> Path | None:
    """Before any training: the answer key (a broken or foreign one fails now), and the CSV and the study
    folder's ``first_output`` writable. Returns the answer key, or None without one."""
    answers = answer_key(task.source, test_names(task))
    check_writable(out, "--out")
    check_writable(first_output, "study folder")
    return answers


@dataclass
class Trained:
    result: TrainResult
    found_step: int | None  # the step of the checkpoint an earlier finalize left, None without one
    steps: int
    checkpoint: Path  # the file that holds this run: its checkpoint, or the finished form a finalize left

    @property
    def already(self) -> bool:
        """Its checkpoint was at the last step: nothing was trained again."""
        return self.found_step is not None and self.found_step >= self.steps

    @property
    def resumed(self) -> int | None:
        """The step training went on from; None if it started afresh or had nothing left to train."""
        return None if self.already else self.found_step


def train_run(model_cfg, train_cfg, task: Task, checkpoint: Path, on_eval, checkpoint_every: int, what: str,
              after_others: bool = False) -> Trained:
    """One checkpointed, resumable train(). ``what`` names the run in the line a signal stops it with
    (``after_others``: runs trained before it are kept). A run an earlier finalize finished and stored is read
    from its finished file (search/training/checkpoints.py ``finish``): nothing is trained."""
    finished = finished_path(checkpoint)
    source = finished if finished.exists() and not checkpoint.exists() else checkpoint
    found = saved_step(source, task.bank.fingerprint)
    try:
        with training_run(what, checkpoint, train_cfg.steps, after_others):
            # a finished file of other data is moved aside, saying so, and training starts over into checkpoint
            result = train(model_cfg, train_cfg, task, on_eval=on_eval, checkpoint=checkpoint,
                           checkpoint_every=checkpoint_every, resume_from=source)
    except ValueError as err:  # a checkpoint of another configuration
        raise UserError(str(err)) from None
    return Trained(result, found, train_cfg.steps, source if found is not None else checkpoint)


def write_labels(task: Task, labels: list[int], out: Path) -> None:
    """The Kaggle CSV of predicted labels for the test utterances (testdata.json order), renamed into place."""
    bank = task.bank
    with replaced(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Id", "Category"])
        for utt, label in zip(bank.test_ids().cpu().tolist(), labels):
            writer.writerow([bank.names[utt], bank.id2speaker[label]])


def write_outputs(study: optuna.Study, task: Task, labels: list[int], out: Path, answers: Path | None,
                  config_path: Path, config: dict, files: list[Path], record: FinalRecord) -> FinalRecord:
    """Write the CSV of ``labels``, its test accuracy (with an answer key) into ``config`` (whose keys
    ``test_accuracy``, ``test_utterances`` and ``answers`` keep their place) and ``record``, config.json, the
    artifacts of ``files`` + config.json + the CSV, the record and the study note; returns the record. From
    here on a signal waits: all of them are written whole."""
    outputs_begin()
    write_labels(task, labels, out)
    test_accuracy, test_n = score_files(out, answers, task.bank.id2speaker) if answers else (None, None)
    config.update(test_accuracy=test_accuracy, test_utterances=test_n, answers=str(answers) if answers else None)
    write_text(config_path, json.dumps(config, indent=2))
    record.test_accuracy = test_accuracy
    if record.key == FINAL:  # a trial's record is its one member's too
        record.members[0].test_accuracy = test_accuracy
    upload_record(study, record, [*files, config_path, out], artifact_folder(study.study_name))
    write_study_note(study)  # the dashboard's study note shows the finalized result
    return record


@dataclass
class FinalResult:
    trial: int
    valid_accuracy: float
    best_step: int
    model_path: Path
    predictions_path: Path
    steps_per_second: float
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> Optuna artifact id
    resumed_from_step: int | None = None  # the step of the checkpoint an earlier finalize left
    test_accuracy: float | None = None  # with an answer key (answers.csv) in the data folder
    test_utterances: int | None = None
    answers: Path | None = None


def finalize(study: optuna.Study, trial: optuna.trial.FrozenTrial, task: Task, steps: int, out: Path,
             folder: Path, seed: int, on_eval: Callable[[int, dict], None] | None = None,
             checkpoint_every: int = 1000) -> FinalResult:
    """Retrain ``trial``'s configuration for ``steps`` steps; write ``final/model.pt``, ``final/config.json``,
    the CSV at ``out``, and record it as the study's ``final``."""
    model_path, config_path = folder / "model.pt", folder / "config.json"
    answers = prepare(task, out, model_path)
    [member] = single(trial, seed)
    model_cfg, train_cfg = final_configs(trial.params, task, steps, member.seed)
    run = train_run(model_cfg, train_cfg, task, checkpoint_path(folder, member, steps), on_eval, checkpoint_every,
                    f"trial #{trial.number}")
    result = run.result
    # predicted before outputs_begin: a signal while it runs still stops the command
    labels = predict(result.model, task.bank, task.bank.test_ids()).cpu().tolist()
    outputs_begin()
    save_torch({"model_config": model_cfg.to_dict(), "state_dict": result.model.state_dict(),
                "id2speaker": task.bank.id2speaker}, model_path)
    config = {"study": study.study_name, "trial": trial.number, "params": trial.params,
              "model_config": model_cfg.to_dict(), "train_config": asdict(train_cfg),
              "valid_accuracy": result.best_accuracy, "best_step": result.best_step, "history": result.history,
              "resumed_from_step": _recorded_resume(config_path, trial.number, steps, run.found_step),
              "test_accuracy": None, "test_utterances": None, "answers": None}
    record = write_outputs(study, task, labels, out, answers, config_path, config, [model_path],
                           FinalRecord.of_trial(trial.number, steps, result.best_accuracy, result.best_step))
    finish(run.checkpoint)  # the outputs are stored: the full checkpoint is no longer needed
    return FinalResult(trial.number, result.best_accuracy, result.best_step, model_path, out, result.steps_per_second,
                       record.artifacts, resumed_from_step=run.found_step, test_accuracy=config["test_accuracy"],
                       test_utterances=config["test_utterances"], answers=answers)


def _recorded_resume(config_path: Path, trial: int, steps: int, resumed: int | None) -> int | None:
    """``resumed_from_step`` for config.json. A finalize run again after one that finished trains nothing and
    writes that run's model and predictions again: it records what that run recorded (the config.json it
    replaces), so that its files are the same bytes and search/finalizing/artifacts.py reuses that run's artifact set."""
    if resumed != steps or not config_path.is_file():
        return resumed
    try:
        earlier = json.loads(config_path.read_text(encoding="utf-8"))
        if earlier.get("trial") == trial and earlier.get("train_config", {}).get("steps") == steps:
            return earlier.get("resumed_from_step")
    except (OSError, ValueError, AttributeError):
        pass  # unreadable: this run's own record
    return resumed
