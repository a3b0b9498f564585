"""``search run`` on an existing study, and stopped by Ctrl-C (issue 13: resume that remembers, clean Ctrl-C)."""

from __future__ import annotations

import shlex
import shutil
import signal

import optuna
from optuna.trial import TrialState

from tests.helpers import SHARED, invoke, one_error_line, signal_while_running


def finished(name: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=SHARED)
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]


def test_resume_uses_the_studys_data_budget_seed_space_and_pruning(tiny_dataset, workdir):
    created = invoke("run", "--trials", "1", "--study", "ux", "--data", str(tiny_dataset), "--budget", "16",
                     "--seed", "1", "--space", "cpu", "--no-pruning", "--device", "cpu")
    assert created.exit_code == 0, created.output

    resumed = invoke("run", "--trials", "1", "--study", "ux", "--device", "cpu")  # nothing but the study
    assert resumed.exit_code == 0, resumed.output
    header = next(line for line in resumed.output.splitlines() if line.startswith("resuming study 'ux'"))
    assert f"of 16 steps on cpu, space cpu, data {tiny_dataset.resolve()}, pruning off" in header, header
    # the embedded dataset was neither generated nor packed: the study's own data was used from the start
    assert not (workdir.parent / "cache").exists() and not (workdir / "studies" / ".cache").exists()
    assert len(finished("ux")) == 2


def test_a_setting_that_contradicts_the_study_is_refused_before_any_data_is_prepared(tiny_dataset, workdir,
                                                                                     tmp_path):
    args = ["--study", "ux", "--budget", "16", "--device", "cpu"]
    assert invoke("run", "--trials", "1", "--data", str(tiny_dataset), *args).exit_code == 0
    other = tmp_path / "Other"
    shutil.copytree(tiny_dataset, other, ignore=shutil.ignore_patterns(".bank"))
    for given, message in ((["--data", str(other)], f"--data {other.resolve()}: study 'ux' was created on "),
                           (["--budget", "32"], "--budget 32: study 'ux' was created with --budget 16"),
                           (["--seed", "2"], "--seed 2: study 'ux' was created with --seed 0"),
                           (["--space", "full"], "--space full: study 'ux' was created with --space cpu"),
                           (["--no-pruning"], "--no-pruning: study 'ux' was created with pruning on")):
        line = one_error_line(invoke("run", "--trials", "1", "--study", "ux", "--device", "cpu", *given), alone=True)
        assert message in line, line
    assert not (other / ".bank").exists()  # refused before its feature bank was packed
    assert not (workdir.parent / "cache").exists() and not (workdir / "studies" / ".cache").exists()
    assert len(finished("ux")) == 1  # nothing added


def test_ctrl_c_and_sigterm_together_end_in_one_line(tiny_dataset, workdir):
    # Both at once (a Ctrl-C while a batch system or `timeout` sends SIGTERM): the first ends the run, the second
    # is ignored without a word (CPython printed "OSError: Signal 15 ignored due to race condition" with a
    # traceback when the second was still pending as its handler became SIG_IGN).
    returncode, output = signal_while_running(
        ["run", "--trials", "3", "--study", "ct", "--data", str(tiny_dataset), "--budget", "4000", "--device", "cpu",
         "--no-warm-start"], SHARED, "ct", (signal.SIGINT, signal.SIGTERM), pause=1, seconds=180,
        timeout=120)
    assert returncode == 130, output
    assert "Traceback" not in output and "race condition" not in output, output
    assert output.strip().splitlines()[-1] == \
        "Error: search run: stopped by Ctrl-C (a running trial ended FAIL, ended: interrupted)", output


def test_ctrl_c_ends_the_trial_prints_the_summary_and_the_command_that_resumes(tiny_dataset, workdir):
    # pause: inside the trial's training, not between its first storage writes
    returncode, output = signal_while_running(
        ["run", "--trials", "3", "--study", "c", "--data", str(tiny_dataset), "--budget", "4000", "--device", "cpu",
         "--no-warm-start"], SHARED, "c", signal.SIGINT, pause=1, seconds=180, timeout=120)
    assert returncode == 130, output
    lines = output.strip().splitlines()
    assert lines[-1] == "Error: search run: stopped by Ctrl-C (a running trial ended FAIL, ended: interrupted)", output
    assert "Traceback" not in output and "failed with" not in output and "Aborted!" not in output, output
    assert "interrupted by Ctrl-C: 0 of 3 trials of this run finished" in output, output
    assert "study 'c': 1 trials: 1 fail" in output, output
    assert "trial #0 interrupted: recorded as FAIL (ended: interrupted)" in output, output
    resume = next(line for line in lines if line.startswith("resume: "))
    assert resume == "resume: search run --study c --trials 3 --device cpu", resume
    [trial] = optuna.load_study(study_name="c", storage=SHARED).trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["ended"] == "interrupted"

    from search.cli import main  # the resume command is one this CLI takes: this study, its own data

    params = main.get_command(None, "run").make_context("run", shlex.split(resume)[3:]).params
    assert params["study_name"] == "c" and params["trials"] == 3 and params["data_dir"] is None


def test_the_next_line_pastes_into_a_shell_as_the_commands_it_names(tiny_dataset, workdir, tmp_path):
    """The ``next:`` line after a run, pasted into a shell: a study name with a space and a ';', and a data folder
    with spaces, are each one word, and nothing else runs (as with the ``resume:`` line)."""
    import subprocess

    name = "a b;echo INJECTED"
    data = tmp_path / "my data 'set'"
    shutil.copytree(tiny_dataset, data, ignore=shutil.ignore_patterns(".bank"))
    result = invoke("run", "--trials", "1", "--study", name, "--data", str(data), "--budget", "8", "--device", "cpu",
                    "--no-warm-start", "--storage", "sqlite:///studies/x y.db")
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("next: "))
    for command in line.removeprefix("next: ").split("    |    "):
        # `search` here prints its arguments, one a line: what the user's shell would have given it
        shell = subprocess.run(["bash", "-c", "search() { printf '%s\\n' \"$@\"; }; " + command],
                               capture_output=True, text=True, timeout=30)
        assert shell.returncode == 0 and "INJECTED" not in shell.stdout.replace(name, ""), (command, shell)
        words = shell.stdout.splitlines()
        assert words[words.index("--study") + 1] == name and words[words.index("--storage") + 1] == \
            "sqlite:///studies/x y.db", (command, words)
        assert words[0] in ("dashboard", "finalize")
    assert words[words.index("--data") + 1] == str(data.resolve()), words  # finalize's half names the data


def test_a_run_refused_on_its_data_leaves_no_study_folder(workdir, tmp_path):
    """A new study whose --data is refused made nothing: no studies/<study>/ with a lone log, no studies/ either;
    a folder that was there before (another study's) stays as it was."""
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "mapping.json").write_text("{}")
    line = one_error_line(invoke("run", "--trials", "1", "--study", "s", "--data", str(bad), "--device", "cpu"))
    assert "mapping.json" in line and not (workdir / "studies").exists()
    (workdir / "studies" / "other").mkdir(parents=True)
    (workdir / "studies" / "other" / "search.log").write_text("another study's log\n")
    for study in ("s", "other"):
        one_error_line(invoke("run", "--trials", "1", "--study", study, "--data", str(tmp_path / "none"),
                              "--device", "cpu"))
    assert sorted(p.name for p in (workdir / "studies").iterdir()) == ["other"]
    assert (workdir / "studies" / "other" / "search.log").read_text().startswith("another study's log\n")
