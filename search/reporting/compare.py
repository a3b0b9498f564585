"""``search compare A B ...``: studies side by side in the terminal, one column each: their trials by state,
the best value, the best configuration's key parameters and the time their trials took; and where they share a
storage, the address of optuna-dashboard's own compare view of them."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from search.errors import UserError
from search.reporting.queries import best_or_none, state_counts

KEY_PARAMS = ("encoder", "d_model", "layers", "pooling", "loss", "lr")  # as `search trials` shows them


def compare_text(names: tuple[str, ...], storage: str | None) -> str:
    """The table of ``search compare`` (each study from ``storage``, else its default storage)."""
    from search.db import optuna_internals
    from search.db.storage import default_url
    from search.running.study import load_study

    names = tuple(dict.fromkeys(names))
    if len(names) < 2:
        raise UserError("STUDIES: name at least two studies to compare (`search show --study NAME` shows one)")
    studies = [load_study(name, storage, any_direction=True, read_only=True) for name in names]
    columns = [_column(study) for study in studies]
    labels = list(columns[0])
    table = [["study", *names]] + [[label, *(column[label] for column in columns)] for label in labels]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    urls = {storage or default_url(name) for name in names}
    if len(urls) == 1:
        ids = ",".join(str(optuna_internals.study_id(s)) for s in studies)
        lines.append(f"in optuna-dashboard (`search dashboard --study {names[0]}`): /dashboard/compare-studies?ids={ids}")
    else:
        lines.append("(in different storages: `search migrate` moves old per-study files into one, where the "
                     "dashboard compares them)")
    return "\n".join(lines)


def _column(study: optuna.Study) -> dict[str, str]:
    """One study's cells, by row label."""
    by_state = state_counts(study)
    best = best_or_none(study)
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    seconds = sum(_seconds(t) for t in trials)
    cells = {"trials": str(sum(by_state.values())),
             "complete / pruned": f"{by_state['complete']} / {by_state['pruned']}",
             "failed": str(by_state["fail"]),
             "best value": f"{best.value:.4f} (#{best.number})" if best else "-",
             "trial time": _duration(seconds)}
    resolved = _resolved(best) if best else {}
    for key in KEY_PARAMS:
        value = best.params.get(key, resolved.get(key)) if best else None
        cells[f"best {key}"] = "-" if value is None else (f"{value:.2e}" if key == "lr" else str(value))
    return cells


def _resolved(trial) -> dict:
    """The trial's resolved configuration (``model.*`` and ``train.*`` attributes): the key parameters of a trial
    that did not sample them."""
    return {k.split(".", 1)[1]: v for k, v in trial.user_attrs.items() if k.startswith(("model.", "train."))}


def _seconds(trial) -> float:
    wall = trial.user_attrs.get("wall_seconds")
    if isinstance(wall, (int, float)):
        return float(wall)
    return trial.duration.total_seconds() if trial.duration is not None else 0.0


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"
