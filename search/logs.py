"""What a command prints, and its log file ``studies/<study>/search.log``.

``run`` and ``finalize`` print two kinds of lines:

- summary lines (what was created or resumed, the best trial, where the results are): always printed;
- progress lines (one per finished trial, one per evaluation of ``finalize``, data preparation):
  printed unless ``--quiet``.

Progress lines are printed whether or not the output is a terminal, so a piped or CI log shows them
too; ``--quiet`` is the one switch that silences them. Every line, printed or not, is appended to the
study's log file with a timestamp and the process id (several workers may share one file), as are
Optuna's own warnings (a failed trial's traceback, for one).
"""

from __future__ import annotations

import logging
from pathlib import Path

import click

LOGGER = "search"
FORMAT = "%(asctime)s %(process)d %(levelname)s %(message)s"


def log_path(study_name: str) -> Path:
    return Path("studies") / study_name / "search.log"


class Console:
    """``console(line)`` prints and logs a summary line; ``console.progress(line)`` logs it and prints it
    unless quiet. ``close()`` detaches the log file (done when the click command ends)."""

    def __init__(self, study_name: str, quiet: bool = False) -> None:
        self.quiet = quiet
        self.path = log_path(study_name)
        self.logger = logging.getLogger(LOGGER)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        self.handler: logging.Handler | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handler = logging.FileHandler(self.path, mode="a", encoding="utf-8")
        except OSError as err:  # a read-only folder must not stop a search: say so once, go on
            click.echo(f"warning: cannot write the log file {self.path} ({err.strerror})", err=True)
            return
        self.handler.setFormatter(logging.Formatter(FORMAT))
        self.logger.addHandler(self.handler)
        logging.getLogger("optuna").addHandler(self.handler)

    def __call__(self, line: str, err: bool = False) -> None:
        self.logger.info(line)
        click.echo(line, err=err)

    def progress(self, line: str, err: bool = False) -> None:
        self.logger.info(line)
        if not self.quiet:
            click.echo(line, err=err)

    def data_progress(self, label: str):
        """A ``progress(done, total)`` callback for data preparation: a line at each tenth, and the end."""
        return throttled(lambda done, total: self.progress(f"{label}: {done}/{total}", err=True))

    def close(self) -> None:
        if self.handler is not None:
            self.logger.removeHandler(self.handler)
            logging.getLogger("optuna").removeHandler(self.handler)
            self.handler.close()
            self.handler = None


def throttled(report):
    """Wrap ``report(done, total)`` so it runs only when ``done`` reaches the next tenth of ``total``."""
    last = {"tenth": -1}

    def progress(done: int, total: int) -> None:
        tenth = 10 * done // max(1, total)
        if tenth != last["tenth"]:
            last["tenth"] = tenth
            report(done, total)
    return progress


def open_console(study_name: str, quiet: bool) -> Console:
    """A Console for the running click command, closed when the command ends (also on errors)."""
    console = Console(study_name, quiet)
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.call_on_close(console.close)
        from search.storage import redact  # a --storage password must not reach the log file

        console.logger.info(redact(" ".join([ctx.command_path.split(" ", 1)[-1], *_words(ctx)])))
    return console


def _words(ctx: click.Context) -> list[str]:
    """The command's arguments and options as one would type them (defaults included), for the log."""
    words = []
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or value is False:
            continue
        if isinstance(param, click.Argument):
            words.append(str(value))
        elif value is True and getattr(param, "is_flag", False):
            words.append(param.opts[0])
        else:
            words += [param.opts[0], str(value)]
    return words
