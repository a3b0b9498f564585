"""Questions asked of a study's trials, answered one way everywhere: how many in each state, which is best,
which one the user means ("best" or a number).

"Best" is Optuna's own ``study.best_trial`` (the direction of the study decides), and None where there is
none: no complete trial yet, or a study with several objectives (which has no single best trial).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.db import optuna_internals as internals
from search.errors import UserError


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state, every state named (``{"complete": 3, "pruned": 1, "fail": 0, ...}``)."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {state.name.lower(): states.count(state) for state in TrialState}


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def best_or_none(study: optuna.Study) -> FrozenTrial | None:
    if len(study.directions) != 1:
        return None
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


def best_trials(study: optuna.Study, n: int | None = None) -> list[FrozenTrial]:
    """The ``n`` best complete trials (all of them without ``n``), best first; ties by trial number."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete_trials(study), key=lambda t: (-t.value if maximize else t.value, t.number))
    return ranked if n is None else ranked[:n]


def pick_trial(study: optuna.Study, which: str | int | None, option: str = "TRIAL", complete: bool = True,
               none_hint: str = "run `search run` first") -> FrozenTrial:
    """The trial the user means: ``best`` (or None) is the best complete trial; a number is that trial,
    which must be COMPLETE where ``complete`` (a configuration worth retraining), else in any state.
    ``option`` names what the user typed in the errors (``TRIAL`` for finalize, ``--trial`` for show);
    ``none_hint`` says what to do when there is no complete trial yet."""
    if which is None or which == "best":
        best = best_or_none(study)
        if best is None:
            raise UserError(f"study {study.study_name!r} has no completed trial yet: {none_hint}")
        return best
    if isinstance(which, str):
        if not (which.isascii() and which.isdigit()):  # str.isdigit() also takes '²', which int() refuses
            raise UserError(f"{option} {which!r}: expected 'best', 'top' or a trial number")
        which = int(which)
    trial = trial_by_number(study, which)  # that trial alone: a study may hold thousands
    if complete and trial is not None and trial.state in (TrialState.PRUNED, TrialState.FAIL):
        raise UserError(f"{option} {which}: {not_complete_text(study, trial)}")
    if complete and (trial is None or trial.state != TrialState.COMPLETE):
        raise UserError(f"{option} {which}: no completed trial #{which} in study {study.study_name!r}")
    if trial is None:
        n = sum(state_counts(study).values())  # numbers are 0 .. n-1 in every storage
        span = f"trials #0 to #{n - 1}" if n else "no trial"
        raise UserError(f"{option} {which}: no such trial in study {study.study_name!r} (it has {span})")
    return trial


def not_complete_text(study: optuna.Study, trial: FrozenTrial) -> str:
    """Why a pruned or failed trial is not finalized, and the way forward: its configuration is recorded in full,
    so it can run its whole budget as a new trial (``search enqueue --full-budget``), which is then finalized."""
    ended = trial.user_attrs.get("ended") or trial.state.name.lower()
    values = trial.intermediate_values
    score = f", valid accuracy {values[max(values)]:.4f} there" if values and trial.state == TrialState.PRUNED else ""
    name = study.study_name
    return (f"trial #{trial.number} of study {name!r} did not complete ({ended}{score}); finalize retrains complete "
            f"trials. To train its configuration to the study's full budget first: search enqueue --study {name} "
            f"--from-trial {trial.number} --full-budget && search run --study {name} --trials 1, then finalize "
            "the new trial")


# --- big studies: what a table needs, asked of the database itself ------------------------------------------
# Optuna's get_trials reads every trial whole (every parameter, user attribute and intermediate value) and builds
# a FrozenTrial of each, which on a big study is slow for `search trials` / `studies`, which print a dozen values a
# trial (BENCHMARKS.md, "Read-only commands on a study of 5,004 trials"). On an RDB storage (SQLite, PostgreSQL, MySQL) these ask the tables for
# only those values; other storages (journal, gRPC proxy) go Optuna's way.

def state_counts(study: optuna.Study) -> dict[str, int]:
    """``counts`` with one GROUP BY query on an RDB storage."""
    rdb = internals.rdb_storage(study)
    if rdb is None:
        return counts(study)
    import sqlalchemy

    trials = internals.rdb_models().TrialModel
    with rdb.engine.connect() as connection:
        found = dict(connection.execute(
            sqlalchemy.select(trials.state, sqlalchemy.func.count())
            .where(trials.study_id == internals.study_id(study)).group_by(trials.state)).all())
    return {state.name.lower(): found.get(state, 0) for state in TrialState}


def has_trials(study: optuna.Study) -> bool:
    return sum(state_counts(study).values()) > 0


def trial_by_number(study: optuna.Study, number: int) -> FrozenTrial | None:
    """Trial ``number`` alone (None if the study has none such), not every trial to pick one."""
    storage = internals.storage_of(study)
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(internals.study_id(study), number)
    except KeyError:
        return None
    return storage.get_trial(trial_id)


class TrialFields:
    """What a table shows of one trial, as ``FrozenTrial`` names it (number, state, value, datetimes, duration,
    the ``params`` and ``user_attrs`` asked for): read by ``trial_fields`` without building the whole trial."""

    __slots__ = ("number", "state", "value", "datetime_start", "datetime_complete", "params", "user_attrs")

    def __init__(self, number, state, value, datetime_start, datetime_complete) -> None:
        self.number, self.state, self.value = number, state, value
        self.datetime_start, self.datetime_complete = datetime_start, datetime_complete
        self.params: dict = {}
        self.user_attrs: dict = {}

    @property
    def duration(self):
        if self.datetime_start and self.datetime_complete:
            return self.datetime_complete - self.datetime_start
        return None


def trial_fields(study: optuna.Study, states: tuple[TrialState, ...] | None, params: tuple[str, ...] | None,
                 user_attrs: tuple[str, ...] | None) -> list:
    """Each trial (in ``states``; all for None) with only the ``params`` and ``user_attrs`` named (None: all of
    them): three queries on an RDB storage (trials with their value, those parameters, those attributes),
    FrozenTrials otherwise."""
    rdb = internals.rdb_storage(study)
    if rdb is None:
        return study.get_trials(deepcopy=False, states=states)
    rows: dict[int, TrialFields] = {}
    with rdb.engine.connect() as connection:
        reader = _Rows(connection, study)
        for trial_id, number, state, value, start, complete in reader.trials(states):
            rows[trial_id] = TrialFields(number, state, value, start, complete)
        if params is None or params:
            for trial_id, name, _, shown in reader.params(params):
                if trial_id in rows:
                    rows[trial_id].params[name] = shown
        if user_attrs is None or user_attrs:
            for trial_id, key, shown in reader.user_attrs(user_attrs):
                if trial_id in rows:
                    rows[trial_id].user_attrs[key] = shown
    return list(rows.values())


class _Rows:
    """A study's rows of Optuna's trial tables, as plain query results (no ORM object per row), each value as a
    FrozenTrial holds it; the datetimes naive UTC in the table, naive local time here (``_local``), as Optuna's."""

    def __init__(self, connection, study: optuna.Study) -> None:
        import sqlalchemy

        self.connection, self.models, self.study_id = connection, internals.rdb_models(), internals.study_id(study)
        trial = self.models.TrialModel
        self.mine = sqlalchemy.select(trial.trial_id).where(trial.study_id == self.study_id).scalar_subquery()

    def trials(self, states: tuple[TrialState, ...] | None = None):
        """(trial_id, number, state, value, start, complete) of each trial (in ``states``; all for None)."""
        import sqlalchemy

        trial, value = self.models.TrialModel, self.models.TrialValueModel
        started, completed = internals.trial_datetime_columns(self.models)
        query = (sqlalchemy.select(trial.trial_id, trial.number, trial.state, started, completed, value.value,
                                   value.value_type)
                 .outerjoin(value, sqlalchemy.and_(value.trial_id == trial.trial_id, value.objective == 0))
                 .where(trial.study_id == self.study_id))
        if states is not None:
            query = query.where(trial.state.in_(list(states)))
        for trial_id, number, state, start, complete, stored, kind in self.connection.execute(query):
            shown = None if stored is None and kind is None else value.stored_repr_to_value(stored, kind)
            yield trial_id, number, state, shown, _local(start), _local(complete)

    def params(self, names: tuple[str, ...] | None = None):
        """(trial_id, name, distribution, value) of each sampled parameter (those ``names``; all for None)."""
        import sqlalchemy
        from optuna.distributions import json_to_distribution

        param = self.models.TrialParamModel
        query = (sqlalchemy.select(param.trial_id, param.param_name, param.param_value, param.distribution_json)
                 .where(param.trial_id.in_(self.mine)))
        distributions: dict[str, object] = {}  # a few distinct JSON texts: parsed once each
        for trial_id, name, internal, text in self.connection.execute(
                query if names is None else query.where(param.param_name.in_(names))):
            if text not in distributions:
                distributions[text] = json_to_distribution(text)
            yield trial_id, name, distributions[text], distributions[text].to_external_repr(internal)

    def user_attrs(self, keys: tuple[str, ...] | None = None):
        """(trial_id, key, value) of each user attribute (those ``keys``; all for None)."""
        import json

        import sqlalchemy

        attr = self.models.TrialUserAttributeModel
        query = sqlalchemy.select(attr.trial_id, attr.key, attr.value_json).where(attr.trial_id.in_(self.mine))
        for trial_id, key, text in self.connection.execute(query if keys is None else query.where(attr.key.in_(keys))):
            yield trial_id, key, json.loads(text)

    def intermediate_values(self):
        """(trial_id, step, value) of each reported intermediate value."""
        import sqlalchemy

        step = self.models.TrialIntermediateValueModel
        query = (sqlalchemy.select(step.trial_id, step.step, step.intermediate_value, step.intermediate_value_type)
                 .where(step.trial_id.in_(self.mine)))
        for trial_id, at, stored, kind in self.connection.execute(query):
            yield trial_id, at, step.stored_repr_to_intermediate_value(stored, kind)


def _local(utc):
    """A naive UTC datetime of the trials table as optuna's TrialModel gives it: naive local time."""
    import datetime

    return None if utc is None else utc.replace(tzinfo=datetime.timezone.utc).astimezone().replace(tzinfo=None)


def whole_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every trial, whole but for its system attributes (nothing that shows trials reads them), in number order:
    on an RDB storage read with four plain queries, since Optuna's get_trials builds an ORM object for every row
    of every trial table at once, which is most of `search report`'s memory on a big study; others go Optuna's
    way."""
    rdb = internals.rdb_storage(study)
    if rdb is None:
        return study.get_trials(deepcopy=False)
    fields: dict[int, dict] = {}
    with rdb.engine.connect() as connection:
        reader = _Rows(connection, study)
        for trial_id, number, state, value, start, complete in reader.trials():
            fields[trial_id] = dict(number=number, state=state, value=value, datetime_start=start,
                                    datetime_complete=complete, params={}, distributions={}, user_attrs={},
                                    system_attrs={}, intermediate_values={}, trial_id=trial_id)
        for trial_id, name, distribution, shown in reader.params():
            if trial_id in fields:
                fields[trial_id]["distributions"][name] = distribution
                fields[trial_id]["params"][name] = shown
        for trial_id, key, shown in reader.user_attrs():
            if trial_id in fields:
                fields[trial_id]["user_attrs"][key] = shown
        for trial_id, at, shown in reader.intermediate_values():
            if trial_id in fields:
                fields[trial_id]["intermediate_values"][at] = shown
    return [FrozenTrial(**f) for f in sorted(fields.values(), key=lambda f: f["number"])]
