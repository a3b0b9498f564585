"""``search report``: one self-contained HTML page of plotly figures, and a plain-text summary.

The page holds plotly.js once (inlined and compressed, search/reporting/report_page.py: it opens offline, from a mail
attachment or a shared drive). Above the figures: when it was made and with which versions of this package, Optuna and torch; the
study's settings; the finalized result (``search finalize``: the study attributes ``final`` and
``final_ensemble``); the best trials; the failed trials with their reasons. The figures: optimisation
history, the curves (validation accuracy and training loss at each validation, one legend entry per
trial, pruned and failed ones included), parameter importances (from 2 complete trials on, marked
unreliable below IMPORTANCE_RELIABLE), parallel coordinates, slices, a comparison of encoders /
poolings / losses (accuracy of the complete trials, by choice), and a timeline of the trials' states.
A study of thousands of trials gets summaries instead of one line or bar per trial (CURVES_DRAWN, TIMELINE_DRAWN).
A figure that cannot be drawn for this study, or only as one point (MIN_TRIALS_TO_COMPARE), is replaced by a note
saying why; accuracy axes span 0 to 1 (not the parallel coordinates: Optuna scales each axis to its values).
The best trials are also printed in the terminal. The page around the figures: search/reporting/report_page.py.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.reporting.attrs import train_loss_points
from search.reporting import queries
from search.errors import UserError
from search.files import write_text
from search.reporting.formats import param_count
from search.reporting.queries import complete_trials
from search.finalizing.final_record import finalized_rows
from search.reporting.notes import KEY_PARAMS, outcome
# the page around the figures; counts_line is imported from here by other modules too
from search.reporting.report_page import TOP, Section, counts_line, describe_params, render

SLICED = ("lr", "weight_decay", "dropout", "d_model", "layers", "segment")  # categorical ones: the comparison
COMPARED = ("encoder", "pooling", "loss")  # the architecture choices compared side by side
MIN_TRIALS_FOR_IMPORTANCE = 2
# Figures of the complete trials (history, parallel coordinates, slices, the comparison) need this many: one point
# shows no trend and plotly stretches its axes around it; the page says why such a figure is left out.
MIN_TRIALS_TO_COMPARE = 2
ACCURACY_RANGE = (0, 1)  # every accuracy axis: figures comparable at a glance, none stretched around a point
# Below this many complete trials the importances are drawn but marked unreliable: Optuna's default evaluator
# compares the best 10% of the trials with all of them, a handful in a small study. About twice the parameters
# compared (bench/importance_reliability.py; BENCHMARKS.md, "Figures behind code constants").
IMPORTANCE_RELIABLE = 30
STATE_DASH = {"COMPLETE": "solid", "PRUNED": "dot", "FAIL": "dashdot"}
# One line or bar per trial makes a study of thousands of trials a page too large to open (BENCHMARKS.md, "Read-only
# commands"): past these counts the curves figure draws the best CURVES_DRAWN one by one and all as a median with
# a 10-90% band, and the timeline becomes a histogram of when trials ended, by state.
CURVES_DRAWN = 60
TIMELINE_DRAWN = 600


def summary_lines(study: optuna.Study, n: int = TOP) -> list[str]:
    """The terminal summary: the trial counts and the ``n`` best complete trials, one line each."""
    lines = [f"study {study.study_name!r}: {counts_line(study)}"]
    best = queries.best_trials(study, n)
    if not best:
        return lines + ["no complete trial yet"]
    lines.append(f"best {len(best)} trials:")
    for t in best:
        attrs = t.user_attrs
        extra = []
        if "parameters" in attrs:
            extra.append(f"{param_count(attrs['parameters'])} params")
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


def _drawn_one_by_one(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials whose curves are drawn one by one: all, or past CURVES_DRAWN the best by their last reported
    validation accuracy (a complete trial's value; a pruned one's score where it stopped)."""
    if len(trials) <= CURVES_DRAWN:
        return trials

    def last_score(t: FrozenTrial) -> float:
        return t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else float("-inf")

    return sorted(trials, key=last_score, reverse=True)[:CURVES_DRAWN]


def _band_traces(points: list[tuple[int, float]], name: str, row: int, col: int):
    """The median and the 10-90% band of ``points`` (step, value) at each step: three traces (low, high
    filled to low, median) for ``fig.add_traces(..., rows, cols)``."""
    import numpy as np
    import plotly.graph_objects as go

    by_step: dict[int, list[float]] = {}
    for step, value in points:
        if np.isfinite(value):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    low, mid, high = (np.array([np.percentile(by_step[s], q) for s in steps]) for q in (10, 50, 90))
    counts = [len(by_step[s]) for s in steps]
    grey = "rgba(90,90,90,{})"
    common = {"x": steps, "legendgroup": "all", "hoverinfo": "skip"}
    return [
        go.Scatter(y=low, mode="lines", line={"width": 0}, showlegend=False, **common),
        go.Scatter(y=high, mode="lines", line={"width": 0}, fill="tonexty", fillcolor=grey.format(0.18),
                   showlegend=False, **common),
        go.Scatter(x=steps, y=mid, mode="lines", line={"color": grey.format(0.9), "width": 2}, name=name,
                   legendgroup="all", showlegend=col == 1, customdata=counts,
                   hovertemplate="all trials at step %{x}<br>median %{y:.4g} of %{customdata} trials<extra></extra>"),
    ], [row] * 3, [col] * 3


def _curves_figure(study: optuna.Study, trials: list[FrozenTrial]):
    """Validation accuracy (left) and training loss (right) at each validation, one colour and one legend
    entry per trial (clicking it hides the trial in both panels); line style by state, the best one thicker.
    Past CURVES_DRAWN trials, only the best are drawn one by one, and every trial as a median and a band."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    best = queries.best_trials(study, 1)
    best_number = best[0].number if best else None
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        "validation accuracy", "training loss (mean over the steps since the previous validation)"))
    palette = qualitative.Plotly
    any_loss = False
    drawn = _drawn_one_by_one(trials)
    summarised = len(drawn) < len(trials)
    if summarised:
        label = f"all {len(trials):,} trials: median, 10-90%"
        for panel, points in ((1, [(s, v) for t in trials for s, v in t.intermediate_values.items()]),
                              (2, [p for t in trials for p in train_loss_points(t)])):
            if points:
                fig.add_traces(*_band_traces(points, label, 1, panel))
    traces, rows, cols = [], [], []
    for i, t in enumerate(sorted(drawn, key=lambda t: t.number)):
        result = f"{t.value:.4f}" if t.state == TrialState.COMPLETE else outcome(t)[:60]
        name = f"#{t.number} {result}" + (" (best)" if t.number == best_number else "")
        line = {"color": palette[i % len(palette)], "dash": STATE_DASH.get(t.state.name, "solid"),
                "width": 3.5 if t.number == best_number else 1.5}
        steps = sorted(t.intermediate_values)
        common = {"mode": "lines+markers", "line": line, "legendgroup": str(t.number), "name": name}
        hover = f"trial #{t.number}<br>step %{{x}}<br>"
        traces.append(go.Scatter(x=steps, y=[t.intermediate_values[s] for s in steps], **common,
                                 hovertemplate=hover + "accuracy %{y:.4f}<extra></extra>"))
        rows.append(1)
        cols.append(1)
        losses = train_loss_points(t)
        if losses:
            any_loss = True
            traces.append(go.Scatter(x=[s for s, _ in losses], y=[v for _, v in losses], showlegend=False, **common,
                                     hovertemplate=hover + "loss %{y:.4g}<extra></extra>"))
            rows.append(1)
            cols.append(2)
    fig.add_traces(traces, rows=rows, cols=cols)  # at once: add_trace one by one is quadratic in plotly
    if not any_loss:
        fig.add_annotation(text="no training loss recorded (trials run before it was)", showarrow=False,
                           xref="x2 domain", yref="y2 domain", x=0.5, y=0.5)
    fig.update_xaxes(title_text="training step")
    fig.update_yaxes(title_text="validation accuracy", range=ACCURACY_RANGE, row=1, col=1)
    fig.update_yaxes(title_text="training loss", row=1, col=2)
    title = "Curves (solid: complete, dotted: pruned, dash-dot: failed; the best is thicker)"
    if summarised:
        title = (f"Curves of the {len(drawn)} best of {len(trials):,} trials, and all of them as a median with a "
                 "10-90% band (solid: complete, dotted: pruned, dash-dot: failed)")
    fig.update_layout(height=520, showlegend=True, legend={"title": {"text": "trial: outcome"}}, title=title)
    return fig


def _timeline_figure(study: optuna.Study, finished: list[FrozenTrial]):
    """Optuna's timeline (one bar per trial) up to TIMELINE_DRAWN trials; past that, how many trials ended in
    each interval, by state (stacked), which is what a timeline of thousands of bars shows anyway."""
    import optuna.visualization as vis
    import plotly.graph_objects as go

    if len(finished) <= TIMELINE_DRAWN:
        return vis.plot_timeline(study)
    fig = go.Figure()
    for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
        ended = [t.datetime_complete for t in finished if t.state == state and t.datetime_complete]
        if ended:
            fig.add_trace(go.Histogram(x=ended, name=state.name.lower(), nbinsx=60))
    fig.update_layout(barmode="stack", height=380, xaxis_title="when the trial ended", yaxis_title="trials",
                      title=f"Trials ended over time, by state ({len(finished):,} trials: too many for one bar each)")
    return fig


def _accuracy_axes(fig):
    """``fig`` with its accuracy on ACCURACY_RANGE: every y axis (Optuna's history and slices, the comparison).
    Optuna's parallel coordinates scale each axis to its own values, labelled: left as drawn."""
    return fig.update_yaxes(range=ACCURACY_RANGE)


def _bare(trial: FrozenTrial) -> FrozenTrial:
    """A complete trial as Optuna's figures read it (number order, value, parameters), without its ~40 user
    attributes and its curve: the in-memory study deep-copies what it is given."""
    return optuna.trial.create_trial(state=trial.state, value=trial.value, params=trial.params,
                                     distributions=trial.distributions)


def _in_memory(study: optuna.Study, trials: list[FrozenTrial], consume: bool = False) -> optuna.Study:
    """A study in memory holding ``trials`` (same name and direction), for Optuna's figures to read cheaply.
    With ``consume`` the list is emptied as its trials are copied (the storage keeps deep copies), so that a big
    study is in memory once at a time, not twice."""
    copy = optuna.create_study(study_name=study.study_name, directions=study.directions)
    if not consume:
        copy.add_trials(trials)
        return copy
    trials.reverse()
    while trials:
        copy.add_trial(trials.pop())
    return copy


def _importance_figure(study: optuna.Study, params: list[str]):
    """Parameter importances for validation accuracy as optuna-dashboard computes them (PED-ANOVA, Optuna 5's
    default evaluator, named here so that the two stay alike), most important on top. Drawn here rather than by
    ``plot_param_importances``, whose hover text copies every trial of the study once per parameter: 7.7 of the
    report's 22 s under cProfile on a study of 5,004 trials (BENCHMARKS.md, issue 23)."""
    import plotly.graph_objects as go
    from optuna.importance import PedAnovaImportanceEvaluator, get_param_importances

    # the study's direction (maximize) is the evaluator's to read: no target, so no negation to get wrong
    importances = get_param_importances(study, params=params, evaluator=PedAnovaImportanceEvaluator())
    names = list(importances)[::-1]  # {name: share} comes largest first; plotly draws the first bar at the bottom
    values = [importances[n] for n in names]
    bars = go.Bar(x=values, y=names, orientation="h", text=[f"{v:.2f}" if v >= 0.01 else "<0.01" for v in values],
                  textposition="outside", hovertemplate="%{y}: %{x:.3f}<extra></extra>")
    return go.Figure(bars).update_layout(title="Hyperparameter importances", xaxis_title="importance for validation "
                                         "accuracy", yaxis_title="hyperparameter", xaxis_range=[0, 1.1])


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

    few = (f"needs at least {MIN_TRIALS_TO_COMPARE} complete trials to compare; this study has {len(complete)}" if len(complete) < MIN_TRIALS_TO_COMPARE else None)
    # Optuna's figures below read complete trials only, but through study.get_trials(), a full copy of every trial
    # each time (the importances' hover text once per parameter): they get an in-memory study of the complete ones.
    study_of_complete = _in_memory(study, [_bare(t) for t in complete]) if complete else study
    add("Optimisation history", lambda: _accuracy_axes(vis.plot_optimization_history(
        study_of_complete, target_name="validation accuracy")), few)
    add("Intermediate values: validation accuracy and training loss during training",
        lambda: _curves_figure(study, with_curves),
        None if with_curves else "no trial reported a validation accuracy yet")
    importance_params = _params_in_all(complete)
    add("Parameter importances", lambda: _importance_figure(study_of_complete, importance_params),
        None if len(complete) >= MIN_TRIALS_FOR_IMPORTANCE else
        f"needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete trials; this study has {len(complete)}")
    if sections[-1].figure is not None and len(complete) < IMPORTANCE_RELIABLE:
        sections[-1].note = (f"Unreliable: from {len(complete)} complete trials. With fewer than "
                             f"{IMPORTANCE_RELIABLE} (about twice the {len(importance_params)} parameters compared), "
                             "the parameter ranked first was often the wrong one in a measured test "
                             "(bench/importance_reliability.py): read this as a hint, not a finding.")
    add("Parallel coordinates", lambda: vis.plot_parallel_coordinate(
        study_of_complete, params=_params_in_all(complete, KEY_PARAMS), target_name="validation accuracy"), few)
    add("Slices (accuracy against each numeric parameter)", lambda: _accuracy_axes(vis.plot_slice(
        study_of_complete, params=[p for p in SLICED if any(p in t.params for t in complete)], target_name="validation accuracy"
    ).update_layout(width=None, autosize=True)), few)
    add("Encoders, poolings and losses compared", lambda: _accuracy_axes(_comparison_figure(complete)), few)
    add("Timeline", lambda: _timeline_figure(study, finished), None if finished else "no finished trial yet")
    return sections


def write_report(study: optuna.Study, out: Path) -> tuple[list[Section], list[str]]:
    """Write the page to ``out`` atomically (a temporary file renamed into place); returns its sections and the
    terminal summary (``summary_lines``), both from one read of the trials."""
    # Every part of the page reads the trials (counts, best, failures, each figure): from storage a query of every
    # trial each time, from memory a copy.
    snapshot = _in_memory(study, queries.whole_trials(study), consume=True)
    if not snapshot.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)):
        raise UserError(f"study {study.study_name!r} has no finished trial yet: run `search run` first")
    for key, value in study.user_attrs.items():
        snapshot.set_user_attr(key, value)
    sections = build_sections(snapshot)
    page = render(snapshot, sections)  # search/reporting/report_page.py
    try:
        write_text(out, page)
    except OSError as err:
        raise UserError(f"--out {out}: cannot write it ({err.strerror})") from None
    return sections, summary_lines(snapshot)
