"""Files kept with a study, through Optuna's artifact store: ``studies/<study>/artifacts/``.

``search finalize`` uploads the final model, its config and the predictions CSV; ``search dashboard``
serves them (the study page's Artifacts section, with download links).

They are *study* artifacts, named ``trial<N>-model.pt``, ``trial<N>-config.json`` and
``trial<N>-predictions.csv``: Optuna's storages refuse any change to a finished trial, artifacts
included, and a finalized trial is always finished. The study's user attribute ``final`` records
the last finalize (trial, steps, validation accuracy, artifact ids), which ``search show`` prints;
``search finalize top`` uploads its files as ``top<K>-<name>`` and records them in ``final_ensemble``.
Finalizing the same trial again with identical results uploads nothing new; different results are
uploaded next to the earlier ones (Optuna has no API to replace an artifact). Caution: deleting an artifact
in optuna-dashboard leaves a ``null`` that ``optuna.artifacts.get_all_artifact_meta(study)`` cannot read
(optuna-dashboard 0.21 / Optuna 5.0); ``study_artifacts`` here skips it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX  # the key prefix of artifact metadata


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
    attrs = study._storage.get_study_system_attrs(study._study_id)
    metas = [json.loads(v) for k, v in attrs.items() if k.startswith(ARTIFACTS_ATTR_PREFIX) and isinstance(v, str)]
    return [m for m in metas if isinstance(m, dict)]


def upload_final(study: optuna.Study, trial_number: int, files: list[Path], folder: Path,
                 summary: dict | None = None) -> dict[str, str]:
    """Upload ``files`` as study artifacts named ``trial<N>-<name>``; returns {artifact name: id}."""
    uploaded = upload_files(study, f"trial{trial_number}", files, folder)
    study.set_user_attr("final", {**(summary or {}), "trial": trial_number, "artifacts": uploaded,
                                  "artifact_dir": str(folder)})
    return uploaded


def upload_files(study: optuna.Study, prefix: str, files: list[Path], folder: Path) -> dict[str, str]:
    """Upload ``files`` as study artifacts named ``<prefix>-<name>`` (an identical one already there is
    reused, not uploaded again); returns {artifact name: id}. ``search finalize top`` uses ``top<K>``."""
    store = artifact_store(folder)
    existing = {m["filename"]: m["artifact_id"] for m in study_artifacts(study)}
    uploaded: dict[str, str] = {}
    with tempfile.TemporaryDirectory(dir=folder, prefix=".upload-") as tmp:
        for path in files:
            name = f"{prefix}-{path.name}"
            with open(path, "rb") as f:
                digest = _digest(f)
            if name in existing:
                try:
                    with store.open_reader(existing[name]) as old:
                        if _digest(old) == digest:
                            uploaded[name] = existing[name]
                            continue
                except Exception:  # the stored file is gone: upload it again
                    pass
            named = Path(tmp) / name
            try:
                os.link(path, named)  # no copy of a large model where the filesystem allows
            except OSError:
                shutil.copyfile(path, named)
            uploaded[name] = upload_artifact(artifact_store=store, file_path=str(named), study_or_trial=study,
                                             storage=study._storage)
    return uploaded
