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
    lines += _ensemble_lines(study.user_attrs.get("final_ensemble"), trial.number)
    return lines


def _ensemble_lines(ensemble: object, number: int) -> list[str]:
    """What `search finalize top` (or `--all-data`) recorded, when this trial is one of its members."""
    if not isinstance(ensemble, dict) or not any(isinstance(m, dict) and m.get("trial") == number
                                                for m in ensemble.get("members", [])):
        return []

    def acc(value) -> str:
        return f"{value:.4f}" if isinstance(value, (int, float)) else "-"

    members = ensemble["members"]
    has_test = ensemble.get("test_accuracy") is not None
    lines = [f"ensemble {ensemble.get('label')}: {len(members)} member(s), {ensemble.get('steps')} steps each"
             + (", then trained on train + validation (the validation split no longer scores it)"
                if ensemble.get("all_data") else "")
             + f"; valid accuracy {acc(ensemble.get('valid_accuracy'))}"
             + (f", test accuracy {acc(ensemble.get('test_accuracy'))}" if has_test else "") + ":"]
    for i, m in enumerate(members, 1):
        lines.append(f"  member {i}: trial #{m.get('trial')} seed {m.get('seed')}  valid {acc(m.get('valid_accuracy'))}"
                     + (f"  test {acc(m.get('test_accuracy'))}" if has_test else "")
                     + (f"  all-data steps {m.get('all_data_steps')}" if m.get("all_data_steps") else "")
                     + ("  (this trial)" if m.get("trial") == number else ""))
    lines.append(f"  artifacts in {ensemble.get('artifact_dir')}:")
    lines += [f"  {name}  (id {artifact_id})" for name, artifact_id in ensemble.get("artifacts", {}).items()]
    return lines


def trial_json(trial: FrozenTrial) -> dict:
    return {"number": trial.number, "state": trial.state.name.lower(), "value": trial.value, "params": trial.params,
            "user_attrs": trial.user_attrs,
            "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
            "datetime_start": trial.datetime_start.isoformat() if trial.datetime_start else None,
            "datetime_complete": trial.datetime_complete.isoformat() if trial.datetime_complete else None}


def reference_note(study: optuna.Study, best: FrozenTrial) -> str:
    """What the best value means: the sample-code trial's own score in this study (the warm start runs it)
    and the chance level, 1/speakers. E.g. ``sample-code trial #5: 0.3121; chance 1/32 = 0.031``."""
    parts = []
    sample = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("warm_start") == "sample-code"]
    if sample:
        t = sample[0]
        parts.append(f"sample-code trial #{t.number}: " + (f"{t.value:.4f}" if t.state == TrialState.COMPLETE
                                                            else t.user_attrs.get("ended", t.state.name.lower())))
    speakers = (best.user_attrs.get("model_config") or {}).get("n_classes")
    if speakers:
        parts.append(f"chance 1/{speakers} = {1 / speakers:.3f}")
    return "; ".join(parts)


# ``search trials``: one row per trial, from Optuna's own records (the trial's state, value, datetimes,
# sampled parameters and the user attributes the objective sets); nothing is kept anywhere else.
TRIAL_COLUMNS = ("number", "state", "value", "ended", "parameters", "steps_per_second", "wall_seconds",
                 "encoder", "d_model", "layers", "pooling", "loss", "lr")
KEY_PARAMS = ("encoder", "d_model", "layers", "pooling", "loss", "lr")
TRIAL_SORTS = ("number", "value", "duration")
STATE_NAMES = tuple(s.name.lower() for s in STATES)


def _seconds(trial: FrozenTrial) -> float | None:
    """How long the trial took: its ``wall_seconds`` (training), else Optuna's start-to-end time, else
    (running) the time since it started."""
    wall = trial.user_attrs.get("wall_seconds")
    if isinstance(wall, (int, float)):
        return float(wall)
    if trial.duration is not None:
        return trial.duration.total_seconds()
    if trial.datetime_start is not None:
        import datetime

        return (datetime.datetime.now() - trial.datetime_start).total_seconds()
    return None


def trial_rows(study: optuna.Study, sort: str = "number", states: tuple[str, ...] = ()) -> list[dict]:
    """One dict per trial (``TRIAL_COLUMNS``), in the states given (all if none), sorted by ``sort``:
    number (ascending), value (best first; trials without a value last) or duration (longest first)."""
    wanted = tuple(TrialState[s.upper()] for s in states) or None
    trials = study.get_trials(deepcopy=False, states=wanted)
    maximize = len(study.directions) > 1 or study.direction == optuna.study.StudyDirection.MAXIMIZE
    if sort == "value":
        with_value = sorted((t for t in trials if t.value is not None), key=lambda t: (t.value, -t.number),
                            reverse=maximize)
        trials = with_value + [t for t in trials if t.value is None]
    elif sort == "duration":
        timed = sorted((t for t in trials if _seconds(t) is not None), key=lambda t: (-_seconds(t), t.number))
        trials = timed + [t for t in trials if _seconds(t) is None]
    else:
        trials = sorted(trials, key=lambda t: t.number)
    rows = []
    for t in trials:
        a, resolved = t.user_attrs, {**(t.user_attrs.get("train_config") or {}),
                                     **(t.user_attrs.get("model_config") or {})}
        row = {"number": t.number, "state": t.state.name.lower(),
               "value": t.value if len(study.directions) == 1 else None,
               "ended": a.get("ended"), "parameters": a.get("parameters"),
               "steps_per_second": a.get("steps_per_second"), "wall_seconds": a.get("wall_seconds")}
        for key in KEY_PARAMS:  # sampled; else the resolved configuration's (a trial run outside the space)
            row[key] = t.params.get(key, resolved.get(key))
        rows.append(row)
    return rows


def trials_lines(rows: list[dict], study_name: str, states: tuple[str, ...] = ()) -> list[str]:
    """``search trials`` as a text table."""
    if not rows:
        return [f"study {study_name!r} has no trial" + (f" in state {', '.join(states)}" if states else "")]

    def cell(key: str, value) -> str:
        if value is None:
            return "-"
        if key == "value":
            return f"{value:.4f}"
        if key == "lr":
            return f"{value:.2e}"
        if key == "parameters":
            return f"{value:,}"
        if key == "wall_seconds":
            return f"{value:.1f}"
        return str(value)

    heads = {"number": "#", "parameters": "size", "steps_per_second": "steps/s", "wall_seconds": "wall s"}
    columns = [c for c in TRIAL_COLUMNS if c != "ended"] + ["ended"]  # the free text last
    table = [[heads.get(c, c) for c in columns]] + [[cell(c, r[c]) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    right = {"number", "value", "parameters", "steps_per_second", "wall_seconds", "d_model", "layers", "lr"}
    return ["  ".join(v.rjust(w) if c in right else v.ljust(w) for c, v, w in zip(columns, line, widths)).rstrip()
            for line in table]


def trials_csv(rows: list[dict]) -> str:
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(TRIAL_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
