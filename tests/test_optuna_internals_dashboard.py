"""search/db/optuna_internals.py against the installed Optuna and optuna-dashboard: each private name it uses must
still exist and still mean what we use it for. A release that changes one fails here, by name, instead of in a
user's finalize or dashboard."""

from __future__ import annotations

import json

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, get_all_artifact_meta, upload_artifact

from search.db import optuna_internals as internals


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="internals", direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=2)
    return study


def test_storage_and_ids_are_the_ones_the_public_api_finds(study):
    storage = internals.storage_of(study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert internals.study_id(study) == storage.get_study_id_from_name("internals")
    for trial in study.get_trials():
        assert internals.trial_id(trial) == storage.get_trial_id_from_study_id_trial_number(
            internals.study_id(study), trial.number)


def test_study_system_attributes_round_trip(study):
    internals.set_study_system_attr(study, "search:probe", {"a": 1})
    assert internals.study_system_attrs(study)["search:probe"] == {"a": 1}
    # and they are the storage's own: what Optuna and the dashboard read
    assert internals.storage_of(study).get_study_system_attrs(internals.study_id(study))["search:probe"] == {"a": 1}


def test_artifact_metadata_lives_under_the_key_we_read_and_repair(study, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"weights")
    store = FileSystemArtifactStore(str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    artifact_id = upload_artifact(artifact_store=store, file_path=str(tmp_path / "model.pt"), study_or_trial=study,
                                  mimetype="application/x-test")
    attrs = internals.study_system_attrs(study)
    key = internals.artifact_meta_key(artifact_id)
    assert key in attrs and internals.is_artifact_meta_key(key)
    assert json.loads(attrs[key])["filename"] == "model.pt"
    assert not any(internals.is_artifact_meta_key(k) for k in attrs if k != key)
    # a changed content type written under that key is what Optuna's public reader returns
    internals.set_study_system_attr(study, key, json.dumps({**json.loads(attrs[key]), "mimetype": "text/plain"}))
    assert [m.mimetype for m in get_all_artifact_meta(study)] == ["text/plain"]


def test_notes_written_by_chunks_read_back_with_the_dashboards_public_get_note(study):
    from optuna_dashboard import get_note, save_note

    length = internals.note_chunk_length()
    assert isinstance(length, int) and length > 0, "optuna_dashboard._note.SYSTEM_ATTR_MAX_LENGTH is gone"
    body = "x" * length + "tail"
    internals.write_note_chunks(study, None, [body[:length], body[length:], ""])
    assert get_note(study) == body
    # a trial's note: keyed by the trial's storage id
    trial = study.get_trials()[1]
    internals.write_note_chunks(study, internals.trial_id(trial), ["trial note", ""])
    live = optuna.trial.Trial(study, internals.trial_id(trial))
    assert get_note(live) == "trial note"
    # the version is what the dashboard's own save checks: a later public save still works on top of ours
    save_note(study, "edited in the dashboard")
    assert get_note(study) == "edited in the dashboard"


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_a_note_read_alone_is_what_the_dashboards_save_note_wrote(storage, tmp_path):
    """read_note reads one note's rows (the study's, on an RDB storage with a query of its own keys): the body the
    dashboard's save_note stored, however many chunks, and not another note's."""
    from optuna_dashboard import save_note

    url = None if storage == "memory" else f"sqlite:///{tmp_path}/notes.db"
    study = optuna.create_study(study_name="read", storage=url, direction="maximize")
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=1)
    assert internals.read_note(study, None) == ("", 0)
    long_text = "".join(f"line {i:04d} with a % and an _ in it\n" for i in range(200))  # 7,200 characters
    save_note(study, long_text)
    internals.write_note_chunks(study, internals.trial_id(study.trials[0]), ["a trial's note", ""])
    assert internals.read_note(study, None) == (long_text, -(-len(long_text) // internals.note_chunk_length()))
    assert internals.read_note(study, internals.trial_id(study.trials[0])) == ("a trial's note", 2)
