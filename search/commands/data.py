"""``search data synth`` and ``search data check`` (search/running/datasets.py)."""

from __future__ import annotations

from pathlib import Path

import click

from search.commands.base import MAX_PROCESSES, Bounded, count, main, seed_type
from search.processes.cores import usable_cores


def _echo_progress(label: str):
    from search.reporting.logs import throttled

    return throttled(lambda done, total: click.echo(f"{label}: {done}/{total}", err=True))


@main.group()
def data() -> None:
    """Make or check a dataset in the HW04 layout.

    Example: search data synth toy/ --speakers 20 --utterances-per-speaker 20 && search data check toy/
    """


@data.command()
@click.argument("out_dir", type=click.Path(path_type=Path))
@click.option("--speakers", type=count(100_000, "speakers", low=2), default=600, show_default=True, help="Speakers (HW04: 600).")
@click.option("--utterances-per-speaker", type=count(10_000, "utterances", low=2), default=94, show_default=True,
              help="Training utterances each, on average (HW04: 94).")
@click.option("--length-scale", type=Bounded(float, 0.05, 10, "times HW04's lengths, which reach 7,193 frames"), default=1.0, show_default=True,
              help="Utterance lengths relative to HW04's (the embedded set uses 0.4).")
@click.option("--seed", type=seed_type(), default=0, show_default=True,
              help="Seeds the speakers, utterances and test answer key (same seed, same files).")
@click.option("--workers", type=count(MAX_PROCESSES, "processes"), default=min(usable_cores(), MAX_PROCESSES),
              help="Processes rendering in parallel [default: all cores]; the files do not depend on it.")
def synth(out_dir, speakers, utterances_per_speaker, length_scale, seed, workers):
    """Write a synthetic speech-like dataset in the HW04 layout.

    By default at HW04 scale (600 speakers, 56,400 train + 7,962 test utterances with HW04's length
    distribution, 6.6 GB: 109 s with 16 processes), with its answer key OUT_DIR/answers.csv.

    \b
    Example: search data synth hw04-synth/
             search data synth toy/ --speakers 20 --utterances-per-speaker 20 --length-scale 0.4
    """
    from search.running.datasets import synthesize

    click.echo(synthesize(out_dir, progress=_echo_progress("synthesizing"), seed=seed, workers=workers,
                          speakers=speakers, utterances_per_speaker=utterances_per_speaker, length_scale=length_scale))


@data.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def check(folder, as_json):
    """Validate an HW04 folder and print its counts.

    Checks the json files and every tensor; prints the utterance counts and length statistics.

    Example: search data check Dataset/
    """
    from search.running.datasets import check_text

    click.echo(check_text(folder, as_json))
