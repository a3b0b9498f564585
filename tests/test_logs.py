"""search/reporting/logs.py: what a command prints and what its log file ``studies/<study>/search.log`` keeps.

A small click group stands in for `search run` and `search finalize` (which open their console the same way,
through ``open_console``), so each behaviour is seen alone: summary and progress lines, ``--quiet``, the log
line format, the command line at the top of the log, Optuna's warnings (one console line, the traceback in
the log), passwords, a log file that cannot be written, and data-preparation progress at each tenth.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import click
import optuna
import pytest
from click.testing import CliRunner

from search.reporting.logs import open_console

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (\d+) (INFO|WARNING|ERROR) (.*)$")


def _diverged() -> BaseException:
    try:
        raise FloatingPointError("training loss became nan at step 24")
    except FloatingPointError as err:
        return err


@click.group()
def cli():
    pass


@cli.command("demo")
@click.option("--study", "study_name", default="demo")
@click.option("--storage", default=None)
@click.option("--steps", type=int, default=8)
@click.option("--quiet", is_flag=True)
@click.option("--warn", is_flag=True, help="Optuna warns that a trial failed, with its exception.")
@click.option("--say", default=None, help="One more summary line.")
@click.option("--prepare", type=int, default=None, help="Data preparation of this many items.")
def demo(study_name, storage, steps, quiet, warn, say, prepare):
    echo = open_console(study_name, quiet)
    echo(f"new study {study_name!r}: 2 trials of {steps} steps")
    echo.progress("trial 1/2  #0  complete  0.5000")
    echo.progress("trial 2/2  #1  complete  0.6250")
    if prepare:
        report = echo.data_progress("reading features")
        for done in range(prepare + 1):
            report(done, prepare)
    if warn:
        optuna.logging.get_logger("optuna.study").warning("Trial 1 failed with parameters: {'lr': 1e+30}",
                                                          exc_info=_diverged())
    if say:
        echo(say)
    echo("best trial #1: 0.6250")


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args))


def log_lines(folder: Path, study: str = "demo") -> list[str]:
    return (folder / "studies" / study / "search.log").read_text().splitlines()


def messages(folder: Path, study: str = "demo") -> list[str]:
    return [LINE.match(line).group(3) for line in log_lines(folder, study) if LINE.match(line)]


def test_summary_and_progress_lines_are_printed_and_logged_with_time_and_process(workdir):
    result = invoke("demo", "--study", "s")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["new study 's': 2 trials of 8 steps", "trial 1/2  #0  complete  0.5000",
                                          "trial 2/2  #1  complete  0.6250", "best trial #1: 0.6250"]
    lines = log_lines(workdir, "s")
    assert all(LINE.match(line) for line in lines), lines
    assert {LINE.match(line).group(1) for line in lines} == {str(os.getpid())}  # workers sharing a file differ
    assert messages(workdir, "s") == ["demo --study s --steps 8", *result.stdout.splitlines()]


def test_quiet_prints_only_the_summary_but_logs_everything(workdir):
    result = invoke("demo", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["new study 'demo': 2 trials of 8 steps", "best trial #1: 0.6250"]
    assert "trial 1/2  #0  complete  0.5000" in messages(workdir)
    assert messages(workdir)[0] == "demo --study demo --steps 8 --quiet"  # the flag as typed, defaults too


def test_each_command_appends_to_the_studys_log(workdir):
    assert invoke("demo").exit_code == 0
    assert invoke("demo", "--steps", "16", "--say", "second run").exit_code == 0
    assert invoke("demo", "--study", "other").exit_code == 0  # its own file
    logged = messages(workdir)
    assert logged[0] == "demo --study demo --steps 8" and "demo --study demo --steps 16 --say second run" in logged
    assert logged.count("best trial #1: 0.6250") == 2 and logged[-2] == "second run"
    assert len(messages(workdir, "other")) == 5


def test_nothing_is_logged_after_the_command_ends(workdir):
    assert invoke("demo").exit_code == 0
    before = log_lines(workdir)
    logging.getLogger("search").info("after the command")
    optuna.logging.get_logger("optuna").warning("after the command")
    assert log_lines(workdir) == before


def test_optunas_failed_trial_warning_is_one_console_line_and_its_traceback_is_in_the_log(workdir):
    result = invoke("demo", "--warn")
    assert result.exit_code == 0, result.output
    [warning] = [line for line in result.stderr.splitlines() if "Trial 1 failed" in line]
    assert warning == "warning: Trial 1 failed with parameters: {'lr': 1e+30} (traceback in studies/demo/search.log)"
    assert "Traceback" not in result.output and "FloatingPointError" not in result.output
    log = "\n".join(log_lines(workdir))
    assert "WARNING Trial 1 failed with parameters" in log
    assert "Traceback (most recent call last)" in log and "FloatingPointError: training loss became nan" in log


def test_optunas_logging_is_left_as_it_was_after_the_command(workdir):
    """A program that calls the library (bench/, a notebook) keeps Optuna's own console output after a command."""
    optuna_logger = logging.getLogger("optuna")
    # A handler of the caller's after Optuna's default one (issue 24: the command used to re-append the default
    # handler at the end, so the order changed whenever anything, pytest's capture say, came after it).
    import optuna

    optuna.logging.enable_default_handler()
    callers = logging.NullHandler()
    optuna_logger.addHandler(callers)
    try:
        before = list(optuna_logger.handlers)
        # pytest 9.2 attaches its own capture handlers to loggers that do not propagate, as ours does: the command
        # must leave the handlers it found, not an empty list
        ours_before = list(logging.getLogger("search").handlers)
        assert before.index(callers) > 0
        assert invoke("demo", "--warn").exit_code == 0
        assert optuna_logger.handlers == before
        assert logging.getLogger("search").handlers == ours_before
        assert not any(isinstance(h, logging.FileHandler) for h in logging.getLogger("search").handlers)
    finally:
        optuna_logger.removeHandler(callers)


def test_a_default_handler_the_caller_disabled_stays_disabled(workdir):
    import optuna

    optuna_logger = logging.getLogger("optuna")
    optuna.logging.disable_default_handler()
    try:
        before = list(optuna_logger.handlers)
        assert invoke("demo", "--warn").exit_code == 0
        assert optuna_logger.handlers == before
    finally:
        optuna.logging.enable_default_handler()


def test_a_storage_password_never_reaches_the_log_file(workdir):
    url = "postgresql://search:Hunter2Secret@db.example:5432/hw04"
    result = invoke("demo", "--storage", url, "--say", "driver said: password Hunter2Secret rejected")
    assert result.exit_code == 0, result.output
    log = "\n".join(log_lines(workdir))
    assert "Hunter2Secret" not in log
    assert "--storage postgresql://search:***@db.example:5432/hw04" in log  # the command line, redacted
    assert "driver said: password *** rejected" in log  # a password seen once is hidden wherever it appears


def test_a_log_file_that_cannot_be_created_is_one_warning_and_the_command_goes_on(workdir):
    (workdir / "studies").mkdir()
    (workdir / "studies" / "demo").write_text("a file where the study's folder should be\n")
    result = invoke("demo", "--warn")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: cannot write the log file")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: cannot write the log file studies/demo/search.log ("), \
        result.stderr
    assert result.stdout.splitlines()[-1] == "best trial #1: 0.6250"
    assert "(traceback in no log file: it could not be written)" in result.stderr
    assert (workdir / "studies" / "demo").read_text() == "a file where the study's folder should be\n"


def full_log(workdir: Path) -> None:
    """The log file is /dev/full: opening it works, every write fails with ENOSPC, as on a full disk."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    (workdir / "studies" / "demo").mkdir(parents=True)
    (workdir / "studies" / "demo" / "search.log").symlink_to("/dev/full")


def test_a_full_disk_stops_the_log_with_one_warning_not_a_traceback_per_line(workdir):
    full_log(workdir)
    result = invoke("demo", "--warn")
    assert "Logging error" not in result.output and "Traceback" not in result.output, result.output
    warnings = [line for line in result.stderr.splitlines() if "cannot write the log file" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning: ") and "logging to it stopped" in warnings[0], \
        result.stderr
    assert result.stdout.splitlines()[-1] == "best trial #1: 0.6250"  # every line still printed


def test_a_full_disk_under_the_log_alone_does_not_fail_the_command(workdir):
    full_log(workdir)
    result = invoke("demo")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("total, printed", [(100, [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]), (3, [0, 1, 2, 3]),
                                            (1000, list(range(0, 1001, 100)))])
def test_data_preparation_prints_a_line_at_each_tenth(total, printed, workdir):
    result = invoke("demo", "--prepare", str(total))
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("reading features: ")]
    assert lines == [f"reading features: {done}/{total}" for done in printed]
    assert [m for m in messages(workdir) if m.startswith("reading features: ")] == lines
    quiet = invoke("demo", "--prepare", str(total), "--quiet")
    assert "reading features" not in quiet.output
