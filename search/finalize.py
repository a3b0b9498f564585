"""Retrain the best trial's configuration on the full budget and write the Kaggle predictions CSV.

Writes under ``studies/<study>/final/``: ``checkpoint-trial<N>-steps<S>.pt`` (training state, saved atomically every
``checkpoint_every`` steps: a killed finalize resumes from it), ``model.pt`` (the best weights and
their config, loadable with ``weights_only=True``), ``config.json``; and the CSV at ``out``
(``Id,Category``, one row per test utterance in testdata.json order), written to a temporary file and
renamed so a failure never leaves half a CSV. Then model.pt, config.json and the CSV are uploaded to the
study's artifact store, ``studies/<study>/artifacts/``, as ``trial<N>-steps<S>-<UTC minute>-<name>`` (one set
per finalize; the study's ``final`` attribute names the current one: search/artifacts.py), where
`search dashboard` lists and serves them. With an answer key (``answers.csv``) in the data folder, the CSV is scored and the
test accuracy recorded in config.json. Ensembles (``finalize top``) and ``--all-data``: search/ensemble.py.

SIGINT (Ctrl-C) and SIGTERM stop the training: the checkpoints written so far stay (they are written atomically,
and the first signal makes the process ignore further ones while it stops), and the command ends with one
``Error:`` line naming the step it stopped at and the step of the checkpoint on disk, and exit code 130 (SIGINT) or
143 (SIGTERM); the same command resumes. A signal that comes once the outputs (model, CSV, config, artifacts)
are being written waits until they all are, and the command ends normally: never half of them (``outputs_begin``).
"""

from __future__ import annotations

import csv
import json
import signal
import threading
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import optuna
import torch

from data.tempfiles import remove_stale
from search import schedule, space as search_space
from search.errors import Stopped, UserError
from search.guard import held_signals, interrupt_once, owns_process, raise_pending, signal_of
from search.files import (artifact_folder, check_out, check_writable, final_folder, predictions_path, replaced,
                          result_predictions_path, save_torch, write_text)
from search.notes import write_study_note
from search.objective import trial_seed
from search.queries import pick_trial
from search.scoring import ANSWERS_NAME, answer_key, score_files
from search.storage import default_url
from search.task import Task
from search.logs import Console, open_console
from search.logs import Progress
from search.settings import CPU_FINALIZE_STEPS, GPU_FINALIZE_STEPS
from search.train import TrainResult, predict, report_progress, train


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


def write_labels(task: Task, labels: list[int], out: Path) -> None:
    """The Kaggle CSV of predicted labels for the test utterances (testdata.json order), renamed into place."""
    bank = task.bank
    test_ids = bank.test_ids()
    with replaced(out) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Id", "Category"])
        for utt, label in zip(test_ids.cpu().tolist(), labels):
            writer.writerow([bank.names[utt], bank.id2speaker[label]])


def finalize(study: optuna.Study, trial: optuna.trial.FrozenTrial, task: Task, steps: int, out: Path,
             folder: Path, seed: int, on_eval: Callable[[int, dict], None] | None = None,
             checkpoint_every: int = 1000) -> FinalResult:
    answers = answer_key(task.source, test_names(task))  # a broken or foreign key fails now, before any training
    check_writable(out, "--out")
    check_writable(folder / "model.pt", "study folder")
    model_cfg, train_cfg = final_configs(trial.params, task, steps, trial_seed(seed, trial.number))
    checkpoint = folder / f"checkpoint-trial{trial.number}-steps{steps}.pt"
    resumed = _checkpoint_step(checkpoint, task.bank.fingerprint)
    with training_run(f"trial #{trial.number}", checkpoint, steps):
        result: TrainResult = train(model_cfg, train_cfg, task, on_eval=on_eval, checkpoint=checkpoint,
                                    checkpoint_every=checkpoint_every)
    # predicted before outputs_begin: a signal while it runs still stops the command
    labels = predict(result.model, task.bank, task.bank.test_ids()).cpu().tolist()
    model_path = folder / "model.pt"
    outputs_begin()  # from here on a signal waits: model, CSV, config and artifacts are written whole
    save_torch({"model_config": model_cfg.to_dict(), "state_dict": result.model.state_dict(),
                "id2speaker": task.bank.id2speaker}, model_path)
    write_labels(task, labels, out)
    test_accuracy, test_n = score_files(out, answers, task.bank.id2speaker) if answers else (None, None)
    config_path = folder / "config.json"
    write_text(config_path, json.dumps({
        "study": study.study_name, "trial": trial.number, "params": trial.params,
        "model_config": model_cfg.to_dict(), "train_config": asdict(train_cfg),
        "valid_accuracy": result.best_accuracy, "best_step": result.best_step, "history": result.history,
        "resumed_from_step": _recorded_resume(config_path, trial.number, steps, resumed),
        "test_accuracy": test_accuracy, "test_utterances": test_n,
        "answers": str(answers) if answers else None,
    }, indent=2))
    from search.artifacts import upload_final  # into studies/<study>/artifacts, served by `search dashboard`

    summary = {"steps": steps, "valid_accuracy": result.best_accuracy, "best_step": result.best_step}
    if answers:
        summary["test_accuracy"] = test_accuracy
    artifacts = upload_final(study, trial.number, [model_path, config_path, out], artifact_folder(study.study_name),
                             summary)
    write_study_note(study)  # the dashboard's study note shows the finalized result
    return FinalResult(trial.number, result.best_accuracy, result.best_step, model_path, out, result.steps_per_second,
                       artifacts, resumed_from_step=resumed, test_accuracy=test_accuracy, test_utterances=test_n,
                       answers=answers)


def test_names(task: Task) -> list[str]:
    """testdata.json's utterance Ids, in its order: the Ids of the predictions CSV and of an answer key."""
    return [task.bank.names[i] for i in range(task.bank.n_train, len(task.bank.names))]


def final_configs(params: dict, task: Task, steps: int, seed: int):
    """The model and training configurations of a finalize run of ``steps`` steps: evaluations every steps/8,
    at most every 2,000 (periodic, unlike a trial's: collapse detection compares them; search/schedule.py)."""
    model_cfg, train_cfg = search_space.build_configs(
        params, task.bank.n_mels, task.bank.n_speakers, steps, seed, eval_every=schedule.periodic_every(steps))
    train_cfg.recover_collapse = True  # a long run: roll back a collapse (search/train.py CollapseGuard)
    train_cfg.precision = "tf32"  # bf16 diverged in 70,000-step runs where fp32 did not (TrainConfig.precision)
    return model_cfg, train_cfg


def _recorded_resume(config_path: Path, trial: int, steps: int, resumed: int | None) -> int | None:
    """``resumed_from_step`` for config.json. A finalize run again after one that finished finds the finished run's
    checkpoint, trains nothing and writes that run's model and predictions again: it records what that run recorded
    (the config.json it replaces), so that its files are the same bytes and search/artifacts.py reuses that run's
    artifact set instead of storing a duplicate (the step it "resumed" from differed, and made a new set each time)."""
    if resumed != steps or not config_path.is_file():
        return resumed
    try:
        earlier = json.loads(config_path.read_text(encoding="utf-8"))
        if earlier.get("trial") == trial and earlier.get("train_config", {}).get("steps") == steps:
            return earlier.get("resumed_from_step")
    except (OSError, ValueError, AttributeError):
        pass  # unreadable: this run's own record
    return resumed


def _checkpoint_step(path: Path, fingerprint: str = "") -> int | None:
    """The step a checkpoint left by an earlier (killed) finalize holds, or None without one (or, given the data's
    ``fingerprint``, with one trained on other data: train() moves it aside and starts over, saying so)."""
    from search.checkpoints import other_data

    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return None if other_data(state, fingerprint) else int(state["step"])
    except Exception:  # noqa: BLE001 - train() reports an unusable checkpoint itself
        return None


@dataclass
class _Stop:
    """Where a finalize is (set by ``training_run``), for the line a signal ends it with (``message``)."""

    what: str | None = None  # the training run in progress or the last one done: "trial #4", "member 2/3"
    checkpoint: Path | None = None
    steps: int = 0
    training: bool = False  # inside that run's train(); False: it is done
    after_others: bool = False  # runs trained before it (an ensemble's earlier members) are kept
    holding: ExitStack | None = None  # closed at the end of run_finalize: ``outputs_begin``'s hold
    writing: bool = False  # ``outputs_begin`` was called: a signal no longer stops the command

    def message(self, interrupt: KeyboardInterrupt) -> str:
        head = f"search finalize: stopped by {_signal_name(interrupt)}"
        if self.what is None:
            return f"{head} before training started: run the same command to start again"
        kept = _checkpoint_step(self.checkpoint) if self.checkpoint is not None else None  # what is on disk now
        if not self.training:
            return (f"{head} after {self.what} finished training, before the predictions were written; "
                    + (f"its checkpoint at step {kept} is kept: run the same command to finish (it is not "
                       "trained again)" if kept is not None else "run the same command to finish"))
        step = getattr(interrupt, "step", None)  # set by train() (search/train.py) when it came in its loop
        head += (f" at step {step} of {self.steps}" if step is not None else "") + f" ({self.what})"
        if kept is not None:
            return f"{head}; the checkpoint at step {kept} is kept: run the same command to resume"
        return (f"{head}; no checkpoint was written yet: run the same command to start it again"
                + (" (what was trained before it is kept)" if self.after_others else ""))


_STOP: ContextVar[_Stop | None] = ContextVar("finalize_stop", default=None)  # set by run_finalize


def _signal_name(interrupt: KeyboardInterrupt) -> str:
    return "Ctrl-C" if signal_of(interrupt) == signal.SIGINT else "SIGTERM"


@contextmanager
def training_run(what: str, checkpoint: Path, steps: int, after_others: bool = False) -> Iterator[None]:
    """Around one checkpointed train() of a finalize: a signal inside it is reported as stopping ``what`` at
    its step, with the checkpoint then on disk (``_Stop.message``). Nothing without ``run_finalize``."""
    stop = _STOP.get()
    if stop is None:
        yield
        return
    stop.what, stop.checkpoint, stop.steps, stop.after_others, stop.training = (what, checkpoint, steps, after_others,
                                                                                True)
    yield  # an exception (the signal) leaves ``training`` set: it came inside this run
    stop.training = False


def outputs_begin() -> None:
    """The outputs of a finalize (model, CSV, config, artifacts, the study's record) are written from here on:
    a signal now waits until the end of the command (search/guard.py ``held_signals``), so that none of them is
    half-written or half-uploaded (seconds: the predictions are computed before), and the command ends
    normally, saying so (``run_finalize``). Nothing outside ``run_finalize``."""
    stop = _STOP.get()
    if stop is not None and stop.holding is not None and not stop.writing:
        stop.writing = True
        stop.holding.enter_context(held_signals())


def _take_pending() -> KeyboardInterrupt | None:
    """The signal held since ``outputs_begin``, taken (none is left for later code), or None."""
    try:
        raise_pending()
    except KeyboardInterrupt as late:
        return late
    return None




def default_steps(device) -> int:
    """``--steps`` when not given: the sample code's 70,000 on a GPU, ``CPU_FINALIZE_STEPS`` on a CPU."""
    return GPU_FINALIZE_STEPS if str(device).startswith("cuda") else CPU_FINALIZE_STEPS


@dataclass
class FinalizeRequest:
    """What ``search finalize`` was asked: a trial (``best``, a number) or ``top`` (an ensemble)."""

    which: str
    study_name: str
    storage: str | None = None  # None: studies/<study>.db
    data_dir: Path | None = None  # None: the study's own data
    steps: int | None = None  # None: default_steps(the device)
    out: Path | None = None  # None: studies/<study>/predictions.csv
    device: str = "auto"
    checkpoint_every: int = 1000
    k: int | None = None  # with top: how many members (default 3)
    seeds: bool = False
    all_data: bool = False
    quiet: bool = False
    console: Console | None = field(default=None, repr=False, compare=False)  # set by run_finalize, used by setup


def run_finalize(request: FinalizeRequest) -> None:
    """``search finalize``: retrain one trial (here) or an ensemble / ``--all-data`` (search/ensemble.py),
    printing progress and the results."""
    from search.logs import progress_interval
    from search.study import load_study

    which = request.which
    if which != "top" and (request.k is not None or request.seeds):
        raise UserError(f"{'--k' if request.k is not None else '--seeds'} goes with `search finalize top`, "
                        f"not {which!r}")
    study = load_study(request.study_name, request.storage)
    check_ours(study, request.storage)
    if request.steps is None:
        from search.task import resolve_device

        request = replace(request, steps=default_steps(resolve_device(request.device)))
    echo = open_console(study.study_name, request.quiet)  # one for the whole command: setup() takes it
    request = replace(request, console=echo)

    def line(info: dict) -> None:  # every 10 s (search.run.progress_interval), between the evaluations' lines
        echo.progress(f"{Progress.training_text(info)}  ETA {Progress.format_seconds(Progress.training_left(info))}")

    # SIGINT / SIGTERM stop the training (search/guard.py: the first raises, later ones are ignored while it
    # stops, so no clean-up is cut short): one Error line naming where it stopped and the checkpoint kept, exit
    # 128 + the signal (the CLI's guard turns Stopped into that). Once the outputs are being written, it waits.
    stop = _Stop()
    complete = False
    token = _STOP.set(stop)
    undo = interrupt_once()
    try:
        late = None
        try:
            with ExitStack() as stop.holding, report_progress(line, progress_interval()):
                _finalize_with(study, request)
                complete = complete_from_here(echo)  # the outputs are complete: no signal ends the command now
        except KeyboardInterrupt as interrupt:
            if not stop.writing:
                message = stop.message(interrupt)  # here: a second signal is still ignored while it reads
                echo.logger.info(message)  # the log file says why the finalize ended too
                raise Stopped(message, 128 + signal_of(interrupt)) from None
            late = interrupt  # after the hold ended: everything was written already
        finally:
            late = _take_pending() or late  # also after a failure: no signal is left pending
    finally:
        undo(signals=not complete)
        _STOP.reset(token)
    if late is not None:
        echo(f"{_signal_name(late)} came while the outputs were being written: they were all written first, and "
             "the finalize is complete")


def complete_from_here(echo) -> bool:
    """Once a finalize's outputs are complete, SIGINT and SIGTERM only say so, until the process ends (exit 0);
    True where it could (the main thread). Before, interrupts() put the default handlers back at the end and a
    signal in the command's last moments (closing the log, click's exit) ended it with 130 or 143 and no line:
    a script took a finished finalize for a failed one. At exit they are ignored (Python puts the default
    handlers back while it shuts down)."""
    if threading.current_thread() is not threading.main_thread() or not owns_process():
        # In-process (CliRunner, a notebook): the command puts the caller's handlers back as it returns, as every
        # command does; replacing them for the rest of the caller's process would swallow its later Ctrl-C.
        return False

    def complete(signum, _frame) -> None:
        try:
            echo(f"{'Ctrl-C' if signum == signal.SIGINT else 'SIGTERM'} came after the finalize was complete: its "
                 "outputs are all written")
        except Exception:  # noqa: BLE001 - the console may be closed already: the exit code says it
            pass

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, complete)
    global _IGNORE_AT_EXIT
    if not _IGNORE_AT_EXIT:
        import atexit

        atexit.register(_ignore_signals)
        _IGNORE_AT_EXIT = True
    return True


def _ignore_signals() -> None:
    # Main thread: run the handlers of signals already caught (pthread_sigmask checks for them), then ignore
    # both; a blocked signal stays pending and is dropped once ignored.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


_IGNORE_AT_EXIT = False


def check_ours(study: optuna.Study, storage: str | None) -> None:
    """Refuse, before any data is prepared, a study with complete trials that `search run` did not create (plain
    Optuna's, say): its trials' parameters are not configurations of our space, and retraining one would fail after
    the data was prepared (a KeyError on the first parameter it lacks). As `search run` refuses to add to it."""
    from search.queries import complete_trials
    from search.storage import default_url, redact
    from search.settings import StudySettings

    if StudySettings.from_attrs(study.user_attrs) is None and complete_trials(study):
        url = redact(storage or default_url(study.study_name))
        raise UserError(f"--study {study.study_name}: the study in {url} was not created by `search run` (it has "
                        "no search settings: budget, data, seed, space), so its trials are not configurations "
                        "`search finalize` can retrain")


def _finalize_with(study: optuna.Study, request: FinalizeRequest) -> None:
    which = request.which
    if which == "top" or request.all_data:
        from search.ensemble import finalize_members

        return finalize_members(study, request)
    trial = pick_trial(study, which)
    name = f"trial{trial.number}-steps{request.steps}"
    out, echo, task = setup(study, request, name)
    steps = request.steps
    echo(f"finalizing trial #{trial.number} of {study.study_name!r} (valid accuracy {trial.value:.4f} in the "
         f"search): {steps} steps on {task.device}")

    def on_eval(step: int, metrics: dict) -> None:
        echo_eval(echo, step, steps, metrics)

    try:
        result = finalize(study, trial, task, steps, out, final_folder(study.study_name), study_seed(study), on_eval,
                          request.checkpoint_every)
    except ValueError as err:  # a checkpoint of another configuration
        raise UserError(str(err)) from None
    if result.resumed_from_step is not None:
        echo(f"resumed from the checkpoint at step {result.resumed_from_step} of an earlier finalize")
    echo(f"valid accuracy {result.valid_accuracy:.4f} (best at step {result.best_step})")
    echo_results(echo, result, study.study_name, f"model saved to {result.model_path}")
    publish(study, request, name, result.predictions_path, result.valid_accuracy, result.test_accuracy, echo)


def study_seed(study: optuna.Study) -> int:
    """The seed the study's trials were trained with (0 for a study ``search run`` did not create)."""
    from search.settings import StudySettings

    settings = StudySettings.from_attrs(study.user_attrs)
    return settings.seed if settings else 0


def setup(study: optuna.Study, request: FinalizeRequest, name: str):
    """What every finalize needs: (the checked output CSV: ``--out``, else this result's own file,
    ``studies/<study>/predictions-<name>.csv``; the console (it prints and appends to studies/<study>/search.log);
    the data on the device: the study's own unless --data says otherwise)."""
    from search.logs import open_console
    from search.settings import StudySettings
    from search.task import load_task, resolve_device

    settings = StudySettings.from_attrs(study.user_attrs)
    out = request.out or result_predictions_path(study.study_name, name)
    check_writable(out, "--out")
    # final/ is ours alone: every temporary file a killed finalize left there (a checkpoint's, of any step count
    # or ensemble member; data/tempfiles.py) goes, not only those of the files this finalize writes
    remove_stale(final_folder(study.study_name), recursive=True)
    echo = request.console or open_console(study.study_name, request.quiet)
    data_dir = request.data_dir
    if settings and data_dir is None and settings.data != "embedded":
        data_dir = Path(settings.data)
    task = load_task(data_dir, study_seed(study), resolve_device(request.device),
                     progress=echo.data_progress("preparing data"))
    # before any training: the CSV must not replace the storage, the data or its answer key (search/files.py)
    check_out(out, "--out", request.storage or default_url(study.study_name), task.source,
              Path(task.source) / ANSWERS_NAME)
    return out, echo, task


def echo_eval(echo, step: int, total: int, metrics: dict, member: str = "", phase: str = "valid") -> None:
    """One progress line per evaluation of a finalize (``member``: which one, in an ensemble; ``phase``:
    ``valid``, or ``all-data`` without a validation score), and a line for a collapse the trainer rolled back
    (search/train.py CollapseGuard)."""
    rate = metrics["steps_per_second"]
    # as the 10-s lines: 42s, 3m05s, 2h07m
    eta = Progress.format_seconds(Progress.training_left({"step": step, "steps": total, "steps_per_second": rate}))
    score = (f"valid acc {metrics['valid_accuracy']:.4f}" if phase == "valid"
             else "(train + validation: no validation score)")
    echo.progress(f"{f'{member} {phase} ' if member else ''}step {step}/{total}  loss {metrics['train_loss']:.4f}  "
                  f"{score}  {rate:.1f} steps/s  ETA {eta}")
    if "rollback" in metrics:
        from search.train import describe_rollback

        echo((f"{member}: " if member else "") + describe_rollback(metrics["rollback"]))


def echo_results(echo, result, study_name: str, saved: str) -> None:
    """The end of a finalize: the test accuracy (with an answer key), what was saved, where the predictions
    and the artifacts are."""
    if result.test_accuracy is not None:
        echo(f"test accuracy {result.test_accuracy:.4f} on {result.test_utterances:,} utterances "
             f"({result.answers.name}: {result.answers})")
    echo(saved)
    echo(f"predictions written to {result.predictions_path}")
    if result.artifacts:
        echo(f"artifacts (served by `search dashboard --study {study_name}`, study page): "
             + ", ".join(result.artifacts) + f" in {artifact_folder(study_name)}")


RESULTS = "final_results"  # study user attribute: every finalized result by name: its CSV and accuracies
PREDICTIONS = "predictions"  # study user attribute: which result studies/<study>/predictions.csv holds


def _result_text(name: str, result: dict) -> str:
    text = f"{name} (valid accuracy {result.get('valid_accuracy', 0):.4f}"
    if result.get("test_accuracy") is not None:
        text += f", test accuracy {result['test_accuracy']:.4f}"
    return text + ")"


def publish(study: optuna.Study, request: FinalizeRequest, name: str, csv_path: Path, valid_accuracy: float,
            test_accuracy: float | None, echo) -> None:
    """Record a finalized result and keep ``predictions.csv`` a copy of the best one by validation accuracy.

    Every finalize wrote ``predictions.csv`` itself: ``finalize top`` (test 0.3364) replaced ``finalize best``'s
    better file (0.4885) without a word, and nothing said which result the file held. Now each result has its
    own file (``predictions-<name>.csv``), ``predictions.csv`` is a copy of the best of those still on disk
    (validation accuracy: the test answer key only scores), the study's attribute ``predictions`` says which
    (``search show``, the report and the dashboard note print it), and a line says what it holds and what it
    replaced. With ``--out`` the CSV goes where it was asked, and the line says whether it replaced a file."""
    if request.out is not None:
        echo(f"--out {request.out}: written with {_result_text(name, {'valid_accuracy': valid_accuracy, 'test_accuracy': test_accuracy})}; "
             f"{predictions_path(study.study_name)} is left as it was")
        return
    results = dict(study.user_attrs.get(RESULTS) or {})
    results[name] = {"file": str(csv_path), "valid_accuracy": valid_accuracy, "test_accuracy": test_accuracy}
    study.set_user_attr(RESULTS, results)
    held = study.user_attrs.get(PREDICTIONS) if isinstance(study.user_attrs.get(PREDICTIONS), dict) else None
    held_name = held.get("name") if held else None
    pointer = predictions_path(study.study_name)
    unrecorded = held_name is None and pointer.is_file()  # written by a finalize before results were recorded
    on_disk = {n: r for n, r in results.items() if isinstance(r, dict) and Path(r.get("file", "")).is_file()}
    # the best on validation; on a tie the file already held stays (no churn), then the newest result
    order = list(on_disk)
    best = max(order, key=lambda n: (on_disk[n].get("valid_accuracy") or 0.0, n == held_name, n == name))
    with replaced(pointer) as tmp:
        tmp.write_bytes(Path(on_disk[best]["file"]).read_bytes())
    study.set_user_attr(PREDICTIONS, {"name": best, **on_disk[best]})
    count = f"the best by validation accuracy of {len(on_disk)} finalized result{'s' if len(on_disk) > 1 else ''}"
    write_study_note(study)  # the dashboard's study note says which result the file holds
    if best != name:
        echo(f"{pointer} holds {_result_text(best, on_disk[best])}, {count}; this result is in {csv_path}")
        return
    if held_name is None or held_name == name:
        replaced_text = ("; it replaced an earlier predictions.csv (of a result not recorded)" if unrecorded else
                         "" if held_name is None else "; it replaced this result's earlier file")
    else:
        replaced_text = "; it replaced " + (_result_text(held_name, held) if held else held_name)
    echo(f"{pointer} holds {_result_text(best, on_disk[best])}, {count}{replaced_text}")

