"""Passwords of storage URLs, hidden in every message and log line.

Every storage URL a command is given passes through ``redact_url`` first (search/db/storage.py ``resolve_url``,
``check_url``): its password is registered then, in every form it may be printed in, and ``scrub`` / ``redact``
replace it by ``***`` wherever it turns up later (a driver's error, a traceback, the log file).
"""

from __future__ import annotations

import re

import sqlalchemy

# Query-string keys that carry a password (libpq's ``password``, ``sslpassword``; others' ``passwd``, ``pwd``).
_SECRET_KEYS = re.compile(r"(?i)^(password|passwd|pwd|sslpassword|pass|secret|token|api_key)$")
# A URL inside free text (a driver's message, a traceback). It stops at quotes and whitespace, so it cannot
# see where a password holding them ends: such a password is hidden by ``scrub`` (it was registered when its
# storage URL was first seen, by ``redact_url``), not found by this.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"<>]*")
# The password as typed in a URL, read as SQLAlchemy's make_url reads it: the user name has no ':' or '/',
# the password runs to the first '@'.
_TYPED_PASSWORD = re.compile(r"^[\w+.\-]+://[^:/]*:([^@]*)@", re.DOTALL)
_SECRETS: set[str] = set()  # every password seen in a URL by this process: scrubbed from any message
# Shorter passwords are hidden where a URL is parsed, but not replaced in free text: replacing every "pw"
# would mangle every message. (Four characters is also where ``scrub`` is sure to end: "***" is shorter.)
SCRUB_MIN = 4
_HIDDEN = "***"


def _remember(secret: str | None) -> None:
    """Register ``secret`` and every form in which it may be printed: as typed, URL-decoded, URL-encoded
    (fully, as a form, as SQLAlchemy renders it), and escaped by ``repr`` and JSON (a traceback, a log)."""
    if not secret:
        return
    import json
    from urllib.parse import quote, quote_plus, unquote

    forms = set()
    for text in {secret, unquote(secret)}:
        forms |= {text, quote(text, safe=""), quote(text, safe=" +"), quote_plus(text), repr(text)[1:-1],
                  json.dumps(text)[1:-1], json.dumps(text, ensure_ascii=False)[1:-1]}
    _SECRETS.update(f for f in forms if len(f) >= SCRUB_MIN)


def redact_url(url: str) -> str:
    """A storage URL as messages and logs show it: its password (the user-info's, and password-like query
    parameters) replaced by ``***``, and registered (``_remember``) so that no later message shows it in any
    form. A URL without a password comes back exactly as given.

    The URL is parsed as SQLAlchemy parses it (``make_url``), so quotes, spaces, '<', '>', '?' or '&' in a
    password are part of it. A password with an unescaped ``@`` (which make_url reads as part of the host)
    is hidden whole, up to the last ``@`` of the host. A URL make_url cannot parse (a port that is not a
    number) is cut by hand: the user-info ends at the last ``@``.
    """
    url = str(url)
    typed = _TYPED_PASSWORD.match(url)
    if typed:
        _remember(typed.group(1))
    try:
        parsed = sqlalchemy.engine.make_url(url)
        parsed.port  # noqa: B018 - an unparsable port raises here, not in make_url
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError):
        return scrub(_redact_unparsed(url))
    if parsed.host and "@" in parsed.host:  # a password with an unescaped '@': all of it up to the host
        hidden, _, host = parsed.host.rpartition("@")
        _remember(f"{parsed.password or ''}@{hidden}")
        _remember(hidden)  # what a driver would take for the host name
        parsed = parsed.set(host=host, password=parsed.password or _HIDDEN)
    _remember(parsed.password)
    secret_keys = [key for key in parsed.query if _SECRET_KEYS.match(key)]
    for key in secret_keys:
        values = parsed.query[key]
        for value in (values,) if isinstance(values, str) else values:
            _remember(value)
    if not parsed.password and not secret_keys and not (typed and typed.group(1)):
        return scrub(url)
    if secret_keys:
        parsed = parsed.update_query_dict({key: _HIDDEN for key in secret_keys})
    return scrub(parsed.render_as_string(hide_password=True).replace("%2A%2A%2A", _HIDDEN))


def _redact_unparsed(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    at = rest.rfind("@")
    user, colon, password = rest[:max(at, 0)].partition(":")
    if at >= 0 and colon and "/" not in user:
        _remember(password)
        rest = f"{user}:{_HIDDEN}@{rest[at + 1:]}"
    return _hide_query(f"{scheme}://{rest}")


def _hide_query(url: str) -> str:
    """``url`` with the values of password-like query parameters (after the user-info) hidden, as written."""
    start = url.rfind("@") + 1  # the query is after the user-info, whose password may hold a '?'
    head, qmark, query = url[start:].partition("?")
    head = url[:start] + head
    if not qmark:
        return url
    items = []
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        if eq and _SECRET_KEYS.match(key):
            _remember(value)
            item = f"{key}={_HIDDEN}"
        items.append(item)
    return f"{head}?{'&'.join(items)}"


def _redact_found(url: str) -> str:
    """A URL found in free text, its passwords hidden where they are written: not re-rendered, since the text
    around it may have run into it (a trailing ':' or ')' would be read as part of the database name)."""
    redact_url(url)  # registers its passwords, in every form
    url = scrub(url)
    typed = _TYPED_PASSWORD.match(url)
    if typed and typed.group(1) and typed.group(1) != _HIDDEN:  # one too short for scrub to replace
        url = url[:typed.start(1)] + _HIDDEN + url[typed.end(1):]
    return _hide_query(url)


def redact(text: str) -> str:
    """``text`` (a message that may hold URLs) with every password hidden, for messages and logs: URLs found
    in it (``_redact_found``), and every password registered earlier in this process (``scrub``), in any
    form, wherever it appears (a driver echoing it, a password with quotes or spaces the URL finder cannot
    delimit). For a storage URL itself, ``redact_url``."""
    text = _URL_IN_TEXT.sub(lambda m: _redact_found(m.group(0)), str(text))
    return scrub(text)


def scrub(text: str) -> str:
    """``text`` with every password this process has seen in a storage URL replaced by ``***``.

    Replaced until none is left: a ``***`` put in can complete another password ("*@12" in ":***@127"); it
    ends, since every registered form is longer than ``***``."""
    secrets = sorted(_SECRETS, key=len, reverse=True)
    for _ in range(100):
        found = [s for s in secrets if s in text]
        if not found:
            break
        for secret in found:
            text = text.replace(secret, _HIDDEN)
    return text
