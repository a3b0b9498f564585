"""``search finalize``: retrain the best trial's configuration (or a given one, or an ensemble) on the full
budget and write the Kaggle predictions CSV, printing progress and the results.

What it writes and in which order: search/finalizing/final_pipeline.py (one trial), search/finalizing/ensemble.py (``top``,
``--all-data``). How a signal ends it: search/finalizing/final_stop.py. Each result gets its own CSV,
``studies/<study>/predictions-<name>.csv``, and ``predictions.csv`` is a copy of the best of them (``publish``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import optuna

from data.tempfiles import remove_stale
from search.finalizing import budget
from search.reporting.formats import duration_text
from search.finalizing.ensemble import finalize_ensemble, pick_top, summary_lines
from search.errors import UserError
from search.files import (artifact_folder, check_out, check_writable, final_folder, predictions_path, replaced,
                          result_predictions_path)
from search.finalizing.final_pipeline import finalize, single
from search.finalizing.final_record import PREDICTIONS, RESULTS, result_text
from search.finalizing.final_stop import stoppable
from search.reporting.logs import Console, open_console
from search.reporting.notes import write_study_note
from search.reporting.queries import pick_trial
from search.finalizing.scoring import ANSWERS_NAME
from search.db.storage import default_url
from search.reporting.logs import Progress
from search.running.settings import CPU_FINALIZE_STEPS, GPU_FINALIZE_STEPS, StudySettings
from search.training.train import report_progress


def default_steps(device) -> int:
    """``--steps`` when not given: the sample code's 70,000 on a GPU, ``CPU_FINALIZE_STEPS`` on a CPU."""
    return GPU_FINALIZE_STEPS if str(device).startswith("cuda") else CPU_FINALIZE_STEPS


@dataclass
class FinalizeRequest:
    """What ``search finalize`` was asked: a trial (``best``, a number) or ``top`` (an ensemble)."""

    which: str
    study_name: str
    storage: str | None = None  # None: storage.default_url
    data_dir: Path | None = None  # None: the study's own data
    steps: int | None = None  # None: default_steps(the device), or as many as fit in ``time``
    time: float | None = None  # --time: seconds the finalize may take; its steps are planned (search/finalizing/budget.py)
    out: Path | None = None  # None: studies/<study>/predictions.csv
    device: str = "auto"
    checkpoint_every: int = 1000
    k: int | None = None  # with top: how many members (default 3)
    seeds: bool = False
    all_data: bool = False
    quiet: bool = False
    console: Console | None = field(default=None, repr=False, compare=False)  # set by run_finalize, used by setup


def run_finalize(request: FinalizeRequest) -> None:
    """``search finalize``: retrain one trial (here) or an ensemble / ``--all-data`` (search/finalizing/ensemble.py),
    printing progress and the results."""
    from search.reporting.logs import progress_interval
    from search.running.study import load_study

    which = request.which
    if which != "top" and (request.k is not None or request.seeds):
        raise UserError(f"{'--k' if request.k is not None else '--seeds'} goes with `search finalize top`, "
                        f"not {which!r}")
    study = load_study(request.study_name, request.storage)
    check_ours(study, request.storage)
    if request.time is not None and (request.steps is not None or which == "top" or request.all_data):
        raise UserError("--time: plans the steps of one model (`finalize best` or N, without --all-data); "
                        + ("give --steps or --time, not both" if request.steps is not None else "give --steps here"))
    if request.steps is None and request.time is None:
        from search.running.task import resolve_device

        request = replace(request, steps=default_steps(resolve_device(request.device)))
    echo = open_console(study.study_name, request.quiet)  # one for the whole command: setup() takes it
    request = replace(request, console=echo)

    def line(info: dict) -> None:  # every 10 s (search.running.run.progress_interval), between the evaluations' lines
        echo.progress(f"{Progress.training_text(info)}  ETA {Progress.format_seconds(Progress.training_left(info))}")

    def work() -> None:
        with report_progress(line, progress_interval()):
            _finalize_with(study, request)

    stoppable(work, echo)  # a signal: one line saying where it stopped (search/finalizing/final_stop.py)


def check_ours(study: optuna.Study, storage: str | None) -> None:
    """Refuse, before any data is prepared, a study with complete trials that `search run` did not create (plain
    Optuna's, say): its trials' parameters are not configurations of our space, and retraining one would fail after
    the data was prepared (a KeyError on the first parameter it lacks). As `search run` refuses to add to it."""
    from search.reporting.queries import complete_trials
    from search.db.storage import redact
    from search.running.settings import StudySettings

    if StudySettings.from_attrs(study.user_attrs) is None and complete_trials(study):
        url = redact(storage or default_url(study.study_name))
        raise UserError(f"--study {study.study_name}: the study in {url} was not created by `search run` (it has "
                        "no search settings: budget, data, seed, space), so its trials are not configurations "
                        "`search finalize` can retrain")


def _finalize_with(study: optuna.Study, request: FinalizeRequest) -> None:
    which = request.which
    if which == "top" or request.all_data:
        return finalize_members(study, request)
    trial = pick_trial(study, which)
    request, expected = plan_time(study, request, trial) if request.time is not None else (request, None)
    name = f"trial{trial.number}-steps{request.steps}"
    out, echo, task = setup(study, request, name)
    steps = request.steps
    echo(f"finalizing trial #{trial.number} of {study.study_name!r} (valid accuracy {trial.value:.4f} in the "
         f"search): {steps} steps on {task.device}")
    echo(expected or budget.expected_line(trial, steps, task.device))
    if budget_warning(study, steps):
        echo(budget_warning(study, steps))

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


def finalize_members(study: optuna.Study, request: FinalizeRequest) -> None:
    """``search finalize top --k K [--seeds] [--all-data]`` and ``search finalize best|N --all-data``: pick
    the members, train them (printing progress) and print the members' and the ensemble's results."""
    settings_seed = study_seed(study)
    k, steps, all_data = request.k or 3, request.steps, request.all_data
    if request.which == "top":
        members = pick_top(study, k, request.seeds, settings_seed)
        first = members[0].trial.number
        label = (f"trial{first}-seeds{k}" if request.seeds else f"top{k}") + ("-all-data" if all_data else "")
        what = (f"the best configuration (trial #{first}) with {k} seeds" if request.seeds else
                f"the top {k} distinct configurations (trials " + ", ".join(f"#{m.trial.number}" for m in members) + ")")
    else:
        members = single(pick_trial(study, request.which), settings_seed)
        label, what = f"trial{members[0].trial.number}-all-data", f"trial #{members[0].trial.number}"
    name = f"{label}-steps{steps}"
    out, echo, task = setup(study, request, name)
    echo(f"finalizing {what} of {study.study_name!r}: {steps} steps each on {task.device}"
         + ("; then each again on train + validation for its best step count" if all_data else ""))
    for member in dict.fromkeys(m.trial.number for m in members):  # each distinct trial's expected duration
        echo(f"member trial #{member}: " + budget.expected_line(next(m.trial for m in members
                                                                    if m.trial.number == member), steps, task.device))
    if budget_warning(study, steps):
        echo(budget_warning(study, steps))

    def on_eval(i: int, phase: str, step: int, total: int, metrics: dict) -> None:
        echo_eval(echo, step, total, metrics, member=f"member {i + 1}/{len(members)}", phase=phase)

    result = finalize_ensemble(study, members, task, steps, out, final_folder(study.study_name), label, all_data,
                               echo, on_eval, request.checkpoint_every)
    for line in summary_lines(result):
        echo(line)
    if all_data:
        echo("--all-data: the predictions come from models trained on train + validation for the step count "
             "their validation run chose; the validation split no longer scores them (valid above: the validation runs)")
    echo_results(echo, result, study.study_name, f"members and config saved in {result.folder}")
    publish(study, request, name, result.predictions_path, result.valid_accuracy, result.test_accuracy, echo)


def plan_time(study: optuna.Study, request: FinalizeRequest, trial) -> tuple[FinalizeRequest, str]:
    """``--time``: measure this device's speed on ``trial``'s configuration (``budget.MEASURE_STEPS`` steps, as
    finalize trains them: the search's recorded speed may be another card's, in another precision) and set the
    steps to as many as fit. Returns the request with its steps and the line saying what was planned."""
    from search.finalizing.final_pipeline import measure_speed, single
    from search.running.task import load_task, resolve_device

    echo = request.console
    task = load_task(_data_dir(study, request), study_seed(study), resolve_device(request.device),
                     progress=echo.data_progress)
    echo(f"--time {duration_text(request.time)}: measuring trial #{trial.number}'s configuration on "
         f"{task.device} ({budget.MEASURE_STEPS} steps and one validation)")
    started = time.monotonic()
    rate, validation = measure_speed(trial.params, task, single(trial, study_seed(study))[0].seed,
                                     budget.MEASURE_STEPS)
    left = request.time - (time.monotonic() - started)  # the measurement took part of the time given
    plan = budget.plan_for(left, rate, validation, f"--time {duration_text(request.time)}")
    return replace(request, steps=plan.steps), (
        f"expected duration: about {duration_text(plan.seconds)}: {plan.steps:,} steps fit in the "
        f"{duration_text(left)} left of {duration_text(request.time)} at {rate:.1f} steps/s and {validation:.1f} s per validation, measured "
        "here (the learning-rate schedule is set for that many steps)")


def study_seed(study: optuna.Study) -> int:
    """The seed the study's trials were trained with (0 for a study ``search run`` did not create)."""
    from search.running.settings import StudySettings

    settings = StudySettings.from_attrs(study.user_attrs)
    return settings.seed if settings else 0


def setup(study: optuna.Study, request: FinalizeRequest, name: str):
    """What every finalize needs: (the checked output CSV: ``--out``, else this result's own file,
    ``studies/<study>/predictions-<name>.csv``; the console (it prints and appends to studies/<study>/search.log);
    the data on the device: the study's own unless --data says otherwise)."""
    from search.running.settings import StudySettings
    from search.running.task import load_task, resolve_device

    settings = StudySettings.from_attrs(study.user_attrs)
    out = request.out or result_predictions_path(study.study_name, name)
    check_writable(out, "--out")
    # final/ is ours alone: every temporary file a killed finalize left there (a checkpoint's, of any step count
    # or ensemble member; data/tempfiles.py) goes, not only those of the files this finalize writes
    remove_stale(final_folder(study.study_name), recursive=True)
    echo = request.console or open_console(study.study_name, request.quiet)
    task = load_task(_data_dir(study, request), study_seed(study), resolve_device(request.device),
                     progress=echo.data_progress)
    # before any training: the CSV must not replace the storage, the data or its answer key (search/files.py)
    check_out(out, "--out", request.storage or default_url(study.study_name), task.source,
              Path(task.source) / ANSWERS_NAME)
    return out, echo, task


def _data_dir(study: optuna.Study, request: FinalizeRequest) -> Path | None:
    """The data a finalize trains on: ``--data``, else the study's own (None: the embedded dataset)."""
    settings = StudySettings.from_attrs(study.user_attrs)
    if request.data_dir is None and settings and settings.data != "embedded":
        return Path(settings.data)
    return request.data_dir


def budget_warning(study: optuna.Study, steps: int) -> str | None:
    """A line when ``steps`` is below the study's budget: the model would train less than the trials it was
    picked by (their validation accuracy is no guide to it)."""
    settings = StudySettings.from_attrs(study.user_attrs)
    if settings and steps < settings.budget:
        return (f"warning: --steps {steps:,} is below the search budget ({settings.budget:,} steps a trial): this "
                "model trains less than the trials it was picked by")
    return None


def echo_eval(echo, step: int, total: int, metrics: dict, member: str = "", phase: str = "valid") -> None:
    """One progress line per evaluation of a finalize (``member``: which one, in an ensemble; ``phase``:
    ``valid``, or ``all-data`` without a validation score), and a line for a collapse the trainer rolled back
    (search/training/train.py CollapseGuard)."""
    rate = metrics["steps_per_second"]
    # as the 10-s lines: 42s, 3m05s, 2h07m
    eta = Progress.format_seconds(Progress.training_left({"step": step, "steps": total, "steps_per_second": rate}))
    score = (f"valid acc {metrics['valid_accuracy']:.4f}" if phase == "valid"
             else "(train + validation: no validation score)")
    echo.progress(f"{f'{member} {phase} ' if member else ''}step {step}/{total}  loss {metrics['train_loss']:.4f}  "
                  f"{score}  {rate:.1f} steps/s  ETA {eta}")
    if "rollback" in metrics:
        from search.training.train import describe_rollback

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


def publish(study: optuna.Study, request: FinalizeRequest, name: str, csv_path: Path, valid_accuracy: float,
            test_accuracy: float | None, echo) -> None:
    """Record a finalized result and keep ``predictions.csv`` a copy of the best one by validation accuracy.

    Each result has its own file (``predictions-<name>.csv``); ``predictions.csv`` is a copy of the best of those
    still on disk (validation accuracy: the test answer key only scores), so that a weaker later result never
    replaces a better file unnoticed (BENCHMARKS.md, "Figures behind code constants"). The study's attribute
    ``predictions`` says which (``search show``, the report and the dashboard note print it), and a line says what
    it holds and what it replaced. With ``--out`` the CSV goes where it was asked, and the line says so."""
    if request.out is not None:
        echo(f"--out {request.out}: written with {result_text(name, {'valid_accuracy': valid_accuracy, 'test_accuracy': test_accuracy})}; "
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
        echo(f"{pointer} holds {result_text(best, on_disk[best])}, {count}; this result is in {csv_path}")
        return
    if held_name is None or held_name == name:
        replaced_text = ("; it replaced an earlier predictions.csv (of a result not recorded)" if unrecorded else
                         "" if held_name is None else "; it replaced this result's earlier file")
    else:
        replaced_text = "; it replaced " + (result_text(held_name, held) if held else held_name)
    echo(f"{pointer} holds {result_text(best, on_disk[best])}, {count}{replaced_text}")

