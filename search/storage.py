"""Storage URLs -> Optuna storages, made safe for several workers.

- ``sqlite:///studies/hw04.db`` (default): one machine. WAL journal, a long busy timeout and
  ``BEGIN IMMEDIATE`` transactions, so several processes on one file wait for each other instead of
  failing with "database is locked", and two of them never start the same queued trial.
- ``postgresql://...``, ``mysql+pymysql://...``: many workers on many machines.
- ``grpc://HOST:PORT``: a ``search proxy`` (Optuna's ``run_grpc_proxy_server``) in front of one of those,
  reached through Optuna's ``GrpcStorageProxy``: hundreds of workers without hundreds of database
  connections.
- ``journal:///abs/path.log`` or ``journal://rel/path.log`` (or any path ending in ``.log``): Optuna's journal
  file storage. Like a ``file://`` URL, and unlike ``sqlite:///``, three slashes mean an absolute path:
  ``journal:///tmp/j.log`` is ``/tmp/j.log`` on every machine, never ``./tmp/j.log`` (a relative path
  on several machines silently makes a separate study on each). ``resolve_url`` turns a relative path
  into the absolute URL that commands print. (Optuna's and optuna-dashboard's command lines take the
  journal file's plain path; neither has a journal URL.)

``SEARCH_STORAGE``, when set, is the storage of every command that is given no ``--storage``
(``default_url``); ``--storage`` wins over it.

RDB storages get heartbeats: a worker that dies mid-trial stops beating, and after the grace period the
next worker to ask for a trial marks it FAIL and re-queues its parameters
(``RetryHeartbeatStaleTrialCallback``), so no trial stays RUNNING forever. Intervals: 10 s / 30 s, or
``SEARCH_HEARTBEAT_INTERVAL`` / ``SEARCH_GRACE_PERIOD``. Journal storage has no heartbeat in Optuna 5, nor
has ``GrpcStorageProxy`` (it does not relay them).
``postgresql://`` uses SQLAlchemy 2.1's default driver, psycopg 3 (the ``db`` extra installs it, so that
Optuna's CLI and optuna-dashboard open the same URLs), or psycopg2 where only that is installed;
``mysql://`` uses pymysql where mysqlclient is not installed. A missing driver is one line that names
the extra to install.
"""

from __future__ import annotations

import importlib.util
import os
import random
import re
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from search.errors import NoStudyStorage, UserError
from search.sqlite_path import sqlite_path

HEARTBEAT_INTERVAL = 10  # seconds between a running trial's heartbeats
GRACE_PERIOD = 30  # seconds without a heartbeat before a trial counts as dead
MAX_RETRY = 3  # times a dead trial's parameters are run again
# Overrides (whole seconds), e.g. for tests: SEARCH_HEARTBEAT_INTERVAL=1 SEARCH_GRACE_PERIOD=3.
# Worker processes inherit them from the environment.
HEARTBEAT_ENV, GRACE_ENV = "SEARCH_HEARTBEAT_INTERVAL", "SEARCH_GRACE_PERIOD"
CONNECT_TIMEOUT = 10  # seconds to reach a database server before giving up
SQLITE_BUSY_TIMEOUT = 120  # seconds a SQLite writer waits for another process's lock
STORAGE_ENV = "SEARCH_STORAGE"  # the storage URL of commands given no --storage
DB_EXTRA = 'pip install -e ".[db]"'  # installs every driver below (psycopg 3, pymysql, grpcio)
PROXY_PORT = 13000  # Optuna's default port for run_grpc_proxy_server and GrpcStorageProxy


def _seconds_from_env(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    # bounded above too, as every number a user types (search/commands/base.py Bounded): a day
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) <= 86_400:
        raise UserError(f"{name}={text}: expected a whole number of seconds from 1 to 86,400")
    return int(text)


def heartbeat_settings() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: the defaults or the environment's overrides."""
    interval = _seconds_from_env(HEARTBEAT_ENV, HEARTBEAT_INTERVAL)
    grace = _seconds_from_env(GRACE_ENV, max(GRACE_PERIOD, 3 * interval) if HEARTBEAT_ENV in os.environ
                              else GRACE_PERIOD)
    if grace <= interval:
        raise UserError(f"{GRACE_ENV}={grace}: the grace period must be longer than the heartbeat interval "
                        f"({interval} s), or live trials would be taken for dead ones")
    return interval, grace


STUDY_NAME_MAX = 100  # characters; Optuna's column holds 512, but a name also names files under studies/


def check_study_name(name: str) -> None:
    """A study name is a name: it also names ``studies/<name>.db`` and ``studies/<name>/``, so it must
    not be empty, hold a path separator or a control character, start with a dot, or be over-long."""
    problem = None
    if not name or not name.strip():
        problem = "a study name cannot be empty"
    elif "/" in name or "\\" in name:
        problem = "a study name cannot contain '/' or '\\' (it names files under studies/)"
    elif name.startswith("."):
        problem = "a study name cannot start with '.'"
    elif any(ord(c) < 32 or ord(c) == 127 or 0x80 <= ord(c) < 0xA0 for c in name):
        problem = "a study name cannot contain control characters"
    elif len(name) > STUDY_NAME_MAX:
        problem = f"a study name has at most {STUDY_NAME_MAX} characters, this one {len(name)}"
    if problem:
        shown = repr(name if len(name) <= 60 else name[:60] + "...")
        raise UserError(f"--study {shown}: {problem}")


def default_url(study: str) -> str:
    """The storage of a command given no ``--storage``: ``$SEARCH_STORAGE`` if set, else the study's own
    SQLite file."""
    check_study_name(study)
    return env_url() or f"sqlite:///studies/{study}.db"


def env_url() -> str | None:
    """``$SEARCH_STORAGE``, resolved (``resolve_url``), or None where it is unset or empty."""
    text = os.environ.get(STORAGE_ENV, "").strip()
    return resolve_url(text) if text else None


def option_text(url: str) -> str:
    """How messages name a storage URL: as ``--storage``, passwords hidden, and where it is
    ``$SEARCH_STORAGE``, saying so (a user who set it long ago and gave no --storage sees why)."""
    text = os.environ.get(STORAGE_ENV, "").strip()
    from_env = bool(text) and (text == url or (is_journal(text) and _resolved_or_none(text) == url))
    return f"--storage {redact_url(url)}" + (f" (from {STORAGE_ENV})" if from_env else "")


def _resolved_or_none(url: str) -> str | None:
    try:
        return resolve_url(url)
    except UserError:
        return None


def is_journal(url: str) -> bool:
    return url.startswith("journal:") or ("://" not in url and url.endswith(".log"))


def is_grpc(url: str) -> bool:
    return url.startswith("grpc:")


def journal_path(url: str) -> Path:
    """The journal file of ``journal:///abs/path``, ``journal://rel/path`` or a plain ``path.log``, made
    absolute (relative to the current folder)."""
    text = url.removeprefix("journal:").removeprefix("//") if url.startswith("journal:") else url
    if not text.strip("/"):
        raise UserError(f"{option_text(url)}: no file path (e.g. journal:///shared/studies/hw04.log, absolute, or "
                        "journal://studies/hw04.log, relative to the current folder)")
    if text.startswith("//"):  # journal:////abs/path (the older spelling of an absolute path)
        text = "/" + text.lstrip("/")
    return Path(os.path.abspath(os.path.expanduser(text)))


def resolve_url(url: str) -> str:
    """``url`` as commands use and print it: a journal path made absolute (``journal:///abs/path.log``),
    so that every process, and the printed resume command, name the same file; other URLs as given.

    Every storage URL given to a command passes here first (``--storage``, ``$SEARCH_STORAGE``): its password
    is registered now (``redact_url``), so that no message or log line shows it, in whatever form."""
    redact_url(url)
    if is_journal(url):
        return "journal://" + journal_path(url).as_posix()
    return url


def grpc_address(url: str) -> tuple[str, int]:
    """(host, port) of ``grpc://HOST[:PORT]`` (port 13000 if not given), as GrpcStorageProxy takes them."""
    from urllib.parse import urlsplit

    example = (f"expected grpc://HOST:PORT, the address of a `search proxy` (e.g. grpc://127.0.0.1:{PROXY_PORT})")
    parts = urlsplit(url)
    try:
        port = PROXY_PORT if parts.port is None else parts.port
    except ValueError:
        port = 0
    if not 0 < port < 65536:
        raise UserError(f"{option_text(url)}: {example}; the port must be a number from 1 to 65535")
    if not parts.hostname or parts.path.strip("/") or parts.query or parts.fragment or parts.username:
        raise UserError(f"{option_text(url)}: {example}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname  # an IPv6 address
    return host, port


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


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # the driver's own implicit BEGIN off: _sqlite_begin decides
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers don't block the writer
    cursor.execute("PRAGMA synchronous=NORMAL")  # safe with WAL; fewer fsyncs per write
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT * 1000}")
    cursor.close()


def _sqlite_begin(connection) -> None:
    """Every transaction takes SQLite's write lock up front (waiting up to the busy timeout for it).

    SQLite ignores ``SELECT ... FOR UPDATE``, so without this two workers can both read a WAITING trial
    and both start it; and a deferred transaction that reads, then writes after another process
    committed fails at once with "database is locked" whatever the busy timeout. Serialising the
    (short) transactions of a study's workers costs nothing next to a trial's training time.
    """
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a module blocked in sys.modules
        return False


def _with_installed_driver(url: sqlalchemy.engine.URL) -> sqlalchemy.engine.URL:
    """``postgresql://`` and ``mysql://`` with a driver that is installed: SQLAlchemy 2.1's defaults
    (psycopg 3, mysqlclient) where they are, else psycopg2 and pymysql. The ``db`` extra installs
    psycopg 3 and pymysql."""
    fallbacks = {"postgresql": ("psycopg", "psycopg2"), "mysql": ("MySQLdb", "pymysql"),
                 "mariadb": ("MySQLdb", "pymysql")}
    if url.drivername in fallbacks:
        default, other = fallbacks[url.drivername]
        if not _installed(default) and _installed(other):
            return url.set(drivername=f"{url.drivername}+{other}")
    return url


_BACKEND_NAMES = {"postgresql": "PostgreSQL", "mysql": "MySQL", "mariadb": "MariaDB"}
_EXTRA_DRIVERS = ("psycopg", "psycopg2", "pymysql")  # the drivers the db extra installs or falls back on


def _missing_driver(url: str, parsed: sqlalchemy.engine.URL | None) -> UserError:
    """The one line for a storage whose Python driver is not installed: which one, and how to install it."""
    if parsed is None:  # grpc://
        return UserError(f"{option_text(url)}: the gRPC client (grpcio, protobuf) is not installed; {DB_EXTRA}")
    backend = _BACKEND_NAMES.get(parsed.get_backend_name(), parsed.get_backend_name())
    explicit = parsed.get_driver_name() if "+" in parsed.drivername else None
    if explicit and explicit not in _EXTRA_DRIVERS:  # e.g. postgresql+pg8000://: not one the extra installs
        return UserError(f"{option_text(url)}: the {backend} driver {explicit} is not installed; pip install {explicit}, "
                         f"or drop +{explicit} from the URL to use the db extra's driver ({DB_EXTRA})")
    return UserError(f"{option_text(url)}: the {backend} driver is not installed; {DB_EXTRA}")


def check_url(url: str) -> None:
    """Refuse a malformed URL before any work is done (reachability is checked when it is opened)."""
    redact_url(url)  # remembers the password, so that no later message shows it
    if is_journal(url):
        journal_path(url)
        return
    if is_grpc(url):
        grpc_address(url)
        return
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError, TypeError) as err:
        why = "a port must be a number" if "int()" in str(err) else "not a storage URL"
        raise UserError(f"{option_text(url)}: {why} (e.g. sqlite:///studies/hw04.db, postgresql://user@host/db, "
                        f"mysql+pymysql://user@host/db, grpc://host:{PROXY_PORT}, journal:///shared/hw04.log)") from None
    if parsed.host and "@" in parsed.host:
        raise UserError(f"{option_text(url)}: more than one '@' (a password with '@' must be written %40)")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise UserError(f"{option_text(url)}: an in-memory SQLite database cannot be shared with workers or "
                        "resumed, and is lost at exit; use a file, e.g. sqlite:///studies/hw04.db")


def _journal_problem(path: Path, err: Exception) -> str:
    """The first line of a journal file that Optuna cannot replay, and why (for the message of a damaged file)."""
    import json

    from optuna.storages.journal._storage import JournalOperation

    known = {op.value for op in JournalOperation}
    try:
        with open(path, "rb") as f:
            for number, raw in enumerate(f, 1):
                try:
                    entry = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    return f"line {number}: not UTF-8 text"
                except ValueError:
                    if raw.endswith(b"\n"):  # Optuna skips a last line without its newline (a write in progress)
                        return f"line {number}: not a JSON record"
                    continue
                if not isinstance(entry, dict) or entry.get("op_code") not in known:
                    return f"line {number}: not an operation Optuna knows"
    except OSError as read_err:
        return read_err.strerror or str(read_err)
    return f"{type(err).__name__}: {str(err)[:120]}"


def open_storage(url: str, heartbeat_interval: int | None = -1, grace_period: int | None = -1,
                 create: bool = True, read_only: bool = False) -> optuna.storages.BaseStorage:
    """Open (creating if needed) the storage at ``url``; a one-line UserError if that fails.

    Heartbeat interval and grace period default to ``heartbeat_settings()``; ``heartbeat_interval=None``
    turns heartbeats off. Journal storages and storage proxies have no heartbeat in Optuna 5: a trial of
    a killed worker stays RUNNING there (use an RDB storage where workers may be killed). ``create=False``
    (commands that only use an existing study) refuses a SQLite or journal file that does not exist instead
    of creating it, and a database that holds no Optuna tables (``NoStudyStorage``) instead of creating them:
    another program's database, an empty file or database, is not ours to change. ``read_only`` (commands
    that write nothing: studies, show, trials, report; implies ``create=False``) opens a SQLite file
    read-only (``_sqlite_read_only``): no WAL switch, no write lock, and no sidecar file where the file or its
    folder is read-only.
    """
    create = create and not read_only
    if read_only:  # a heartbeat is a write, and a reader has no trial to keep alive
        heartbeat_interval = None
    check_url(url)
    if is_journal(url):
        path = journal_path(url)  # absolute: journal:///tmp/j.log is /tmp/j.log, journal://j.log ./j.log
        if not create and not path.is_file():
            raise UserError(f"{option_text(url)}: no such file {path}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))  # reads (replays) the whole file
        except OSError as err:
            raise UserError(f"{option_text(url)}: cannot open the journal file ({err.strerror})") from None
        except (UnicodeDecodeError, ValueError, AssertionError, KeyError, TypeError, AttributeError) as err:
            # A damaged file (bytes that are not UTF-8, a line of another program, an operation Optuna does not
            # know) fails deep inside Optuna's replay with UnicodeDecodeError or "AssertionError: Should not
            # reach.": say which file and which line instead.
            raise UserError(f"{option_text(url)}: the journal file {path} is damaged ({_journal_problem(path, err)}); "
                            "Optuna cannot read it: restore it from a copy, or remove the damaged lines") from None
    if is_grpc(url):
        return _grpc_storage(url)
    parsed = sqlalchemy.engine.make_url(url)
    backend = parsed.get_backend_name()
    engine_kwargs: dict = {}
    if backend == "sqlite":
        database = sqlite_path(url)
        if not create and database and not Path(database).is_file():
            raise UserError(f"{option_text(url)}: no such file {database}")
        if database and database != ":memory:":
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UserError(f"{option_text(url)}: cannot create {Path(database).parent} ({err.strerror})") from None
        if read_only:
            engine_kwargs["creator"] = _sqlite_read_only(Path(database))
        else:
            engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    elif backend in ("postgresql", "mysql", "mariadb"):
        parsed = _with_installed_driver(parsed)
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
        engine_kwargs["pool_pre_ping"] = True  # a connection the server dropped is replaced, not an error
    if heartbeat_interval == -1 or grace_period == -1:
        default_interval, default_grace = heartbeat_settings()
        heartbeat_interval = default_interval if heartbeat_interval == -1 else heartbeat_interval
        grace_period = default_grace if grace_period == -1 else grace_period
    for attempt in range(SCHEMA_RETRIES + 1):
        try:
            if not create and not _has_optuna_tables(parsed, engine_kwargs):
                raise NoStudyStorage(f"{option_text(url)}: holds no study (no Optuna tables there; this command "
                                     "creates none: `search run` makes a study)")
            return _rdb_storage(parsed, backend, engine_kwargs, heartbeat_interval, grace_period,
                                create=create, read_only=read_only)
        except ImportError:  # Optuna's "Failed to import DB access module": the driver is not installed
            raise _missing_driver(url, parsed) from None
        except (sqlalchemy.exc.SQLAlchemyError, ValueError, TypeError) as err:
            reason = str(getattr(err, "orig", None) or err).strip()
            if attempt < SCHEMA_RETRIES and _schema_race(reason):
                # Several processes creating the tables of a new storage at once: one wins, the others
                # see its half-made schema (alembic_version's UNIQUE constraint, "already exists"). Retry.
                time.sleep(0.2 * (attempt + 1) + random.random() * 0.3)
                continue
            reason = (reason.splitlines() or [type(err).__name__])[0]
            raise UserError(f"{option_text(url)}: cannot open the storage ({redact(reason)[:200]})") from None
    raise AssertionError("unreachable")


def require_grpc(url: str) -> None:
    """A one-line UserError naming the extra where grpcio or protobuf (Optuna's gRPC proxy needs both)
    is not installed."""
    if not (_installed("grpc") and _installed("google.protobuf")):
        raise _missing_driver(url, None)


def _grpc_storage(url: str) -> optuna.storages.BaseStorage:
    """Optuna's GrpcStorageProxy on a ``search proxy`` at ``grpc://HOST:PORT``, once it answers."""
    host, port = grpc_address(url)
    require_grpc(url)
    from optuna.storages import GrpcStorageProxy

    with warnings.catch_warnings():  # "experimental" in Optuna 5: used knowingly, tested
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        proxy = GrpcStorageProxy(host=host, port=port)
    try:
        proxy.wait_server_ready(timeout=CONNECT_TIMEOUT)
    except ConnectionError:
        proxy.close()
        raise UserError(f"{option_text(url)}: no storage proxy answers at {host}:{port} within {CONNECT_TIMEOUT} s "
                        f"(start one there: search proxy --storage URL --host HOST --port {port})") from None
    return proxy


SCHEMA_RETRIES = 8


def _schema_race(reason: str) -> bool:
    reason = reason.lower()
    return any(s in reason for s in ("unique constraint failed: alembic_version", "already exists",
                                     "duplicate key value", "duplicate entry", "database is locked",
                                     "deadlock", "table alembic_version"))


# Optuna's own tables (Optuna 5's schema has more): a storage without them holds no study
OPTUNA_TABLES = frozenset({"studies", "trials", "version_info", "alembic_version"})


def _has_optuna_tables(parsed, engine_kwargs: dict) -> bool:
    """Whether the database holds Optuna's tables, asked without changing anything (SQLAlchemy's inspector)."""
    engine = sqlalchemy.create_engine(parsed, **engine_kwargs)
    try:
        return OPTUNA_TABLES <= set(sqlalchemy.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def _sqlite_read_only(path: Path):
    """A connection factory that opens the SQLite file read-only (a URI: ``mode=ro``), for commands that write
    nothing: the file is not switched to WAL and no write lock is taken.

    Where the file or its folder is read-only (no write permission bit, or not writable by this user: chattr +i
    too) and no -wal file holds commits beside it, with ``immutable=1``: SQLite then reads the file as it is,
    without the -wal and -shm files it cannot create there (a WAL file read with ``mode=ro`` needs them).
    Nobody can be writing a read-only file, which is what ``immutable`` assumes. Permission bits are asked
    too, not only access(2): root may write anything. With commits in a -wal file (a writer has it open, or
    was killed), ``immutable`` would not read them: ``mode=ro`` then, which reads them.
    """
    import sqlite3

    absolute = path.resolve()

    def writable(p: Path) -> bool:
        try:
            return bool(p.stat().st_mode & 0o222) and os.access(p, os.W_OK)
        except OSError:
            return False

    wal = absolute.with_name(absolute.name + "-wal")
    pending = wal.is_file() and wal.stat().st_size > 0
    immutable = not pending and not (writable(absolute) and writable(absolute.parent))
    uri = absolute.as_uri() + ("?immutable=1" if immutable else "?mode=ro")
    return lambda: sqlite3.connect(uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT, check_same_thread=False)


def _rdb_storage(parsed, backend: str, engine_kwargs: dict, heartbeat_interval, grace_period,
                 create: bool = True, read_only: bool = False) -> RDBStorage:
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna 5: used knowingly, tested
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY) if heartbeat_interval else None
        storage = RDBStorage(parsed.render_as_string(hide_password=False), engine_kwargs=engine_kwargs,
                             heartbeat_interval=heartbeat_interval or None,
                             grace_period=grace_period if heartbeat_interval else None,
                             heartbeat_stale_trial_callback=retry, skip_table_creation=not create)
    if backend == "sqlite" and not read_only:
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        sqlalchemy.event.listen(storage.engine, "begin", _sqlite_begin)
        storage.engine.dispose()  # the connection opened while creating the tables predates the listeners
        with storage.engine.connect() as connection:  # WAL is a property of the file: set it now
            connection.exec_driver_sql("SELECT 1")
    return storage
