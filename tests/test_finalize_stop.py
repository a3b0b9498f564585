"""`search finalize` stopped by Ctrl-C or SIGTERM mid-training: one ``Error:`` line naming the step it stopped at and
the checkpoint kept, exit 128 + the signal, no traceback, no predictions CSV, model or artifacts; the same command
then resumes from that checkpoint and finishes.

Real processes on the smallest synthetic dataset, on the CPU, nothing mocked; the study's trials are added as
complete (a model smaller than the search space allows, quick to train on a CPU): only their retraining is tested.
The signal has to land mid-training however fast the machine is: the command is paused (SIGSTOP) as soon as the
checkpoint file appears, sent the signal, and let go (SIGCONT), so it is a few steps past that checkpoint, far from
the last step.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import CategoricalDistribution, FloatDistribution

from tests.helpers import SAMPLE, invoke, new_study

REPO = Path(__file__).resolve().parents[1]
SQLITE = "sqlite:///studies/t.db"
STEPS = 48  # per training run; a checkpoint every 4 steps: stopped a few steps after the first, far from the end
NAMES = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM"}
SMALL = dict(SAMPLE, d_model=16, ffn=32, head_hidden=16, batch_size=8, segment=32)


def make_study(data: Path, lrs: list[float]) -> optuna.Study:
    """Study ``t`` with one complete trial of ``SMALL`` per learning rate, the first the best."""
    study = new_study(data, SQLITE, "t", pruning=False)
    for i, lr in enumerate(lrs):
        params = dict(SMALL, lr=lr)
        distributions = {k: CategoricalDistribution([v]) for k, v in params.items()}
        distributions["lr"] = FloatDistribution(1e-4, 1e-2, log=True)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=0.5 - 0.1 * i))
    return study


def finalize_args(*which: str) -> list[str]:
    return ["finalize", *which, "--study", "t", "--storage", SQLITE, "--steps", str(STEPS), "--checkpoint-every", "4",
            "--device", "cpu", "--out", "predictions.csv"]


def signal_at_checkpoint(args: list[str], final: Path, checkpoints: int, sig, seconds: float = 300) -> tuple[int, str]:
    """``search ARGS...`` in a real process, sent ``sig`` as soon as ``final`` holds ``checkpoints`` checkpoint
    files (the last one's run is then mid-training); (exit code, everything it printed)."""
    process = subprocess.Popen([sys.executable, "-m", "search.cli", *args], env={**os.environ, "PYTHONPATH": str(REPO)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + seconds
        while (len(list(final.glob("checkpoint-*.pt"))) < checkpoints and process.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.005)
        assert process.poll() is None, "the finalize ended before its checkpoint was written: " + \
            process.communicate()[0].decode()
        assert len(list(final.glob("checkpoint-*.pt"))) == checkpoints, "no checkpoint within the time"
        process.send_signal(signal.SIGSTOP)  # paused, the signal waits; it lands mid-training when let go
        process.send_signal(sig)
        process.send_signal(signal.SIGCONT)
        output = process.communicate(timeout=120)[0].decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, output


def the_error_line(returncode: int, output: str, sig) -> str:
    """The stopped command's one line: exit 128 + the signal, no traceback, exactly one ``Error:`` line, the last."""
    assert returncode == 128 + sig, output
    assert "Traceback" not in output and "Aborted!" not in output, output
    lines = output.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], output
    return errors[0]


def stopped_step_and_checkpoint(line: str, sig, what: str) -> tuple[int, int]:
    match = re.fullmatch(rf"Error: search finalize: stopped by {NAMES[sig]} at step (\d+) of {STEPS} "
                         rf"\({re.escape(what)}\); the checkpoint at step (\d+) is kept: run the same command to "
                         "resume", line)
    assert match, line
    return int(match.group(1)), int(match.group(2))


def nothing_written(workdir: Path, final: Path) -> None:
    """No predictions CSV, final model, ensemble config or artifacts, and no temporary file left behind."""
    assert not (workdir / "predictions.csv").exists()
    assert not (final / "model.pt").exists() and not (final / "config.json").exists()
    assert not list(final.glob("*/config.json"))  # (an ensemble's finished members are saved as they end)
    assert not list(workdir.rglob(".*.tmp*"))
    attrs = optuna.load_study(study_name="t", storage=SQLITE).user_attrs
    assert "final" not in attrs and "final_ensemble" not in attrs
    assert not list((workdir / "studies" / "t" / "artifacts").glob("*"))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_stopped_finalize_best_names_its_checkpoint_and_resumes(sig, micro_dataset, workdir):
    study = make_study(micro_dataset, [3e-3])
    best = study.best_trial.number
    final = workdir / "studies" / "t" / "final"
    checkpoint = final / f"checkpoint-trial{best}-steps{STEPS}.pt"

    line = the_error_line(*signal_at_checkpoint(finalize_args("best"), final, 1, sig), sig)
    at, kept = stopped_step_and_checkpoint(line, sig, f"trial #{best}")
    assert torch.load(checkpoint, weights_only=True)["step"] == kept  # the one on disk, and it loads
    assert 0 < kept <= at < STEPS, line
    nothing_written(workdir, final)

    resumed = invoke(*finalize_args("best"))
    assert resumed.exit_code == 0, resumed.output
    assert f"resumed from the checkpoint at step {kept} of an earlier finalize" in resumed.output, resumed.output
    assert (workdir / "predictions.csv").read_text().startswith("Id,Category\n")
    assert not checkpoint.exists()  # stored: the finished form (the best weights) is kept instead
    assert torch.load(final / f"finished-trial{best}-steps{STEPS}.pt", weights_only=True)["step"] == STEPS
    assert json.loads((final / "config.json").read_text())["resumed_from_step"] == kept


def test_stopped_ensemble_finalize_names_the_member_and_its_checkpoint_and_resumes(micro_dataset, workdir):
    make_study(micro_dataset, [3e-3, 1e-3])
    final = workdir / "studies" / "t" / "final"
    args = finalize_args("top", "--k", "2")

    # the second checkpoint file is member 2's: member 1 has finished, member 2 is training
    line = the_error_line(*signal_at_checkpoint(args, final, 2, signal.SIGINT), signal.SIGINT)
    at, kept = stopped_step_and_checkpoint(line, signal.SIGINT, "member 2/2")
    assert 0 < kept <= at < STEPS, line
    steps = sorted(torch.load(path, weights_only=True)["step"] for path in final.glob("checkpoint-*.pt"))
    assert steps == [kept, STEPS], steps
    nothing_written(workdir, final)

    resumed = invoke(*args)
    assert resumed.exit_code == 0, resumed.output
    assert f"member 1/2: already trained (its checkpoint is at step {STEPS}): not retrained" in resumed.output
    assert f"member 2/2: resumed from the checkpoint at step {kept} of an earlier finalize" in resumed.output, \
        resumed.output
    assert (workdir / "predictions.csv").read_text().startswith("Id,Category\n")
    assert (final / "top2" / "config.json").exists()


def test_stopped_before_the_first_checkpoint_says_none_was_written(micro_dataset, workdir):
    study = make_study(micro_dataset, [3e-3])
    final = workdir / "studies" / "t" / "final"
    # progress lines every 0.2 s come from inside the training; the first checkpoint would come with the first
    # evaluation, at step 2,000
    args = ["finalize", "best", "--study", "t", "--storage", SQLITE, "--steps", "80000", "--checkpoint-every", "10000",
            "--device", "cpu", "--out", "predictions.csv"]
    process = subprocess.Popen([sys.executable, "-m", "search.cli", *args],
                               env={**os.environ, "PYTHONPATH": str(REPO), "SEARCH_PROGRESS_INTERVAL": "0.2"},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watchdog = threading.Timer(120, process.kill)  # no progress line ever: fail in 2 minutes, not 80,000 steps
    watchdog.start()
    try:
        printed = []
        for printed_line in process.stdout:
            printed.append(printed_line)
            if re.match(r"step \d+/80000 ", printed_line):
                process.send_signal(signal.SIGINT)
                break
        output = "".join(printed) + process.communicate(timeout=120)[0]
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()
    line = the_error_line(process.returncode, output, signal.SIGINT)
    match = re.fullmatch(rf"Error: search finalize: stopped by Ctrl-C at step (\d+) of 80000 \(trial "
                         rf"#{study.best_trial.number}\); no checkpoint was written yet: run the same command to "
                         "start it again", line)
    assert match and 0 < int(match.group(1)) < 2_000, line
    assert not list(final.glob("checkpoint-*"))
    nothing_written(workdir, final)
