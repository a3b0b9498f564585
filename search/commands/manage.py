"""The commands over several studies of a storage: ``delete`` (search/db/catalog.py), ``compare``
(search/reporting/compare.py) and ``migrate`` (search/db/migrate.py)."""

from __future__ import annotations

import click

from search.commands.base import _resolve_storage, main, storage_option, study_option


@main.command()
@study_option
@storage_option
@click.option("--yes", "-y", is_flag=True, help="Delete without asking (the study's folder only with --outputs).")
@click.option("--outputs", is_flag=True,
              help="Remove the study's folder studies/<study>/ too (predictions, models, checkpoints, artifacts).")
def delete(study_name, storage, yes, outputs):
    """Delete a study from its storage, after asking.

    Its trials cannot be recovered. Its folder studies/<study>/ (predictions, final models, artifacts) is
    removed only with --outputs, or when you say so at a second question.

    \b
    Example: search delete --study hw4
             search delete --study hw4 --yes --outputs
    """
    from search.db.catalog import delete_study, outputs_text, remove_outputs
    from search.reporting.queries import state_counts
    from search.db.storage import default_url, redact_url
    from search.running.study import load_study

    study = load_study(study_name, storage, any_direction=True, read_only=True)  # a typo: "did you mean ..."
    url = storage or default_url(study_name)
    by_state = state_counts(study)
    trials = sum(by_state.values())
    what = f"{trials} trial{'' if trials == 1 else 's'}" + (f", {by_state['running']} running" if by_state["running"] else "")
    folder = outputs_text(study_name)
    also = f" and its folder {folder}" if outputs and folder else ""
    if not yes:
        click.confirm(f"delete study {study_name!r} ({what}) from {redact_url(url)}{also}? This cannot be undone",
                      abort=True)
    click.echo(delete_study(study_name, url))
    if not folder:
        return
    if not outputs and not yes:
        try:
            outputs = click.confirm(f"also remove its folder {folder}?", default=False)
        except click.Abort:  # no answer (end of input): the folder stays
            outputs = False
    if outputs:
        click.echo(remove_outputs(study_name))
    else:
        click.echo(f"kept its folder {folder} (remove it yourself, or delete with --outputs)")


@main.command()
@click.argument("studies", nargs=-1, required=True)
@storage_option
def compare(studies, storage):
    """Compare studies side by side.

    One column per study: trials, complete / pruned, failed, the best value, the best configuration's key
    parameters and the time the trials took; and where the studies share a storage, the address of
    optuna-dashboard's compare view of them.

    Example: search compare hw04 hw04-cpu
    """
    from search.reporting.compare import compare_text
    from search.db.storage import check_study_name

    for name in studies:
        check_study_name(name)
    click.echo(compare_text(tuple(studies), storage))


@main.command()
@click.option("--storage", default=None, metavar="URL", callback=_resolve_storage,
              help="Where the studies move [default: $SEARCH_STORAGE, else sqlite:///studies/studies.sqlite3].")
def migrate(storage):
    """Move old per-study files (studies/*.db) into one storage.

    Each studies/<study>.db is copied study by study with Optuna's copy_study, every copy is checked against
    its original, and only then is the old file renamed studies/<study>.db.migrated (kept). A migrate that is
    stopped halfway loses nothing: run it again to finish.

    Example: search migrate
    """
    from search.db.migrate import migrate as move
    from search.db.storage import SHARED_URL, env_url

    move(storage or env_url() or SHARED_URL, click.echo)
