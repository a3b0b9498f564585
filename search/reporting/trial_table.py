"""``search trials``: one row per trial, from Optuna's own records, as a text table that fits the terminal (or
``--wide``), JSON or CSV (every sampled parameter, every user attribute); search/reporting/inspection.py ``trials_text``
prints it.
"""

from __future__ import annotations

import json

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.finalizing.budget import ATTR as FINALIZE_SECONDS
from search.reporting.queries import trial_fields

# ``search trials``: one row per trial, from Optuna's own records (the trial's state, value, datetimes,
# sampled parameters and the user attributes the objective sets); nothing is kept anywhere else.
# The key parameters of the text table (of search/reporting/notes.py KEY_PARAMS), in the table's order.
TABLE_PARAMS = ("encoder", "d_model", "layers", "pooling", "loss", "lr")
TRIAL_COLUMNS = ("number", "state", "value", "ended", "parameters", "steps_per_second", "wall_seconds",
                 FINALIZE_SECONDS, *TABLE_PARAMS)
# the text table's columns, from the one kept longest to the first left out when the terminal is narrow
KEEP_ORDER = ("number", "state", "value", "ended", "encoder", "parameters", FINALIZE_SECONDS, "d_model", "lr", "layers",
              "pooling", "loss", "steps_per_second", "wall_seconds")
HEADS = {"number": "#", "parameters": "size", "steps_per_second": "steps/s", "wall_seconds": "wall s",
         FINALIZE_SECONDS: "finalize"}


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


def _sorted_trials(study: optuna.Study, trials: list, sort: str) -> list:
    maximize = len(study.directions) > 1 or study.direction == optuna.study.StudyDirection.MAXIMIZE
    if sort == "value":
        with_value = sorted((t for t in trials if t.value is not None), key=lambda t: (t.value, -t.number),
                            reverse=maximize)
        return with_value + [t for t in trials if t.value is None]
    if sort == "duration":
        timed = sorted((t for t in trials if _seconds(t) is not None), key=lambda t: (-_seconds(t), t.number))
        return timed + [t for t in trials if _seconds(t) is None]
    return sorted(trials, key=lambda t: t.number)


def _param_order(trials: list) -> list[str]:
    """Every parameter any trial sampled: the space's order (full profile), then any other by name."""
    from search.running.space import build_space

    names = {name for t in trials for name in t.params}
    order = [p.name for p in build_space("full") if p.name in names]
    return order + sorted(names - set(order))


def trial_rows(study: optuna.Study, sort: str = "number", states: tuple[str, ...] = (),
               every: bool = False) -> list[dict]:
    """One dict per trial (``TRIAL_COLUMNS``), in the states given (all if none), sorted by ``sort``:
    number (ascending), value (best first; trials without a value last) or duration (longest first). With
    ``every``, also every sampled parameter and every user attribute recorded (``model.*``, ``train.*``,
    ``train_loss``, ``prune_threshold``, ...), under their stored names."""
    wanted = tuple(TrialState[s.upper()] for s in states) or None
    # the table alone reads only what it shows (queries.trial_fields): the sampled key parameters, else resolved
    attrs = ("ended", "parameters", "steps_per_second", "wall_seconds", FINALIZE_SECONDS, "model_config", "train_config",
             "last_step",
             "prune_threshold", *(f"{group}.{key}" for key in TABLE_PARAMS for group in ("model", "train")))
    trials = trial_fields(study, wanted, None if every else TABLE_PARAMS, None if every else attrs)
    trials = _sorted_trials(study, trials, sort)
    params = _param_order(trials) if every else []
    flat = [_flat_attrs(t.user_attrs) for t in trials]
    attr_keys = sorted({k for a in flat for k in a}) if every else []  # every row the same keys: one CSV header
    rows = []
    for t, a in zip(trials, flat):
        resolved = {k.split(".", 1)[1]: v for k, v in a.items() if k.startswith(("model.", "train."))}
        row = {"number": t.number, "state": t.state.name.lower(),
               "value": t.value if len(study.directions) == 1 else None,
               "ended": a.get("ended"), "parameters": a.get("parameters"),
               "steps_per_second": a.get("steps_per_second"), "wall_seconds": a.get("wall_seconds"),
               FINALIZE_SECONDS: a.get(FINALIZE_SECONDS)}
        for key in TABLE_PARAMS:  # sampled; else the resolved configuration's (a trial run outside the space)
            row[key] = t.params.get(key, resolved.get(key))
        if every:
            row.update({name: t.params.get(name) for name in params if name not in row})
            row.update({key: a.get(key) for key in attr_keys if key not in row})
        else:
            row["_attrs"] = {k: a[k] for k in ("last_step", "prune_threshold") if k in a}
        rows.append(row)
    return rows


def _flat_attrs(attrs: dict) -> dict:
    """A trial's user attributes, those of a study of before the flat attributes (``model_config`` and
    ``train_config``, one dict each) flattened to ``model.*`` / ``train.*`` as a study of now stores them."""
    flat = dict(attrs)
    for group in ("model", "train"):
        if isinstance(flat.get(f"{group}_config"), dict):
            flat.update({f"{group}.{k}": v for k, v in flat.pop(f"{group}_config").items() if f"{group}.{k}" not in flat})
    return flat


def _cell(key: str, row: dict) -> str:
    from search.reporting.formats import ended_text, number, param_count

    value = row.get(key)
    if key == "ended":
        attrs = row.get("_attrs", row)
        # the value column holds the pruned trial's accuracy: not said twice
        return ended_text(row["state"], value, None, attrs) if value or row["state"] == "fail" else "-"
    if value is None:
        return "-"
    if key == "value":
        return f"{value:.4f}"
    if key == "parameters":
        return param_count(value)
    if key == "wall_seconds":
        return f"{value:.1f}"
    if key == FINALIZE_SECONDS:
        from search.reporting.formats import duration_text

        return duration_text(value)
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return number(value)


def trials_lines(rows: list[dict], study_name: str, states: tuple[str, ...] = (), width: int | None = None,
                 wide: bool = False) -> list[str]:
    """``search trials`` as a text table that fits ``width`` columns (columns left out by ``KEEP_ORDER``, the
    reason a trial ended cut short; a last line names what was left out); ``wide``: every column, as wide as
    it takes (lists, such as the training-loss curve, are left to ``--json``)."""
    from search.reporting.tables import fit_table

    if not rows:
        return [f"study {study_name!r} has no trial" + (f" in state {', '.join(states)}" if states else "")]
    columns = [c for c in TRIAL_COLUMNS if c != "ended"]
    if wide:
        columns += [k for k in rows[0] if k not in TRIAL_COLUMNS and not k.startswith("_")
                    and not any(isinstance(r.get(k), (list, dict)) for r in rows)]
    columns.append("ended")  # the free text last
    numeric = {c for c in columns if all(isinstance(r.get(c), (int, float, type(None))) and not isinstance(
        r.get(c), bool) for r in rows)}
    keep = [columns.index(c) for c in KEEP_ORDER] + [i for i, c in enumerate(columns) if c not in KEEP_ORDER]
    lines, dropped = fit_table([HEADS.get(c, c) for c in columns], [[_cell(c, r) for c in columns] for r in rows],
                               [c in numeric for c in columns], keep, None if wide else width, columns.index("ended"))
    if dropped:
        lines.append(f"(left out to fit {width} columns: {', '.join(dropped)}; --wide shows every column)")
    return lines


def trials_csv(rows: list[dict]) -> str:
    import csv
    import io

    names = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=names or list(TRIAL_COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()} for row in rows)
    return out.getvalue()
