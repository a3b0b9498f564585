"""Files kept with a study, through Optuna's artifact store: ``studies/<study>/artifacts/``.

``search finalize`` uploads the final model, its config and the predictions CSV; ``search dashboard``
serves them (the study page's Artifacts section, with download links).

They are *study* artifacts, named ``trial<N>-steps<S>-<YYYYmmddTHHMM>-model.pt`` (``-config.json``,
``-predictions.csv``): the steps and the UTC minute of the upload tell one finalize's set from another's
(Optuna has no API to replace an artifact, so every finalize adds a set). They are study artifacts because
Optuna's storages refuse any change to a finished trial, artifacts included, and a finalized trial is always
finished. The study's user attribute ``final`` records the current set (trial, steps, date, validation
accuracy, artifact names and ids), which ``search show``, the report and the dashboard's study note print;
``search finalize top`` uploads its files as ``top<K>-steps<S>-<time>-<name>`` and records them in
``final_ensemble``. Finalizing again with identical files reuses the earlier set instead of adding one.

Content type: optuna-dashboard serves an artifact with the ``mimetype`` stored in its metadata when it was
uploaded, which Optuna's ``upload_artifact`` guesses with ``mimetypes.guess_type`` unless told: on Debian
(``/etc/mime.types``) a ``.pt`` file is ``application/vnd.snesdev-page-table``. Uploads here state the type
(``MIMETYPES``); ``register_mimetypes`` makes the dashboard's own upload button agree.

Caution: deleting an artifact in optuna-dashboard leaves a ``null`` that
``optuna.artifacts.get_all_artifact_meta(study)`` cannot read (optuna-dashboard 0.21 / Optuna 5.0);
``study_artifacts`` here skips it.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import re
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from search.db import optuna_internals
from search.finalizing.final_record import FinalRecord


# The content types of the files ``search finalize`` uploads whose guess by ``mimetypes`` is wrong or depends on
# the machine's /etc/mime.types. Other suffixes keep Optuna's guess (.json: application/json, .csv: text/csv).
MIMETYPES = {".pt": "application/octet-stream"}  # torch.save's zip: Debian guesses a SNES ROM page table


def register_mimetypes() -> None:
    """Teach this process's ``mimetypes`` our types: the process serving optuna-dashboard guesses the type of a
    file uploaded through its page with ``mimetypes.guess_type``."""
    for suffix, mimetype in MIMETYPES.items():
        mimetypes.add_type(mimetype, suffix)


def version_stamp(when: datetime | None = None) -> str:
    """The UTC minute that names a set of finalize artifacts: ``20261126T1712``."""
    return (when or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y%m%dT%H%M")


def artifact_store(folder: Path) -> FileSystemArtifactStore:
    folder.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(folder))


def _digest(stream) -> str:
    h = hashlib.sha256()
    for chunk in iter(lambda: stream.read(1 << 20), b""):
        h.update(chunk)
    return h.hexdigest()


def study_artifacts(study: optuna.Study) -> list[dict]:
    """The study's artifact metadata. Like ``optuna.artifacts.get_all_artifact_meta(study)``, but it skips
    artifacts deleted in optuna-dashboard (it leaves a ``null`` behind, which that function cannot read)."""
    attrs = optuna_internals.study_system_attrs(study)
    metas = [json.loads(v) for k, v in attrs.items() if optuna_internals.is_artifact_meta_key(k) and isinstance(v, str)]
    return [m for m in metas if isinstance(m, dict)]


def upload_record(study: optuna.Study, record: FinalRecord, files: list[Path], folder: Path) -> dict[str, str]:
    """Upload ``files`` as the set of a finalized result (``upload_files``; label: the record's, a trial's
    ``trial<N>``) and store ``record`` (its artifacts, folder and, a trial's, date) as the study's current
    one; returns {artifact name: id}."""
    when = datetime.now(timezone.utc)
    record.artifacts = upload_files(study, record.label or f"trial{record.trial}", files, folder, record.steps, when)
    record.artifact_dir = str(folder)
    if record.label is None:
        record.date = when.strftime("%Y-%m-%d %H:%M UTC")
    record.store(study)
    return record.artifacts


def upload_final(study: optuna.Study, trial_number: int, files: list[Path], folder: Path,
                 summary: dict) -> dict[str, str]:
    """Upload ``files`` as study artifacts named ``trial<N>-steps<S>-<time>-<name>`` (``S``: ``summary["steps"]``)
    and record them in the study's ``final`` attribute as the current set; returns {artifact name: id}."""
    return upload_record(study, FinalRecord.of_trial(trial_number, **summary), files, folder)


def upload_files(study: optuna.Study, label: str, files: list[Path], folder: Path, steps: int,
                 when: datetime | None = None) -> dict[str, str]:
    """Upload ``files`` as one set of study artifacts named ``<label>-steps<steps>-<UTC minute>-<name>``;
    returns {artifact name: id}. A set of this label and steps already stored with identical files is
    reused, not uploaded again; a second set within the same minute gets ``-2`` (``-3``, ...) after the
    minute. ``search finalize top`` uses the label ``top<K>``."""
    store = artifact_store(folder)
    metas = study_artifacts(study)
    _repair_mimetypes(study, metas)
    existing = {m["filename"]: m["artifact_id"] for m in metas}
    digests = {_artifact_name(path): _file_digest(path) for path in files}
    earlier = _same_set(store, existing, label, steps, digests)
    if earlier is not None:
        return earlier
    stamp = f"steps{steps}-{version_stamp(when)}"
    version, n = stamp, 1
    while any(f"{label}-{version}-{_artifact_name(path)}" in existing for path in files):
        n += 1
        version = f"{stamp}-{n}"
    uploaded: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".upload-") as tmp:
        for path in files:
            name = f"{label}-{version}-{_artifact_name(path)}"
            named = Path(tmp) / name
            try:
                os.link(path, named)  # no copy of a large model where the filesystem allows
            except OSError:
                shutil.copyfile(path, named)
            uploaded[name] = upload_artifact(artifact_store=store, file_path=str(named), study_or_trial=study,
                                             mimetype=MIMETYPES.get(path.suffix))
    return uploaded


def _artifact_name(path: Path) -> str:
    """A file's name in a set: a result's own CSV (``predictions-trial4-steps2000.csv``, search/files.py) is the
    set's ``predictions.csv``: the set's label and steps already say whose it is."""
    if path.name.startswith("predictions-") and path.suffix == ".csv":
        return "predictions.csv"
    return path.name


def _file_digest(path: Path) -> str:
    with open(path, "rb") as f:
        return _digest(f)


def _same_set(store: FileSystemArtifactStore, existing: dict[str, str], label: str, steps: int,
              digests: dict[str, str]) -> dict[str, str] | None:
    """An earlier set of ``label`` and ``steps`` holding exactly these files (by content), newest first, as
    {artifact name: id}; None if there is none."""
    first = next(iter(digests))
    pattern = re.compile(rf"{re.escape(label)}-(steps{steps}-\d{{8}}T\d{{4}}(?:-\d+)?)-{re.escape(first)}")
    versions = sorted({m.group(1) for name in existing if (m := pattern.fullmatch(name))}, reverse=True)
    for version in versions:
        names = {f"{label}-{version}-{name}": digest for name, digest in digests.items()}
        if all(name in existing and _stored_digest(store, existing[name]) == digest for name, digest in names.items()):
            return {name: existing[name] for name in names}
    return None


def _stored_digest(store: FileSystemArtifactStore, artifact_id: str) -> str | None:
    try:
        with store.open_reader(artifact_id) as stored:
            return _digest(stored)
    except Exception:  # noqa: BLE001 - the stored file is gone: not the same set
        return None


def _repair_mimetypes(study: optuna.Study, metas: list[dict]) -> None:
    """Store the right content type for artifacts uploaded before ``MIMETYPES`` was passed (optuna-dashboard
    serves the stored one: an older ``.pt`` would stay ``application/vnd.snesdev-page-table``)."""
    for meta in metas:
        right = MIMETYPES.get(Path(str(meta.get("filename", ""))).suffix)
        if right and meta.get("mimetype") != right and "artifact_id" in meta:
            optuna_internals.set_study_system_attr(study, optuna_internals.artifact_meta_key(meta["artifact_id"]),
                                                   json.dumps({**meta, "mimetype": right}))
