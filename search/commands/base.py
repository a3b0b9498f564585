"""The ``search`` group and the options its commands share (as lhotse's ``lhotse/bin/modes/cli_base.py``).

Every command of the group is a ``SafeCommand`` (search/guard.py): whatever goes wrong reaches the user as
one ``Error:`` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

from pathlib import Path

import click
import optuna

from search.guard import SafeGroup

DEFAULT_STUDY = "hw04"
SEED_MAX = 2**32 - 1  # numpy's and Optuna's samplers take seeds in 0 .. 2**32-1


def _check_study(_ctx, _param, value: str) -> str:
    from search.errors import UserError
    from search.storage import check_study_name

    try:
        check_study_name(value)
    except UserError as err:
        raise click.ClickException(str(err)) from None
    return value


def _resolve_storage(_ctx, _param, value: str | None) -> str | None:
    """--storage as every process uses and prints it (a journal path made absolute)."""
    from search.errors import UserError
    from search.storage import resolve_url

    try:
        return None if value is None else resolve_url(value)
    except UserError as err:
        raise click.ClickException(str(err)) from None


def storage_option(f):
    return click.option("--storage", default=None, metavar="URL", callback=_resolve_storage,
                        help="Optuna storage URL [default: $SEARCH_STORAGE, else sqlite:///studies/<study>.db]; "
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
