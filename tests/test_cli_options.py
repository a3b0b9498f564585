"""What a user meets first: `--version`, `--help` everywhere, and `search run --timeout` without `--trials`."""

from __future__ import annotations

import configparser
import re
from pathlib import Path

import click
import optuna
import pytest

from search.cli import main
from tests.helpers import SHARED, invoke, one_error_line, study_dbs

ROOT = Path(__file__).resolve().parent.parent
TINY_RUN = ["--budget", "8", "--device", "cpu", "--seed", "1", "--no-warm-start"]


def commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from commands(command, prefix + (name,))


def test_version_is_the_packages():
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    result = invoke("--version")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"search, version {config['metadata']['version']}"


def test_version_falls_back_to_setup_cfg_when_not_installed(monkeypatch):
    from importlib import metadata

    from search.cli import package_version

    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "version", not_installed)
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    assert package_version() == config["metadata"]["version"]


def test_every_option_of_every_command_has_help():
    for path, command in [((), main), *commands(main)]:
        result = invoke(*path, "--help")
        assert result.exit_code == 0, path
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, (path, param.opts)
                # and the help is shown: the option's line is followed by text, not left bare
                assert re.search(re.escape(param.opts[-1]) + r"[^\n]*\S\s*\n?\s+\S", result.output), (path, param.opts)


def test_command_lists_show_whole_summaries():
    """In an 80-column terminal, click cuts a summary whose first sentence is too long ("serving its...")."""
    for path in [(), ("data",)]:
        result = invoke(*path, "--help", terminal_width=80)
        assert result.exit_code == 0
        listed = result.output.split("Commands:")[1].strip().splitlines()
        assert len(listed) >= 2
        for line in listed:
            assert not line.rstrip().endswith("..."), (path, line)
            assert line.rstrip().endswith("."), (path, line)


def test_report_help_keeps_its_summary_apart_from_the_example():
    text = invoke("report", "--help", terminal_width=80).output.split("Options:")[0]
    paragraphs = [p.strip() for p in text.split("\n\n")]
    example = next(p for p in paragraphs if p.startswith("Example:"))
    assert example == "Example: search report --study hw04 --out report.html"
    assert "Figures" not in example and "timeline." in text


def test_run_needs_trials_or_timeout(workdir):
    line = one_error_line(invoke("run", "--device", "cpu"), alone=True)
    assert "--trials" in line and "--timeout" in line
    assert not study_dbs(workdir)


@pytest.mark.parametrize("option", ["--trials", "--workers", "--workers-per-gpu"])
def test_a_count_below_one_is_refused_naming_its_option(option, tiny_dataset, workdir):
    """The counts of `search run` are declared positive: 0 is refused before anything is created."""
    args = ["run", "--trials", "2", "--data", str(tiny_dataset), "--device", "cpu", option, "0"]
    result = invoke(*args)
    assert result.exit_code == 2, result.output  # click's usage error
    line = one_error_line(result)
    assert line.startswith(f"Error: Invalid value for '{option}': 0 is not in the range"), line
    assert not (workdir / "studies").exists()


def test_run_with_only_a_timeout_runs_until_it(tiny_dataset, workdir):
    result = invoke("run", "--timeout", "2", "--study", "t", "--data", str(tiny_dataset), *TINY_RUN)
    assert result.exit_code == 0, result.output
    assert "trials of 8 steps until 2s have passed" in result.output
    assert re.search(r"^trial 1  #0 ", result.output, flags=re.M), result.output  # no "/N": there is no N
    study = optuna.load_study(study_name="t", storage=SHARED)
    finished = [t for t in study.trials if t.state.is_finished()]
    assert len(finished) >= 1 and len(finished) == len(study.trials)
    started_after = [(t.datetime_start - study.trials[0].datetime_start).total_seconds() for t in study.trials]
    assert max(started_after) < 2 + 1  # none started after the timeout (a little slack for the clock)


def test_one_trial_is_singular(tiny_dataset, workdir):
    result = invoke("run", "--trials", "1", "--study", "one", "--data", str(tiny_dataset), *TINY_RUN)
    assert result.exit_code == 0, result.output
    assert "(0 finished trials so far); 1 trial of 8 steps on cpu" in result.output
    assert "1 trials" not in result.output
    again = invoke("run", "--trials", "2", "--study", "one", "--data", str(tiny_dataset), *TINY_RUN)
    assert again.exit_code == 0, again.output
    assert "(1 finished trial so far); 2 trials of 8 steps" in again.output


def test_workers_with_only_a_timeout_each_run_until_it(tiny_dataset, workdir):
    result = invoke("run", "--timeout", "3", "--workers", "2", "--study", "w", "--data", str(tiny_dataset),
                    *TINY_RUN)
    assert result.exit_code == 0, result.output
    assert "trials until 3s have passed on 2 worker processes (cpu, cpu)" in result.output
    study = optuna.load_study(study_name="w", storage=SHARED)
    assert study.trials and all(t.state.is_finished() for t in study.trials)
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both workers ran trials


# Enough for each command to get past its own checks quickly if a number were let through (so that the old code
# fails fast instead of running): a data folder that does not exist, a study that does not exist, a tiny synth.
_BASE_ARGS = {("run",): ["--trials", "1", "--data", "no-such-folder", "--device", "cpu"],
              ("finalize",): ["best", "--study", "none"], ("show",): ["--study", "none"],
              ("data", "synth"): ["out", "--speakers", "2", "--utterances-per-speaker", "2", "--length-scale", "0.05"]}


def numeric_options():
    for path, command in commands(main):
        for param in command.params:
            if isinstance(param, click.Option) and param.type.name.replace(" range", "") in ("integer", "float"):
                yield path, param.opts[-1], param.type.name


@pytest.mark.parametrize("path, option, kind", list(numeric_options()),
                         ids=lambda v: " ".join(v) if isinstance(v, tuple) else str(v))
def test_every_number_a_user_types_is_bounded(path, option, kind, workdir):
    """nan, inf and huge values were accepted (`--timeout nan` ran trials that never stopped, `--budget` of 20
    digits never ended, `data synth --length-scale 1e6` hung, nan/inf there raised a raw ValueError and left an
    empty folder): each is one line naming the option and its range, and nothing is created."""
    values = ["nan", "inf", "-inf", "1e20"] if kind.startswith("float") else [str(10**20), "-" + str(10**20)]
    for value in values:
        result = invoke(*path, *_BASE_ARGS.get(path, []), option, value)
        assert result.exit_code == 2, (path, option, value, result.output)
        line = one_error_line(result)
        assert line.startswith(f"Error: Invalid value for '{option}': {value} is not in the range "), line
        assert list(workdir.iterdir()) == [], (path, option, value)  # no study, no half-made dataset


def test_the_bounds_leave_ordinary_values_alone(workdir):
    from search.commands.base import Bounded

    timeout = Bounded(float, 0, 60, "seconds", low_open=True)
    assert timeout.convert("0.5", None, None) == 0.5 and timeout.convert(60, None, None) == 60
    with pytest.raises(click.BadParameter, match=r"0 is not in the range above 0 to 60 \(seconds\)"):
        timeout.convert("0", None, None)


@pytest.mark.parametrize("value", ["inf", "nan", "1e9"])
def test_the_numbers_in_the_environment_are_bounded_too(value, workdir, monkeypatch):
    line = one_error_line(invoke("run", "--trials", "1", "--device", "cpu", env={"SEARCH_PROGRESS_INTERVAL": value}),
                          alone=True)
    assert line == (f"Error: SEARCH_PROGRESS_INTERVAL={value!r}: must be above 0 and at most 86,400 seconds"), line
    assert list(workdir.iterdir()) == []
    from search.errors import UserError
    from search.db.storage import heartbeat_settings

    monkeypatch.setenv("SEARCH_HEARTBEAT_INTERVAL", "9" * 20)
    with pytest.raises(UserError, match="SEARCH_HEARTBEAT_INTERVAL=9+: expected a whole number of seconds from 1 to"):
        heartbeat_settings()
