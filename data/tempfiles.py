"""Names of the temporary files (and folders) that are written and then renamed into place, and the removal of
the ones a killed process left behind.

A write that is renamed into place (search/files.py ``replaced``: checkpoints, the final model, CSVs, the report;
data/bank.py ``pack``: the feature bank) first writes ``<name>.tmp<PID>-<host>`` beside its target. A process
killed with SIGKILL (or by the kernel's OOM killer, or a power cut) runs no clean-up, so that file stays, possibly
gigabytes (a checkpoint, a feature bank), and nothing would ever remove it. The next write of the same file
removes the temporary files of it whose process is gone, and ``search finalize`` all of them in ``final/`` (its
own folder: a checkpoint of another step count is written under another name). The host in the name keeps a folder shared by several
machines (a data folder on NFS) safe from a machine that cannot see the others' processes; a name without a host
is taken as this machine's. data/ is the lowest layer: search/ uses it too.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

from data.processes import alive

HOST = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname())[:60] or "host"
_TEMP = re.compile(r"^(?P<target>.+)\.tmp(?P<pid>\d+)(?:-(?P<host>[A-Za-z0-9._-]+))?$")


def temp_name(name: str) -> str:
    """The name this process writes ``name`` under before renaming it into place."""
    return f"{name}.tmp{os.getpid()}-{HOST}"


def remove_stale(folder: Path, target: str | None = None, recursive: bool = False) -> list[Path]:
    """Remove the temporary files and folders in ``folder`` that a process of this machine, no longer alive,
    left (see the module's docstring); the ones removed. ``target``: only the temporaries of that name (in a
    folder that is not only ours, a data folder or the user's, nothing else is touched); None: every one, in a
    folder of our own (and with ``recursive`` in its subfolders). Best effort: what cannot be listed or removed
    stays."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None and recursive and entry.is_dir(follow_symlinks=False):
            removed += remove_stale(Path(entry.path), recursive=True)
        if match is None or (target is not None and match["target"] != target):
            continue
        if match["host"] not in (None, HOST) or alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
        except OSError:
            pass  # removed meanwhile, or not ours to remove: the write goes on
    return removed
