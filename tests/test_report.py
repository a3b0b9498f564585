"""What users see of a study without a browser: `search report`, `studies`, `show`, the artifacts that
`finalize` uploads, progress and the log file, and every command's --help.

One small study (3 tiny trials of chosen configurations, unpruned, then a finalize) is made once for the module.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timezone
from pathlib import Path

import click
import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, download_artifact, get_all_artifact_meta
from optuna.trial import TrialState

from search.reporting.attrs import resolved_configs, train_loss_points
from search.cli import main
from search.reporting.report import IMPORTANCE_RELIABLE, build_sections
from tests.helpers import REPORT_FIGURES, SAMPLE, in_folder, invoke, one_error_line, run_configs

STUDY = "rep"
STORAGE = f"sqlite:///studies/{STUDY}.db"
# Three cheap configurations that differ in encoder, pooling and loss: the comparison figure has groups.
CONFIGS = [
    SAMPLE,
    {**SAMPLE, "d_model": 64, "pooling": "sap", "loss": "am", "margin": 0.2, "scale": 30.0,
     "label_smoothing": None},
    {k: v for k, v in {**SAMPLE, "encoder": "conformer", "d_model": 64, "ffn": 128, "conformer_kernel": 7,
                       "subsampling": True, "pooling": "asp", "head": "linear"}.items()
     if k not in ("norm_first", "head_hidden")},
]


@pytest.fixture(scope="module")
def searched(tmp_path_factory, tiny_dataset):
    folder = tmp_path_factory.mktemp("report")
    with in_folder(folder):
        # --no-pruning: every trial completes, whatever 8-step scores on 6 validation utterances say (importances and
        # the comparison need 2 or more; with the cpu profile's two pruning decisions, 2 of these 3 were stopped)
        run = run_configs(tiny_dataset, STUDY, CONFIGS, "--no-pruning")
        final = invoke("finalize", "best", "--study", STUDY, "--steps", "8", "--quiet")
        assert final.exit_code == 0, final.output
    return folder, run.output, final.output


@pytest.fixture
def inside(searched, monkeypatch):
    monkeypatch.chdir(searched[0])
    return searched[0]


def load() -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=STORAGE)


def test_the_study_has_what_the_report_compares(inside):
    study = load()
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 2, [(t.number, t.state) for t in study.trials]
    assert {t.params["encoder"] for t in study.trials} == {"transformer", "conformer"}
    for t in study.trials:  # what each trial's page in the dashboard shows
        a = t.user_attrs
        assert {"model.n_classes", "train.steps", "train_loss_curve", "parameters", "steps_per_second", "device",
                "wall_seconds", "ended"} <= set(a), sorted(a)
        assert a["ended"].startswith(("complete after", "pruned at step"))
        assert t.intermediate_values
        # short and flat: the dashboard shows each attribute as one unwrapped line, `key value`
        assert not [k for k, v in a.items() if isinstance(v, dict) or len(json.dumps(v)) > 60], a
        # ... and the resolved configuration is all there, read back by search/reporting/attrs.py
        model, train = resolved_configs(t)
        assert model["n_classes"] == 6 and model["encoder"] == t.params["encoder"] and model["n_mels"] > 0
        assert train["steps"] == 8 and train["lr"] == t.params["lr"] and "grad_clip" in train
        assert not {k for k in t.params if f"model.{k}" in a or f"train.{k}" in a}  # sampled: not twice
        # the training loss beside the validation curve: one value per validation
        assert [s for s, _ in train_loss_points(t)] == sorted(t.intermediate_values)
        assert all(loss > 0 for _, loss in train_loss_points(t))


def test_report_is_one_self_contained_page_with_every_figure(inside):
    result = invoke("report", "--study", STUDY, "--out", "shared/report.html")
    assert result.exit_code == 0, result.output
    page = (inside / "shared" / "report.html").read_text()
    for title in REPORT_FIGURES:
        assert f"<h2>{title}" in page, title
    assert page.count('class="plotly-graph-div"') == len(REPORT_FIGURES)
    assert "Accuracy by encoder, pooling and loss" in page
    # plotly.js inlined exactly once, compressed, nothing fetched from the network: it opens offline
    assert 1_000_000 < len(page) < 3_000_000  # plotly.js alone is over 4.5 MB uncompressed
    assert len(re.findall(r"plotly\.js v\d", page)) == 1 and page.count("DecompressionStream") == 1
    assert not re.search(r"<script[^>]+src=", page)
    assert [p.name for p in (inside / "shared").iterdir()] == ["report.html"]  # no temporary file left
    assert "report written to shared/report.html (7 figures)" in result.output


def test_report_prints_the_best_trials(inside):
    result = invoke("report", "--study", STUDY, "--out", "r.html")
    assert result.exit_code == 0, result.output
    study = load()
    best = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: -t.value)
    assert f"study '{STUDY}': 3 trials:" in result.output
    lines = [line for line in result.output.splitlines() if re.match(r"\s+#\d+\s+acc ", line)]
    assert len(lines) == min(5, len(best))
    assert lines[0].split()[:3] == [f"#{best[0].number}", "acc", f"{best[0].value:.4f}"]
    assert f"encoder={best[0].params['encoder']}" in lines[0] and "pooling=" in lines[0] and "loss=" in lines[0]


def test_report_page_says_what_ran_and_what_came_of_it(inside):
    """Settings as a table, the finalized result, the failures, when and with which versions it was made,
    and a caution on importances from few trials."""
    import torch

    from search.cli import package_version

    result = invoke("report", "--study", STUDY, "--out", "page.html")
    assert result.exit_code == 0, result.output
    page = (inside / "page.html").read_text()
    study = load()
    head = page.split("<h2>Optimisation history")[0]  # the part above the figures
    assert "<h2>Settings</h2>" in head and "<td>budget</td><td>8</td>" in head and "<td>seed</td><td>1</td>" in head
    assert '{"budget"' not in page  # no raw JSON
    final = study.user_attrs["final"]
    assert (f"trial #{final['trial']} retrained for 8 steps: validation accuracy {final['valid_accuracy']:.4f}"
            in head)
    assert all(name in head for name in final["artifacts"])
    assert "<h2>Failed trials</h2>\n<p>No trial failed.</p>" in head
    today = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    assert re.search(rf"Report made {today} \d\d:\d\d UTC; hw04-search {re.escape(package_version())}, "
                     rf"Optuna {re.escape(optuna.__version__)}, torch {re.escape(torch.__version__)}\.", head)
    caution = page.split("<h2>Parameter importances</h2>")[1].split("</section>")[0]
    complete = len([t for t in study.trials if t.state == TrialState.COMPLETE])
    assert f"Unreliable: from {complete} complete trials. With fewer than {IMPORTANCE_RELIABLE}" in caution
    assert 'class="plotly-graph-div"' in caution  # drawn all the same


def test_curves_have_a_legend_and_the_training_loss(inside):
    study = load()
    curves = next(s for s in build_sections(study) if s.title.startswith("Intermediate values"))
    figure = curves.figure
    assert figure.layout.showlegend is True
    in_legend = [t for t in figure.data if t.showlegend is not False]
    best = study.best_trial
    assert sorted(t.name for t in in_legend) == sorted(  # a pruned trial: where it was pruned
        f"#{t.number} " + (f"{t.value:.4f}" if t.state == TrialState.COMPLETE else t.user_attrs["ended"])
        + (" (best)" if t.number == best.number else "") for t in study.trials)
    for trial in study.trials:  # validation accuracy on the left, training loss on the right, one legend entry
        left, right = [t for t in figure.data if t.legendgroup == str(trial.number)]
        assert (left.xaxis, right.xaxis) == ("x", "x2")
        assert list(left.y) == [trial.intermediate_values[s] for s in sorted(trial.intermediate_values)]
        assert list(zip(right.x, right.y)) == train_loss_points(trial) and right.showlegend is False


def fake_failures(name: str) -> optuna.Study:
    """A study with a complete trial, one that failed saying why (as the objective records it) and one that
    failed without a word (its worker killed: Optuna fails it by heartbeat)."""
    study = optuna.create_study(study_name=name, storage=f"sqlite:///studies/{name}.db", direction="maximize")

    def objective(trial):
        trial.suggest_categorical("encoder", ["transformer", "conformer"])
        trial.report(0.5, 1)
        if trial.number == 1:
            trial.set_user_attr("ended", "failed: training loss became nan before step 5 <b>")
            raise FloatingPointError("nan")
        return 0.5

    study.optimize(objective, n_trials=2, catch=(FloatingPointError,))
    study.tell(study.ask(), state=TrialState.FAIL)
    return study


def test_report_lists_the_failed_trials_with_their_reasons(workdir):
    (workdir / "studies").mkdir()
    fake_failures("fails")
    result = invoke("report", "--study", "fails", "--out", "fails.html")
    assert result.exit_code == 0, result.output
    page = (workdir / "fails.html").read_text()
    failures = page.split("<h2>Failed trials</h2>")[1].split("<h2>")[0]
    rows = re.findall(r"<tr><td>(#\d+)</td><td>([^<]*)</td>", failures)
    assert rows == [("#1", "failed: training loss became nan before step 5 &lt;b&gt;"),
                    ("#2", "failed (no reason recorded: its worker stopped, e.g. killed; Optuna failed it by "
                           "heartbeat)")]


def test_importances_are_unreliable_below_the_threshold_only(workdir):
    (workdir / "studies").mkdir()
    for n, unreliable in ((IMPORTANCE_RELIABLE - 1, True), (IMPORTANCE_RELIABLE, False)):
        fake_study(f"imp{n}", n_complete=n)
        assert invoke("report", "--study", f"imp{n}", "--out", f"imp{n}.html").exit_code == 0
        section = (workdir / f"imp{n}.html").read_text().split("<h2>Parameter importances</h2>")[1]
        assert ("Unreliable: from" in section.split("</section>")[0]) is unreliable, n


def test_notes_say_what_each_trial_did_and_where_the_study_stands(inside):
    """The Markdown optuna-dashboard shows: written after each trial by `search run`, read back with
    optuna-dashboard's own get_note (its page is checked in a browser in tests/test_dashboard.py)."""
    from optuna_dashboard import get_note

    from search.reporting import notes
    from search.reporting.notes import study_note, trial_note

    study = load()
    best = study.best_trial
    stored = get_note(study)  # written after the last trial of `search run`
    assert stored.startswith(f"{notes.BEGIN}\n\n### Study {STUDY}\n") and stored.rstrip().endswith(notes.END)
    assert "| budget | 8 |" in stored and "| profile | cpu |" in stored
    assert f"**best so far**: trial {best.number}, validation accuracy {best.value:.4f}" in stored
    # what finalize's refresh writes (search/reporting/notes.py write_study_note): the finalized result
    final = study.user_attrs["final"]
    note = study_note(study)
    assert "**finalized result**" in note and f"trial #{final['trial']} retrained for 8 steps" in note
    assert all(name in note for name in final["artifacts"])
    for t in study.trials:
        note = trial_note(study, t)
        assert note.startswith(f"### Trial {t.number}: complete, validation accuracy {t.value:.4f}\n"
                               if t.state == TrialState.COMPLETE else
                               f"### Trial {t.number}: pruned, last validation accuracy {t.value:.4f}\n")
        assert f"**ended** {t.user_attrs['ended']}" in note and "**device** cpu" in note
        assert f"**curve**: {len(t.intermediate_values)} validations" in note
        for step, loss in train_loss_points(t):
            assert re.search(rf"^\| {step} \| {t.intermediate_values[step]:.4f}( \(best\))? \| {loss:.4g} \|$", note,
                             re.M), (step, note)
        assert f"| encoder | **{t.params['encoder']}** |" in note and "| n_classes | 6 |" in note
        assert "| steps | 8 |" in note


def test_a_shorter_note_replaces_a_longer_one_whole(workdir):
    """Notes are written without reading the study's system attributes (search/reporting/notes.py): a rewrite must
    still leave exactly the new text, as optuna-dashboard reads it."""
    from optuna_dashboard import get_note

    from search.reporting import notes

    (workdir / "studies").mkdir()
    fake_study("notes", n_complete=1)
    study = optuna.load_study(study_name="notes", storage="sqlite:///studies/notes.db")
    long_text = "".join(f"line {i:05d} of a long note\n" for i in range(200))  # 5,400 characters: cut
    trial = study.trials[0]
    notes._save(study, trial._trial_id, long_text)
    stored = get_note(trial_ref(study, trial))
    assert len(stored) == notes.CHUNKS * 2045 and stored.startswith("line 00000") and stored.endswith("cut to fit)*\n")
    notes._save(study, trial._trial_id, "short")
    assert get_note(trial_ref(study, trial)) == "short"
    notes.write_trial_note(study, trial)
    assert get_note(trial_ref(study, trial)).startswith("### Trial 0: complete")


def trial_ref(study: optuna.Study, trial):
    """What optuna-dashboard's get_note reads of a trial (it takes a live Trial: a finished one has none)."""
    class TrialRef:
        storage, _trial_id = study._storage, trial._trial_id
    TrialRef.study = study
    return TrialRef()


def test_the_study_note_keeps_what_the_user_wrote(workdir):
    """The study's note is rewritten after every trial; a user's own text in it (typed in the dashboard, which saves
    it with optuna-dashboard's save_note_with_version) is kept, above and below the generated block, however long."""
    from optuna_dashboard import get_note, save_note

    from search.reporting import notes

    (workdir / "studies").mkdir()
    fake_study("notes", n_complete=1)
    study = optuna.load_study(study_name="notes", storage="sqlite:///studies/notes.db")
    # a note of before the markers (ours, unmarked) is replaced whole
    save_note(study, "### Study notes\n\n1 trials: 1 complete (note written 2026-01-01 00:00 UTC)\n\nold best\n")
    notes.write_study_note(study)
    first = get_note(study)
    assert first.startswith(notes.BEGIN) and "old best" not in first and "**best so far**: trial 0" in first
    # the user writes above and below the block in the dashboard; a later rewrite keeps both, and the block once
    mine = "## My plan\n\ntry conformers next | keep lr < 1e-3\n"
    save_note(study, mine + "\n" + first + "\nseen on Monday: trial 0 looks good\n")
    first_trial = study.trials[0]
    study.add_trial(optuna.trial.create_trial(params=first_trial.params, distributions=first_trial.distributions,
                                              value=0.9))  # a better trial: what the block says changes
    notes.write_study_note(study)
    second = get_note(study)
    assert second.startswith(mine + "\n" + notes.BEGIN) and second.endswith("\nseen on Monday: trial 0 looks good\n")
    assert second.count(notes.BEGIN) == 1 == second.count(notes.END) and "2 trials" in second
    assert "**best so far**: trial 1, validation accuracy 0.9000" in second
    # a user's note longer than the chunks we write: kept whole, nothing cut, no stale tail
    long_text = "".join(f"my line {i:05d}\n" for i in range(600))  # 9,000 characters
    save_note(study, long_text)
    notes.write_study_note(study)
    assert get_note(study).startswith(long_text + "\n" + notes.BEGIN)
    save_note(study, "short")
    notes.write_study_note(study)
    assert get_note(study).startswith("short\n\n" + notes.BEGIN) and "my line" not in get_note(study)


def test_finalize_refreshes_the_study_note(inside):
    from optuna_dashboard import get_note

    assert "**finalized result**" in get_note(load())


def fake_study(name: str, n_complete: int, n_pruned: int = 0) -> None:
    """A study without training (a few seconds less): just trials with parameters and values."""
    study = optuna.create_study(study_name=name, storage=f"sqlite:///studies/{name}.db", direction="maximize")

    def objective(trial):
        trial.suggest_categorical("encoder", ["transformer", "conformer"])
        trial.suggest_categorical("pooling", ["mean", "sap"])
        trial.suggest_categorical("loss", ["ce", "am"])
        lr = trial.suggest_float("lr", 1e-4, 3e-3, log=True)
        trial.report(lr * 100, 1)
        if trial.number >= n_complete:
            raise optuna.TrialPruned()
        return lr * 100

    study.optimize(objective, n_trials=n_complete + n_pruned)


def test_report_leaves_out_figures_of_one_point_and_keeps_accuracy_in_0_1(workdir):
    """7 of 8 trials pruned: the figures of the complete trials would each show one point, on axes plotly stretches
    around it (-0.3 to 1.6); the page says why each is left out. What it draws puts accuracy on 0..1."""
    (workdir / "studies").mkdir()
    fake_study("one", n_complete=1, n_pruned=7)
    result = invoke("report", "--study", "one", "--out", "one.html")
    assert result.exit_code == 0, result.output
    assert "figure skipped: Parameter importances: needs at least 2 complete trials; this study has 1" in result.output
    for title in ("Optimisation history", "Parallel coordinates", "Slices", "Encoders, poolings and losses compared"):
        assert re.search(rf"figure skipped: {title}[^:]*: needs at least 2 complete trials to compare; this study "
                         "has 1", result.output), (title, result.output)
    assert "report written to one.html (2 figures)" in result.output  # the curves and the timeline
    page = (workdir / "one.html").read_text()
    assert page.count('class="plotly-graph-div"') == 2 and len(re.findall(r"plotly\.js v\d", page)) == 1
    # a study of several complete trials: every accuracy axis spans 0..1
    (workdir / "one.html").unlink()
    fake_study("two", n_complete=3)
    sections = {s.title.split(" (")[0]: s.figure for s in build_sections(optuna.load_study(
        study_name="two", storage="sqlite:///studies/two.db"))}
    assert list(sections["Optimisation history"].layout.yaxis.range) == [0, 1]
    assert list(sections["Intermediate values: validation accuracy and training loss during training"]
                .layout.yaxis.range) == [0, 1]
    assert list(sections["Slices"].layout.yaxis.range) == [0, 1]
    assert list(sections["Encoders, poolings and losses compared"].layout.yaxis.range) == [0, 1]


def test_report_of_a_study_without_finished_trials_is_one_error_line(workdir):
    (workdir / "studies").mkdir()
    optuna.create_study(study_name="empty", storage="sqlite:///studies/empty.db")
    line = one_error_line(invoke("report", "--study", "empty"), alone=True)
    assert line == "Error: study 'empty' has no finished trial yet: run `search run` first"
    assert not (workdir / "report.html").exists()


def test_studies_lists_every_study_with_counts_and_best(inside):
    fake_study("other", n_complete=2, n_pruned=1)
    try:
        result = invoke("studies")
        assert result.exit_code == 0, result.output
        rows = {line.split()[0]: line.split() for line in result.output.splitlines()[1:]}
        best = load().best_trial
        # study, trials, complete, pruned, failed, running, best (trial), storage
        assert rows[STUDY][1] == "3" and rows[STUDY][5] == "0"
        assert rows[STUDY][6:8] == [f"{best.value:.4f}", f"(#{best.number})"]
        assert rows["other"][1:5] == ["3", "2", "1", "0"]
        result = invoke("studies", "--storage", "sqlite:///studies/other.db")
        assert result.exit_code == 0 and "other" in result.output and STUDY not in result.output
        result = invoke("studies", "--json")
        assert result.exit_code == 0, result.output
        rows = {r["study"]: r for r in json.loads(result.output)}
        assert rows["other"]["complete"] == 2 and rows["other"]["pruned"] == 1 and rows[STUDY]["trials"] == 3
        assert rows[STUDY]["best_trial"] == best.number and rows[STUDY]["storage"] == STORAGE
    finally:
        os.remove("studies/other.db")
    line = one_error_line(invoke("studies", "--storage", "sqlite:///studies/nothere.db"), alone=True)
    assert "--storage sqlite:///studies/nothere.db" in line and "no such file" in line, line
    assert not Path("studies/nothere.db").exists()


def test_show_prints_a_trials_configuration_and_results(inside):
    best = load().best_trial
    result = invoke("show", "--study", STUDY)
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"trial #{best.number}  (best)" in out
    for text in ("ended        complete after 8 steps", "device       cpu", "parameters ", "steps/s", "wall seconds",
                 "validation curve (step: accuracy):", "model config (resolved):", "train config (resolved):",
                 f"encoder          {best.params['encoder']}", "finalized: 8 steps"):
        assert text in out, text
    other = next(t for t in load().trials if t.number != best.number)
    result = invoke("show", "--study", STUDY, "--trial", str(other.number))
    assert result.exit_code == 0 and f"trial #{other.number}\n" in result.output
    result = invoke("show", "--study", STUDY, "--trial", str(other.number), "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["number"] == other.number and shown["params"] == other.params
    assert shown["user_attrs"]["ended"] == other.user_attrs["ended"] and len(shown["intermediate_values"]) == len(other.intermediate_values)
    line = one_error_line(invoke("show", "--study", STUDY, "--trial", "99"), alone=True)
    assert line == f"Error: --trial 99: no such trial in study '{STUDY}' (it has trials #0 to #2)"


def test_finalize_uploads_its_files_to_the_artifact_store(inside):
    study = load()
    number = study.user_attrs["final"]["trial"]
    assert number == study.best_trial.number
    metas = {m.filename: m for m in get_all_artifact_meta(study)}
    names = list(study.user_attrs["final"]["artifacts"])  # named by steps and time: tests/test_artifacts.py
    assert sorted(metas) == sorted(names)
    assert [n.split("-", 3)[3] for n in names] == ["model.pt", "config.json", "predictions.csv"]
    assert metas[names[2]].mimetype == "text/csv"
    store = FileSystemArtifactStore("studies/rep/artifacts")
    originals = [Path("studies/rep/final/model.pt"), Path("studies/rep/final/config.json"),
                 Path("studies/rep/predictions.csv")]
    for name, original in zip(names, originals):
        copy = inside / "download" / name
        copy.parent.mkdir(exist_ok=True)
        download_artifact(artifact_store=store, artifact_id=metas[name].artifact_id, file_path=str(copy))
        assert copy.read_bytes() == original.read_bytes(), name
    assert study.user_attrs["final"]["artifacts"] == {n: metas[n].artifact_id for n in names}

    # the same files again (finalize re-run with identical results): nothing new is uploaded
    from search.finalizing.artifacts import upload_final

    again = upload_final(study, number, originals, Path("studies/rep/artifacts"), {"steps": 8})
    assert again == study.user_attrs["final"]["artifacts"]
    assert len(get_all_artifact_meta(load())) == 3


def test_upload_survives_an_artifact_deleted_in_the_dashboard(workdir):
    """optuna-dashboard deletes an artifact by leaving a null in the study's system attributes."""
    from search.finalizing.artifacts import study_artifacts, upload_final

    (workdir / "studies").mkdir()
    fake_study("del", n_complete=1)
    study = optuna.load_study(study_name="del", storage="sqlite:///studies/del.db")
    files = [workdir / "model.pt", workdir / "predictions.csv"]
    for i, f in enumerate(files):
        f.write_text(f"content {i}")
    first = upload_final(study, 0, files, workdir / "studies" / "del" / "artifacts", {"steps": 8})
    model_name, csv_name = first
    study._storage.set_study_system_attr(study._study_id, "artifacts:" + first[model_name], json.dumps(None))
    files[0].write_text("new model")
    second = upload_final(study, 0, files, workdir / "studies" / "del" / "artifacts", {"steps": 8})
    assert set(second).isdisjoint(first)  # a new set, its names told apart from the first's
    assert sorted(m["filename"] for m in study_artifacts(study)) == sorted([csv_name, *second])


def test_progress_is_printed_and_everything_is_logged(searched, inside):
    _, run_output, final_output = searched
    assert "trial 3/3" in run_output  # per-trial progress, printed although CliRunner is no terminal
    assert "step 8/8" not in final_output  # --quiet: no per-evaluation lines...
    assert "predictions written to" in final_output  # ...but the summary
    log = (inside / "studies" / STUDY / "search.log").read_text()
    for text in ("run --trials 3 --study rep", "trial 1/3", "trial 3/3", "best trial #", "finalize best --study rep --steps 8",
                 "step 8/8  loss", "ETA", "predictions written to"):
        assert text in log, text
    assert re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ \d+ INFO ", log)


def _commands(group: click.Group, prefix=()):
    for name, command in group.commands.items():
        yield prefix + (name,), command
        if isinstance(command, click.Group):
            yield from _commands(command, prefix + (name,))


def test_every_commands_help_says_what_it_does_with_an_example():
    top = invoke("--help")
    assert top.exit_code == 0 and "Quick start:" in top.output and "search report" in top.output
    commands = list(_commands(main))
    assert {"run", "finalize", "dashboard", "report", "studies", "show", "data"} <= {c[0][0] for c in commands}
    for path, _ in commands:
        result = invoke(*path, "--help")
        assert result.exit_code == 0, path
        help_text = result.output.split("Options:")[0]
        assert re.search(r"Example[^:]*:\s+search\s+" + r"\s+".join(path), help_text), (path, help_text)


def test_a_study_of_many_trials_gets_summaries_not_a_line_per_trial(workdir, monkeypatch):
    """Issue 23 (load): past CURVES_DRAWN trials the curves figure draws the best ones and a band for all, and past
    TIMELINE_DRAWN the timeline is a histogram; small limits here stand for the real ones."""
    import search.reporting.report as report

    monkeypatch.setattr(report, "CURVES_DRAWN", 4)
    monkeypatch.setattr(report, "TIMELINE_DRAWN", 10)
    study = optuna.create_study(study_name="many", storage="sqlite:///many.db", direction="maximize")

    def objective(trial):
        score = trial.suggest_float("lr", 0.0, 1.0)
        for step in (1, 2, 3):
            trial.report(score * step / 3, step)
        return score

    study.optimize(objective, n_trials=12)
    sections = build_sections(study)
    curves = next(s.figure for s in sections if s.title.startswith("Intermediate values"))
    one_by_one = {t.legendgroup for t in curves.data if t.legendgroup != "all"}
    best_four = sorted(study.trials, key=lambda t: t.value, reverse=True)[:4]
    assert one_by_one == {str(t.number) for t in best_four}
    median = next(t for t in curves.data if t.legendgroup == "all" and t.name)
    assert median.name == "all 12 trials: median, 10-90%" and list(median.customdata) == [12, 12, 12]
    assert list(median.y) == pytest.approx([sorted(t.intermediate_values[s] for t in study.trials)[5:7][0] * 0.5
                                            + sorted(t.intermediate_values[s] for t in study.trials)[5:7][1] * 0.5
                                            for s in (1, 2, 3)])
    timeline = next(s.figure for s in sections if s.title == "Timeline")
    assert [t.type for t in timeline.data] == ["histogram"] and sum(len(t.x) for t in timeline.data) == 12
    monkeypatch.setattr(report, "TIMELINE_DRAWN", 12)  # at the limit: Optuna's own timeline, a bar per trial
    timeline = next(s.figure for s in build_sections(study) if s.title == "Timeline")
    assert all(t.type == "bar" for t in timeline.data)


def test_cpu_trials_and_finalize_record_what_ran_on_the_cpu(inside):
    """A CPU steps eagerly in fp32: its trials and its finalize record that, not the CUDA defaults (a CUDA graph,
    bf16 or tf32) they never used."""
    for t in load().trials:
        _, train = resolved_configs(t)
        assert (train["cuda_graph"], train["precision"]) == (False, "fp32"), t.number
        assert t.user_attrs["cuda_graph"] is False
    configs = list((inside / "studies" / STUDY).rglob("config.json"))
    assert configs
    for path in configs:
        train = json.loads(path.read_text())["train_config"]
        assert (train["cuda_graph"], train["precision"]) == (False, "fp32"), path
