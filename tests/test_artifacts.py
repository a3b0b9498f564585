"""What `search finalize` keeps in the study's artifact store, as users see it: one set of files per finalize,
named by trial, steps and UTC minute; the study's ``final`` attribute, `search show` and the report name the
current set; `search dashboard` serves ``.pt`` files as ``application/octet-stream``.

One tiny study (one trial of 8 steps) through the CLI, finalized three times; the dashboard is a real
`search dashboard` process.
"""

from __future__ import annotations

import base64
import json
import re
import urllib.request
from pathlib import Path

import optuna
import pytest

from tests.helpers import SHARED, dashboard_server, in_folder, invoke

STUDY = "art"
STAMP = r"\d{8}T\d{4}(?:-\d+)?"  # the UTC minute of the upload, -2, -3... for a second set in that minute


def load() -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=SHARED)


def stored_metas(study: optuna.Study) -> dict[str, dict]:
    from search.finalizing.artifacts import study_artifacts

    return {m["filename"]: m for m in study_artifacts(study)}


def finalize(steps: int) -> dict:
    result = invoke("finalize", "best", "--study", STUDY, "--steps", str(steps), "--quiet")
    assert result.exit_code == 0, result.output
    final = load().user_attrs["final"]
    assert all(name in result.output for name in final["artifacts"])  # the closing line names the set
    return final


@pytest.fixture(scope="module")
def finalized(tmp_path_factory, tiny_dataset):
    """The study finalized for 8 steps, then for 16, then for 16 again; (folder, the three ``final`` attributes).
    Before the first finalize, a ``.pt`` is uploaded as Optuna uploads it unless told the type (as finalize
    did before): its guessed type is repaired by the next upload."""
    folder = tmp_path_factory.mktemp("artifacts")
    with in_folder(folder):
        result = invoke("run", "--trials", "1", "--study", STUDY, "--data", str(tiny_dataset), "--budget", "8",
                        "--device", "cpu", "--seed", "1", "--quiet")
        assert result.exit_code == 0, result.output
        old = folder / "old-model.pt"
        old.write_bytes(b"an older upload")
        from search.finalizing.artifacts import artifact_store

        optuna.artifacts.upload_artifact(artifact_store=artifact_store(folder / "studies" / STUDY / "artifacts"),
                                         file_path=str(old), study_or_trial=load())
        finals = [finalize(8), finalize(16), finalize(16)]
    return folder, finals


def test_each_finalize_adds_a_set_named_by_steps_and_time_and_final_marks_the_current_one(finalized, monkeypatch):
    folder, finals = finalized
    monkeypatch.chdir(folder)
    study = load()
    number = study.best_trial.number
    names = [sorted(f["artifacts"]) for f in finals]
    for final, steps, these in zip(finals, (8, 16, 16), names):
        assert final["trial"] == number and final["steps"] == steps
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", final["date"])
        version = re.fullmatch(rf"trial{number}-(steps{steps}-{STAMP})-config\.json", these[0]).group(1)
        assert these == [f"trial{number}-{version}-{n}" for n in ("config.json", "model.pt", "predictions.csv")]
    # two sets side by side in the store, none overwritten, each name told apart; the third finalize resumed from
    # its finished checkpoint, trained nothing and wrote the second's files again: it reuses that set (issue 23: it
    # stored a duplicate, its config.json saying where it "resumed")
    assert names[2] == names[1] and len({n for these in names for n in these}) == 6
    metas = stored_metas(study)
    assert set(metas) >= {n for these in names for n in these}
    assert study.user_attrs["final"] == finals[2]
    # the files of the current set are the ones finalize wrote last
    from optuna.artifacts import download_artifact

    from search.finalizing.artifacts import artifact_store

    store = artifact_store(folder / "studies" / STUDY / "artifacts")
    own = f"studies/{STUDY}/predictions-trial{finals[2]['trial']}-steps16.csv"  # that finalize's own CSV
    for name, original in zip(names[2], [f"studies/{STUDY}/final/config.json", f"studies/{STUDY}/final/model.pt",
                                         own]):
        copy = folder / "download" / name
        copy.parent.mkdir(exist_ok=True)
        download_artifact(artifact_store=store, artifact_id=finals[2]["artifacts"][name], file_path=str(copy))
        assert copy.read_bytes() == Path(original).read_bytes(), name
    # stored content types: .pt as octet-stream, the older upload's guess repaired
    assert {metas[n]["mimetype"] for these in names for n in these if n.endswith(".pt")} == {"application/octet-stream"}
    assert metas["old-model.pt"]["mimetype"] == "application/octet-stream"
    assert metas[names[0][2]]["mimetype"] == "text/csv" and metas[names[0][0]]["mimetype"] == "application/json"


def test_identical_files_reuse_the_set_already_stored(finalized, monkeypatch):
    folder, finals = finalized
    monkeypatch.chdir(folder)
    from search.finalizing.artifacts import upload_final

    study = load()
    before = len(stored_metas(study))
    files = [Path(f"studies/{STUDY}/final/model.pt"), Path(f"studies/{STUDY}/final/config.json"),
             Path(f"studies/{STUDY}/predictions-trial{finals[2]['trial']}-steps16.csv")]
    again = upload_final(study, finals[2]["trial"], files, Path(f"studies/{STUDY}/artifacts"), {"steps": 16})
    assert again == finals[2]["artifacts"]
    assert len(stored_metas(load())) == before
    study.set_user_attr("final", finals[2])  # as the last finalize left it, for the other tests


def test_show_and_the_report_name_the_current_set(finalized, monkeypatch):
    folder, finals = finalized
    monkeypatch.chdir(folder)
    current, older = finals[2], finals[0]
    shown = invoke("show", "--study", STUDY)
    assert shown.exit_code == 0, shown.output
    assert f"finalized: 16 steps, valid accuracy {current['valid_accuracy']:.4f}" in shown.output
    assert all(f"  {name}  (id {i})" in shown.output for name, i in current["artifacts"].items())
    assert not any(name in shown.output for name in older["artifacts"])
    result = invoke("report", "--study", STUDY, "--out", "page.html")
    assert result.exit_code == 0, result.output
    head = (folder / "page.html").read_text().split("<h2>Optimisation history")[0]
    assert f"trial #{current['trial']} retrained for 16 steps" in head and f"date {current['date']}" in head
    assert all(name in head for name in current["artifacts"])
    assert not any(name in head for name in older["artifacts"])


def fetch(url: str, data: dict | None = None) -> tuple[str, bytes]:
    body = json.dumps(data).encode() if data is not None else None
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"} if body else {})
    with urllib.request.urlopen(request, timeout=20) as r:
        return r.headers["Content-Type"], r.read()


def test_search_dashboard_serves_pt_files_as_octet_stream(finalized, monkeypatch):
    """Finalize's files, and a .pt uploaded through the dashboard's page (its type guessed by the process
    serving the dashboard: on Debian, without search/finalizing/artifacts.py's registration, a SNES ROM page table)."""
    folder, finals = finalized
    monkeypatch.chdir(folder)
    with dashboard_server(folder, STUDY) as base:
        study_id = load()._study_id
        for name, artifact_id in finals[2]["artifacts"].items():
            kind, body = fetch(f"{base}/artifacts/{study_id}/{artifact_id}")
            original = {"model.pt": f"studies/{STUDY}/final/model.pt", "config.json": f"studies/{STUDY}/final/config.json",
                        "predictions.csv": f"studies/{STUDY}/predictions-trial{finals[2]['trial']}-steps16.csv"}[
                            name.rsplit("-", 1)[1]]
            assert body == (folder / original).read_bytes(), name
            expected = {".pt": "application/octet-stream", ".json": "application/json", ".csv": "text/csv"}
            assert kind.split(";")[0] == expected[Path(name).suffix], (name, kind)
        data = "data:application/octet-stream;base64," + base64.b64encode(b"weights").decode()
        _, answer = fetch(f"{base}/api/artifacts/{study_id}", {"file": data, "filename": "mine.pt"})
        mine = json.loads(answer)["artifact_id"]
        kind, body = fetch(f"{base}/artifacts/{study_id}/{mine}")
        assert (kind, body) == ("application/octet-stream", b"weights")

