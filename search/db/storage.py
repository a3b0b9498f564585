"""Storage URLs -> Optuna storages, made safe for several workers.

- ``sqlite:///studies/studies.sqlite3`` (default, every study of the folder): one machine. WAL journal, a long busy timeout and
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
import time
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalStorage

from search.db import sqlite
from search.errors import NoStudyStorage, UserError
from search.db.heartbeat import MAX_RETRY, heartbeat_settings
from search.db.redaction import redact, redact_url

CONNECT_TIMEOUT = 10  # seconds to reach a database server before giving up
STORAGE_ENV = "SEARCH_STORAGE"  # the storage URL of commands given no --storage
DB_EXTRA = 'pip install -e ".[db]"'  # installs every driver below (psycopg 3, pymysql, grpcio)
PROXY_PORT = 13000  # Optuna's default port for run_grpc_proxy_server and GrpcStorageProxy


STUDY_NAME_MAX = 100  # characters; Optuna's column holds 512, but a name also names files under studies/


def check_study_name(name: str) -> None:
    """A study name is a name: it also names its folder ``studies/<name>/`` (and, in earlier versions, its own
    file ``studies/<name>.db``), so it must
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


# Every study of a folder in one SQLite file: the dashboard lists them all and compares them. Not a ``.db``: the
# per-study files of earlier versions are ``studies/<study>.db``, and no study name can name this one.
SHARED_FILE = "studies/studies.sqlite3"
SHARED_URL = f"sqlite:///{SHARED_FILE}"


def old_study_file(study: str) -> Path:
    """The study's own SQLite file of earlier versions, ``studies/<study>.db`` (there or not)."""
    return Path("studies") / f"{study}.db"


def default_url(study: str) -> str:
    """The storage of a command given no ``--storage``: ``$SEARCH_STORAGE`` if set; else the study's own file of
    earlier versions where it is there (until ``search migrate`` moves it); else the folder's shared file."""
    check_study_name(study)
    old = old_study_file(study)
    return env_url() or (f"sqlite:///{old.as_posix()}" if old.is_file() else SHARED_URL)


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

    from search.db.optuna_internals import journal_op_codes

    known = journal_op_codes()
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
        return _journal_storage(url, create)
    if is_grpc(url):
        return _grpc_storage(url)
    parsed = sqlalchemy.engine.make_url(url)
    backend = parsed.get_backend_name()
    parsed, engine_kwargs = _engine_settings(url, parsed, create, read_only)
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


def _journal_storage(url: str, create: bool) -> JournalStorage:
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


def _engine_settings(url: str, parsed: sqlalchemy.engine.URL, create: bool,
                     read_only: bool) -> tuple[sqlalchemy.engine.URL, dict]:
    """(the URL with an installed driver, SQLAlchemy's engine arguments) for an RDB storage."""
    backend = parsed.get_backend_name()
    engine_kwargs: dict = {}
    if backend == "sqlite":
        engine_kwargs = sqlite.engine_kwargs(parsed.database, option_text(url), create, read_only)
    elif backend in ("postgresql", "mysql", "mariadb"):
        parsed = _with_installed_driver(parsed)
        engine_kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT}
        engine_kwargs["pool_pre_ping"] = True  # a connection the server dropped is replaced, not an error
    return parsed, engine_kwargs


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
        sqlalchemy.event.listen(storage.engine, "connect", sqlite.pragmas)
        sqlalchemy.event.listen(storage.engine, "begin", sqlite.begin_immediate)
        storage.engine.dispose()  # the connection opened while creating the tables predates the listeners
        with storage.engine.connect() as connection:  # WAL is a property of the file: set it now
            connection.exec_driver_sql("SELECT 1")
    return storage
