"""The one exception the data layer raises for bad input.

Every message names the file (or option) and what is wrong with it, in one line, so the CLI can print
it as it is: users see ``Error: metadata.json: speaker 'id00012' is not in mapping.json``.
"""


class DataError(ValueError):
    """A dataset folder (or a file in it) is missing, malformed or inconsistent."""


def printable(text: object) -> str:
    """``text`` with every character that is not printable (terminal control bytes such as ESC, a newline, a
    right-to-left override) written as its Python escape (``\\x1b``, ``\\n``, ``\\u202e``): what a user's file
    holds (an Id of a CSV, a speaker name, a path) is shown in a message, never obeyed by the terminal (an ESC
    sequence could clear the screen or rewrite the line), and the message stays one line. Every message that
    shows such text goes through it; the CLI's guard passes every error line through it as well."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
