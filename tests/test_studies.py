"""Many studies in one place: every study of a folder in one SQLite file by default, the per-study files of earlier
versions still opened and moved by `search migrate` with nothing lost, "did you mean" on a typo, `search delete`
with its questions, `search compare`, two runs of two studies on one file at once, and the dashboard listing
every study of the shared file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import optuna
import pytest

from tests.helpers import SHARED, dashboard_server, delete_study, invoke, one_error_line, study_dbs

RUN = ["--budget", "8", "--device", "cpu", "--seed", "1", "--no-warm-start"]


def run(data: Path, study: str, *extra: str, trials: int = 1) -> str:
    result = invoke("run", "--trials", str(trials), "--study", study, "--data", str(data), *RUN, *extra)
    assert result.exit_code == 0, result.output
    return result.output


def records(url: str, name: str) -> list[tuple]:
    study = optuna.load_study(study_name=name, storage=url)
    return [(t.number, t.state, t.values, t.params, t.intermediate_values, t.user_attrs) for t in study.trials]


def test_studies_of_a_folder_share_one_file_and_old_files_are_still_opened(tiny_dataset, workdir):
    run(tiny_dataset, "old", "--storage", "sqlite:///studies/old.db")  # a study of an earlier version: its own file
    run(tiny_dataset, "a")
    run(tiny_dataset, "b")
    assert [p.name for p in study_dbs(workdir)] == ["old.db", "studies.sqlite3"]
    assert sorted(optuna.get_all_study_names(SHARED)) == ["a", "b"]

    resumed = run(tiny_dataset, "old")  # named: found in its old file, resumed there
    assert "resuming study 'old' in sqlite:///studies/old.db" in resumed, resumed
    assert len(optuna.load_study(study_name="old", storage="sqlite:///studies/old.db").trials) == 2
    listed = json.loads(invoke("studies", "--json").output)
    assert [(r["study"], r["storage"], r["trials"]) for r in listed] == [
        ("a", SHARED, 1), ("b", SHARED, 1), ("old", "sqlite:///studies/old.db", 2)]
    shown = invoke("trials", "--study", "old")
    assert shown.exit_code == 0 and "complete" in shown.output, shown.output


def test_a_typo_creates_a_study_saying_so_and_other_commands_suggest_the_name(tiny_dataset, workdir):
    for command in (["trials", "--study", "hw04"], ["show", "--study", "hw04"], ["studies"]):
        assert invoke(*command).output.strip() in ("no study found", f"Error: --study: no study 'hw04' in {SHARED}; "
                                                   "it holds no study yet (`search run --study NAME` creates one)")
    assert not (workdir / "studies").exists()  # read-only commands: nothing created
    run(tiny_dataset, "hw04")
    typo = run(tiny_dataset, "hw4")
    assert typo.splitlines()[0] == "creating new study 'hw4' (existing: hw04)", typo
    assert "creating new study" not in run(tiny_dataset, "hw4")  # resumed: no question of a typo
    for command in (["trials"], ["show"], ["report"], ["finalize", "best"], ["dashboard"], ["delete", "--yes"]):
        line = one_error_line(invoke(*command, "--study", "hw"))
        assert line == f"Error: --study: no study 'hw' in {SHARED}; did you mean 'hw4' or 'hw04'?", (command, line)  # closest first
    line = one_error_line(invoke("trials", "--study", "zzz"))
    assert line == f"Error: --study: no study 'zzz' in {SHARED}; studies there: hw04, hw4", line
    # in a folder holding only an old per-study file, its study is suggested too
    (workdir / "studies" / "studies.sqlite3").rename(workdir / "studies" / "small.db")
    line = one_error_line(invoke("trials", "--study", "smal"))
    assert line == f"Error: --study: no study 'smal' in {SHARED}; did you mean 'small'?", line
    assert not (workdir / "studies" / "studies.sqlite3").exists()  # a read-only command created nothing


def test_migrate_moves_old_files_checks_the_copies_and_keeps_the_originals(tiny_dataset, workdir):
    run(tiny_dataset, "x", "--storage", "sqlite:///studies/x.db", trials=2)
    run(tiny_dataset, "y", "--storage", "sqlite:///studies/y.db")
    before = {name: records(f"sqlite:///studies/{name}.db", name) for name in ("x", "y")}
    result = invoke("migrate")
    assert result.exit_code == 0, result.output
    assert "study 'x': 2 trials copied from studies/x.db into sqlite:///studies/studies.sqlite3 and checked" in result.output
    assert "studies/y.db: 1 study moved; the old file is kept as studies/y.db.migrated" in result.output
    assert {name: records(SHARED, name) for name in ("x", "y")} == before  # numbers, states, values, attributes
    assert not list((workdir / "studies").glob("*.db")) and not list((workdir / "studies").glob(".migrating-*"))
    assert records("sqlite:///studies/x.db.migrated", "x") == before["x"]  # the original, kept whole
    assert "nothing to move" in invoke("migrate").output
    assert run(tiny_dataset, "x").count("resuming study 'x' in sqlite:///studies/studies.sqlite3") == 1


def test_a_migrate_killed_halfway_is_finished_by_the_next_and_another_study_is_left_alone(tiny_dataset, workdir):
    from search.db import migrate

    run(tiny_dataset, "k", "--storage", "sqlite:///studies/k.db", trials=3)
    old = optuna.load_study(study_name="k", storage="sqlite:///studies/k.db")
    original = records("sqlite:///studies/k.db", "k")
    # what a kill inside copy_study leaves: the marker, and a copy holding the first trial only
    migrate._marker("k").write_text(migrate._key(SHARED))
    copy = optuna.create_study(study_name="k", storage=SHARED, direction="maximize")
    copy.add_trials(old.trials[:1])
    result = invoke("migrate")
    assert result.exit_code == 0 and "study 'k': 3 trials copied" in result.output, result.output
    assert records(SHARED, "k") == original and not (workdir / "studies" / "k.db").exists()

    # a study of the same name that no migrate made: neither is touched
    run(tiny_dataset, "m", "--storage", "sqlite:///studies/m.db")
    mine = optuna.create_study(study_name="m", storage=SHARED, direction="maximize")
    mine.set_user_attr("made", "by hand")
    result = invoke("migrate")
    assert f"studies/m.db: study 'm' left as it is: {SHARED} holds another study of that name" in result.output
    assert (workdir / "studies" / "m.db").exists() and len(optuna.load_study(study_name="m", storage=SHARED).trials) == 0
    assert len(optuna.load_study(study_name="m", storage="sqlite:///studies/m.db").trials) == 1


def test_delete_asks_first_and_keeps_the_outputs_unless_told(tiny_dataset, workdir):
    run(tiny_dataset, "keep")
    run(tiny_dataset, "gone", trials=2)
    (workdir / "studies" / "gone" / "predictions.csv").write_text("Id,Category\n")
    refused = invoke("delete", "--study", "gone", input="n\n")
    assert refused.exit_code == 1 and "Aborted!" in refused.output, refused.output
    assert f"delete study 'gone' (2 trials) from {SHARED}?" in refused.output
    assert sorted(optuna.get_all_study_names(SHARED)) == ["gone", "keep"]

    deleted = invoke("delete", "--study", "gone", input="y\nn\n")  # the study yes, its folder no
    assert deleted.exit_code == 0, deleted.output
    assert "also remove its folder studies/gone/" in deleted.output and "kept its folder studies/gone/" in deleted.output
    assert optuna.get_all_study_names(SHARED) == ["keep"]
    assert (workdir / "studies" / "gone" / "predictions.csv").exists()

    run(tiny_dataset, "old", "--storage", "sqlite:///studies/old.db")
    result = invoke("delete", "--study", "old", "--yes", "--outputs")
    assert result.exit_code == 0, result.output
    assert "removed studies/old.db, which held no other study" in result.output and "removed studies/old/" in result.output
    assert not (workdir / "studies" / "old").exists() and not (workdir / "studies" / "old.db").exists()
    assert optuna.get_all_study_names(SHARED) == ["keep"]


def test_compare_shows_studies_side_by_side(tiny_dataset, workdir):
    run(tiny_dataset, "one", trials=2)
    run(tiny_dataset, "two")
    result = invoke("compare", "one", "two")
    assert result.exit_code == 0, result.output
    rows = {line.split("  ")[0]: line for line in result.output.splitlines()}
    assert rows["study"].split() == ["study", "one", "two"]
    assert rows["trials"].split() == ["trials", "2", "1"]
    for name in ("one", "two"):
        best = optuna.load_study(study_name=name, storage=SHARED).best_trial
        assert f"{best.value:.4f} (#{best.number})" in rows["best value"]
        assert str(best.params["encoder"]) in rows["best encoder"]
    from search.db.optuna_internals import study_id

    ids = [study_id(optuna.load_study(study_name=n, storage=SHARED)) for n in ("one", "two")]
    assert result.output.rstrip().endswith(f"/dashboard/compare-studies?ids={ids[0]},{ids[1]}")
    assert one_error_line(invoke("compare", "one")).startswith("Error: STUDIES: name at least two studies")
    assert one_error_line(invoke("compare", "one", "tow")).endswith("did you mean 'two'?")


def test_two_studies_run_at_once_on_one_file(tiny_dataset, workdir):
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    processes = [subprocess.Popen([sys.executable, "-m", "search.cli", "run", "--trials", "3", "--study", name,
                                   "--data", str(tiny_dataset), *RUN], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT) for name in ("p", "q")]
    outputs = [p.communicate(timeout=300)[0].decode() for p in processes]
    for process, output in zip(processes, outputs):
        assert process.returncode == 0 and "locked" not in output, output
    for name in ("p", "q"):
        trials = optuna.load_study(study_name=name, storage=SHARED).trials
        assert len(trials) == 3 and all(t.state.is_finished() for t in trials), trials


def test_the_dashboard_lists_every_study_of_the_shared_file(tiny_dataset, workdir):
    run(tiny_dataset, "first")
    run(tiny_dataset, "second")
    import urllib.request

    with dashboard_server(workdir, "first") as base:
        with urllib.request.urlopen(base + "/api/studies", timeout=10) as answer:
            names = sorted(s["study_name"] for s in json.load(answer)["study_summaries"])
    assert names == ["first", "second"]


def test_migrate_compare_and_delete_on_postgresql(tiny_dataset, workdir, postgres):
    names = [f"pg-{uuid.uuid4().hex[:8]}-{i}" for i in range(2)]
    try:
        for name in names:
            run(tiny_dataset, name, "--storage", f"sqlite:///studies/{name}.db")
        moved = invoke("migrate", "--storage", postgres)
        assert moved.exit_code == 0 and moved.output.count("and checked") == 2, moved.output
        compared = invoke("compare", *names, "--storage", postgres)
        assert compared.exit_code == 0 and "/dashboard/compare-studies?ids=" in compared.output, compared.output
        assert invoke("delete", "--study", names[0], "--storage", postgres, "--yes").exit_code == 0
        assert names[0] not in optuna.get_all_study_names(postgres) and names[1] in optuna.get_all_study_names(postgres)
    finally:
        for name in names:
            delete_study(postgres, name)


@pytest.mark.parametrize("command", [["migrate"], ["compare", "a", "b"], ["delete", "--study", "a", "--yes"]])
def test_commands_on_a_folder_without_studies_create_nothing(command, workdir):
    result = invoke(*command)
    if command == ["migrate"]:
        assert result.exit_code == 0 and "nothing to move" in result.output, result.output
    else:
        assert "holds no study yet" in one_error_line(result)
    assert not (workdir / "studies").exists()
