"""``search run`` and ``search finalize``: the commands that train (search/running/run.py, search/finalizing/finalize.py)."""

from __future__ import annotations

from pathlib import Path

import click

from search.commands.base import (MAX_BUDGET, MAX_PROCESSES, MAX_SECONDS, MAX_STEPS, MAX_TRIALS, Bounded, count,
                                  device_option, main, quiet_option, seed_type, training_options)
from search.running.settings import CPU_BUDGET, CPU_FINALIZE_STEPS, GPU_BUDGET, GPU_FINALIZE_STEPS  # no torch


PROFILE_CHOICES = ("auto", "full", "cpu")


def space_options(f):
    """--space PROFILE|FILE, --set and --range: the space of a new study (run, enqueue)."""
    f = click.option("--range", "ranges", multiple=True, metavar="NAME=LOW:HIGH",
                     help="A new study's space: narrow a numeric parameter (--range lr=1e-4:1e-3); repeatable.")(f)
    f = click.option("--set", "sets", multiple=True, metavar="NAME=VALUE[,VALUE...]",
                     help="A new study's space: keep only these choices of a parameter (--set encoder=conformer, "
                          "--set pooling=sap,asp), or fix a number (--set layers=2); repeatable.")(f)
    return click.option("--space", "profile", default="auto", show_default=True, metavar="auto|full|cpu|FILE",
                        help="Search-space profile: full (GPU) or cpu (small models); auto: a resumed study keeps "
                             "its own, a new one picks by device. Or a space file (.json, .yaml): a profile and "
                             "the user's changes to it (README, 'Your own space').")(f)


def new_study_options(seed_help: str, warm_start_help: str, pruning_help: str):
    """--seed, the space (``space_options``), --warm-start and --pruning: what shapes a new study (run, enqueue),
    each command saying in its own words what they do there."""
    def apply(f):
        f = click.option("--pruning/--no-pruning", default=None, help=pruning_help)(f)
        f = click.option("--warm-start/--no-warm-start", default=True, show_default=True, help=warm_start_help)(f)
        f = space_options(f)
        return click.option("--seed", type=seed_type(), default=None, help=seed_help)(f)
    return apply


def space_request(profile: str, sets: tuple, ranges: tuple):
    """(the profile asked for or None, the space file/--set/--range request) of --space, --set and --range."""
    from search.running.user_space import SpaceRequest

    if profile in PROFILE_CHOICES:
        return (None if profile == "auto" else profile), SpaceRequest(None, tuple(sets), tuple(ranges))
    return None, SpaceRequest(Path(profile), tuple(sets), tuple(ranges))


@main.command()
@click.option("--trials", type=count(MAX_TRIALS, "trials"), default=None,
              help="Trials to add to the study; optional with --timeout (then: as many as start before it).")
@click.option("--total-trials", type=count(MAX_TRIALS, "trials"), default=None,
              help="Study-wide cap for runs on many machines: stop taking trials once the study holds this many "
                   "(complete, pruned, failed or running; each machine's run stops there).")
@training_options
@click.option("--budget", type=count(MAX_BUDGET, "training steps of a trial"), default=None,
              help=f"Training steps of a full trial [default: {GPU_BUDGET} on GPU, {CPU_BUDGET} on CPU; "
                   "a resumed study keeps its own].")
@device_option
@click.option("--timeout", type=Bounded(float, 0, MAX_SECONDS, "seconds", low_open=True), default=None,
              help="Stop starting new trials after this many seconds (without --trials: run until then).")
@new_study_options(
    seed_help="Seeds the split, the sampler and training [default: 0; a resumed study keeps its own].",
    warm_start_help="Run the known HW04 configurations first in a new study.",
    pruning_help="Let Hyperband stop unpromising trials early (a new study's default: on; a study keeps its choice). "
                 "--no-pruning runs every trial to its full budget.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed trial instead of recording it.")
@click.option("--workers", type=count(MAX_PROCESSES, "worker processes"), default=1, show_default=True,
              help="Worker processes on this machine, sharing the trials (more machines: run the same command "
                   "there with a postgresql:// or mysql+pymysql:// --storage).")
@click.option("--gpus", default=None, is_flag=False, flag_value="all", metavar="all|LIST",
              help="One worker process per GPU: --gpus alone takes every visible GPU, --gpus 0,2 those CUDA "
                   "indices.")
@click.option("--workers-per-gpu", type=count(64, "worker processes per GPU"), default=1, show_default=True,
              help="Worker processes on each GPU (of --gpus, or of --device without it): several trials at once "
                   "on one GPU.")
@click.option("--mps/--no-mps", default=True, show_default=True,
              help="With --workers-per-gpu K > 1: NVIDIA MPS, so workers sharing a GPU run side by side instead of "
                   "taking turns (a running daemon, or one started for the run and stopped at its end; off, with "
                   "one line saying why, where it cannot start).")
@quiet_option
def run(trials, total_trials, study_name, storage, data_dir, budget, device, seed, timeout, profile, sets, ranges,
        warm_start, pruning, fail_fast, workers, gpus, workers_per_gpu, mps, quiet):
    """Run trials of a study, creating or resuming it.

    Adds --trials N trials to the study; with --timeout SECONDS and no --trials, starts trials until
    that many seconds have passed (the running ones finish). A resumed study keeps its data, budget, seed,
    space and pruning choice. Ctrl-C ends the running trial and prints the command that resumes the run.

    \b
    Example: search run --trials 20 --study hw04 --data Dataset/
             search run --trials 200 --gpus --workers-per-gpu 4 --data Dataset/
             search run --trials 20 --study conf --set encoder=conformer --range lr=1e-4:1e-3
    """
    from search.running.run import RunRequest, run_search
    from search.running.settings import RequestedSettings

    profile, space = space_request(profile, sets, ranges)
    run_search(RunRequest(
        study_name, trials=trials, total_trials=total_trials, timeout=timeout, storage=storage, device=device,
        warm_start=warm_start,
        space=space, fail_fast=fail_fast, workers=workers, gpus=gpus, workers_per_gpu=workers_per_gpu, mps=mps, quiet=quiet,
        settings=RequestedSettings(budget=budget, data=str(data_dir.resolve()) if data_dir else None, seed=seed,
                                   profile=None if profile == "auto" else profile, pruning=pruning)))


@main.command()
@click.argument("which", default="best", metavar="[best|N|top]")
@training_options
@click.option("--steps", type=count(MAX_STEPS, "training steps"), default=None,
              help=f"Training steps [default: {GPU_FINALIZE_STEPS:,} (the sample code's) on a GPU, "
                   f"{CPU_FINALIZE_STEPS:,} on a CPU: a few minutes there; 70,000 would take hours].")
@click.option("--time", "time_budget", default=None, metavar="DURATION",
              help="Train as many steps as fit in this time (2h, 90m, 1h30m, or seconds), measured on this device "
                   "first; instead of --steps.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Predictions CSV [default: studies/<study>/predictions-<result>.csv, and studies/<study>/predictions.csv becomes a copy of the best finalized result by validation accuracy].")
@device_option
@click.option("--checkpoint-every", type=count(MAX_STEPS, "training steps"), default=1000, show_default=True,
              help="Steps between checkpoints; a killed finalize resumes from the last one.")
@click.option("--k", "k", type=count(100, "ensemble members"), default=None,
              help="With `top`: how many members [default: 3], the K best distinct configurations.")
@click.option("--seeds", is_flag=True, help="With `top`: the best configuration trained with K seeds instead.")
@click.option("--all-data", is_flag=True,
              help="After the validation run has chosen the step count, train again on train + validation for "
                   "that many steps and predict with that model.")
@quiet_option
def finalize(which, study_name, storage, data_dir, steps, time_budget, out, device, checkpoint_every, k, seeds, all_data,
             quiet):
    """Retrain the best trial and write the predictions CSV.

    Or trial N, or the top K as an ensemble (top --k K), on the full budget. With an answer key
    (answers.csv) in the data folder, also print the test accuracy. Ctrl-C stops the training and keeps
    its last checkpoint: the same command resumes from it.

    \b
    Example: search finalize best --study hw04 --data Dataset/ --steps 70000
             search finalize best --study hw04 --time 2h
             search finalize top --k 3 --study hw04 --all-data
    """
    from search.finalizing.budget import parse_duration
    from search.finalizing.finalize import FinalizeRequest, run_finalize

    seconds = parse_duration(time_budget) if time_budget is not None else None
    run_finalize(FinalizeRequest(which, study_name, storage=storage, data_dir=data_dir, steps=steps, time=seconds, out=out,
                                 device=device, checkpoint_every=checkpoint_every, k=k, seeds=seeds,
                                 all_data=all_data, quiet=quiet))
