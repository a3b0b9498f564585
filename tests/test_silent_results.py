"""Issue 23 ("Trust"), silent wrong results: each test is a case where a command did the wrong thing without a
word (an output replacing an input, a checkpoint of other data reused, a better CSV overwritten, an interrupted
warm start lost, a damaged feature bank trained on, a finished finalize reported as failed)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import optuna
import pytest

from tests.helpers import SAMPLE, SHARED, invoke, one_error_line, run_configs


def cli_process(*args: str):
    """``search ARGS...`` in its own process, as a user runs it: (returncode, stdout with stderr)."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, "-m", "search.cli", *args], env={**os.environ, "PYTHONPATH": str(repo)},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_out_never_replaces_an_input(dataset_copy, workdir):
    """`report --out studies/vic.db` replaced the study database with HTML; `finalize --out` could replace a
    storage, the answer key (then scored its own output: test accuracy 1.0000) or the data's metadata.json."""
    run_configs(dataset_copy, "vic", [SAMPLE])
    optuna.create_study(study_name="other", storage="sqlite:///studies/other.db")  # some other study's storage
    inputs = [workdir / "studies" / "vic.db", workdir / "studies" / "other.db", dataset_copy / "answers.csv",
              dataset_copy / "metadata.json"]
    before = {path: digest(path) for path in inputs}
    finalize = ["finalize", "best", "--study", "vic", "--steps", "1", "--device", "cpu", "--quiet", "--out"]
    cases = [(["report", "--study", "vic", "--out"], "studies/vic.db", "the study's storage"),
             (["report", "--study", "vic", "--out"], "studies/other.db", "an SQLite database"),
             (["report", "--study", "vic", "--out"], str(dataset_copy / "report.html"), "inside the data folder"),
             (finalize, "studies/vic.db", "the study's storage"),
             (finalize, "studies/other.db", "an SQLite database"),
             (finalize, str(dataset_copy / "answers.csv"), "the answer key"),
             (finalize, str(dataset_copy / "metadata.json"), "inside the data folder")]
    for args, out, what in cases:
        line = one_error_line(invoke(*args, out))
        assert line.startswith(f"Error: --out {out}: ") and what in line, line
        assert {path: digest(path) for path in inputs} == before, (args, out)
    assert not (dataset_copy / "report.html").exists()
    assert not (workdir / "studies" / "vic" / "final" / "model.pt").exists()  # refused before any training


def regenerate(folder: Path, seed: int) -> None:
    """The same folder, written again by `search data synth` with another seed (same speaker count)."""
    import shutil

    from data.synth import synthesize
    from tests.helpers import TINY

    shutil.rmtree(folder)
    synthesize(folder, **{**TINY, "seed": seed})


def test_a_checkpoint_of_other_data_is_not_resumed(dataset_copy, workdir, tmp_path):
    """finalize on dA, dA regenerated with another seed, finalize again: it said `resumed from the checkpoint at
    step 16` and predicted with the old data's model; the same with --data pointing at another folder."""
    run_configs(dataset_copy, "fp", [SAMPLE])
    args = ["finalize", "best", "--study", "fp", "--steps", "16", "--checkpoint-every", "8", "--device", "cpu",
            "--quiet"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    final = workdir / "studies" / "fp" / "final"
    assert (final / "finished-trial0-steps16.pt").exists()  # the finished run, kept for a finalize again
    regenerate(dataset_copy, seed=11)
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "resumed" not in again.output, again.output
    asides = sorted(final.glob("finished-trial0-steps16.pt.other-data-*"))
    assert len(asides) == 1 and "trained on other data" in again.output and asides[0].name in again.output
    assert (json.loads((final / "config.json").read_text())["resumed_from_step"]) is None

    other = tmp_path / "other"
    regenerate(dataset_copy, seed=3)  # back to the study's data (the study checks it too)
    shutil.copytree(dataset_copy, other, ignore=shutil.ignore_patterns(".bank"))
    regenerate(other, seed=12)
    elsewhere = invoke(*args, "--data", str(other))
    assert elsewhere.exit_code == 0, elsewhere.output
    assert "resumed" not in elsewhere.output and "trained on other data" in elsewhere.output, elsewhere.output
    # the same data again: the checkpoint of that data is resumed (the fingerprint does not refuse good ones)
    same = invoke(*args, "--data", str(other))
    assert same.exit_code == 0 and "resumed from the checkpoint at step 16" in same.output, same.output


def test_a_study_refuses_data_that_changed(dataset_copy, workdir):
    """`search run --study S` on a changed data folder carried on without a word, mixing trials of two datasets."""
    run_configs(dataset_copy, "fd", [SAMPLE])
    regenerate(dataset_copy, seed=11)
    line = one_error_line(invoke("run", "--trials", "1", "--study", "fd", "--device", "cpu"))
    assert line.startswith(f"Error: data {dataset_copy.resolve()}: changed since study 'fd' ran on it"), line
    assert "--study fd-2" in line
    assert len(optuna.load_study(study_name="fd", storage="sqlite:///studies/fd.db").trials) == 1  # nothing added


def test_a_worse_finalize_never_replaces_predictions_csv(four_speakers, workdir):
    """`finalize best` wrote predictions.csv (test 0.4885), then `finalize top` wrote the same file (0.3364) without a
    word, and nothing said which result the file held. Each finalize has its own file; predictions.csv is a copy of
    the best by validation accuracy, and the command, `show` and the dashboard note say which result it is."""
    from search.reporting.notes import study_note

    run_configs(four_speakers, "pc", [SAMPLE], "--no-pruning")
    common = ["--study", "pc", "--device", "cpu", "--quiet", "--checkpoint-every", "1000"]
    best = invoke("finalize", "0", "--steps", "48", *common)
    assert best.exit_code == 0, best.output
    pointer = workdir / "studies" / "pc" / "predictions.csv"
    own = workdir / "studies" / "pc" / "predictions-trial0-steps48.csv"
    assert own.read_bytes() == pointer.read_bytes()
    assert f"{Path('studies/pc/predictions.csv')} holds trial0-steps48 (valid accuracy " in best.output, best.output
    first_valid = json.loads((workdir / "studies/pc/final/config.json").read_text())["valid_accuracy"]

    worse = invoke("finalize", "0", "--steps", "2", *common)  # 2 steps: hardly trained
    assert worse.exit_code == 0, worse.output
    second = workdir / "studies" / "pc" / "predictions-trial0-steps2.csv"
    assert second.exists()
    second_valid = json.loads((workdir / "studies/pc/final/config.json").read_text())["valid_accuracy"]
    assert second_valid < first_valid  # the premise: this one is worse on validation
    assert pointer.read_bytes() == own.read_bytes()  # still the better result
    assert "holds trial0-steps48" in worse.output and f"this result is in {Path('studies/pc/predictions-trial0-steps2.csv')}" \
        in worse.output, worse.output
    shown = invoke("show", "--study", "pc")
    assert "predictions.csv holds trial0-steps48 (valid accuracy" in shown.output, shown.output
    study = optuna.load_study(study_name="pc", storage="sqlite:///studies/pc.db")
    assert "trial0-steps48 (valid accuracy" in study_note(study) and "predictions.csv holds" in study_note(study)


def test_an_interrupted_warm_start_runs_again_on_resume(tiny_dataset, workdir):
    """A warm-start trial stopped by Ctrl-C was never run again: the study lost its strongest CPU configuration and
    the sample-code reference read `interrupted` for good. Resuming queues it again (same parameters, same label)."""
    import signal

    from optuna.trial import TrialState

    from tests.helpers import signal_while_running

    url = SHARED
    code, output = signal_while_running(["run", "--trials", "3", "--study", "ws", "--data", str(tiny_dataset),
                                         "--budget", "16", "--device", "cpu", "--seed", "1"], url, "ws", signal.SIGINT)
    assert code == 130, output
    first = optuna.load_study(study_name="ws", storage=url).trials[0]
    label = first.user_attrs["warm_start"]
    assert first.state == TrialState.FAIL and first.user_attrs["ended"] == "interrupted", output

    # the other warm start was queued before it and runs first: two trials run both
    resumed = invoke("run", "--trials", "2", "--study", "ws", "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    assert f"warm start {label!r} (trial #0) was interrupted: queued again" in resumed.output
    study = optuna.load_study(study_name="ws", storage=url)
    retry = next(t for t in study.trials if t.user_attrs.get("retry_of") == 0)
    assert retry.user_attrs["warm_start"] == label and retry.params == first.system_attrs["fixed_params"]
    assert retry.state in (TrialState.COMPLETE, TrialState.PRUNED)  # it ran
    assert f"warm start {label!r}: trial #{retry.number}, the retry of interrupted trial #0: " in resumed.output
    again = invoke("run", "--trials", "1", "--study", "ws", "--device", "cpu")  # queued once, not at every resume
    assert again.exit_code == 0 and "queued again" not in again.output, again.output


def test_a_damaged_feature_bank_is_rebuilt(dataset_copy, workdir):
    """NaN written into frames.npy (the right size) was not noticed: every trial failed with a NaN loss, each with
    two raw Optuna `[W ...] Trial N failed` lines. The bank's checksum is checked at open: one line, then a rebuild."""
    import numpy as np

    args = ["run", "--trials", "1", "--study", "nb", "--data", str(dataset_copy), "--budget", "8", "--device", "cpu",
            "--seed", "1", "--no-warm-start"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    frames = np.load(dataset_copy / ".bank" / "frames.npy", mmap_mode="r+")
    frames[:50] = np.nan  # same shape and dtype: only the content is damaged
    frames.flush()
    del frames
    again = cli_process(*args)  # a new process opens the bank (this one keeps the bank it opened in memory)
    assert again.returncode == 0, again.stdout
    assert (f"warning: {dataset_copy / '.bank'}: the feature-bank cache is unusable (frames.npy does not match its "
            "checksum: damaged since it was written); rebuilding it") in again.stdout, again.stdout
    assert "[W " not in again.stdout and "failed 0" in again.stdout, again.stdout
    study = optuna.load_study(study_name="nb", storage=SHARED)
    assert all(t.state.is_finished() and t.state.name != "FAIL" for t in study.trials)
    assert not np.isnan(np.load(dataset_copy / ".bank" / "frames.npy")).any()  # rebuilt


def test_signals_after_a_finalize_wrote_its_outputs_do_not_fail_it(tiny_dataset, workdir):
    """SIGTERM right after finalize wrote its outputs ended it with 143 and no line: a script took the finished
    finalize for a failed one. Signals sent from the moment the predictions are there (again and again, as a
    script killing a process group might) leave it exit 0, saying the outputs are complete."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run_configs(tiny_dataset, "late", [SAMPLE])
    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-m", "search.cli", "finalize", "best", "--study", "late", "--steps",
                                "8", "--device", "cpu", "--quiet"], env={**os.environ, "PYTHONPATH": str(repo)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pointer = workdir / "studies" / "late" / "predictions.csv"  # written last (the copy of the best result)
    try:
        deadline = time.monotonic() + 240
        while not pointer.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert pointer.exists(), process.communicate()[0]
        while process.poll() is None:
            process.send_signal(signal.SIGTERM)
            time.sleep(0.02)
        output = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, (process.returncode, output)
    assert "the finalize is complete" in output or "after the finalize was complete" in output, output
    assert "Traceback" not in output and "Error:" not in output, output


def test_an_in_process_finalize_gives_the_callers_signal_handlers_back(tiny_dataset, workdir):
    """Only the `search` program itself ignores signals once a finalize's outputs are complete; a caller in the same
    process (a notebook, bench/, CliRunner) gets its own handlers back: its next Ctrl-C must still stop it."""
    import signal

    run_configs(tiny_dataset, "inproc", [SAMPLE])
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    result = invoke("finalize", "best", "--study", "inproc", "--steps", "8", "--device", "cpu", "--quiet")
    assert result.exit_code == 0, result.output
    assert {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} == before


def _interrupted_warm_start(url: str, name: str) -> None:
    """A study whose warm start was interrupted (FAIL, ended: interrupted), as Ctrl-C leaves it."""
    from optuna.trial import TrialState

    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.enqueue_trial({"x": 0.5}, user_attrs={"warm_start": "sample-code"})
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    trial.set_user_attr("ended", "interrupted")
    study.tell(trial, state=TrialState.FAIL)


def _queued_copies(url: str, name: str) -> list:
    from optuna.trial import TrialState

    return [t for t in optuna.load_study(study_name=name, storage=url).get_trials(states=(TrialState.WAITING,))
            if t.user_attrs.get("warm_start") == "sample-code"]


@pytest.mark.parametrize("server", ["sqlite", "postgresql"])
def test_runs_resuming_together_queue_an_interrupted_warm_start_once(server, workdir, request):
    """Two runs resuming a study at once may both see its warm start interrupted and both queue it again: the warm
    start would then run twice. Each re-reads the study after queueing and drops a later copy (claimed from the
    queue as a worker would claim it, then FAIL `duplicate of #N`); tried with 6 runs at once, 5 times."""
    import threading

    from optuna.trial import TrialState

    from search.running.study import requeue_interrupted_warm_starts

    url = f"sqlite:///{workdir}/race.db" if server == "sqlite" else request.getfixturevalue("postgres")
    for attempt in range(5):
        name = f"race-{os.getpid()}-{attempt}"
        _interrupted_warm_start(url, name)
        studies = [optuna.load_study(study_name=name, storage=url) for _ in range(6)]
        start, failures = threading.Barrier(len(studies)), []

        def resume(study) -> None:
            start.wait()
            try:
                requeue_interrupted_warm_starts(study)
            except Exception as err:  # noqa: BLE001 - reported below
                failures.append(err)

        threads = [threading.Thread(target=resume, args=(s,)) for s in studies]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert not failures, failures
        assert len(_queued_copies(url, name)) == 1, attempt
        dropped = [t for t in optuna.load_study(study_name=name, storage=url).trials
                   if t.state == TrialState.FAIL and str(t.user_attrs.get("ended", "")).startswith("duplicate of #")]
        assert all(t.user_attrs["retry_of"] == 0 for t in dropped)
        if server == "postgresql":
            optuna.delete_study(study_name=name, storage=url)


def test_a_warm_start_queued_twice_is_dropped_once_on_resume(workdir):
    """The state two runs at once leave, built directly: two queued copies of one warm start. The next resume drops
    the later one (FAIL, `duplicate of #1`) and a worker takes the first."""
    from optuna.trial import TrialState

    from search.running.study import requeue_interrupted_warm_starts

    url = f"sqlite:///{workdir}/twice.db"
    _interrupted_warm_start(url, "twice")
    study = optuna.load_study(study_name="twice", storage=url)
    for _ in range(2):
        study.enqueue_trial({"x": 0.5}, user_attrs={"warm_start": "sample-code", "retry_of": 0})
    assert requeue_interrupted_warm_starts(study) == []  # nothing queued again: a copy is there
    [kept] = _queued_copies(url, "twice")
    assert kept.number == 1
    dropped = optuna.load_study(study_name="twice", storage=url).trials[2]
    assert (dropped.state, dropped.user_attrs["ended"]) == (
        TrialState.FAIL, "duplicate of #1: queued again by two runs at once")
