"""Issue 23 ("Trust"): failures that must be clear, early and one line, each provoked for real.

Refusals come before any work they would waste (preparing data, training); a message shows what a user's file
holds with its control characters escaped; a damaged study file or a stale temporary file left by a killed
process is named or cleaned up, not a dead end.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.helpers import SAMPLE, invoke, new_study, one_error_line


@pytest.fixture
def trained_study(dataset_copy, workdir) -> optuna.Study:
    """Study ``t`` in studies/t.db on a private copy of the tiny dataset, one complete sample-code trial."""
    import torch

    from search.running.runner import run_trials
    from search.running.settings import StudySettings
    from search.running.task import load_task

    study = new_study(dataset_copy, "sqlite:///studies/t.db", "t")
    study.enqueue_trial(SAMPLE)
    run_trials(study, StudySettings.from_attrs(study.user_attrs), load_task(dataset_copy, 0, torch.device("cpu")), 1)
    assert study.trials[0].state == TrialState.COMPLETE
    return study


# --- 1. finalize of a study plain Optuna made ---------------------------------------------------------------

def test_finalize_refuses_a_plain_optuna_study_before_preparing_data(workdir):
    (workdir / "studies").mkdir()
    study = optuna.create_study(study_name="plain", storage="sqlite:///studies/plain.db", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    line = one_error_line(invoke("finalize", "best", "--study", "plain", "--device", "cpu"), alone=True)
    assert "--study plain: the study in sqlite:///studies/plain.db was not created by `search run`" in line, line
    # the embedded data was not prepared: no cache folder, the user's or the fallback
    assert not (workdir.parent / "cache").exists() and not (workdir / "studies" / ".cache").exists()
    assert not (workdir / "studies" / "plain").exists()


# --- 2. an answer key of other utterances ---------------------------------------------------------------

def test_an_answer_key_of_other_ids_is_refused_before_training(trained_study, dataset_copy, workdir):
    key = dataset_copy / "answers.csv"
    rows = list(csv.reader(key.open()))
    rows[1][0] = "uttr-not-in-testdata.pt"  # one Id of another dataset
    with key.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    result = invoke("finalize", "best", "--study", "t", "--steps", "16", "--device", "cpu", "--out", "p.csv")
    line = one_error_line(result)
    assert f"{key}: 1 of testdata.json's {len(rows) - 1} Ids are not in the answer key" in line, line
    assert not any(line.startswith("step ") for line in result.output.splitlines())  # no evaluation: no training
    assert not (workdir / "p.csv").exists() and not (workdir / "studies" / "t" / "final" / "model.pt").exists()


# --- 3. control bytes in a user's file ---------------------------------------------------------------------

def test_control_bytes_of_a_csv_are_escaped_in_the_message(tmp_path):
    """An Id that clears the screen (ESC [2J) and one with a carriage return: shown escaped, on one line."""
    (tmp_path / "answers.csv").write_text("Id,Category\nuttr-a.pt,id00001\n")
    (tmp_path / "p.csv").write_text("Id,Category\nuttr-a.pt,id00001\n\x1b[2Juttr-b.pt,id00001\n"
                                    "\"uttr-\rc.pt\",id00001\n", newline="")
    result = invoke("score", str(tmp_path / "p.csv"), "--answers", str(tmp_path / "answers.csv"))
    line = one_error_line(result, alone=True)
    assert line.endswith("2 Ids are not in the answer key: \\x1b[2Juttr-b.pt, uttr-\\rc.pt"), line
    assert "\x1b" not in result.output and "\r" not in result.output


def test_control_bytes_of_a_dataset_are_escaped_in_data_check(dataset_copy):
    """A feature_path with a control byte, listed twice in testdata.json (data/hw04.py): escaped too."""
    import json

    test = json.loads((dataset_copy / "testdata.json").read_text())
    test["utterances"][0]["feature_path"] = test["utterances"][1]["feature_path"] = "uttr-\x1b]0;owned\x07.pt"
    (dataset_copy / "testdata.json").write_text(json.dumps(test))
    result = invoke("data", "check", str(dataset_copy))
    line = one_error_line(result, alone=True)
    assert line.endswith("uttr-\\x1b]0;owned\\x07.pt is listed twice"), line
    assert "\x1b" not in result.output and "\x07" not in result.output


# --- 4. a damaged file among studies/*.db -------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "not-sqlite"])
def test_studies_lists_the_others_and_names_a_damaged_file(damage, workdir):
    (workdir / "studies").mkdir()
    for name in ("a", "c"):
        study = optuna.create_study(study_name=name, storage=f"sqlite:///studies/{name}.db", direction="maximize")
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    bad = workdir / "studies" / "b.db"  # sorted between them: listing must go on after it
    bad.write_bytes((workdir / "studies" / "c.db").read_bytes()[:3000] if damage == "truncated" else b"garbage")
    result = invoke("studies")
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines if "sqlite:///" in line] == ["a", "c"], result.output
    [warning] = [line for line in lines if "b.db" in line]
    assert warning.startswith("warning: studies/b.db: left out, it cannot be read as a study storage ("), warning
    assert bad.read_bytes()[:7] in (b"garbage", b"SQLite ")  # left as it was


# --- 5. a dashboard that other machines reach -------------------------------------------------------------

def _dashboard_lines(folder: Path, host: str) -> list[str]:
    """What `search dashboard --host HOST` prints up to its URL line, in a real process (stopped then)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    repo = Path(__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-m", "search.cli", "dashboard", "--study", "d", "--host", host,
                                "--port", str(port)], cwd=folder, env={**os.environ, "PYTHONPATH": str(repo)},
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("optuna-dashboard for study") or line.startswith("Error"):
                break
    finally:
        process.terminate()
        process.wait(timeout=30)
    return lines


def test_a_dashboard_reachable_from_other_machines_warns(workdir):
    (workdir / "studies").mkdir()
    optuna.create_study(study_name="d", storage="sqlite:///studies/d.db", direction="maximize")
    lines = _dashboard_lines(workdir, "0.0.0.0")
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1 and lines[-1].startswith("optuna-dashboard for study 'd'"), lines
    assert warnings[0].startswith("warning: --host 0.0.0.0: the dashboard is reachable from other machines"), lines
    assert "edit notes and delete studies" in warnings[0]
    for host in ("127.0.0.1", "localhost"):  # this machine only: nothing to warn about
        lines = _dashboard_lines(workdir, host)
        assert lines[-1].startswith("optuna-dashboard for study 'd'") and not any("warning" in x for x in lines), lines


# --- 6. temporary files of a process killed while writing --------------------------------------------------

def _killed_while_writing(code: str) -> None:
    """Run ``code`` in a fresh Python process that SIGKILLs itself where the code says ``die()``."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    prelude = "import os, signal\ndef die(*_):\n    os.kill(os.getpid(), signal.SIGKILL)\n"
    result = subprocess.run([sys.executable, "-c", prelude + code], env={**os.environ, "PYTHONPATH": str(repo)},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == -9, result.stderr


def test_a_checkpoint_write_killed_leaves_no_temporary_file_for_good(trained_study, workdir):
    import subprocess

    final = workdir / "studies" / "t" / "final"
    # a finalize killed with SIGKILL in the middle of writing its checkpoint (search/training/train.py _save_atomically)
    # (torch.save is made to die as it writes the file's last record: the temporary file is there, half-written)
    _killed_while_writing(
        "import torch\nfrom pathlib import Path\nfrom search.training.train import _save_atomically\n"
        "class Dies:\n    def __reduce__(self):\n        die()\n"
        f"_save_atomically({{'step': 500, 'weights': torch.zeros(1000), 'last': Dies()}}, "
        f"Path({str(final / 'checkpoint-trial0-steps999.pt')!r}))\n")
    [left] = final.glob(".checkpoint-trial0-steps999.pt.tmp*")
    dead = subprocess.Popen(["true"])  # its PID: a process that has ended
    dead.wait()
    old_style = final / f".checkpoint-trial0-steps16.pt.tmp{dead.pid}"  # the name before the host was added
    old_style.write_bytes(b"half")
    alive = subprocess.Popen(["sleep", "60"])  # a process still writing: its file is left alone
    try:
        busy = final / f".config.json.tmp{alive.pid}"
        busy.write_text("{")
        result = invoke("finalize", "best", "--study", "t", "--steps", "16", "--device", "cpu", "--out", "p.csv")
        assert result.exit_code == 0, result.output
        assert not left.exists() and not old_style.exists() and busy.exists()
    finally:
        alive.kill()
        alive.wait()
    # the next write of the same file removes its leftovers too, wherever it is (search/files.py replaced)
    from search.files import write_text

    stale = workdir / f".out.txt.tmp{dead.pid}"
    stale.write_text("half")
    write_text(workdir / "out.txt", "whole")
    assert not stale.exists() and (workdir / "out.txt").read_text() == "whole"
    assert [p.name for p in workdir.glob(".*.tmp*")] == []


def test_a_feature_bank_pack_killed_leaves_no_folder_for_good(dataset_copy):
    from data.bank import open_bank

    _killed_while_writing(f"from data.bank import open_bank\nopen_bank({str(dataset_copy)!r}, progress=die)\n")
    [left] = dataset_copy.glob(".bank.tmp*")  # the half-packed bank, as big as the bank will be
    assert left.is_dir()
    open_bank(dataset_copy)
    assert not left.exists() and (dataset_copy / ".bank").is_dir()
    assert list(dataset_copy.glob("*.tmp*")) == list(dataset_copy.glob(".*.tmp*")) == []


# --- 7. a byte-order mark ---------------------------------------------------------------------------------

def test_a_byte_order_mark_is_accepted_in_every_file_of_a_dataset(dataset_copy, tmp_path):
    """As a Windows editor saves them: the json files and the answer key each start with a UTF-8 BOM."""
    for name in ("metadata.json", "mapping.json", "testdata.json", "answers.csv"):
        path = dataset_copy / name
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    result = invoke("data", "check", str(dataset_copy))
    assert result.exit_code == 0 and "Error" not in result.output, result.output
    scored = invoke("score", str(dataset_copy / "answers.csv"), "--answers", str(dataset_copy / "answers.csv"))
    assert scored.exit_code == 0 and scored.output.startswith("accuracy 1.0000 on "), scored.output


# --- 8. a full disk while a checkpoint or the model is written -------------------------------------------

def test_a_full_disk_names_the_file_and_says_so(trained_study, workdir):
    """final/ on a 64 kB tmpfs (tests run as root here; elsewhere the mount is refused and the test skips):
    the first checkpoint or model file fills it. The message was torch's "[enforce fail at
    inline_container.cc:672] ... unexpected pos"."""
    import subprocess

    final = workdir / "studies" / "t" / "final"
    final.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(final)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        result = invoke("finalize", "best", "--study", "t", "--steps", "16", "--device", "cpu", "--out", "p.csv")
        line = one_error_line(result)
        assert line.startswith("Error: studies/t/final/") and ".pt: cannot write it: no space left on device (" in line, line
        assert "enforce fail" not in result.output
        assert list(final.iterdir()) == []  # no half-written file: the space is free again
    finally:
        subprocess.run(["umount", "--lazy", str(final)])  # lazy: a file the failed write left open must not keep it


def test_a_file_size_limit_names_the_file(workdir):
    """The same through a file-size limit (RLIMIT_FSIZE, what a non-root CI can do): EFBIG, one line."""
    import os
    import resource
    import subprocess
    import sys

    code = ("import torch\nfrom pathlib import Path\nfrom search.training.train import _save_atomically\n"
            "_save_atomically({'weights': torch.zeros(100_000)}, Path('final/checkpoint.pt'))\n")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code], cwd=workdir, env={**os.environ, "PYTHONPATH": str(repo)},
                            capture_output=True, text=True, timeout=120,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000)))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("search.errors.UserError: final/checkpoint.pt: cannot write it: file too large"), last
    assert list((workdir / "final").iterdir()) == []


# --- 9. a damaged journal file --------------------------------------------------------------------------

@pytest.mark.parametrize("damage, problem", [
    (b"\xff\xfe\x00garbage\n", "not UTF-8 text"),
    (b'{"op_code": 99, "worker_id": "w"}\n', "not an operation Optuna knows"),
    (b"hello\n", "not a JSON record"),
], ids=["not-utf8", "unknown-operation", "not-json"])
def test_a_damaged_journal_file_is_one_line(damage, problem, workdir):
    """Optuna's replay said `UnicodeDecodeError: 'utf-16-le' codec ...` or `AssertionError: Should not reach.`"""
    from search.db.storage import open_storage

    study = optuna.create_study(study_name="j", storage=open_storage("journal://j.log"), direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    lines = (workdir / "j.log").read_bytes().splitlines(keepends=True)
    (workdir / "j.log").write_bytes(b"".join(lines[:3]) + damage + b"".join(lines[3:]))  # a line 4 Optuna can't read
    for args in (["show", "--study", "j"], ["trials", "--study", "j"], ["studies"]):
        line = one_error_line(invoke(*args, "--storage", "journal://j.log"), alone=True)
        assert line == (f"Error: --storage journal://{workdir}/j.log: the journal file {workdir}/j.log is damaged "
                        f"(line 4: {problem}); Optuna cannot read it: restore it from a copy, or remove the damaged "
                        "lines"), line


# --- load: the tables of a big study, read from the database itself -----------------------------------------

def test_the_trials_table_reads_the_same_from_the_database_as_through_optuna(workdir):
    """`search trials` / `studies` on SQLite ask the tables for what they show (search/reporting/queries.py trial_fields);
    the same study copied to a journal file goes Optuna's way (every trial whole): the output is the same."""
    from bench.load import STUDY, build

    build(workdir, 60)
    optuna.copy_study(from_study_name=STUDY, from_storage=f"sqlite:///{workdir}/studies/{STUDY}.db",
                      to_storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
                          str(workdir / "j.log"))))
    for args in (["--json"], ["--sort", "value", "--csv"], ["--sort", "duration"], ["--state", "complete", "--json"],
                 ["--state", "pruned", "--state", "fail"]):
        rdb = invoke("trials", "--study", STUDY, *args)
        journal = invoke("trials", "--study", STUDY, "--storage", "journal://j.log", *args)
        assert rdb.exit_code == 0 and rdb.output == journal.output, (args, rdb.output[-500:], journal.output[-500:])
    assert len(json.loads(invoke("trials", "--study", STUDY, "--json").output)) == 60
    counts = [line.split()[1:7] for line in invoke("studies").output.splitlines()[1:]]
    journal = [line.split()[1:7] for line in invoke("studies", "--storage", "journal://j.log").output.splitlines()[1:]]
    assert counts == journal and counts[0][0] == "60", (counts, journal)
    for args in (["--trial", "7"], [], ["--trial", "7", "--json"]):
        assert invoke("show", "--study", STUDY, *args).output == \
            invoke("show", "--study", STUDY, "--storage", "journal://j.log", *args).output


def test_the_report_reads_every_trial_as_optuna_gives_it(workdir):
    """`search report` reads a study's trials with plain queries on SQLite (search/reporting/queries.py whole_trials, a
    fraction of the memory of Optuna's get_trials on a big study): each trial as Optuna gives it (system attributes
    aside), and the report's summary the same as from a journal copy of the study, which goes Optuna's way."""
    from bench.load import STUDY, build
    from search.reporting.queries import whole_trials

    build(workdir, 60)
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{workdir}/studies/{STUDY}.db")
    ours, optunas = whole_trials(study), study.get_trials()
    assert len(ours) == len(optunas) == 60
    for mine, theirs in zip(ours, optunas):
        for field in ("number", "state", "value", "datetime_start", "datetime_complete", "params", "distributions",
                      "user_attrs", "intermediate_values"):
            assert getattr(mine, field) == getattr(theirs, field), (mine.number, field)
    optuna.copy_study(from_study_name=STUDY, from_storage=f"sqlite:///{workdir}/studies/{STUDY}.db",
                      to_storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
                          str(workdir / "j.log"))))
    rdb = invoke("report", "--study", STUDY, "--out", "rdb.html")
    journal = invoke("report", "--study", STUDY, "--storage", "journal://j.log", "--out", "journal.html")
    assert rdb.exit_code == journal.exit_code == 0, (rdb.output, journal.output)
    assert rdb.output.replace("rdb.html", "PAGE") == journal.output.replace("journal.html", "PAGE")
    assert "best 5 trials:" in rdb.output


def test_trials_and_studies_do_not_import_torch(workdir):
    """torch's import is about a second of each command's start: the commands that only read a study skip it."""
    import os
    import subprocess
    import sys

    (workdir / "studies").mkdir()
    study = optuna.create_study(study_name="s", storage="sqlite:///studies/s.db", direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    code = ("import sys\nfrom search.cli import main\n"
            "for args in (['trials', '--study', 's'], ['studies']):\n"
            "    try:\n        main(args)\n    except SystemExit as done:\n        assert not done.code, done\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\n")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code.replace("main(args)", "main(args, standalone_mode=False)")],
                            cwd=workdir, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and result.stdout.strip().endswith("no torch"), result.stdout + result.stderr


# --- 11. the same trial finalized twice -----------------------------------------------------------------

def test_finalizing_a_trial_again_reuses_its_artifact_set(trained_study, workdir):
    """The second finalize finds the first one's finished run, trains nothing and writes the same model and
    predictions, reusing the first one's set of artifacts; the first left its finished form, not its full
    checkpoint (optimizer state, last and best weights)."""
    args = ("finalize", "best", "--study", "t", "--steps", "16", "--device", "cpu", "--out", "p.csv")
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    final = workdir / "studies" / "t" / "final"
    # stored: the full checkpoint gave way to the finished form, the best weights without the optimizer's state
    assert not list(final.glob("checkpoint-*")) and len(list(final.glob("finished-*.pt"))) == 1
    [finished] = final.glob("finished-*.pt")
    assert finished.stat().st_size < (final / "model.pt").stat().st_size * 1.5
    second = invoke(*args)
    assert second.exit_code == 0 and "resumed from the checkpoint at step 16" in second.output, second.output
    assert not list(final.glob("checkpoint-*")) and list(final.glob("finished-*.pt")) == [finished]
    stored = sorted(p.name for p in (workdir / "studies" / "t" / "artifacts").iterdir() if not p.name.startswith("."))
    assert len(stored) == 3, stored  # model, config, predictions: once
    [first_names, second_names] = [[line for line in r.output.splitlines() if line.startswith("artifacts")]
                                   for r in (first, second)]
    assert first_names == second_names, (first_names, second_names)
    study = optuna.load_study(study_name="t", storage="sqlite:///studies/t.db")
    assert sorted(study.user_attrs["final"]["artifacts"]) == sorted(first_names[0].split(": ", 1)[1].split(
        " in ")[0].split(", "))
