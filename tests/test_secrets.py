"""Passwords in storage URLs (issue 23): whatever characters a password holds, no command prints it and no file
we write holds it, in any form.

The storage URLs point at 127.0.0.1:1, where nothing listens: every command goes through the path where it
names the storage in an ``Error:`` line (and ``run`` and ``finalize`` through their log file too) in a
fraction of a second, which is what lets the property test try many passwords. The run that connects (and
prints the storage in its summary lines) is ``test_storage_password_is_never_shown_or_stored`` in
test_faults.py, with such a password too.
"""

from __future__ import annotations

import socket
import string
from pathlib import Path
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.helpers import in_folder, invoke, one_error_line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(url: str, data: Path) -> list[list[str]]:
    """Every command that takes ``--storage``, as a user would type it (the dashboard is left out: it serves
    until stopped, and names the storage through the same ``load_study`` as show and trials)."""
    return [["run", "--trials", "1", "--study", "s", "--storage", url, "--data", str(data), "--budget", "8",
             "--device", "cpu"],
            ["finalize", "best", "--study", "s", "--storage", url],
            ["trials", "--study", "s", "--storage", url, "--json"],
            ["show", "--study", "s", "--storage", url],
            ["studies", "--storage", url, "--json"],
            ["report", "--study", "s", "--storage", url],
            ["proxy", "--storage", url, "--port", str(_free_port())]]


def leaks(secrets: set[str], folder: Path, outputs: list[str]) -> list[str]:
    """Where any of ``secrets`` shows: in an output, or in a file under ``folder`` (logs, reports, studies)."""
    found = [f"output {i}" for i, text in enumerate(outputs) for s in secrets if s in text]
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            found += [str(path) for s in secrets if s.encode() in data]
    return found


# The passwords that were printed in full before (the URL finder stopped at quotes and whitespace, the
# redactor split the URL at its first '?' before looking for the '@'), typed raw into the URL as users do.
AWKWARD = ["ab'cdSECRET", 'ab"cdSECRET', "ab<cdSECRET", "ab>cdSECRET", "ab cdSECRET", "ab?cdSECRET",
           "ab?x=1&SECRET", "ab%27cd SECRET"]


@pytest.mark.parametrize("password", AWKWARD, ids=["quote", "double-quote", "lt", "gt", "space", "qmark",
                                                   "query-like", "encoded-and-space"])
def test_a_password_with_url_syntax_is_hidden_everywhere(password, tiny_dataset, workdir, capfd):
    url = f"postgresql://postgres:{password}@127.0.0.1:1/test"
    # the study's folder there already (an earlier run's): a refused new study's folder is removed with its log
    # (nothing half-made), this one is kept, and its log is written and searched for the password
    (workdir / "studies" / "s").mkdir(parents=True)
    results = [invoke(*args) for args in commands(url, tiny_dataset)]
    captured = capfd.readouterr()  # Optuna's logger and anything else written to the real stdout/stderr
    outputs = [r.output for r in results] + [captured.out, captured.err]
    for result in results:
        line = one_error_line(result)
        assert "postgres:***@127.0.0.1:1/test" in line, line  # the storage is named, its password hidden
    assert (workdir / "studies" / "s" / "search.log").is_file()  # run's log: it holds the command line
    assert not leaks({password, unquote(password), "SECRET"}, workdir, outputs), outputs


# Printable characters, any of them: the property test types the password raw into the URL or percent-encoded
# (the way to write '@', '/', ':' or '%' so that every driver reads them back). Nothing is left out: once
# percent-encoded, every character can be in a password; typed raw, an '@' makes the URL ambiguous, which is
# refused (one line, the password hidden all the same).
PRINTABLE = st.characters(codec="utf-8", exclude_categories=("C",)).filter(str.isprintable)
URL_SYNTAX = st.sampled_from(" '\"<>?&=#/:@%+;[]\\")  # drawn as often as the rest: what URL parsers trip on
PASSWORDS = st.text(st.one_of(URL_SYNTAX, st.sampled_from(string.printable[:95]), PRINTABLE), min_size=4,
                    max_size=20)


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(drawn=PASSWORDS, encoded=st.booleans())
def test_no_password_is_ever_shown_or_written(drawn, encoded, tiny_dataset, tmp_path_factory, capfd):
    from search.db import redaction

    # Between two markers, so that a leak is told from the same characters occurring by chance: a password
    # "0000" is also in a log line's timestamp or process id, and a search for it there finds no leak.
    password = f"Pw{drawn}Zq"

    # Each command is a process of its own in real use, which knows only the passwords of its own URLs: start
    # each example without those of the examples before (they would be hidden in this example's output too,
    # which no user's process does, and could hide a leak of this one's that overlaps them).
    redaction._SECRETS.clear()
    typed = quote(password, safe="") if encoded else password
    url = f"postgresql://postgres:{typed}@127.0.0.1:1/test"
    folder = tmp_path_factory.mktemp("secret")
    with in_folder(folder):
        results = [invoke(*args) for args in commands(url, tiny_dataset)]
    captured = capfd.readouterr()
    outputs = [r.output for r in results] + [captured.out, captured.err]
    note(f"url {url!r}\n" + "\n".join(outputs))
    for result in results:  # refused, in one line: what the command said is checked for the password below
        assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    assert not leaks({password, typed, unquote(typed)}, folder, outputs)
