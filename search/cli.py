"""The ``search`` command line: a thin click layer over the library (tested in-process with CliRunner).

Every command turns bad input into one line, ``Error: <what>: <problem>``, and a non-zero exit.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click
import optuna

from data.errors import DataError

DEFAULT_STUDY = "hw04"
CPU_BUDGET = 200  # steps per trial on a CPU: 20 trials of the cpu space in ~5 minutes on 2 cores
GPU_BUDGET = 2000  # steps per trial on a GPU
SEED_MAX = 2**32 - 1  # numpy's and Optuna's samplers take seeds in 0 .. 2**32-1


def friendly_errors(command):
    """Show our errors (and the storage's) as one line, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from search.errors import UserError
        from search.storage import scrub

        try:
            return command(*args, **kwargs)
        except (UserError, DataError) as err:
            raise click.ClickException(scrub(str(err))) from None

    return wrapper


# Let through as they are: click's own errors and exits (usage errors keep their usage line), and
# Ctrl-C (click prints "Aborted!"; see _guarded).
_PASS_THROUGH = (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, KeyboardInterrupt,
                 SystemExit, GeneratorExit)


def _guarded(ctx: click.Context, call):
    """Run a command so that *any* exception reaches the user as one ``Error:`` line and a non-zero exit:
    our own errors as they are, anything unexpected as what failed, with its traceback appended to the
    study's log file (``studies/<study>/search.log``, or ``studies/search.log`` without a study)."""
    from search.errors import UserError

    from search.errors import Terminated

    try:
        return call(ctx)
    except Terminated:
        err = click.ClickException(f"search {ctx.info_name if ctx.parent else 'run'}: stopped by SIGTERM (a running trial ended FAIL, "
                                   "ended: interrupted)")
        err.exit_code = 128 + 15
        raise err from None
    except _PASS_THROUGH:
        raise
    except (UserError, DataError) as err:
        from search.storage import scrub

        raise click.ClickException(scrub(str(err))) from None
    except Exception as err:  # noqa: BLE001 - the point: no traceback on the console, ever
        raise click.ClickException(_unexpected(ctx, err)) from None


def _unexpected(ctx: click.Context, err: Exception) -> str:
    import traceback

    from search.logs import FORMAT, _words, log_path
    from search.storage import check_study_name, redact

    name = ctx.params.get("study_name")
    try:
        check_study_name(name)
        path = log_path(name)
    except Exception:  # noqa: BLE001 - no study, or not a usable name: the common log file
        path = Path("studies") / "search.log"
    names, c = [], ctx
    while c.parent is not None:  # the subcommands' names ("run", "data check"), whatever argv[0] was
        names.insert(0, c.info_name)
        c = c.parent
    what_ran = " ".join(["search", *names])
    command = " ".join([what_ran, *_words(ctx)])
    import logging
    import time

    header = logging.Formatter(FORMAT).format(logging.makeLogRecord(
        {"msg": f"unexpected error in: {command}", "levelname": "ERROR", "levelno": logging.ERROR,
         "created": time.time()}))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as log:
            log.write(redact(header + "\n" + "".join(traceback.format_exception(err))))
        where = f"traceback in {path}"
    except OSError as log_err:
        where = f"its traceback could not be written to {path}: {log_err.strerror or log_err}"
    def describe(e: BaseException) -> str:
        if isinstance(e, OSError) and e.strerror:
            return f"{e.filename}: {e.strerror}" if e.filename else f"{type(e).__name__}: {e.strerror}"
        text = str(getattr(e, "orig", None) or e).strip()
        return type(e).__name__ + (f": {text.splitlines()[0][:200]}" if text else "")

    what, root = describe(err), err
    for _ in range(10):  # the root cause says more ("database or disk is full") than a wrapper's message
        root = root.__cause__ or root.__context__ or root
        if root.__cause__ is None and root.__context__ is None:
            break
    if root is not err and describe(root) != what:
        what += f"; cause: {describe(root)}"
    return redact(f"{what_ran} failed: {what} ({where})")


class SafeCommand(click.Command):
    """A command whose unexpected exceptions are one ``Error:`` line (see ``_guarded``)."""

    def invoke(self, ctx: click.Context):
        return _guarded(ctx, super().invoke)


class SafeGroup(click.Group):
    """``search`` and its sub-groups: every command in them is a SafeCommand, whoever adds it."""

    command_class = SafeCommand
    group_class = type  # sub-groups (``search data``) are SafeGroups too

    def invoke(self, ctx: click.Context):
        return _guarded(ctx, super().invoke)


class _sigterm_interrupts:
    """While active (main thread only), SIGTERM raises ``Terminated``: Optuna then records the running trial
    as FAIL (the objective adds ``ended: interrupted``) and workers are stopped, as on Ctrl-C."""

    def __enter__(self):
        import signal
        import threading

        from search.errors import Terminated

        def on_sigterm(_signum, _frame):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: a second one must not break the clean-up
            raise Terminated()

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, on_sigterm)
        return self

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False


def _check_listen(host: str, port: int) -> None:
    """Refuse an address the dashboard cannot listen on, before printing its URL."""
    import socket

    from search.errors import UserError

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise UserError(f"--host {host}: not an address or host name this machine can resolve "
                        f"({getattr(err, 'strerror', None) or err})") from None
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the dashboard's server does
            probe.bind(address)
    except OSError as err:
        what = f"--port {port}: already in use on {host}" if err.errno == 98 else \
            f"--host {host} --port {port}: cannot listen there ({err.strerror})"
        raise UserError(what) from None


def _check_study(_ctx, _param, value: str) -> str:
    from search.errors import UserError
    from search.storage import check_study_name

    try:
        check_study_name(value)
    except UserError as err:
        raise click.ClickException(str(err)) from None
    return value


def storage_option(f):
    return click.option("--storage", default=None, metavar="URL",
                        help="Optuna storage URL [default: sqlite:///studies/<study>.db]; also postgresql://, "
                             "mysql+pymysql://, journal:///path.log")(f)


def study_option(f):
    return click.option("--study", "study_name", default=DEFAULT_STUDY, show_default=True, callback=_check_study,
                        help="Study name (letters, digits, '-', '_'...; no '/', no leading '.').")(f)


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        type=click.Choice(["auto", "cpu", "cuda"]), help="Where to train.")(f)


def data_option(f):
    return click.option("--data", "data_dir", default=None, type=click.Path(path_type=Path),
                        help="HW04 Dataset/ folder [default: the embedded synthetic dataset].")(f)


def quiet_option(f):
    return click.option("--quiet", "-q", is_flag=True,
                        help="Print no progress lines, only the summary (all lines still go to "
                             "studies/<study>/search.log). Progress is printed on a terminal and in pipes alike.")(f)


def open_console(study_name: str, quiet: bool):
    from search.logs import open_console as _open

    return _open(study_name, quiet)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _echo_progress(label: str):
    from search.logs import throttled

    return throttled(lambda done, total: click.echo(f"{label}: {done}/{total}", err=True))


def package_version() -> str:
    """This package's version: the installed distribution's (hw04-search), else setup.cfg's (a checkout
    run without installing)."""
    from importlib import metadata

    try:
        return metadata.version("hw04-search")
    except metadata.PackageNotFoundError:
        import configparser

        config = configparser.ConfigParser()
        config.read(Path(__file__).resolve().parent.parent / "setup.cfg", encoding="utf-8")
        return config.get("metadata", "version", fallback="unknown")


@click.group(cls=SafeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), "--version", prog_name="search",
                      help="Print the version of search (the hw04-search package) and exit.")
def main() -> None:
    """Hyperparameter search for HW04 speaker classification, on Optuna.

    \b
    Quick start:
      search run --trials 20          # a study on the embedded data
      search dashboard                # browse it in optuna-dashboard
      search report                   # one HTML page of plotly figures: report.html
      search finalize best            # retrain the best config, write predictions.csv
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@main.command()
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help="Trials to add to the study; optional with --timeout (then: as many as start before it).")
@study_option
@storage_option
@data_option
@click.option("--budget", type=int, default=None,
              help=f"Training steps of a full trial [default: {GPU_BUDGET} on GPU, {CPU_BUDGET} on CPU; "
                   "a resumed study keeps its own].")
@device_option
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
              help="Seeds the split, the sampler and training.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop starting new trials after this many seconds (without --trials: run until then).")
@click.option("--space", "profile", type=click.Choice(["auto", "full", "cpu"]), default="auto", show_default=True,
              help="Search-space profile: full (GPU) or cpu (small models); auto picks by device.")
@click.option("--warm-start/--no-warm-start", default=True, show_default=True,
              help="Run the known HW04 configurations first in a new study.")
@click.option("--pruning/--no-pruning", default=None,
              help="Let Hyperband stop unpromising trials early (a new study's default: on; a study keeps its "
                   "choice). --no-pruning runs every trial to its full budget.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed trial instead of recording it.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on this machine, sharing the trials (more machines: run the same command "
                   "there with a postgresql:// or mysql+pymysql:// --storage).")
@click.option("--gpus", default=None, is_flag=False, flag_value="all", metavar="all|LIST",
              help="One worker process per GPU: --gpus alone takes every visible GPU, --gpus 0,2 those CUDA "
                   "indices.")
@click.option("--workers-per-gpu", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes on each GPU (of --gpus, or of --device without it): several trials at once "
                   "on one GPU.")
@quiet_option
@friendly_errors
def run(trials, study_name, storage, data_dir, budget, device, seed, timeout, profile, warm_start, pruning,
        fail_fast, workers, gpus, workers_per_gpu, quiet):
    """Run trials of a study, creating or resuming it.

    Adds --trials N trials to the study; with --timeout SECONDS and no --trials, starts trials until
    that many seconds have passed (the running ones finish).

    \b
    Example: search run --trials 20 --study hw04 --data Dataset/
             search run --trials 200 --gpus --workers-per-gpu 4 --data Dataset/
    """
    import torch

    from search.errors import UserError
    from search.storage import check_url, default_url, redact
    from search.study import EVALUATIONS_PER_TRIAL, Progress, StudySettings, best_trial_or_none, open_study, run_trials
    from search.task import load_task, resolve_device, use_device
    from search.workers import worker_devices

    if trials is None and timeout is None:
        raise UserError("--trials: give the number of trials to add, or --timeout SECONDS to run trials until then")
    torch_device = resolve_device(device)
    if budget is not None and budget < EVALUATIONS_PER_TRIAL:
        raise UserError(f"--budget {budget}: too small to evaluate a trial; use at least {EVALUATIONS_PER_TRIAL} steps")
    devices = worker_devices(gpus, workers_per_gpu, workers, torch_device, torch.cuda.device_count())
    in_process = len(devices) == 1  # one worker: this process, on that device
    devices = devices[:trials]  # fewer trials than workers: no idle worker is started (None: all of them)
    url = storage or default_url(study_name)
    check_url(url)
    echo = open_console(study_name, quiet)  # prints, and appends to studies/<study>/search.log
    requested = StudySettings(
        budget=budget or (GPU_BUDGET if torch_device.type == "cuda" else CPU_BUDGET),
        eval_every=0, data=str(data_dir.resolve()) if data_dir else "embedded", seed=seed,
        profile=profile if profile != "auto" else ("full" if torch_device.type == "cuda" else "cpu"),
        pruning=pruning is not False)
    requested.eval_every = max(1, requested.budget // EVALUATIONS_PER_TRIAL)
    if in_process:
        task = load_task(data_dir, seed, use_device(devices[0]), progress=echo.data_progress("preparing data"))
    else:  # each worker loads the data itself; build the feature-bank cache once, here
        from search.workers import WorkerJob, prepare_data, run_workers
        prepare_data(data_dir, progress=echo.data_progress("preparing data"))
    study, settings, created = open_study(study_name, url, requested, budget is not None, warm_start,
                                          pruning_given=pruning is not None)
    before = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
    echo(f"{'created' if created else 'resuming'} study {study_name!r} in {redact(url)} "
               f"({_plural(before, 'finished trial')} so far); {_plural(trials, 'trial') if trials else 'trials'} of "
               f"{settings.budget} steps{'' if trials else f' until {timeout:g}s have passed'} on "
               f"{', '.join(dict.fromkeys(devices))}, space {settings.profile}, data {settings.data}"
         + ("" if settings.pruning else ", pruning off"))
    with _sigterm_interrupts():  # SIGTERM ends the running trial(s) as FAIL, like Ctrl-C, not left RUNNING
        if in_process:
            run_trials(study, settings, task, trials, timeout=timeout, fail_fast=fail_fast,  # None: until --timeout
                       on_trial=Progress(trials, echo.progress))
        else:
            from search.workers import run_target

            target = run_target(study, trials)  # workers take trials until the study's count reaches it
            echo((f"{_plural(trials, 'trial')} shared by " if trials else f"trials until {timeout:g}s have passed on ")
                 + f"{len(devices)} worker process{'' if len(devices) == 1 else 'es'} ({', '.join(devices)})")
            report = run_workers(study, [WorkerJob(i, study_name, url, requested, budget is not None,
                                                   str(data_dir) if data_dir else None, d, target, timeout, fail_fast)
                                         for i, d in enumerate(devices)], echo.progress, trials)
    best = best_trial_or_none(study)
    if best is None:
        echo("no trial completed.")
    else:
        from search.inspection import reference_note

        note = reference_note(study, best)
        echo(f"best trial #{best.number}: valid accuracy {best.value:.4f}" + (f" ({note})" if note else ""))
        echo("  " + json.dumps(best.params))
    echo(f"study stored in {redact(url)}")
    flags = f" --study {study_name}" + (f" --storage '{redact(url)}'" if storage else "")
    echo(f"next: search dashboard{flags}    |    search finalize best{flags}"
               + (f" --data {data_dir}" if data_dir else ""))
    if not in_process and report.failed:
        raise UserError("; ".join(o.describe() for o in report.failed)
                        + f"; {report.finished} of {trials or 'the'} trials finished")


@main.command()
@click.argument("which", default="best", metavar="[best|N|top]")
@study_option
@storage_option
@data_option
@click.option("--steps", type=click.IntRange(min=1), default=70_000, show_default=True, help="Training steps.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Predictions CSV [default: studies/<study>/predictions.csv].")
@device_option
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Steps between checkpoints; a killed finalize resumes from the last one.")
@click.option("--k", "k", type=click.IntRange(min=1), default=None,
              help="With `top`: how many members [default: 3], the K best distinct configurations.")
@click.option("--seeds", is_flag=True, help="With `top`: the best configuration trained with K seeds instead.")
@click.option("--all-data", is_flag=True,
              help="After the validation run has chosen the step count, train again on train + validation for "
                   "that many steps and predict with that model.")
@quiet_option
@friendly_errors
def finalize(which, study_name, storage, data_dir, steps, out, device, checkpoint_every, k, seeds, all_data, quiet):
    """Retrain the best trial and write the predictions CSV.

    Or trial N, or the top K as an ensemble (top --k K), on the full budget. With an answer key
    (answers.csv) in the data folder, also print the test accuracy.

    \b
    Example: search finalize best --study hw04 --data Dataset/ --steps 70000
             search finalize top --k 3 --study hw04 --all-data
    """
    from search.errors import UserError
    from search.finalize import finalize as run_finalize, pick_trial
    from search.storage import default_url
    from search.study import load_study

    if which != "top" and (k is not None or seeds):
        raise UserError(f"{'--k' if k is not None else '--seeds'} goes with `search finalize top`, not {which!r}")
    url = storage or default_url(study_name)
    study = load_study(study_name, url)
    if which == "top" or all_data:
        return _finalize_ensemble(study, which, k or 3, seeds, all_data, data_dir, steps, out, device,
                                  checkpoint_every, quiet)
    trial = pick_trial(study, which)
    seed, folder, out, echo, task = _final_setup(study, data_dir, device, out, quiet)
    echo(f"finalizing trial #{trial.number} of {study_name!r} (valid accuracy {trial.value:.4f} in the search): "
               f"{steps} steps on {task.device}")

    def on_eval(step: int, metrics: dict) -> None:
        rate = metrics["steps_per_second"]
        eta = (steps - step) / rate if rate > 0 else 0
        echo.progress(f"step {step}/{steps}  loss {metrics['train_loss']:.4f}  valid acc {metrics['valid_accuracy']:.4f}"
                   f"  {rate:.1f} steps/s  ETA {eta:.0f}s")
        if "rollback" in metrics:  # a collapse the trainer rolled back (search/train.py CollapseGuard)
            from search.train import describe_rollback

            echo(describe_rollback(metrics["rollback"]))

    try:
        result = run_finalize(study, trial, task, steps, out, folder, seed, on_eval, checkpoint_every)
    except ValueError as err:  # a checkpoint of another configuration
        raise UserError(str(err)) from None
    if result.resumed_from_step is not None:
        echo(f"resumed from the checkpoint at step {result.resumed_from_step} of an earlier finalize")
    echo(f"valid accuracy {result.valid_accuracy:.4f} (best at step {result.best_step})")
    _echo_test_accuracy(echo, result)
    echo(f"model saved to {result.model_path}")
    echo(f"predictions written to {result.predictions_path}")
    _echo_artifacts(echo, result, study_name)


def _final_setup(study, data_dir, device, out, quiet):
    """What every finalize needs: the study's seed, the final folder, the checked --out, the console (it
    prints and appends to studies/<study>/search.log) and the data on the device (the study's own data unless
    --data says otherwise)."""
    from search.finalize import check_writable
    from search.study import StudySettings
    from search.task import load_task, resolve_device

    study_name = study.study_name
    settings = StudySettings.from_attrs(study.user_attrs)
    seed = settings.seed if settings else 0
    folder = Path("studies") / study_name / "final"
    out = out or Path("studies") / study_name / "predictions.csv"
    check_writable(out, "--out")
    echo = open_console(study_name, quiet)
    if settings and data_dir is None and settings.data != "embedded":
        data_dir = Path(settings.data)
    task = load_task(data_dir, seed, resolve_device(device), progress=echo.data_progress("preparing data"))
    return seed, folder, out, echo, task


def _echo_test_accuracy(echo, result) -> None:
    if result.test_accuracy is not None:
        echo(f"test accuracy {result.test_accuracy:.4f} on {result.test_utterances:,} utterances "
             f"({result.answers.name}: {result.answers})")


def _echo_artifacts(echo, result, study_name: str) -> None:
    if result.artifacts:
        echo(f"artifacts (served by `search dashboard --study {study_name}`, study page): "
             + ", ".join(result.artifacts) + f" in studies/{study_name}/artifacts")


def _finalize_ensemble(study, which, k, seeds, all_data, data_dir, steps, out, device, checkpoint_every, quiet):
    """`search finalize top --k K [--seeds] [--all-data]` and `search finalize best|N --all-data`."""
    from search import ensemble
    from search.finalize import pick_trial
    from search.study import StudySettings

    study_name = study.study_name
    settings = StudySettings.from_attrs(study.user_attrs)
    seed = settings.seed if settings else 0  # pick_top seeds the members with it
    if which == "top":
        members = ensemble.pick_top(study, k, seeds, seed)
        label = (f"trial{members[0].trial.number}-seeds{k}" if seeds else f"top{k}") + ("-all-data" if all_data else "")
        what = (f"the best configuration (trial #{members[0].trial.number}) with {k} seeds" if seeds else
                f"the top {k} distinct configurations (trials " + ", ".join(f"#{m.trial.number}" for m in members) + ")")
    else:
        members = ensemble.single(pick_trial(study, which), seed)
        label, what = f"trial{members[0].trial.number}-all-data", f"trial #{members[0].trial.number}"
    seed, folder, out, echo, task = _final_setup(study, data_dir, device, out, quiet)
    echo(f"finalizing {what} of {study_name!r}: {steps} steps each on {task.device}"
         + ("; then each again on train + validation for its best step count" if all_data else ""))

    def on_eval(i: int, phase: str, step: int, total: int, metrics: dict) -> None:
        rate = metrics["steps_per_second"]
        eta = (total - step) / rate if rate > 0 else 0
        valid = (f"  valid acc {metrics['valid_accuracy']:.4f}" if phase == "valid"
                 else "  (train + validation: no validation score)")
        echo.progress(f"member {i + 1}/{len(members)} {phase} step {step}/{total}  loss {metrics['train_loss']:.4f}"
                      f"{valid}  {rate:.1f} steps/s  ETA {eta:.0f}s")
        if "rollback" in metrics:  # a collapse the trainer rolled back (search/train.py CollapseGuard)
            from search.train import describe_rollback

            echo(f"member {i + 1}/{len(members)}: " + describe_rollback(metrics["rollback"]))

    result = ensemble.finalize_ensemble(study, members, task, steps, out, folder, label, all_data, echo, on_eval,
                                        checkpoint_every)
    for line in ensemble.summary_lines(result):
        echo(line)
    if all_data:
        echo("--all-data: the predictions come from models trained on train + validation for the step count "
             "their validation run chose; the validation split no longer scores them (valid above: the validation runs)")
    _echo_test_accuracy(echo, result)
    echo(f"members and config saved in {result.folder}")
    echo(f"predictions written to {result.predictions_path}")
    _echo_artifacts(echo, result, study_name)


@main.command()
@click.argument("predictions", type=click.Path(path_type=Path))
@click.option("--answers", type=click.Path(path_type=Path), required=True,
              help="The answer key, Id,Category (a synthetic set's answers.csv).")
@friendly_errors
def score(predictions, answers):
    """Score a predictions CSV against an answer key.

    Both are Id,Category CSV files (the Kaggle format).

    Example: search score studies/hw04/predictions.csv --answers hw04-synth/answers.csv
    """
    from search.scoring import accuracy_line, score_files

    accuracy, n = score_files(predictions, answers)
    click.echo(accuracy_line(accuracy, n))


@main.command()
@study_option
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (127.0.0.1: this machine only).")
@click.option("--port", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="Port to listen on.")
@friendly_errors
def dashboard(study_name, storage, host, port):
    """Start optuna-dashboard on a study's storage.

    It also serves the study's artifacts (the finalized model, config and CSV). Every trial's page shows its resolved configuration, parameter count, steps/s, device, wall time,
    validation curve and why it ended (user attributes and intermediate values). Stop it with Ctrl-C.

    Example: search dashboard --study hw04 --port 8080
    """
    import optuna_dashboard

    from search.storage import default_url
    from search.study import load_study

    from search.errors import UserError

    url = storage or default_url(study_name)
    study = load_study(study_name, url, any_direction=True)  # fails clearly if the study is not there
    from search.artifacts import artifact_dir, artifact_store

    _check_listen(host, port)
    folder = artifact_dir(study_name)  # what `search finalize` uploaded: listed and served by the dashboard
    click.echo(f"optuna-dashboard for study {study_name!r}: http://{host}:{port}/dashboard/studies/{study._study_id}"
               f"  (artifacts: {folder})")
    try:
        optuna_dashboard.run_server(study._storage, host=host, port=port, artifact_store=artifact_store(folder))
    except OSError as err:  # taken between the check and the start
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None


@main.command("space")
@click.option("--profile", type=click.Choice(["full", "cpu"]), default="full", show_default=True,
              help="Which profile of the space: full (GPU) or cpu (small models).")
@click.option("--json", "as_json", is_flag=True, help="Print every parameter as JSON.")
def space_command(profile, as_json):
    """Print the search space.

    Each parameter, its choices or range, and when it applies.

    Example: search space --profile cpu --json
    """
    from search import space as search_space

    entries = search_space.describe(search_space.build_space(profile))
    if as_json:
        click.echo(json.dumps({"profile": profile, "parameters": entries,
                               "warm_start": search_space.warm_start_configs(search_space.build_space(profile))},
                              indent=2))
        return
    rows = [(e["name"], e["type"] + (" (log)" if e.get("log") else ""),
             ", ".join(map(str, e["choices"])) if "choices" in e
             else f"{e['low']:g} .. {e['high']:g}" + (f" step {e['step']}" if e.get("step") else ""),
             e["condition"]) for e in entries]
    widths = [max(len(r[i]) for r in rows + [("parameter", "type", "choices / range", "applies when")]) for i in range(4)]
    for row in [("parameter", "type", "choices / range", "applies when")] + rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


@main.command()
@study_option
@storage_option
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("report.html"), show_default=True,
              help="The HTML file to write (replaced atomically).")
@friendly_errors
def report(study_name, storage, out):
    """Write an HTML report of a study and print its best trials.

    The report is one self-contained page of plotly figures (it opens offline): optimisation history,
    validation curves, parameter importances, parallel coordinates, slices, accuracy by encoder /
    pooling / loss, and a timeline.

    \b
    Example: search report --study hw04 --out report.html
    """
    from search.finalize import check_writable
    from search.report import summary_lines, write_report
    from search.storage import default_url
    from search.study import load_study

    study = load_study(study_name, storage or default_url(study_name))
    check_writable(out, "--out")
    sections = write_report(study, out)
    for line in summary_lines(study):
        click.echo(line)
    skipped = [s for s in sections if s.figure is None]
    for s in skipped:
        click.echo(f"figure skipped: {s.title}: {s.note}")
    click.echo(f"report written to {out} ({len(sections) - len(skipped)} figures)")


@main.command()
@click.option("--storage", default=None, metavar="URL",
              help="Optuna storage URL [default: every studies/*.db file].")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@friendly_errors
def studies(storage, as_json):
    """List the studies in a storage.

    For each: its trials by state, and the best value.

    Example: search studies --storage sqlite:///studies/hw04.db
    """
    from search.inspection import default_storages, studies_lines, study_rows

    urls = [storage] if storage else default_storages()
    rows = [row for url in urls for row in study_rows(url)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for line in studies_lines(rows):
        click.echo(line)


@main.command()
@study_option
@storage_option
@click.option("--trial", "number", type=click.IntRange(min=0), default=None,
              help="Trial number [default: the best complete trial].")
@click.option("--json", "as_json", is_flag=True, help="Print the trial as JSON.")
@friendly_errors
def show(study_name, storage, number, as_json):
    """Print one trial's configuration and results.

    Its parameters, resolved configurations, validation curve, and why it ended.

    Example: search show --study hw04 --trial 3
    """
    from search.inspection import pick_any_trial, trial_json, trial_lines
    from search.storage import default_url
    from search.study import load_study

    study = load_study(study_name, storage or default_url(study_name))
    trial = pick_any_trial(study, number)
    if as_json:
        click.echo(json.dumps(trial_json(trial), indent=2, default=str))
        return
    for line in trial_lines(study, trial):
        click.echo(line)


@main.command("trials")
@study_option
@storage_option
@click.option("--sort", type=click.Choice(["number", "value", "duration"], case_sensitive=False), default="number",
              show_default=True, help="Order: trial number, value (best first) or wall time (longest first).")
@click.option("--state", "states", multiple=True,
              type=click.Choice(["complete", "pruned", "fail", "running", "waiting"], case_sensitive=False),
              help="Only trials in this state; repeat for several (--state complete --state pruned).")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per trial.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV with a header row.")
@friendly_errors
def trials(study_name, storage, sort, states, as_json, as_csv):
    """List a study's trials, one row each.

    Each row: number, state, value, model size, steps/s, wall time, the key parameters (encoder,
    d_model, layers, pooling, loss, lr) and why the trial ended.

    \b
    Example: search trials --study hw04 --sort value --state complete
             search trials --study hw04 --csv > trials.csv
    """
    from search.errors import UserError
    from search.inspection import trial_rows, trials_csv, trials_lines
    from search.storage import default_url
    from search.study import load_study

    if as_json and as_csv:
        raise UserError("--json and --csv: give one of them")
    states = tuple(dict.fromkeys(s.lower() for s in states))
    study = load_study(study_name, storage or default_url(study_name), any_direction=True)
    rows = trial_rows(study, sort.lower(), states)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    elif as_csv:
        click.echo(trials_csv(rows), nl=False)
    else:
        for line in trials_lines(rows, study_name, states):
            click.echo(line)


@main.group()
def data() -> None:
    """Make or check a dataset in the HW04 layout.

    Example: search data synth toy/ --speakers 20 --utterances-per-speaker 20 && search data check toy/
    """


@data.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--speakers", type=click.IntRange(min=2), default=600, show_default=True, help="Speakers (HW04: 600).")
@click.option("--utterances-per-speaker", type=click.IntRange(min=2), default=94, show_default=True,
              help="Training utterances each, on average (HW04: 94).")
@click.option("--length-scale", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              help="Utterance lengths relative to HW04's (the embedded set uses 0.4).")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=0, show_default=True,
              help="Seeds the speakers, utterances and test answer key (same seed, same files).")
@click.option("--workers", type=click.IntRange(min=1), default=os.cpu_count() or 1,
              help="Processes rendering in parallel [default: all cores]; the files do not depend on it.")
@friendly_errors
def synth(out_dir, speakers, utterances_per_speaker, length_scale, seed, workers):
    """Write a synthetic speech-like dataset in the HW04 layout.

    By default at HW04 scale (600 speakers, 56,400 train + 7,962 test utterances with HW04's length
    distribution, 6.6 GB: 109 s with 16 processes), with its answer key OUT_DIR/answers.csv.

    \b
    Example: search data synth hw04-synth/
             search data synth toy/ --speakers 20 --utterances-per-speaker 20 --length-scale 0.4
    """
    from data import synth as synthesis
    from search.errors import UserError

    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: folder exists and is not empty")
    summary = synthesis.synthesize(out_dir, seed=seed, progress=_echo_progress("synthesizing"), workers=workers,
                                   speakers=speakers, utterances_per_speaker=utterances_per_speaker,
                                   length_scale=length_scale)
    click.echo(f"wrote {out_dir}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))


@data.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@friendly_errors
def check(folder, as_json):
    """Validate an HW04 folder and print its counts.

    Checks the json files and every tensor; prints the utterance counts and length statistics.

    Example: search data check Dataset/
    """
    from data.bank import describe
    from data.hw04 import load_features, read_layout

    layout = read_layout(folder)
    everything = layout.train + layout.test
    for i, utt in enumerate(everything):
        load_features(layout.root, utt, layout.n_mels)
    summary = describe(layout)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"{folder}: OK, {summary['speakers']} speakers, n_mels {summary['n_mels']}")
    for split in ("train", "test"):
        s = summary[split]
        click.echo(f"  {split:5s} {s['utterances']:6d} utterances, {s['frames']} frames; length min {s['min']} "
                   f"p5 {s['p5']:.0f} median {s['median']:.0f} mean {s['mean']} p95 {s['p95']:.0f} max {s['max']}")


if __name__ == "__main__":
    sys.exit(main())
