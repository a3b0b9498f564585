"""``search studies``, ``show``, ``trials``, ``space`` and ``report``'s summary: what a storage holds, its trials,
one trial in full, the search space, as text (or JSON, CSV): each command's one call (``*_text``).

Without ``--storage``, ``search studies`` lists the studies of the folder's shared file,
``studies/studies.sqlite3``, and of the per-study files of earlier versions, ``studies/<study>.db``.
"""

from __future__ import annotations

import json
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.finalizing.budget import ATTR as FINALIZE_SECONDS, estimate_text
from search.reporting.formats import duration_text
from search.errors import NoStudyStorage, UserError
from search.files import STUDIES
from search.finalizing.final_record import show_lines
from search.reporting.queries import best_or_none, pick_trial, state_counts
from search.db.sqlite import sqlite_path
from search.db.storage import env_url, open_storage, redact_url

STATES = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)


def default_storages(folder: Path = STUDIES) -> list[str]:
    """The storages ``search studies`` lists without --storage: ``$SEARCH_STORAGE`` when set, else the folder's
    shared file (where it is there) and the per-study files of earlier versions."""
    from search.db.catalog import old_study_files
    from search.db.storage import SHARED_FILE, env_url

    if env_url():
        return [env_url()]
    shared = folder / Path(SHARED_FILE).name
    shared = [f"sqlite:///{shared.as_posix()}"] if shared.is_file() else []
    return shared + [f"sqlite:///{p.as_posix()}" for p in old_study_files(folder)]


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


def studies_lines(rows: list[dict], old_files: frozenset[str] = frozenset()) -> list[str]:
    """``search studies``'s table; a study in one of ``old_files`` (URLs of per-study files) is marked."""
    if not rows:
        return ["no study found"]
    width = max(len("study"), *(len(r["study"]) for r in rows))
    lines = [f"{'study':{width}s}  trials  complete  pruned  failed  running  best (trial)   storage"]
    for r in rows:
        best = f"{r['best_value']:.4f} (#{r['best_trial']})" if r["best_value"] is not None else "-"
        old = r["storage"] in old_files  # an earlier version's own file: says how to move it
        lines.append(f"{r['study']:{width}s}  {r['trials']:6d}  {r['complete']:8d}  {r['pruned']:6d}  {r['fail']:6d}  "
                     f"{r['running']:7d}  {best:13s}  {r['storage']}" + ("  (old file: search migrate)" if old else ""))
    return lines


def pick_any_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """Trial ``number`` in any state, or the best complete trial."""
    return pick_trial(study, number, "--trial", complete=False, none_hint="pass --trial N to see another")


def trial_lines(study: optuna.Study, trial: FrozenTrial) -> list[str]:
    """``search show``: the trial's results, its configuration and its curve as aligned tables, numbers rounded
    (``--json`` has every stored value as it is)."""
    from search.reporting.formats import ended_text, number, param_count

    a = trial.user_attrs
    best = getattr(best_or_none(study), "number", None)
    lines = [f"study {study.study_name!r}, trial #{trial.number}" + ("  (best)" if trial.number == best else "")]
    results = [("state", trial.state.name.lower())]
    if trial.value is not None:
        results.append(("value", f"{trial.value:.4f} (validation accuracy)"))
    if "ended" in a or trial.state == TrialState.FAIL:
        results.append(("ended", ended_text(trial.state.name, a.get("ended"), trial.value, a)))
    shown = {"parameters": param_count, "wall_seconds": lambda v: f"{v:.1f}", "train_loss": number,
             "steps_per_second": number}
    for key, label in (("warm_start", "warm start"), ("device", "device"), ("parameters", "parameters"),
                       ("steps_per_second", "steps/s"), ("wall_seconds", "wall seconds"), ("best_step", "best step"),
                       ("last_step", "last step"), ("train_loss", "train loss")):
        if key in a:
            results.append((label, shown.get(key, str)(a[key])))
    finalize = estimate_text(trial)  # search/finalizing/budget.py: at the default steps, on the device the trial ran on
    if finalize:
        results.append(("finalize", finalize))
    if trial.datetime_start:
        results.append(("started", f"{trial.datetime_start:%Y-%m-%d %H:%M:%S}"))
    if trial.duration is not None:
        results.append(("duration", f"{trial.duration.total_seconds():.1f}s"))
    lines += [f"  {label:12s} {value}" for label, value in results]
    lines.append("parameters (sampled):")
    lines += _pairs(trial.params.items())
    lines += _curve_lines(trial)
    from search.reporting.attrs import resolved_configs

    for key, config in zip(("model config", "train config"), resolved_configs(trial)):  # search/reporting/attrs.py
        rest = {k: v for k, v in config.items() if k not in trial.params}  # the sampled ones are above
        if rest:
            lines.append(f"{key} (resolved):")
            lines += _pairs(sorted(rest.items()))
    return lines + show_lines(study, trial.number)  # what was finalized with this trial in it


def _pairs(items) -> list[str]:
    """``name value`` lines, the values aligned (a column at least as wide as the space's longest name)."""
    items = list(items)
    width = max([16, *(len(k) for k, _ in items)])
    return [f"  {k:{width}s} {_shown(v)}" for k, v in items]


def _shown(value) -> str:
    from search.reporting.formats import number

    return ", ".join(map(number, value)) if isinstance(value, (list, tuple)) else number(value)


def _curve_lines(trial: FrozenTrial) -> list[str]:
    """The validation curve as a table: step, validation accuracy and the training loss there."""
    from search.reporting.attrs import train_loss_points
    from search.reporting.tables import aligned

    if not trial.intermediate_values:
        return []
    losses = dict(train_loss_points(trial))
    rows = [("step", "valid acc", "train loss")] + [
        (str(step), f"{value:.4f}", _shown(losses[step]) if step in losses else "-")
        for step, value in sorted(trial.intermediate_values.items())]
    return ["validation curve (step: accuracy):", *aligned(rows, right=(True, True, True))]


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
        # the last that ran to an end of its own: an interrupted one is queued again (search/running/study.py)
        ran = [t for t in sample if t.state.is_finished() and t.user_attrs.get("ended") != "interrupted"]
        t = (ran or sample)[-1]
        parts.append(f"sample-code trial #{t.number}: " + (f"{t.value:.4f}" if t.state == TrialState.COMPLETE
                                                            else t.user_attrs.get("ended", t.state.name.lower())))
    from search.reporting.attrs import resolved_configs

    speakers = resolved_configs(best)[0].get("n_classes")
    if speakers:
        parts.append(f"chance 1/{speakers} = {1 / speakers:.3f}")
    return "; ".join(parts)


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
    """``search studies``: the studies of ``storage`` (None: the folder's shared file and the old per-study files,
    ``studies/*.db``), a table or JSON.

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
    old_files = frozenset() if storage or env_url() else frozenset(url for url in default_storages() if url.endswith(".db"))
    return json_text(rows) if as_json else "\n".join(studies_lines(rows, old_files))


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
    from search.running.study import load_study

    from search.running.settings import StudySettings
    from search.running.user_space import describe

    study = load_study(study_name, storage, read_only=True)
    trial = pick_any_trial(study, number)
    settings = StudySettings.from_attrs(study.user_attrs)
    if as_json:
        space = {"profile": settings.profile, "changes": settings.space} if settings else None
        return json_text({**trial_json(trial), "study_space": space})
    lines = trial_lines(study, trial)
    if settings is not None:  # the space the trial was sampled from
        lines.insert(1, f"  space        {settings.profile} profile, {describe(settings.space)}")
    return "\n".join(lines)


def trials_text(study_name: str, storage: str | None, sort: str = "number", states: tuple[str, ...] = (),
                as_json: bool = False, as_csv: bool = False, wide: bool = False) -> str:
    """``search trials``: one row per trial, as a table that fits the terminal (``wide``: every column), JSON or
    CSV (every column: each sampled parameter, each user attribute)."""
    from search.reporting.tables import terminal_width
    from search.reporting.trial_table import trial_rows, trials_csv, trials_lines

    from search.running.study import load_study

    if as_json and as_csv:
        raise UserError("--json and --csv: give one of them")
    states = tuple(dict.fromkeys(s.lower() for s in states))
    study = load_study(study_name, storage, any_direction=True, read_only=True)
    rows = trial_rows(study, sort.lower(), states, every=as_json or as_csv or wide)
    if as_json:
        return json_text(rows)
    if as_csv:
        return trials_csv(rows).rstrip("\n")
    return "\n".join(trials_lines(rows, study_name, states, terminal_width(), wide))


def space_text(profile: str, as_json: bool = False, changes: dict | None = None, study: str | None = None) -> str:
    """``search space``: every parameter of a profile (with a study's ``changes``: that study's space), its choices
    or range and when it applies."""
    from search.running import space as search_space
    from search.running.user_space import describe

    space = search_space.build_space(profile, changes)
    entries = search_space.describe(space)
    if as_json:
        return json.dumps({**({"study": study, "changes": changes} if study else {}), "profile": profile,
                           "parameters": entries, "warm_start": search_space.warm_start_configs(space)}, indent=2)
    title = [f"study {study!r}: profile {profile}, {describe(changes)}"] if study else []
    head = ("parameter", "type", "choices / range", "applies when")
    rows = [(e["name"], e["type"] + (" (log)" if e.get("log") else ""),
             ", ".join(map(str, e["choices"])) if "choices" in e
             else f"{e['low']:g} .. {e['high']:g}" + (f" step {e['step']}" if e.get("step") else ""),
             e["condition"]) for e in entries]
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(4)]
    return "\n".join(title + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                               for row in [head] + rows])


def report_text(study_name: str, storage: str | None, out: Path) -> str:
    """``search report``: write the HTML page (search/reporting/report.py); the text is its summary of the best
    trials, the figures it could not draw and where the page is."""
    from search.files import check_out, check_writable
    from search.reporting.report import write_report
    from search.db.storage import default_url
    from search.running.settings import StudySettings
    from search.running.study import load_study

    study = load_study(study_name, storage, read_only=True)
    settings = StudySettings.from_attrs(study.user_attrs)
    check_out(out, "--out", storage or default_url(study_name),
              settings.data if settings and settings.data != "embedded" else None)
    check_writable(out, "--out")
    sections, summary = write_report(study, out)
    skipped = [s for s in sections if s.figure is None]
    return "\n".join([*summary, *(f"figure skipped: {s.title}: {s.note}" for s in skipped),
                      f"report written to {out} ({len(sections) - len(skipped)} figures)"])


def study_space(study_name: str, storage: str | None) -> tuple[str, dict | None]:
    """(profile, changes) a study was created with (``search space --study``); one line for a study without."""
    from search.running.settings import StudySettings
    from search.running.study import load_study

    settings = StudySettings.from_attrs(load_study(study_name, storage, any_direction=True, read_only=True).user_attrs)
    if settings is None:
        raise UserError(f"--study {study_name}: the study has no search settings (it was not created by `search run`)")
    return settings.profile, settings.space
