"""``search studies``, ``show``, ``trials``, ``space`` and ``report``'s summary: what a storage holds, its trials,
one trial in full, the search space, as text (or JSON, CSV): each command's one call (``*_text``).

Without ``--storage``, ``search studies`` looks at every ``studies/*.db`` (each study's default
storage is its own file, ``studies/<study>.db``) and lists the studies in each.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.budget import ATTR as FINALIZE_SECONDS, duration_text, estimate_text
from search.errors import NoStudyStorage, UserError
from search.files import STUDIES
from search.final_record import show_lines
from search.queries import best_or_none, pick_trial, state_counts, trial_fields
from search.sqlite import sqlite_path
from search.storage import open_storage, redact_url

STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)


def default_storages(folder: Path = STUDIES) -> list[str]:
    from search.storage import env_url  # $SEARCH_STORAGE, when set, is the storage

    return [env_url()] if env_url() else [f"sqlite:///{p.as_posix()}" for p in sorted(folder.glob("*.db"))]


def study_rows(url: str) -> list[dict]:
    """One row per study in the storage at ``url``: name, trial counts by state, best value and trial."""
    database = sqlite_path(url)
    if database is not None and not database.exists():
        raise UserError(f"--storage {url}: no such file {database}")
    storage = open_storage(url, read_only=True)
    rows = []
    # storage.get_all_studies(), not optuna.get_all_study_summaries: that one reads every trial of every study
    # whole, for counts it does not even split by state (BENCHMARKS.md, "Read-only commands")
    for summary in storage.get_all_studies():
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        by_state, best = state_counts(study), best_or_none(study)  # a count query, and the best trial alone
        row = {"storage": redact_url(url), "study": summary.study_name, "trials": sum(by_state.values()),
               **{s.name.lower(): by_state[s.name.lower()] for s in STATES},
               "best_value": best.value if best else None, "best_trial": best.number if best else None}
        rows.append(row)
    return rows


def _rows_or_none(url: str) -> list[dict]:
    try:
        return study_rows(url)
    except NoStudyStorage:
        return []


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
    return pick_trial(study, number, "--trial", complete=False, none_hint="pass --trial N to see another")


def trial_lines(study: optuna.Study, trial: FrozenTrial) -> list[str]:
    a = trial.user_attrs
    best = getattr(best_or_none(study), "number", None)
    lines = [f"study {study.study_name!r}, trial #{trial.number}" + ("  (best)" if trial.number == best else "")]
    lines.append(f"  state        {trial.state.name.lower()}")
    if trial.value is not None:
        lines.append(f"  value        {trial.value:.4f} (validation accuracy)")
    for key, label in (("ended", "ended"), ("warm_start", "warm start"), ("device", "device"),
                       ("parameters", "parameters"), ("steps_per_second", "steps/s"), ("wall_seconds", "wall seconds"),
                       ("best_step", "best step"), ("last_step", "last step"), ("train_loss", "train loss")):
        if key in a:
            lines.append(f"  {label:12s} {a[key]}")
    finalize = estimate_text(trial)  # search/budget.py: at the default steps, on the device the trial ran on
    if finalize:
        lines.append(f"  finalize     {finalize}")
    if trial.datetime_start:
        lines.append(f"  started      {trial.datetime_start:%Y-%m-%d %H:%M:%S}")
    if trial.duration is not None:
        lines.append(f"  duration     {trial.duration.total_seconds():.1f}s")
    lines.append("parameters (sampled):")
    lines += [f"  {k:16s} {v}" for k, v in trial.params.items()]
    if trial.intermediate_values:
        lines.append("validation curve (step: accuracy):")
        lines.append("  " + "  ".join(f"{s}: {v:.4f}" for s, v in sorted(trial.intermediate_values.items())))
    from search.attrs import resolved_configs  # here: it imports torch (the configs' dataclasses)

    for key, config in zip(("model config", "train config"), resolved_configs(trial)):  # search/attrs.py
        if config:
            lines.append(f"{key} (resolved):")
            lines.append("  " + json.dumps(config, sort_keys=True))
    return lines + show_lines(study, trial.number)  # what was finalized with this trial in it


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
        # the last that ran to an end of its own: an interrupted one is queued again (search/study.py)
        ran = [t for t in sample if t.state.is_finished() and t.user_attrs.get("ended") != "interrupted"]
        t = (ran or sample)[-1]
        parts.append(f"sample-code trial #{t.number}: " + (f"{t.value:.4f}" if t.state == TrialState.COMPLETE
                                                            else t.user_attrs.get("ended", t.state.name.lower())))
    from search.attrs import resolved_configs

    speakers = resolved_configs(best)[0].get("n_classes")
    if speakers:
        parts.append(f"chance 1/{speakers} = {1 / speakers:.3f}")
    return "; ".join(parts)


# ``search trials``: one row per trial, from Optuna's own records (the trial's state, value, datetimes,
# sampled parameters and the user attributes the objective sets); nothing is kept anywhere else.
# The key parameters that fit a terminal table's width (of search/notes.py KEY_PARAMS), in the table's order.
TABLE_PARAMS = ("encoder", "d_model", "layers", "pooling", "loss", "lr")
TRIAL_COLUMNS = ("number", "state", "value", "ended", "parameters", "steps_per_second", "wall_seconds",
                 FINALIZE_SECONDS, *TABLE_PARAMS)


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
    # only what the table shows (queries.trial_fields): the sampled key parameters, else the resolved ones
    attrs = ("ended", "parameters", "steps_per_second", "wall_seconds", FINALIZE_SECONDS, "model_config", "train_config",
             *(f"{group}.{key}" for key in TABLE_PARAMS for group in ("model", "train")))
    trials = trial_fields(study, wanted, TABLE_PARAMS, attrs)
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
        a = t.user_attrs
        resolved = {**(a.get("train_config") or {}), **(a.get("model_config") or {}),  # studies of before the flat
                    **{k.split(".", 1)[1]: v for k, v in a.items() if k.startswith(("model.", "train."))}}
        row = {"number": t.number, "state": t.state.name.lower(),
               "value": t.value if len(study.directions) == 1 else None,
               "ended": a.get("ended"), "parameters": a.get("parameters"),
               "steps_per_second": a.get("steps_per_second"), "wall_seconds": a.get("wall_seconds"),
               FINALIZE_SECONDS: a.get(FINALIZE_SECONDS)}
        for key in TABLE_PARAMS:  # sampled; else the resolved configuration's (a trial run outside the space)
            row[key] = t.params.get(key, resolved.get(key))
        rows.append(row)
    return rows


def trials_lines(rows: list[dict], study_name: str, states: tuple[str, ...] = ()) -> list[str]:
    """``search trials`` as a text table."""
    if not rows:
        return [f"study {study_name!r} has no trial" + (f" in state {', '.join(states)}" if states else "")]

    formats = {"value": ".4f", "lr": ".2e", "parameters": ",", "wall_seconds": ".1f"}  # others: str()

    def cell(key: str, value) -> str:
        if key == FINALIZE_SECONDS and value is not None:
            return duration_text(value)
        return "-" if value is None else format(value, formats.get(key, ""))

    heads = {"number": "#", "parameters": "size", "steps_per_second": "steps/s", "wall_seconds": "wall s",
             FINALIZE_SECONDS: "finalize"}
    columns = [c for c in TRIAL_COLUMNS if c != "ended"] + ["ended"]  # the free text last
    table = [[heads.get(c, c) for c in columns]] + [[cell(c, r[c]) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    right = {"number", "value", "parameters", "steps_per_second", "wall_seconds", FINALIZE_SECONDS, "d_model", "layers",
             "lr"}
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


# --- the read-only commands, each one call from the CLI: the text it prints ------------------------------

def json_text(value) -> str:
    """``value`` as JSON that any parser reads: a value that is not finite (a diverged trial's NaN training
    loss, an infinite intermediate value) is written as ``null``, since JSON has no NaN or Infinity (Python's
    ``json.dumps`` writes the bare words, which JavaScript's ``JSON.parse``, ``jq`` and most parsers refuse).
    Objects JSON has no type for (a datetime) as their text."""
    import math

    def finite(v):
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: finite(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [finite(x) for x in v]
        return v

    return json.dumps(finite(value), indent=2, default=str, allow_nan=False)


def studies_text(storage: str | None, as_json: bool = False, skipped: list[str] | None = None) -> str:
    """``search studies``: the studies of ``storage`` (None: every ``studies/*.db``), a table or JSON.

    Without ``storage``, a file among ``studies/*.db`` that holds no study (not made by `search run`) is none of
    them, and one that cannot be read (damaged, not SQLite) does not hide the others: it is left out and named, one
    line each, in ``skipped`` (the command prints them as warnings). Without ``skipped``, or with an explicit
    ``storage``, an unreadable storage is the command's error."""
    if storage:
        rows = study_rows(storage)
    elif skipped is None:
        rows = [row for url in default_storages() for row in _rows_or_none(url)]
    else:
        rows = []
        for url in default_storages():
            try:
                rows += _rows_or_none(url)
            except Exception as err:  # noqa: BLE001 - any reason a file is unreadable: named, the rest listed
                skipped.append(f"{url.removeprefix('sqlite:///')}: left out, it cannot be read as a study storage ("
                               + _reason(err) + ")")
    return json_text(rows) if as_json else "\n".join(studies_lines(rows))


def _reason(err: Exception) -> str:
    """Why a storage could not be read, short: open_storage's own reason, else the exception's first line."""
    from data.errors import printable

    text = str(getattr(err, "orig", None) or err).strip()
    inner = text.rsplit("cannot open the storage (", 1)  # open_storage's UserError: only its reason
    text = inner[1].removesuffix(")") if isinstance(err, UserError) and len(inner) == 2 else text
    return printable(type(err).__name__ + ": " + text.splitlines()[0][:200] if not isinstance(err, UserError)
                     else text)


def show_text(study_name: str, storage: str | None, number: int | None, as_json: bool = False) -> str:
    """``search show``: trial ``number`` (None: the best complete one) in full, as text or JSON."""
    from search.study import load_study

    study = load_study(study_name, storage, read_only=True)
    trial = pick_any_trial(study, number)
    return json_text(trial_json(trial)) if as_json else "\n".join(trial_lines(study, trial))


def trials_text(study_name: str, storage: str | None, sort: str = "number", states: tuple[str, ...] = (),
                as_json: bool = False, as_csv: bool = False) -> str:
    """``search trials``: one row per trial, as a table, JSON or CSV."""
    from search.study import load_study

    if as_json and as_csv:
        raise UserError("--json and --csv: give one of them")
    states = tuple(dict.fromkeys(s.lower() for s in states))
    study = load_study(study_name, storage, any_direction=True, read_only=True)
    rows = trial_rows(study, sort.lower(), states)
    if as_json:
        return json_text(rows)
    return trials_csv(rows).rstrip("\n") if as_csv else "\n".join(trials_lines(rows, study_name, states))


def space_text(profile: str, as_json: bool = False) -> str:
    """``search space``: every parameter of a profile, its choices or range and when it applies."""
    from search import space as search_space

    space = search_space.build_space(profile)
    entries = search_space.describe(space)
    if as_json:
        return json.dumps({"profile": profile, "parameters": entries,
                           "warm_start": search_space.warm_start_configs(space)}, indent=2)
    head = ("parameter", "type", "choices / range", "applies when")
    rows = [(e["name"], e["type"] + (" (log)" if e.get("log") else ""),
             ", ".join(map(str, e["choices"])) if "choices" in e
             else f"{e['low']:g} .. {e['high']:g}" + (f" step {e['step']}" if e.get("step") else ""),
             e["condition"]) for e in entries]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [head] + rows)


def report_text(study_name: str, storage: str | None, out: Path) -> str:
    """``search report``: write the HTML page (search/report.py); the text is its summary of the best
    trials, the figures it could not draw and where the page is."""
    from search.files import check_out, check_writable
    from search.report import summary_lines, write_report
    from search.storage import default_url
    from search.settings import StudySettings
    from search.study import load_study

    study = load_study(study_name, storage, read_only=True)
    settings = StudySettings.from_attrs(study.user_attrs)
    check_out(out, "--out", storage or default_url(study_name),
              settings.data if settings and settings.data != "embedded" else None)
    check_writable(out, "--out")
    sections = write_report(study, out)
    skipped = [s for s in sections if s.figure is None]
    return "\n".join([*summary_lines(study), *(f"figure skipped: {s.title}: {s.note}" for s in skipped),
                      f"report written to {out} ({len(sections) - len(skipped)} figures)"])
