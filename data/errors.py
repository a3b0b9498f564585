"""The one exception the data layer raises for bad input.

Every message names the file (or option) and what is wrong with it, in one line, so the CLI can print
it as it is: users see ``Error: metadata.json: speaker 'id00012' is not in mapping.json``.
"""


class DataError(ValueError):
    """A dataset folder (or a file in it) is missing, malformed or inconsistent."""
