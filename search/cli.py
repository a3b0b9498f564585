"""The ``search`` command line: a thin click layer over the library (tested in-process with CliRunner).

The commands live in search/commands/ (one module per group); this module is the entry point
(``search = search.cli:run``, ``python -m search.cli``). Every command turns bad input into one line,
``Error: <what>: <problem>``, and a non-zero exit.
"""

from __future__ import annotations

import sys

import search.commands  # noqa: F401 - registers the commands on main
from search.commands.base import main, package_version, study_option  # noqa: F401 - the entry point and its API


def run() -> None:
    """The ``search`` program (console script and ``python -m search.cli``): here the process is the command, so
    what a command may do to the whole process (finalize ignoring signals once its outputs are complete, until the
    process exits) is allowed; called in-process (CliRunner, a notebook, bench/), ``main`` leaves it as it was."""
    from search.processes.signals import own_process

    own_process()
    sys.exit(main())


if __name__ == "__main__":
    run()
