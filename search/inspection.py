"""``search studies`` and ``search show``: what a storage holds, and one trial in full, as text.

Without ``--storage``, ``search studies`` looks at every ``studies/*.db`` (each study's default
storage is its own file, ``studies/<study>.db``) and lists the studies in each.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import UserError
from search.storage import open_storage, redact

STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)


def default_storages(folder: Path = Path("studies")) -> list[str]:
    return [f"sqlite:///{p.as_posix()}" for p in sorted(folder.glob("*.db"))]


def study_rows(url: str) -> list[dict]:
    """One row per study in the storage at ``url``: name, trial counts by state, best value and trial."""
    if url.startswith("sqlite:"):
        import sqlalchemy

        database = sqlalchemy.engine.make_url(url).database
        if database and database != ":memory:" and not Path(database).exists():
            raise UserError(f"--storage {url}: no such file {database}")
    storage = open_storage(url, heartbeat_interval=None)
    rows = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        trials = study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        row = {"storage": redact(url), "study": summary.study_name, "trials": len(trials),
               **{s.name.lower(): states.count(s) for s in STATES}, "best_value": None, "best_trial": None}
        if len(study.directions) == 1:
            complete = [t for t in trials if t.state == TrialState.COMPLETE]
            if complete:
                pick = max if study.direction == optuna.study.StudyDirection.MAXIMIZE else min
                best = pick(complete, key=lambda t: t.value)
                row.update(best_value=best.value, best_trial=best.number)
        rows.append(row)
    return rows


def studies_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["no study found"]
    width = max(len("study"), *(len(r["study"]) for r in rows))
    lines = [f"{'study':{width}s}  trials  complete  pruned  failed  running  best (trial)   storage"]
    for r in rows:
        best = f"{r['best_value']:.4f} (#{r['best_trial']})" if r["best_value"] is not None else "-"
        lines.append(f"{r['study']:{width}s}  {r['trials']:6d}  {r['complete']:8d}  {r['pruned']:6d}  {r['fail']:6d}  "
                     f"{r['running']:7d}  {best:13s}  {r['storage']}")
    return lines


def pick_any_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number`` in any state, or the best complete trial."""
    if number is None:
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            raise UserError(f"study {study.study_name!r} has no completed trial yet: pass --trial N to see another")
        return study.best_trial
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    if number not in trials:
        last = max(trials) if trials else None
        span = f"trials #0 to #{last}" if last is not None else "no trial"
        raise UserError(f"--trial {number}: no such trial in study {study.study_name!r} (it has {span})")
    return trials[number]


def trial_lines(study: optuna.Study, trial: FrozenTrial) -> list[str]:
    a = trial.user_attrs
    best = None
    try:
        best = study.best_trial.number
    except ValueError:
        pass
    lines = [f"study {study.study_name!r}, trial #{trial.number}" + ("  (best)" if trial.number == best else "")]
    lines.append(f"  state        {trial.state.name.lower()}")
    if trial.value is not None:
        lines.append(f"  value        {trial.value:.4f} (validation accuracy)")
    for key, label in (("ended", "ended"), ("warm_start", "warm start"), ("device", "device"),
                       ("parameters", "parameters"), ("steps_per_second", "steps/s"), ("wall_seconds", "wall seconds"),
                       ("best_step", "best step"), ("last_step", "last step"), ("train_loss", "train loss")):
        if key in a:
            lines.append(f"  {label:12s} {a[key]}")
    if trial.datetime_start:
        lines.append(f"  started      {trial.datetime_start:%Y-%m-%d %H:%M:%S}")
    if trial.duration is not None:
        lines.append(f"  duration     {trial.duration.total_seconds():.1f}s")
    lines.append("parameters (sampled):")
    lines += [f"  {k:16s} {v}" for k, v in trial.params.items()]
    if trial.intermediate_values:
        lines.append("validation curve (step: accuracy):")
        lines.append("  " + "  ".join(f"{s}: {v:.4f}" for s, v in sorted(trial.intermediate_values.items())))
    for key in ("model_config", "train_config"):
        if key in a:
            lines.append(f"{key.replace('_', ' ')} (resolved):")
            lines.append("  " + json.dumps(a[key], sort_keys=True))
    final = study.user_attrs.get("final")
    if isinstance(final, dict) and final.get("trial") == trial.number:
        lines.append(f"finalized: {final.get('steps')} steps, valid accuracy {final.get('valid_accuracy', 0):.4f}; "
                     f"artifacts in {final.get('artifact_dir')}:")
        lines += [f"  {name}  (id {artifact_id})" for name, artifact_id in final.get("artifacts", {}).items()]
    return lines


def trial_json(trial: FrozenTrial) -> dict:
    return {"number": trial.number, "state": trial.state.name.lower(), "value": trial.value, "params": trial.params,
            "user_attrs": trial.user_attrs,
            "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
            "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None}
