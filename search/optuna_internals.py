"""Every use of Optuna's and optuna-dashboard's private names, in one place.

Each function says why the public API cannot do it. tests/test_optuna_internals_dashboard.py checks that
these names still exist and still mean what we use them for: a release that changes them fails there,
not in a user's run.
"""

from __future__ import annotations

import time

import optuna


def study_storage(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a loaded study reads and writes. ``optuna.Study`` has no public accessor, and
    ``optuna_dashboard.run_server`` needs the storage object we opened (its engine settings, read-only mode)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (the dashboard's URL names it). The public way,
    ``storage.get_study_id_from_name``, is a query for what the study already holds."""
    return study._study_id


def trial_id(trial: optuna.trial.FrozenTrial) -> int:
    """A finished trial's id in the storage (the key of its dashboard note). ``FrozenTrial`` has only the
    number in public; the storage's ``get_trial_id_from_study_id_trial_number`` is a query per note."""
    return trial._trial_id


def study_system_attrs(study: optuna.Study) -> dict:
    """The study's system attributes, where Optuna keeps artifact metadata and the dashboard its notes.
    ``Study.system_attrs`` was removed from the public API; ``get_all_artifact_meta`` fails on the ``null``
    the dashboard leaves for a deleted artifact."""
    return study._storage.get_study_system_attrs(study._study_id)


def set_study_system_attr(study: optuna.Study, key: str, value) -> None:
    """Write one study system attribute: Optuna has no public call for it (``Study.set_system_attr`` is gone)."""
    study._storage.set_study_system_attr(study._study_id, key, value)


def artifact_meta_key(artifact_id: str) -> str:
    """The study system attribute holding an artifact's metadata (its stored content type among them). Optuna
    has no public call to change an artifact's metadata: search/artifacts.py repairs the content type here."""
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX

    return ARTIFACTS_ATTR_PREFIX + artifact_id


def is_artifact_meta_key(key: str) -> bool:
    """Whether a study system attribute is an artifact's metadata (see ``artifact_meta_key``)."""
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX

    return key.startswith(ARTIFACTS_ATTR_PREFIX)


def note_chunk_length() -> int | None:
    """How many characters optuna-dashboard stores per note chunk, or None where its note layout module is
    gone (then ``save_note_public``). Its public ``save_note`` reads every note of the study to write one,
    a cost that grows with the study: search/notes.py writes the same keys itself."""
    try:
        from optuna_dashboard._note import SYSTEM_ATTR_MAX_LENGTH
    except ImportError:  # pragma: no cover - a later optuna-dashboard
        return None
    return SYSTEM_ATTR_MAX_LENGTH


def write_note_chunks(study: optuna.Study, trial: int | None, chunks: list[str]) -> None:
    """Store a note (of the trial with id ``trial``, or the study's with None) as optuna-dashboard does: the
    chunks under its keys, then a version, the time in milliseconds (the dashboard only asks that an edit be
    the stored version + 1). The body goes first: a reader never finds a version without its body."""
    from optuna_dashboard._note import note_str_key_prefix, note_ver_key

    prefix = note_str_key_prefix(trial)
    for i, chunk in enumerate(chunks):
        set_study_system_attr(study, f"{prefix}{i}", chunk)
    set_study_system_attr(study, note_ver_key(trial), time.time_ns() // 1_000_000)


def save_note_public(study: optuna.Study, trial: int | None, body: str) -> None:  # pragma: no cover
    """optuna-dashboard's public ``save_note``, for a release without the layout ``write_note_chunks`` uses. It
    takes a live ``Trial``; a finished trial has none, so it gets a stand-in with what save_note reads."""
    from optuna_dashboard import save_note

    class TrialRef:
        def __init__(self) -> None:
            self.study, self.storage, self._trial_id = study, study._storage, trial

    save_note(study if trial is None else TrialRef(), body)
