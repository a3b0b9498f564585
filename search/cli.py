"""The ``search`` command line: a thin click layer over the library (tested in-process with CliRunner).

The commands live in search/commands/ (one module per group); this module is the entry point
(``search = search.cli:main``, ``python -m search.cli``). Every command turns bad input into one line,
``Error: <what>: <problem>``, and a non-zero exit.
"""

from __future__ import annotations

import sys

import search.commands  # noqa: F401 - registers the commands on main
from search.commands.base import main, package_version, study_option  # noqa: F401 - the entry point and its API

if __name__ == "__main__":
    sys.exit(main())
