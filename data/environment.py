"""Putting environment variables back after a block that set them for the child processes it started.

Child processes read some settings only from the environment they inherit: the synthetic set's rendering
processes their BLAS thread count (data/synth.py), ``search run``'s workers the MPS daemon they reach
(search/processes/mps.py). Both set the variables, start the children, then put the old values back. The module sits
in data/, the lowest layer, so that search/ can use it too (data/ imports nothing from search/); it needs
nothing but the standard library, so importing it costs nothing.
"""

from __future__ import annotations

import os


def restore_environment(saved: dict[str, str | None]) -> None:
    """Put back ``saved`` (name -> value as ``os.environ.get`` read it before the change): a name that was
    unset (None) is removed again, the others get their old value."""
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
