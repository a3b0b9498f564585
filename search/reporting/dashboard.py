"""``search dashboard``: optuna-dashboard on a study's storage, serving its artifacts too."""

from __future__ import annotations

from typing import Callable

from search.errors import UserError
from search.db.proxy import check_listen  # the same question for both servers: can this address be listened on?


def loopback_only(host: str) -> bool:
    """Whether every address ``host`` resolves to is a loopback one (127.0.0.0/8, ::1): this machine only.
    0.0.0.0 / :: (every interface), a LAN address or a host name of one are not."""
    import ipaddress
    import socket

    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):  # check_listen has refused it already
        return False
    return all(ipaddress.ip_address(info[4][0].split("%")[0]).is_loopback for info in infos)


def serve(study_name: str, storage: str | None, host: str, port: int, echo: Callable[[str], None]) -> None:
    """Serve the study (which must exist) until Ctrl-C; ``echo`` gets the line with its URL."""
    import optuna_dashboard

    from search.db import optuna_internals
    from search.finalizing.artifacts import artifact_store, register_mimetypes
    from search.files import artifact_folder
    from search.running.study import load_study

    # optuna-dashboard serves each artifact with the type stored at its upload (search/finalizing/artifacts.py states
    # ours); a file uploaded through its page gets this process's mimetypes guess: .pt as octet-stream too
    register_mimetypes()
    study = load_study(study_name, storage, any_direction=True)  # fails clearly if the study is not there
    check_listen(host, port)
    if not loopback_only(host):
        # optuna-dashboard has no login: whoever reaches the port can edit notes, delete trials' artifacts and whole
        # studies. Serving beyond this machine may be meant (the README's --host 0.0.0.0), so a warning, not a refusal.
        echo(f"warning: --host {host}: the dashboard is reachable from other machines and has no password: anyone "
             f"who reaches port {port} can edit notes and delete studies (trusted networks only; or keep "
             "127.0.0.1 and use an SSH tunnel)")
    folder = artifact_folder(study_name)  # what `search finalize` uploaded: listed and served by the dashboard
    echo(f"optuna-dashboard for study {study_name!r}: http://{host}:{port}/dashboard/studies/{optuna_internals.study_id(study)}"
         f"  (artifacts: {folder})")
    try:
        optuna_dashboard.run_server(optuna_internals.storage_of(study), host=host, port=port, artifact_store=artifact_store(folder))
    except OSError as err:  # taken between the check and the start
        raise UserError(f"--host {host} --port {port}: cannot listen there ({err.strerror or err})") from None
