"""``search enqueue``: queue other trials' configurations into a study (search/running/enqueue.py)."""

from __future__ import annotations

import click

from search.commands.base import (MAX_BUDGET, MAX_TRIAL_NUMBER, _resolve_storage, count, device_option, main,
                                  training_options)
from search.commands.run import new_study_options, space_request


@main.command()
@training_options
@click.option("--from-trial", type=count(MAX_TRIAL_NUMBER, "a trial number", low=0), default=None,
              help="Queue this trial's configuration (complete, pruned or failed).")
@click.option("--from-study", default=None, metavar="NAME",
              help="The study the trials come from [default: --study itself].")
@click.option("--from-storage", default=None, metavar="URL", callback=_resolve_storage,
              help="Its storage [default: --storage where given, else that study's own default storage].")
@click.option("--top", type=count(1000, "configurations"), default=None,
              help="Queue the K best complete trials' configurations (distinct ones) instead of one trial.")
@click.option("--full-budget", is_flag=True,
              help="The queued trials run their whole budget: the pruner leaves them alone (to finalize a "
                   "configuration the pruner stopped).")
@click.option("--budget", type=count(MAX_BUDGET, "training steps of a trial"), default=None,
              help="A new study's steps per trial (as search run's).")
@device_option
@new_study_options(seed_help="A new study's seed [default: 0].",
                   warm_start_help="A new study: queue the known HW04 configurations too, after these.",
                   pruning_help="A new study: pruning on (default) or off.")
def enqueue(study_name, storage, data_dir, from_trial, from_study, from_storage, top, full_budget, budget, device,
            seed, profile, sets, ranges, warm_start, pruning):
    """Queue other trials' configurations into a study, run first.

    One trial (--from-trial N, a pruned one too) or a study's K best (--top K), from this study, another
    (--from-study) or another storage (--from-storage). Each is checked against the study's space; one that
    does not fit is skipped with a line naming the parameter. A study that does not exist is created as
    `search run` would create it (its --data, --budget, --space... options), with these queued before its warm
    starts.

    \b
    Example: search enqueue --study hw04-gpu --from-study hw04-cpu --top 3 --space full
             search enqueue --study hw04 --from-trial 3 --full-budget
    """
    from search.running.enqueue import EnqueueRequest, enqueue as enqueue_configs
    from search.running.settings import RequestedSettings

    profile, space = space_request(profile, sets, ranges)
    if data_dir is not None and not data_dir.is_dir():
        raise click.ClickException(f"--data {data_dir}: no such folder")
    settings = RequestedSettings(budget=budget, data=str(data_dir.resolve()) if data_dir else None, seed=seed,
                                 profile=profile, pruning=pruning)
    for line in enqueue_configs(EnqueueRequest(
            study_name, storage, from_trial=from_trial, from_study=from_study, from_storage=from_storage, top=top,
            full_budget=full_budget, settings=settings, space=space, device=device, warm_start=warm_start)):
        click.echo(line)
