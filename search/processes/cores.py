"""How many CPU cores this process may use.

``os.cpu_count()`` counts the machine's cores, not the ones this process is allowed to run on: under a batch
system's CPU set (SLURM, a container's cpuset) or ``taskset``, a 64-core node may give the job 4. Splitting 64
threads over 4 cores makes every worker wait on the others, so thread counts and process counts start from the
affinity mask where the platform has one (Linux; Python 3.13's ``os.process_cpu_count`` is the same).
"""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on (at least 1)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
