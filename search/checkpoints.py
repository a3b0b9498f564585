"""A training checkpoint left by a killed ``search finalize`` that cannot be used (empty, truncated, not a
checkpoint at all) must not block every later finalize: it is moved aside, with one line saying which
file it was and where it went, and training starts over."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

REQUIRED = ("step", "model", "model_config", "train_config")


def usable_checkpoint(path: Path) -> bool:
    """True if ``path`` exists and holds a training checkpoint; an unusable file is renamed to
    ``<name>.unusable-<time>`` (kept for a look, never read again) and False is returned."""
    if not path.exists():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
            raise ValueError("not a training checkpoint")
        return True
    except Exception as err:  # noqa: BLE001 - EOFError, UnpicklingError, RuntimeError, BadZipFile...
        reason = (str(err).strip().splitlines() or [""])[0][:120]
        aside = path.with_name(f"{path.name}.unusable-{time.strftime('%Y%m%d-%H%M%S')}")
        try:
            path.replace(aside)
            moved = f"moved to {aside}"
        except OSError as move_err:
            raise ValueError(f"{path}: unusable checkpoint ({type(err).__name__}: {reason}) and it cannot be moved "
                             f"aside ({move_err.strerror}); delete it to start over") from None
        print(f"warning: {path}: unusable checkpoint ({type(err).__name__}{': ' + reason if reason else ''}); "
              f"{moved}, training starts over", file=sys.stderr)
        return False
