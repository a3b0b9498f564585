"""``search report``: one self-contained HTML page of plotly figures, and a plain-text summary.

The page holds plotly.js once (inlined: it opens offline, from a mail attachment or a shared drive)
and these figures: optimisation history, intermediate values (the validation curves, pruned ones
included), parameter importances (from 2 complete trials on), parallel coordinates, slices, a
comparison of encoders / poolings / losses (accuracy of the complete trials, by choice), and a
timeline of the trials' states. A figure that cannot be drawn for this study is replaced by a note
saying why. The best trials are listed as a table on the page and as text in the terminal.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import UserError

TOP = 5  # best trials in the summaries
KEY_PARAMS = ("encoder", "pooling", "loss", "d_model", "layers", "nhead", "head", "lr", "batch_size", "segment")
SLICED = ("lr", "weight_decay", "dropout", "d_model", "layers", "segment")  # categorical ones: the comparison
COMPARED = ("encoder", "pooling", "loss")  # the architecture choices compared side by side
MIN_TRIALS_FOR_IMPORTANCE = 2


@dataclass
class Section:
    title: str
    figure: object | None = None  # a plotly Figure, or None with a note
    note: str = ""


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def best_trials(study: optuna.Study, n: int = TOP) -> list[FrozenTrial]:
    reverse = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return sorted(complete_trials(study), key=lambda t: t.value, reverse=reverse)[:n]


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def describe_params(params: dict, keys=KEY_PARAMS) -> str:
    return " ".join(f"{k}={_fmt(params[k])}" for k in keys if k in params)


def counts_line(study: optuna.Study) -> str:
    states = [t.state for t in study.get_trials(deepcopy=False)]
    parts = [f"{states.count(s)} {s.name.lower()}" for s in TrialState if states.count(s)]
    return f"{len(states)} trials: " + (", ".join(parts) if parts else "none")


def summary_lines(study: optuna.Study, n: int = TOP) -> list[str]:
    """The terminal summary: the trial counts and the ``n`` best complete trials, one line each."""
    lines = [f"study {study.study_name!r}: {counts_line(study)}"]
    best = best_trials(study, n)
    if not best:
        return lines + ["no complete trial yet"]
    lines.append(f"best {len(best)} trials:")
    for t in best:
        attrs = t.user_attrs
        extra = []
        if "parameters" in attrs:
            extra.append(f"{attrs['parameters'] / 1e6:.2f}M params")
        if "steps_per_second" in attrs:
            extra.append(f"{attrs['steps_per_second']} steps/s")
        lines.append(f"  #{t.number:<4d} acc {t.value:.4f}  {describe_params(t.params)}"
                     + (f"  ({', '.join(extra)})" if extra else ""))
    return lines


def _params_in_all(trials: list[FrozenTrial], wanted=None) -> list[str]:
    """Parameters every given trial has (conditional ones, such as conformer_kernel, drop out)."""
    if not trials:
        return []
    common = set.intersection(*(set(t.params) for t in trials))
    order = list(wanted) if wanted else list(trials[0].params)
    return [p for p in order if p in common]


def _comparison_figure(trials: list[FrozenTrial]):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(COMPARED), shared_yaxes=True, subplot_titles=[c for c in COMPARED])
    for col, name in enumerate(COMPARED, start=1):
        groups: dict[str, list[FrozenTrial]] = {}
        for t in trials:
            if name in t.params:
                groups.setdefault(str(t.params[name]), []).append(t)
        for choice in sorted(groups):
            group = groups[choice]
            fig.add_trace(go.Box(
                x=[choice] * len(group), y=[t.value for t in group], name=f"{name}={choice}",
                boxpoints="all", jitter=0.4, pointpos=0, showlegend=False,
                text=[f"trial #{t.number}" for t in group], hovertemplate="%{text}<br>accuracy %{y:.4f}<extra></extra>",
            ), row=1, col=col)
    fig.update_yaxes(title_text="validation accuracy", row=1, col=1)
    fig.update_layout(title="Accuracy by encoder, pooling and loss (complete trials)", height=450)
    return fig


def build_sections(study: optuna.Study) -> list[Section]:
    import optuna.visualization as vis

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    complete = complete_trials(study)
    with_curves = [t for t in finished if t.intermediate_values]
    sections: list[Section] = []

    def add(title: str, make, needs: str | None = None) -> None:
        if needs:
            sections.append(Section(title, note=needs))
            return
        try:
            sections.append(Section(title, figure=make()))
        except Exception as err:  # a figure Optuna cannot draw for this study: say why, draw the rest
            sections.append(Section(title, note=f"not drawn: {type(err).__name__}: {err}"))

    no_complete = "needs a complete trial; none yet" if not complete else None
    add("Optimisation history", lambda: vis.plot_optimization_history(study, target_name="validation accuracy"),
        no_complete)
    add("Intermediate values (validation accuracy during training)", lambda: vis.plot_intermediate_values(study),
        None if with_curves else "no trial reported a validation accuracy yet")
    importance_params = _params_in_all(complete)
    add("Parameter importances", lambda: vis.plot_param_importances(study, params=importance_params,
                                                                     target_name="validation accuracy"),
        None if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE else
        f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials; this study has {len(complete)}")
    add("Parallel coordinates", lambda: vis.plot_parallel_coordinate(
        study, params=_params_in_all(complete, KEY_PARAMS), target_name="validation accuracy"), no_complete)
    add("Slices (accuracy against each numeric parameter)", lambda: vis.plot_slice(
        study, params=[p for p in SLICED if any(p in t.params for t in complete)], target_name="validation accuracy"
    ).update_layout(width=None, autosize=True), no_complete)
    add("Encoders, poolings and losses compared", lambda: _comparison_figure(complete), no_complete)
    add("Timeline", lambda: vis.plot_timeline(study), None if finished else "no finished trial yet")
    return sections


def _best_table(study: optuna.Study) -> str:
    rows = []
    for t in best_trials(study):
        a = t.user_attrs
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in (
            f"#{t.number}", f"{t.value:.4f}", describe_params(t.params), a.get("parameters", ""),
            a.get("steps_per_second", ""), a.get("wall_seconds", ""), a.get("device", ""), a.get("ended", ""))) + "</tr>")
    if not rows:
        return "<p>No complete trial yet.</p>"
    head = "".join(f"<th>{h}</th>" for h in ("trial", "accuracy", "key parameters", "model parameters", "steps/s",
                                               "wall s", "device", "ended"))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; color: #222; }
h1 { margin-bottom: 0.2em; } .meta { color: #555; }
table { border-collapse: collapse; font-size: 0.9em; } td, th { border: 1px solid #ccc; padding: 3px 8px; }
th { background: #f3f3f3; } .note { color: #7a5b00; background: #fff8e1; padding: 0.6em; border-radius: 4px; }
section { margin-top: 1.5em; }
"""


def render(study: optuna.Study, sections: list[Section]) -> str:
    parts = []
    plotlyjs_done = False
    for i, s in enumerate(sections):
        body = f'<p class="note">{html.escape(s.note)}</p>'
        if s.figure is not None:
            body = s.figure.to_html(full_html=False, include_plotlyjs=not plotlyjs_done, div_id=f"figure-{i}",
                                    config={"displaylogo": False, "responsive": True})
            plotlyjs_done = True
        parts.append(f'<section id="section-{i}"><h2>{html.escape(s.title)}</h2>\n{body}\n</section>')
    settings = {k: v for k, v in study.user_attrs.items() if k != "final"}
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Study {html.escape(study.study_name)}: search report</title>
<style>{STYLE}</style></head>
<body>
<h1>Study {html.escape(study.study_name)}</h1>
<p class="meta">{html.escape(counts_line(study))}; settings {html.escape(json.dumps(settings))}</p>
<h2>Best trials</h2>
{_best_table(study)}
{''.join(parts)}
</body></html>
"""


def write_report(study: optuna.Study, out: Path) -> list[Section]:
    """Write the page to ``out`` atomically (a temporary file renamed into place); returns its sections."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        raise UserError(f"study {study.study_name!r} has no finished trial yet: run `search run` first")
    sections = build_sections(study)
    page = render(study, sections)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        raise UserError(f"--out {out}: cannot write it ({err.strerror})") from None
    return sections
