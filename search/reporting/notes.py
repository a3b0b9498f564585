"""Notes in optuna-dashboard: a Markdown page per finished trial and one for the study.

optuna-dashboard shows a trial's note at the top of its page, above the boxes of values, parameters
and user attributes (boxes six lines high that neither wrap nor widen). The trial note is what a user
wants from that page, readable: the outcome and why the trial ended, model size, speed, device, the
validation and training-loss curves at their key points, and the resolved configuration as a table
(sampled values in bold). The study note: its settings, the trial counts, the best trial so far and
the finalized result (``search finalize``), when there is one.

``notes_callback`` (an Optuna callback: ``study.optimize(..., callbacks=[notes_callback])``; a search run
gets it through ``with_notes``, search/running/study.py) writes both after every trial. ``write_study_note``
rewrites the study's note alone: for whatever changes what it shows outside a run (``search finalize``
recording its result). A trial's note is generated, written once when the trial ends. The study's note is the
user's too: what we generate sits between two marker lines (``BEGIN``, ``END``: Markdown link definitions, which the
dashboard does not show), and a rewrite replaces only that block; text a user wrote in the dashboard above or
below it is kept (a note of before the markers, ``### Study NAME`` with its ``note written`` time, is ours and
replaced whole).

Storage. optuna-dashboard keeps notes in the *study's* system attributes (a version, and the body in chunks),
which is why a finished trial, whose own attributes can no longer change, can still get one. Its public
``save_note`` reads every note of the study to write one, so each write costs more as the study grows
(BENCHMARKS.md, "Figures behind code constants"); search/db/optuna_internals.py writes the same keys without reading
any (the study's note is read first, its own rows only, to keep the user's text). A trial's note is always written
as ``CHUNKS`` chunks, blank ones included, so a shorter note blanks the rest of a longer one; the study's note as
many as it needs and at least as many as it had; generated text is cut to fit ``CHUNKS`` chunks. A note rewritten
here under an open editor is reported to that user as changed, as it should be.
tests/test_report.py reads them back with optuna-dashboard's own ``get_note``, tests/test_dashboard.py through its
web API and in a browser, tests/test_optuna_internals_dashboard.py checks the layout itself.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.finalizing import budget
from search.reporting.formats import duration_text

from search.db import optuna_internals
from search.reporting.attrs import resolved_configs, train_loss_points
from search.finalizing.final_record import finalized_rows
from search.reporting.queries import best_or_none, counts

CHUNKS = 2  # note chunks written each time: room for a long trial note, little to rewrite
CURVE_POINTS = 8  # at most this many steps of a curve in a note: the first, the best, the last and some between
# the parameters that tell one trial from another at a glance: the note's best trial, the report's tables
KEY_PARAMS = ("encoder", "pooling", "loss", "d_model", "layers", "nhead", "head", "lr", "batch_size", "segment")
STUDY_SETTINGS = ("budget", "eval_every", "data", "seed", "profile", "pruning")  # first, in this order
# The study note's generated block lies between these lines: Markdown link definitions that render as nothing,
# so that a user's own text around them survives each rewrite (``merge_study_note``).
BEGIN = "[//]: # (search: generated part, rewritten after every trial; text outside it is kept)"
END = "[//]: # (search: end of the generated part)"


# --- what a note says ---------------------------------------------------------------------------------

def _cell(value) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(map(str, value))
    else:
        text = str(value)
    return text


def _table(head: list[str], rows: list[list]) -> list[str]:
    """A Markdown (GFM) table; cells are ``_cell``-formatted, text as given."""
    def text(cell) -> str:
        return (cell if isinstance(cell, str) else _cell(cell)).replace("|", "\\|").replace("\n", " ")

    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(text(c) for c in row) + " |" for row in rows]


def key_steps(steps: list[int], best: int | None, n: int = CURVE_POINTS) -> list[int]:
    """Up to ``n`` of ``steps`` (sorted): the first, the last, ``best`` and evenly spaced ones between."""
    if len(steps) <= n:
        return list(steps)
    picked = {steps[0], steps[-1], *([best] if best in steps else [])}
    for i in range(1, n):
        if len(picked) >= n:
            break
        picked.add(steps[round(i * (len(steps) - 1) / (n - 1))])
    return sorted(picked)


def outcome(trial: FrozenTrial) -> str:
    """Why the trial ended, in a few words: the objective's ``ended`` attribute, else its state."""
    ended = trial.user_attrs.get("ended")
    if ended:
        return str(ended)
    if trial.state == TrialState.FAIL:
        return "failed (no reason recorded: its worker stopped, e.g. killed; Optuna failed it by heartbeat)"
    return trial.state.name.lower()


def size(parameters: float) -> str:
    """``77.8k``, ``1.23M``: a parameter count at a glance, as every command writes it (search/reporting/formats.py)."""
    from search.reporting.formats import param_count

    return param_count(parameters)


def describe_size_and_speed(attrs: dict) -> list[str]:
    parts = []
    if isinstance(attrs.get("parameters"), (int, float)):
        parts.append(f"**model** {size(attrs['parameters'])} parameters")
    if attrs.get("steps_per_second") is not None:
        parts.append(f"**speed** {attrs['steps_per_second']} steps/s")
    if attrs.get("wall_seconds") is not None:
        parts.append(f"**wall time** {attrs['wall_seconds']} s")
    if attrs.get("device"):
        parts.append(f"**device** {attrs['device']}")
    if isinstance(attrs.get(budget.ATTR), (int, float)):  # a finalize at the default steps, on that device
        parts.append(f"**finalize** ~{duration_text(attrs[budget.ATTR])} at "
                     f"{budget.default_steps_for(attrs.get('device', 'cpu')):,} steps")
    return parts


def trial_note(study: optuna.Study, trial: FrozenTrial) -> str:
    # Written once, when the trial ends: nothing here that later trials change (which is the best: the
    # dashboard marks it, and the study's note says it)
    title = f"### Trial {trial.number}: {trial.state.name.lower()}"
    if trial.value is not None:  # a pruned trial's value is its last reported one (Optuna's rule)
        title += f", {'last ' if trial.state == TrialState.PRUNED else ''}validation accuracy {trial.value:.4f}"
    a = trial.user_attrs
    lines = [title, "", f"**ended** {outcome(trial)}"]
    facts = describe_size_and_speed(a)
    if a.get("worker"):
        facts.append(f"**worker** {a['worker']}")
    if a.get("warm_start"):
        facts.append(f"**warm start** {a['warm_start']}")
    if facts:
        lines += ["", " · ".join(facts)]

    values = trial.intermediate_values
    if values:
        losses = dict(train_loss_points(trial))
        steps = sorted(values)
        best_step = max(steps, key=lambda s: (values[s], -s))
        lines += ["", f"**curve**: {len(steps)} validations, best {values[best_step]:.4f} at step {best_step}", ""]
        lines += _table(["step", "validation accuracy", "training loss"],
                        [[s, f"{values[s]:.4f}" + (" (best)" if s == best_step else ""),
                          f"{losses[s]:.4g}" if s in losses else "-"] for s in key_steps(steps, best_step)])

    model, train = resolved_configs(trial)
    if model or train:
        lines += ["", "**configuration** (bold: sampled by Optuna; the rest follows from the data, the budget "
                      "and the defaults)", ""]
        sampled = trial.params

        def entries(config: dict) -> list[tuple[str, str]]:
            return [(k, f"**{_cell(v)}**" if k in sampled else _cell(v)) for k, v in config.items()]

        # three pairs of columns, model in the first two, training in the third: a third of the height
        model_entries, train_entries = entries(model), entries(train)
        half = max(len(train_entries), -(-len(model_entries) // 2))
        columns = [model_entries[:half], model_entries[half:], train_entries]
        rows = [[cell for column in columns for cell in (column[i] if i < len(column) else ("", ""))]
                for i in range(max(map(len, columns)))]
        lines += _table(["model", "", "model", "", "training", ""], rows)
    elif trial.params:  # failed before its configuration was resolved: what was sampled
        lines += ["", "**parameters** (sampled)", ""]
        lines += _table(["parameter", "value"], [[k, _cell(v)] for k, v in trial.params.items()])
    return "\n".join(lines) + "\n"


def settings_rows(study: optuna.Study) -> list[tuple[str, object]]:
    """The study's settings (its scalar user attributes, the ones every trial shares first), for tables."""
    attrs = study.user_attrs
    keys = [k for k in STUDY_SETTINGS if k in attrs] + sorted(k for k in attrs if k not in STUDY_SETTINGS)
    return [(k, attrs[k]) for k in keys if not isinstance(attrs[k], (dict, list))]


def study_note(study: optuna.Study) -> str:
    by_state = counts(study)
    total = sum(by_state.values())
    states = ", ".join(f"{n} {state}" for state, n in by_state.items() if n)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"### Study {study.study_name}", "", f"{total} trials" + (f": {states}" if states else "")
             + f" (note written {now})"]
    settings = settings_rows(study)
    if settings:
        lines += ["", "**settings**", ""] + _table(["setting", "value"], [[k, _cell(v)] for k, v in settings])
    if study.user_attrs.get("space"):  # the user's changes to the profile (search/running/user_space.py)
        from search.running.user_space import describe

        lines += ["", f"**space**: {study.user_attrs.get('profile')} profile, {describe(study.user_attrs['space'])}"]
    best = best_or_none(study)
    lines += [""]
    if best is None:
        lines.append("**best so far**: no complete trial yet")
    else:
        facts = [f"**best so far**: trial {best.number}, validation accuracy {best.value:.4f}",
                 *describe_size_and_speed(best.user_attrs)]
        lines.append(" · ".join(facts))
        shown = [f"{k}={_cell(best.params[k])}" for k in KEY_PARAMS if k in best.params]
        if shown:
            lines += ["", " · ".join(shown)]
    final = finalized_rows(study)
    if final:
        lines += ["", "**finalized result**", ""] + _table(["", ""], [[k, v] for k, v in final])
    else:
        lines += ["", "not finalized yet: `search finalize best` retrains the best trial on the full budget"]
    return "\n".join(lines) + "\n"


# --- writing them ---------------------------------------------------------------------------------------

def _cut_to_fit(body: str, length: int) -> str:
    limit = CHUNKS * length
    if len(body) > limit:
        tail = "\n\n*(note cut to fit)*\n"
        body = body[:limit - len(tail)] + tail
    return body


def _save(study: optuna.Study, trial_id: int | None, body: str) -> None:
    """Write a trial's note as optuna-dashboard stores it (see the module docstring), reading nothing; cut to fit."""
    length = optuna_internals.note_chunk_length()
    if length is None:  # pragma: no cover - a later optuna-dashboard: its public save_note, reading everything
        optuna_internals.save_note_public(study, trial_id, body)
        return
    body = _cut_to_fit(body, length)
    optuna_internals.write_note_chunks(study, trial_id, [body[i * length:(i + 1) * length] for i in range(CHUNKS)])


def _is_old_generated(note: str, study_name: str) -> bool:
    """Whether an unmarked study note is one we wrote before the markers: a user's note is kept."""
    head = note.lstrip().split("\n", 3)
    return head[0].strip() == f"### Study {study_name}" and any("(note written " in line for line in head[1:3])


def merge_study_note(current: str, generated: str, study_name: str) -> str:
    """The study note with ``generated`` as its marked block: in place of the block ``current`` holds, else below
    the user's text (none, or our unmarked note of before: the block alone)."""
    block = f"{BEGIN}\n\n{generated.rstrip()}\n\n*written by `search` after every trial: your own text above or " \
            f"below this part is kept*\n\n{END}\n"
    start = current.find(BEGIN)
    end = current.find(END, start + 1) if start >= 0 else -1
    if start >= 0 and end >= 0:
        before, after = current[:start], current[end + len(END):]
    elif _is_old_generated(current, study_name):
        before, after = "", ""
    else:
        before, after = current, ""
    before = before.rstrip() + "\n\n" if before.strip() else ""  # a blank line: the marker starts a block
    after = "\n" + after.strip("\n") + "\n" if after.strip() else ""
    return before + block + after


def write_trial_note(study: optuna.Study, trial: FrozenTrial) -> None:
    """The trial's note in optuna-dashboard (any state; a finished trial can have one)."""
    _save(study, optuna_internals.trial_id(trial), trial_note(study, trial))


def write_study_note(study: optuna.Study) -> None:
    """The study's note in optuna-dashboard: settings, counts, best so far, finalized result, in its marked block;
    the rest of the note (a user's text) as it is."""
    length = optuna_internals.note_chunk_length()
    if length is None:  # pragma: no cover - a later optuna-dashboard: its public calls, reading everything
        from optuna_dashboard import get_note

        optuna_internals.save_note_public(study, None, merge_study_note(get_note(study), study_note(study),
                                                                        study.study_name))
        return
    current, stored = optuna_internals.read_note(study, None)
    body = merge_study_note(current, _cut_to_fit(study_note(study), length), study.study_name)
    # as many chunks as the note needs, and at least as many as it had: a shorter note blanks the rest
    count = max(CHUNKS, stored, -(-len(body) // length))
    optuna_internals.write_note_chunks(study, None, [body[i * length:(i + 1) * length] for i in range(count)])


def notes_callback(study: optuna.Study, trial: FrozenTrial) -> None:
    """An Optuna callback: after each trial, its note and the study's. A note that cannot be written
    (the storage refusing it) is logged and the run goes on: notes are a view, the trial is recorded."""
    try:
        write_trial_note(study, trial)
        write_study_note(study)
    except Exception as err:  # noqa: BLE001
        logging.getLogger("search").warning("dashboard note of trial #%d not written: %s: %s",
                                            trial.number, type(err).__name__, err)


def with_notes(callback: Callable[[optuna.Study, FrozenTrial], None] | None = None
               ) -> Callable[[optuna.Study, FrozenTrial], None]:
    """The callback of a search run: ``callback`` (the progress line; may be None), then the notes."""
    # optuna-dashboard's note layout is imported here, before the first trial, not by the first note: its import
    # costs about as long as a short GPU trial, and between two trials it would delay every worker's second one.
    optuna_internals.note_chunk_length()
    def after_trial(study: optuna.Study, trial: FrozenTrial) -> None:
        if callback is not None:
            callback(study, trial)
        notes_callback(study, trial)

    return after_trial
