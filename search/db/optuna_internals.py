"""Every use of Optuna's and optuna-dashboard's private names, in one place: each function below says why the
public API cannot do it.

Any release may rename or remove these; tests/test_optuna_internals.py and tests/test_optuna_internals_dashboard.py
fail, naming the one that changed, before a user meets it. Nothing else in the project may reach into Optuna's
private modules or attributes: it calls these. A flat list of small functions, on purpose.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager

import optuna


# --- a study's storage and ids ----------------------------------------------------------------------------------
# Optuna's Study and trials keep their storage and database ids private; the public API reaches a trial only by
# reading every trial of the study (get_trials), which costs seconds on a big study.

def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage a study reads and writes (Optuna's cache wrapper, where there is one)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage, which the storage's methods take."""
    return study._study_id


def trial_id(trial: optuna.Trial | optuna.trial.FrozenTrial) -> int:
    """A trial's id in its storage (trial numbers count within a study; the storage's methods take ids)."""
    return trial._trial_id


def rdb_storage(study: optuna.Study) -> optuna.storages.RDBStorage | None:
    """The RDBStorage under a study (inside Optuna's cache wrapper, ``_backend``), or None for another storage:
    the heartbeat table and our fast queries need the database itself."""
    storage = getattr(study, "_storage", None)
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, optuna.storages.RDBStorage) else None


def rdb_models():
    """Optuna's SQLAlchemy models (tables) of an RDB storage: no public module names them, and asking the tables
    for a few columns is what keeps `search trials` fast on thousands of trials."""
    from optuna.storages._rdb import models

    return models


def trial_datetime_columns(models) -> tuple:
    """The trials table's start and completion columns as stored (naive UTC): the model's public properties are
    Python-side conversions that a query cannot select."""
    return models.TrialModel._datetime_start_utc, models.TrialModel._datetime_complete_utc


# --- heartbeats ---------------------------------------------------------------------------------------------------
# Optuna starts a trial's heartbeat thread only inside study.optimize; our runner asks and tells trials itself
# (search/running/runner.py), so it starts the same thread through the same private helpers.

def heartbeat_enabled(storage: optuna.storages.BaseStorage) -> bool:
    """Whether the storage records heartbeats (an RDB storage with a heartbeat interval)."""
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return is_heartbeat_enabled(storage)


def heartbeat(study: optuna.Study, trial: optuna.Trial) -> AbstractContextManager:
    """A context that beats for ``trial`` while it runs (nothing where the storage has no heartbeat)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial_id(trial), storage_of(study))


# --- the sampler and pruners --------------------------------------------------------------------------------------

def reseed_tpe(sampler: optuna.samplers.TPESampler, seed: int, startup_seed: int) -> None:
    """Reseed TPE's own draws and its start-up random sampler's for one trial: ``reseed_rng()``, the public
    method, seeds them from the clock, and the sampler takes a seed only when it is built."""
    sampler._rng.rng.seed(seed)
    sampler._random_sampler._rng.rng.seed(startup_seed)


def halving_numbers(pruner: optuna.pruners.BasePruner) -> tuple | None:
    """(min_resource, reduction_factor, min_early_stopping_rate, max_resource, brackets) of an Optuna
    HyperbandPruner (brackets 0 until it has counted them) or SuccessiveHalvingPruner (max_resource and brackets
    None); None for another pruner or a min_resource of 'auto'. Optuna's pruners do not expose their settings;
    only pruners built outside a study need this (a study's own keep their numbers: search/running/sampler.py)."""
    if isinstance(pruner, optuna.pruners.HyperbandPruner):
        return pruner._min_resource, pruner._reduction_factor, 0, pruner._max_resource, pruner._n_brackets or 0
    if isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner) and pruner._min_resource is not None:
        return pruner._min_resource, pruner._reduction_factor, pruner._min_early_stopping_rate, None, None
    return None


def halving_needed(pruner: optuna.pruners.BasePruner, study: optuna.Study,
                   trial: optuna.trial.FrozenTrial) -> tuple[int, float | None] | None:
    """(step, value needed there) of the last rung an Optuna HyperbandPruner or SuccessiveHalvingPruner decided
    for ``trial``: the value the trial had to reach to be promoted, from the values the other trials of its bracket
    stored at that rung (Successive Halving's own rule; None as the value where too few had: its bootstrap count).
    None for another pruner or a trial without a decided rung. Optuna keeps the rung values in private system
    attributes (``completed_rung_<i>``) and the brackets in private fields, and says nothing of the threshold."""
    from optuna.pruners._successive_halving import _completed_rung_key

    if isinstance(pruner, optuna.pruners.HyperbandPruner):
        if not pruner._pruners:
            return None
        bracket = pruner._get_bracket_id(study, trial)
        halving = pruner._pruners[bracket]
        trials = [t for t in study.get_trials(deepcopy=False) if pruner._get_bracket_id(study, t) == bracket]
    elif isinstance(pruner, optuna.pruners.SuccessiveHalvingPruner):
        halving, trials = pruner, study.get_trials(deepcopy=False)
    else:
        return None
    rung = 0
    while _completed_rung_key(rung) in trial.system_attrs:
        rung += 1
    if rung == 0 or halving._min_resource is None:
        return None
    key = _completed_rung_key(rung - 1)
    step = halving._min_resource * halving._reduction_factor ** (halving._min_early_stopping_rate + rung - 1)
    competing = [t.system_attrs[key] for t in trials if key in t.system_attrs and t.number != trial.number]
    competing.append(trial.system_attrs[key])
    if len(competing) <= halving._bootstrap_count:
        return step, None
    # Successive Halving's rule (_is_trial_promotable_to_next_rung): at least the value ranked at the top
    # 1/reduction_factor of the competing ones (the best one while fewer than reduction_factor competed)
    rank = max(0, len(competing) // halving._reduction_factor - 1)
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    needed = sorted(competing, reverse=maximize)[rank]
    return step, needed


def queued_marks(trial: optuna.Trial) -> tuple[bool, int | None]:
    """(whether a running trial's parameters were enqueued rather than sampled, the number of the failed trial it
    retries or None): Optuna marks both in the trial's system attributes (``fixed_params``, ``failed_trial``), which
    ``Trial`` no longer exposes."""
    system = storage_of(trial.study).get_trial_system_attrs(trial_id(trial))
    return "fixed_params" in system, system.get("failed_trial")


# --- journal files ------------------------------------------------------------------------------------------------

def journal_op_codes() -> set[int]:
    """The operation codes a journal file may hold: to name the first line Optuna cannot replay in a damaged
    file (Optuna's own error says only "Should not reach."). The enum lives in a private module."""
    from optuna.storages.journal._storage import JournalOperation

    return {op.value for op in JournalOperation}


# --- study system attributes: artifacts' metadata, optuna-dashboard's notes ----------------------------------------

def queued_params(trial: optuna.trial.FrozenTrial) -> dict | None:
    """The parameters a trial was queued with (``enqueue_trial``), None for one the sampler made: Optuna keeps
    them in the trial's system attribute ``fixed_params``."""
    return trial.system_attrs.get("fixed_params")


def study_system_attrs(study: optuna.Study) -> dict:
    """The study's system attributes, where Optuna keeps artifact metadata and the dashboard its notes.
    ``Study.system_attrs`` was removed from the public API; ``get_all_artifact_meta`` fails on the ``null``
    the dashboard leaves for a deleted artifact."""
    return storage_of(study).get_study_system_attrs(study_id(study))


def set_study_system_attr(study: optuna.Study, key: str, value) -> None:
    """Write one study system attribute: Optuna has no public call for it (``Study.set_system_attr`` is gone)."""
    storage_of(study).set_study_system_attr(study_id(study), key, value)


def artifact_meta_key(artifact_id: str) -> str:
    """The study system attribute holding an artifact's metadata (its stored content type among them). Optuna
    has no public call to change an artifact's metadata: search/finalizing/artifacts.py repairs the content type here."""
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX

    return ARTIFACTS_ATTR_PREFIX + artifact_id


def is_artifact_meta_key(key: str) -> bool:
    """Whether a study system attribute is an artifact's metadata (see ``artifact_meta_key``)."""
    from optuna.artifacts._upload import ARTIFACTS_ATTR_PREFIX

    return key.startswith(ARTIFACTS_ATTR_PREFIX)


def note_chunk_length() -> int | None:
    """How many characters optuna-dashboard stores per note chunk, or None where its note layout module is
    gone (then ``save_note_public``). Its public ``save_note`` reads every note of the study to write one,
    a cost that grows with the study: search/reporting/notes.py writes the same keys itself."""
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


def read_note(study: optuna.Study, trial: int | None) -> tuple[str, int]:
    """(body, number of chunks stored) of a note (the trial's with id ``trial``, or the study's with None) as
    optuna-dashboard stores it; ("", 0) where there is none. On an RDB storage only that note's rows are read:
    its public ``get_note`` reads every note of the study (the study's system attributes), whose cost grows
    with the study, and the study's note is read after every trial (search/reporting/notes.py keeps a user's text)."""
    import json

    from optuna_dashboard._note import note_str_key_prefix

    prefix = note_str_key_prefix(trial)
    rdb = rdb_storage(study)
    if rdb is None:
        attrs = study_system_attrs(study)
    else:
        import sqlalchemy

        table = rdb_models().StudySystemAttributeModel
        with rdb.engine.connect() as connection:
            rows = connection.execute(sqlalchemy.select(table.key, table.value_json).where(
                table.study_id == study_id(study), table.key.startswith(prefix, autoescape=True))).all()
        attrs = {key: json.loads(value) for key, value in rows}
    chunks = {int(key[len(prefix):]): value for key, value in attrs.items()
              if key.startswith(prefix) and key[len(prefix):].isdigit()}
    return "".join(str(chunks[i]) for i in range(len(chunks)) if i in chunks), len(chunks)


def save_note_public(study: optuna.Study, trial: int | None, body: str) -> None:  # pragma: no cover
    """optuna-dashboard's public ``save_note``, for a release without the layout ``write_note_chunks`` uses. It
    takes a live ``Trial``; a finished trial has none, so it gets a stand-in with what save_note reads."""
    from optuna_dashboard import save_note

    class TrialRef:
        def __init__(self) -> None:
            self.study, self.storage, self._trial_id = study, storage_of(study), trial

    save_note(study if trial is None else TrialRef(), body)
