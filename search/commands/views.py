"""The commands that look at studies and write nothing but their output: ``studies``, ``show``, ``trials``,
``report``, ``space``, ``score`` (search/reporting/inspection.py, search/reporting/report.py, search/finalizing/scoring.py).
"""

from __future__ import annotations

from pathlib import Path

import click

from search.commands.base import (MAX_TRIAL_NUMBER, _check_study, _resolve_storage, count, main, storage_option,
                                  study_option)


def _check_study_or_none(ctx, param, value: str | None) -> str | None:
    return None if value is None else _check_study(ctx, param, value)


@main.command()
@click.option("--storage", default=None, metavar="URL", callback=_resolve_storage,
              help="Optuna storage URL [default: $SEARCH_STORAGE, else studies/studies.sqlite3 and the per-study "
                   "files of earlier versions, studies/*.db].")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def studies(storage, as_json):
    """List the studies in a storage.

    For each: its trials by state, and the best value.

    Example: search studies --storage sqlite:///studies/hw04.db
    """
    from search.reporting.inspection import studies_text

    skipped: list[str] = []  # damaged files among studies/*.db: the others are listed, these named
    click.echo(studies_text(storage, as_json, skipped))
    for line in skipped:
        click.echo(f"warning: {line}", err=True)  # stderr: --json output stays JSON


@main.command()
@study_option
@storage_option
@click.option("--trial", "number", type=count(MAX_TRIAL_NUMBER, "a trial number", low=0), default=None,
              help="Trial number [default: the best complete trial].")
@click.option("--json", "as_json", is_flag=True, help="Print the trial as JSON.")
def show(study_name, storage, number, as_json):
    """Print one trial's configuration and results.

    Its parameters, resolved configurations, validation curve, and why it ended.

    Example: search show --study hw04 --trial 3
    """
    from search.reporting.inspection import show_text

    click.echo(show_text(study_name, storage, number, as_json))


@main.command("trials")
@study_option
@storage_option
@click.option("--sort", type=click.Choice(["number", "value", "duration"], case_sensitive=False), default="number",
              show_default=True, help="Order: trial number, value (best first) or wall time (longest first).")
@click.option("--state", "states", multiple=True,
              type=click.Choice(["complete", "pruned", "fail", "running", "waiting"], case_sensitive=False),
              help="Only trials in this state; repeat for several (--state complete --state pruned).")
@click.option("--wide", is_flag=True, help="Every column (each sampled parameter and recorded attribute), however "
              "wide; without it the table fits the terminal.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, one object per trial, every column.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV with a header row, every column.")
def trials(study_name, storage, sort, states, wide, as_json, as_csv):
    """List a study's trials, one row each.

    Each row: number, state, value, model size, steps/s, wall time, the key parameters (encoder,
    d_model, layers, pooling, loss, lr) and why the trial ended, fitted to the terminal's width (the
    columns left out are named); --wide, --json and --csv have every sampled parameter and every
    recorded attribute.

    \b
    Example: search trials --study hw04 --sort value --state complete
             search trials --study hw04 --csv > trials.csv
    """
    from search.reporting.inspection import trials_text

    click.echo(trials_text(study_name, storage, sort, states, as_json, as_csv, wide))


@main.command()
@study_option
@storage_option
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=Path("report.html"), show_default=True,
              help="The HTML file to write (replaced atomically).")
def report(study_name, storage, out):
    """Write an HTML report of a study and print its best trials.

    The report is one self-contained page of plotly figures (it opens offline): optimisation history,
    validation curves, parameter importances, parallel coordinates, slices, accuracy by encoder /
    pooling / loss, and a timeline.

    \b
    Example: search report --study hw04 --out report.html
    """
    from search.reporting.inspection import report_text

    click.echo(report_text(study_name, storage, out))


@main.command("space")
@click.option("--profile", type=click.Choice(["full", "cpu"]), default=None,
              help="Which profile of the space: full (GPU) or cpu (small models) [default: full].")
@click.option("--study", "study_name", default=None, callback=_check_study_or_none,
              help="A study's own space instead: its profile and the changes it was created with.")
@storage_option
@click.option("--json", "as_json", is_flag=True, help="Print every parameter as JSON.")
def space_command(profile, study_name, storage, as_json):
    """Print the search space.

    Each parameter, its choices or range, and when it applies: of a profile, or of a study (--study).

    \b
    Example: search space --profile cpu --json
             search space --study hw04
    """
    from search.reporting.inspection import space_text

    if study_name is None:
        click.echo(space_text(profile or "full", as_json))
        return
    from search.reporting.inspection import study_space

    if profile is not None:
        raise click.UsageError("--profile: give --profile or --study, not both (a study has its own profile)")
    study_profile, changes = study_space(study_name, storage)
    click.echo(space_text(study_profile, as_json, changes, study_name))


@main.command()
@click.argument("predictions", type=click.Path(path_type=Path))
@click.option("--answers", type=click.Path(path_type=Path), required=True,
              help="The answer key, Id,Category (a synthetic set's answers.csv).")
def score(predictions, answers):
    """Score a predictions CSV against an answer key.

    Both are Id,Category CSV files (the Kaggle format).

    Example: search score studies/hw04/predictions.csv --answers hw04-synth/answers.csv
    """
    from search.finalizing.scoring import accuracy_line, score_files

    accuracy, n = score_files(predictions, answers)
    click.echo(accuracy_line(accuracy, n))
