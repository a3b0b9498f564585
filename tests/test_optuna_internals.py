"""Optuna's private names that search/db/optuna_internals.py uses, each checked against the installed Optuna: a
release that renames or removes one fails here, naming it, before a user meets it."""

from __future__ import annotations

import logging
import time

import optuna
import pytest
from optuna.trial import TrialState

from search.db import optuna_internals as internals
from search.db.storage import open_storage


@pytest.fixture
def rdb_study(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1, grace_period=2)
    return optuna.create_study(study_name="o", storage=storage, direction="maximize")


def test_a_study_s_storage_and_ids(rdb_study):
    trial = rdb_study.ask()
    storage = internals.storage_of(rdb_study)
    assert isinstance(storage, optuna.storages.BaseStorage)
    assert storage.get_study_name_from_id(internals.study_id(rdb_study)) == "o"
    assert storage.get_trial(internals.trial_id(trial)).number == trial.number
    frozen = rdb_study.tell(trial, 0.5)
    assert internals.trial_id(frozen) == internals.trial_id(trial)


def test_a_queued_trial_s_parameters(rdb_study):
    rdb_study.enqueue_trial({"x": 1.5})
    queued = rdb_study.get_trials(states=(TrialState.WAITING,))[0]
    assert internals.queued_params(queued) == {"x": 1.5}, "Optuna no longer keeps fixed_params"
    trial = rdb_study.ask()
    trial.suggest_float("x", 0, 2)
    assert internals.queued_params(rdb_study.tell(trial, 0.5)) == {"x": 1.5}
    sampled = rdb_study.ask()
    sampled.suggest_float("x", 0, 2)
    assert internals.queued_params(rdb_study.tell(sampled, 0.5)) is None


def test_the_rdb_storage_under_the_cache_and_its_tables(rdb_study):
    rdb = internals.rdb_storage(rdb_study)
    assert isinstance(rdb, optuna.storages.RDBStorage), "Optuna's cache wrapper no longer keeps _backend"
    assert internals.rdb_storage(optuna.create_study()) is None  # in memory: not an RDB storage
    models = internals.rdb_models()
    for table in ("TrialModel", "TrialValueModel", "TrialParamModel", "TrialUserAttributeModel",
                  "TrialHeartbeatModel"):
        assert hasattr(models, table), f"optuna.storages._rdb.models.{table} is gone"
    for column in ("trial_id", "number", "state", "study_id"):
        assert hasattr(models.TrialModel, column)
    assert hasattr(models.TrialValueModel, "stored_repr_to_value")
    started, completed = internals.trial_datetime_columns(models)
    rdb_study.tell(rdb_study.ask(), 0.1)
    import sqlalchemy

    with rdb.engine.connect() as connection:
        start, end = connection.execute(sqlalchemy.select(started, completed)).one()
    assert start is not None and end is not None and start.tzinfo is None  # naive UTC, as queries.py reads it


def test_a_heartbeat_beats_while_the_trial_runs(rdb_study):
    storage = internals.storage_of(rdb_study)
    assert internals.heartbeat_enabled(storage)
    assert not internals.heartbeat_enabled(optuna.storages.InMemoryStorage())
    trial = rdb_study.ask()
    with internals.heartbeat(rdb_study, trial):
        time.sleep(0.3)
    models = internals.rdb_models()
    session = internals.rdb_storage(rdb_study).scoped_session()
    try:
        beats = session.query(models.TrialHeartbeatModel).filter_by(trial_id=internals.trial_id(trial)).count()
    finally:
        session.close()
    assert beats == 1, "the heartbeat thread no longer records a heartbeat"


def test_reseeding_tpe_fixes_its_draws():
    def draws(seed: int) -> list[float]:
        sampler = optuna.samplers.TPESampler(seed=123, n_startup_trials=2)
        study = optuna.create_study(sampler=sampler)
        values = []
        for _ in range(4):
            trial = study.ask()
            internals.reseed_tpe(sampler, seed, seed + 1)
            values.append(trial.suggest_float("x", 0, 1))
            study.tell(trial, values[-1])
        return values

    assert draws(7) == draws(7)
    assert draws(7) != draws(8)


def test_the_numbers_of_optuna_s_own_halving_pruners():
    hyperband = optuna.pruners.HyperbandPruner(min_resource=250, max_resource=2000, reduction_factor=3)
    assert internals.halving_numbers(hyperband) == (250, 3, 0, 2000, 0)
    sha = optuna.pruners.SuccessiveHalvingPruner(min_resource=250, reduction_factor=3, min_early_stopping_rate=1)
    assert internals.halving_numbers(sha) == (250, 3, 1, None, None)
    assert internals.halving_numbers(optuna.pruners.SuccessiveHalvingPruner()) is None  # 'auto'
    assert internals.halving_numbers(optuna.pruners.MedianPruner()) is None
    # Optuna's own count of brackets, which search/running/schedule.py hyperband_rungs repeats
    study = optuna.create_study()
    hyperband._try_initialization(study)
    assert hyperband._n_brackets == 2
    from search.running import schedule

    assert schedule.hyperband_rungs(250, 2000, 3, 2000) == [250, 750]


def test_the_journal_s_operation_codes():
    codes = internals.journal_op_codes()
    assert codes and all(isinstance(code, int) for code in codes)


def test_the_heartbeat_warning_the_runner_silences_is_still_optuna_s(rdb_study):
    """search/running/runner.py asks for trials outside study.optimize on a storage with heartbeats: Optuna warns, with
    this text, which the runner filters out. A new text would reach users' terminals."""
    with pytest.warns(UserWarning, match="Heartbeat of storage is supposed to be used"):
        rdb_study.ask()


def test_the_runner_logs_a_trial_as_optuna_s_loop_does(rdb_study):
    """The runner's line for a complete trial is the one study.optimize logs (Optuna's ``_log_completed_trial``)."""
    from search.running.runner import _log_end

    trial = rdb_study.ask()
    trial.suggest_float("x", 0, 1)
    frozen = rdb_study.tell(trial, 0.25)
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("optuna")
    logger.addHandler(handler)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.INFO)
    try:
        rdb_study._log_completed_trial(frozen.values, frozen.number, frozen.params)
        _log_end(rdb_study, frozen, None, None, 0.25, [])
    finally:
        optuna.logging.set_verbosity(verbosity)
        logger.removeHandler(handler)
    assert len(lines) == 2 and lines[0] == lines[1], lines
    assert frozen.state == TrialState.COMPLETE
