"""The commands that serve until Ctrl-C: ``dashboard`` (optuna-dashboard, search/reporting/dashboard.py) and ``proxy``
(a gRPC storage proxy for many workers, search/db/proxy.py).
"""

from __future__ import annotations

import sys

import click

from search.commands.base import _resolve_storage, count, main, storage_option, study_option
from search.processes.guard import friendly_errors


@main.command()
@study_option
@storage_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (127.0.0.1: this machine only).")
@click.option("--port", type=count(65535, "a TCP port"), default=8080, show_default=True,
              help="Port to listen on.")
def dashboard(study_name, storage, host, port):
    """Start optuna-dashboard on a study's storage.

    It also serves the study's artifacts (the finalized model, config and CSV). Every trial's page shows its resolved configuration, parameter count, steps/s, device, wall time,
    validation curve and why it ended (user attributes and intermediate values). Stop it with Ctrl-C.

    Example: search dashboard --study hw04 --port 8080
    """
    from search.reporting.dashboard import serve

    serve(study_name, storage, host, port, click.echo)


@main.command()
@click.option("--storage", default=None, metavar="URL", callback=_resolve_storage,
              help="The database to serve: postgresql://, mysql+pymysql:// or sqlite:/// [default: $SEARCH_STORAGE].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 serves other machines (an unencrypted port: trusted networks only).")
@click.option("--port", type=count(65535, "a TCP port"), default=13000, show_default=True,
              help="Port to listen on (workers: --storage grpc://HOST:PORT).")
@friendly_errors
def proxy(storage, host, port):
    """Serve a storage to many workers over gRPC.

    One proxy (Optuna's GrpcStorageProxy) in front of the storage.

    Workers give --storage grpc://HOST:PORT and share the proxy's database connections instead of
    opening their own: hundreds of workers, a handful of connections. Runs until Ctrl-C or SIGTERM.

    \b
    Example: search proxy --storage postgresql://search:PASSWORD@dbhost/optuna --host 0.0.0.0
             search run --study hw04 --trials 50 --storage grpc://proxyhost:13000 --data Dataset/
    """
    from search.errors import UserError
    from search.db.proxy import serve
    from search.db.storage import env_url

    url = storage or env_url()
    if url is None:
        raise UserError("--storage: give the database to serve (postgresql://..., mysql+pymysql://... or "
                        "sqlite:///...), or set SEARCH_STORAGE")
    sys.exit(serve(url, host, port, echo=click.echo))
