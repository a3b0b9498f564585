"""``search proxy``: one gRPC storage proxy in front of a database, for many workers on many machines.

Each worker that opens ``postgresql://`` or ``mysql://`` itself holds its own database connections
(a pool per process), so hundreds of workers mean hundreds of connections, past the server's limit
(PostgreSQL's ``max_connections`` is 100 by default). Optuna's answer is a proxy: one process holds the
database connections, behind Optuna's cache, and serves the storage API over gRPC
(``optuna.storages.run_grpc_proxy_server``); workers open ``grpc://HOST:PORT`` (``GrpcStorageProxy``,
see ``search.db.storage``) and need no database driver, only grpcio.

What the proxy does not do, in Optuna 5: relay heartbeats (a trial of a killed worker stays RUNNING, as
with journal storage, until a run on that worker's machine fails it: search/running/runner.py), serve a journal storage (optuna/optuna#6084), encrypt or authenticate (it is
an insecure gRPC port: listen on a trusted network only). All workers of a study go through the proxy
or none do: a worker connected to the database directly fails the proxied workers' running trials
after the grace period, since they never record a heartbeat.
"""

from __future__ import annotations

import signal
import socket
import warnings
from typing import Callable

import optuna

from search.errors import UserError
from search.db.storage import (PROXY_PORT, check_url, is_grpc, is_journal, open_storage, redact_url, require_grpc,
                            option_text)

DEFAULT_HOST = "127.0.0.1"  # this machine only; --host 0.0.0.0 serves other machines
DEFAULT_PORT = PROXY_PORT
SIGINT_EXIT, SIGTERM_EXIT = 128 + signal.SIGINT, 128 + signal.SIGTERM


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def check_listen(host: str, port: int) -> None:
    """Refuse an address the proxy cannot listen on, before saying it serves there.

    gRPC itself would not say: its server sets SO_REUSEPORT, so a second proxy on a busy port starts
    "fine" and the kernel shares the workers between the two (serving different databases, or the same
    one twice). A plain socket (without SO_REUSEPORT) cannot bind a port a server listens on.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        raise UserError(f"--host {host}: not an address or host name this machine can resolve "
                        f"({getattr(err, 'strerror', None) or err})") from None
    family, kind, proto, _, address = infos[0]
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT is free
            probe.bind(address)
    except OSError as err:
        what = f"--port {port}: already in use on {host}" if err.errno == 98 else \
            f"--host {host} --port {port}: cannot listen there ({err.strerror})"
        raise UserError(what) from None


def worker_url(host: str, port: int) -> str:
    """The ``--storage`` that workers give to reach a proxy listening on ``host``: this machine's name when
    it listens on every interface (other machines cannot use 0.0.0.0)."""
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"grpc://{f'[{host}]' if ':' in host else host}:{port}"


def serve(url: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          echo: Callable[[str], None] = print) -> int:
    """Serve the storage at ``url`` on ``host:port`` until Ctrl-C or SIGTERM; returns the exit status
    (130 or 143, the shell's convention for a process ended by that signal).

    The database is opened (and its schema created) before the proxy says it serves, so a wrong URL or
    an unreachable server is one error line, not a proxy whose workers all fail.
    """
    check_url(url)
    if is_journal(url) or is_grpc(url):
        raise UserError(f"{option_text(url)}: a proxy serves a database storage (postgresql://, mysql+pymysql:// or "
                        "sqlite:///); Optuna 5's proxy cannot serve a journal file, and proxying a proxy gains "
                        "nothing")
    require_grpc(url)
    check_listen(host, port)  # first: a busy port creates no storage
    # No heartbeats here: workers record them through their own storage, and GrpcStorageProxy has none.
    storage = optuna.storages.get_storage(open_storage(url, heartbeat_interval=None))  # + Optuna's cache
    echo(f"search proxy: serving {redact_url(url)} on {host}:{port}; workers: search run --storage "
         f"{worker_url(host, port)} ...; Ctrl-C stops it")

    def stop(signum, _frame):
        raise _Stopped(signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        with warnings.catch_warnings():  # "experimental" in Optuna 5: used knowingly, tested
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.run_grpc_proxy_server(storage, host=host, port=port)
    except KeyboardInterrupt:
        echo("search proxy: stopped (Ctrl-C)")
        return SIGINT_EXIT
    except _Stopped:
        echo("search proxy: stopped (SIGTERM)")
        return SIGTERM_EXIT
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
