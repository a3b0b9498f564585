"""The ``search`` group and the options its commands share (as lhotse's ``lhotse/bin/modes/cli_base.py``).

Every command of the group is a ``SafeCommand`` (search/processes/guard.py): whatever goes wrong reaches the user as
one ``Error:`` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import math
from pathlib import Path

import click
import optuna

from search.processes.guard import SafeGroup

DEFAULT_STUDY = "hw04"
SEED_MAX = 2**32 - 1  # numpy's and Optuna's samplers take seeds in 0 .. 2**32-1
# The upper ends of the numbers users type (Bounded, below): far above any real use (HW04's sample code trains
# 70,000 steps; a study of 100,000 trials is months of GPU time), low enough that a typo ends with a line
# instead of a run that never stops.
MAX_TRIALS = 1_000_000
MAX_STEPS = 10_000_000  # --steps, --checkpoint-every (a finalize)
MAX_BUDGET = 1_000_000  # --budget: the steps of one trial
MAX_SECONDS = 30 * 24 * 3600  # --timeout: 30 days
MAX_PROCESSES = 1024  # --workers (a process each)
MAX_TRIAL_NUMBER = 2**31 - 1  # the storages keep trial numbers as 32-bit integers


class Bounded(click.ParamType):
    """A number the user types, with both ends bounded and the range said when it is refused.

    click's IntRange/FloatRange let ``nan`` through (every comparison with it is False) and, open above,
    ``inf`` and 1e20: ``--timeout nan`` ran trials that never stopped, ``--budget 1e20`` never ended and
    ``data synth --length-scale 1e6`` hung. Every numeric option of every command takes this type, so each one
    refuses a non-finite or out-of-range value with one line naming the option and its range, before any work."""

    def __init__(self, kind: type, low: float, high: float, what: str, low_open: bool = False) -> None:
        self.kind, self.low, self.high, self.what, self.low_open = kind, low, high, what, low_open
        self.name = "integer" if kind is int else "float"

    def range_text(self) -> str:
        def text(x) -> str:
            return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"

        low, high = text(self.low), text(self.high)
        return f"{'above ' + low if self.low_open else 'from ' + low} to {high}"

    def convert(self, value, param, ctx):
        if isinstance(value, self.kind) and not isinstance(value, bool):
            number = value
        else:
            text = str(value).strip()
            try:
                number = self.kind(text)
            except (ValueError, OverflowError):
                number = None
        below = number is not None and (number <= self.low if self.low_open else number < self.low)
        if number is None or not math.isfinite(number) or below or number > self.high:
            self.fail(f"{value} is not in the range {self.range_text()} ({self.what})", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"Bounded({self.kind.__name__}, {self.low}, {self.high})"


def count(high: int, what: str, low: int = 1) -> Bounded:
    """A whole number from ``low`` to ``high`` (trials, workers, steps...)."""
    return Bounded(int, low, high, what)


def seed_type() -> Bounded:
    return count(SEED_MAX, "a seed", low=0)


def _check_study(_ctx, _param, value: str) -> str:
    from search.errors import UserError
    from search.db.storage import check_study_name

    try:
        check_study_name(value)
    except UserError as err:
        raise click.ClickException(str(err)) from None
    return value


def _resolve_storage(_ctx, _param, value: str | None) -> str | None:
    """--storage as every process uses and prints it (a journal path made absolute)."""
    from search.errors import UserError
    from search.db.storage import resolve_url

    try:
        return None if value is None else resolve_url(value)
    except UserError as err:
        raise click.ClickException(str(err)) from None


def storage_option(f):
    return click.option("--storage", default=None, metavar="URL", callback=_resolve_storage,
                        help="Optuna storage URL [default: $SEARCH_STORAGE, else sqlite:///studies/studies.sqlite3 (every "
                             "study of the folder), or a study's own studies/<study>.db of earlier versions]; "
                             "also postgresql://, mysql+pymysql://, grpc://HOST:PORT (a `search proxy`), "
                             "journal:///abs/path.log or journal://rel/path.log")(f)


def study_option(f):
    return click.option("--study", "study_name", default=DEFAULT_STUDY, show_default=True, callback=_check_study,
                        help="Study name (letters, digits, '-', '_'...; no '/', no leading '.').")(f)


def device_option(f):
    return click.option("--device", default="auto", show_default=True,
                        type=click.Choice(["auto", "cpu", "cuda"]), help="Where to train.")(f)


def data_option(f):
    return click.option("--data", "data_dir", default=None, type=click.Path(path_type=Path),
                        help="HW04 Dataset/ folder [default: the study's own, else the embedded synthetic dataset].")(f)


def training_options(f):
    """--study, --storage and --data, in that order: the options of every command that trains (run, finalize)."""
    return study_option(storage_option(data_option(f)))


def quiet_option(f):
    return click.option("--quiet", "-q", is_flag=True,
                        help="Print no progress lines, only the summary (all lines still go to "
                             "studies/<study>/search.log). Progress is printed on a terminal and in pipes alike.")(f)


def package_version() -> str:
    """This package's version: the installed distribution's (hw04-search), else setup.cfg's (a checkout
    run without installing)."""
    from importlib import metadata

    try:
        return metadata.version("hw04-search")
    except metadata.PackageNotFoundError:
        import configparser

        config = configparser.ConfigParser()
        config.read(Path(__file__).resolve().parents[2] / "setup.cfg", encoding="utf-8")
        return config.get("metadata", "version", fallback="unknown")


@click.group(cls=SafeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_version(), "--version", prog_name="search",
                      help="Print the version of search (the hw04-search package) and exit.")
def main() -> None:
    """Hyperparameter search for HW04 speaker classification, on Optuna.

    \b
    Quick start:
      search run --trials 20          # a study on the embedded data
      search dashboard                # browse it in optuna-dashboard
      search report                   # one HTML page of plotly figures: report.html
      search finalize best            # retrain the best config, write predictions.csv
    """
    optuna.logging.set_verbosity(optuna.logging.WARNING)
