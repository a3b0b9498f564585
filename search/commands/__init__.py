"""The ``search`` command line, one small module per group of commands (as lhotse's ``lhotse/bin/modes/``):
``base`` holds the group and the shared options; each command parses its options, calls one library
function and prints what it returns. Importing this package registers every command on ``base.main``.
"""

from search.commands import data, enqueue, manage, run, serve, views  # noqa: F401 - registers the commands
