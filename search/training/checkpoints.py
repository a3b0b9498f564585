"""Checkpoints left by a killed ``search finalize``: the step one holds, and whether it can be used.

One that cannot be used (empty, truncated, not a checkpoint at all) must not block every later finalize: it is
moved aside, with one line saying which file it was and where it went, and training starts over."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

REQUIRED = ("step", "model", "model_config", "train_config")


def other_data(state: dict, fingerprint: str) -> str | None:
    """The data fingerprint a checkpoint was trained on when it is not ``fingerprint`` (the data now), else None.

    Resuming from a checkpoint of other data (the folder regenerated with another seed, or --data pointing at
    another folder with the same speakers) would go on training, and predict with, the old data's model.
    A checkpoint without a fingerprint (an older one) is taken as it is."""
    saved = state.get("data_fingerprint") if isinstance(state, dict) else None
    return saved if saved and fingerprint and saved != fingerprint else None


def _load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=True)


def saved_step(path: Path, fingerprint: str = "") -> int | None:
    """The step a checkpoint left by an earlier (killed) finalize holds, or None without one (or, given the data's
    ``fingerprint``, with one trained on other data: train() moves it aside and starts over, saying so)."""
    try:
        state = _load(path)  # a missing file raises too
        return None if other_data(state, fingerprint) else int(state["step"])
    except Exception:  # noqa: BLE001 - none; train() reports an unusable one itself (usable_checkpoint)
        return None


def set_aside(path: Path, tag: str) -> Path:
    """Rename ``path`` to ``<name>.<tag>-<time>`` (kept for a look, never read again); where it went."""
    aside = path.with_name(f"{path.name}.{tag}-{time.strftime('%Y%m%d-%H%M%S')}")
    path.replace(aside)
    return aside


def usable_checkpoint(path: Path) -> bool:
    """True if ``path`` exists and holds a training checkpoint; an unusable file is renamed to
    ``<name>.unusable-<time>`` (kept for a look, never read again) and False is returned."""
    if not path.exists():
        return False
    try:
        state = _load(path)
        if not isinstance(state, dict) or any(k not in state for k in REQUIRED):
            raise ValueError("not a training checkpoint")
        return True
    except Exception as err:  # noqa: BLE001 - EOFError, UnpicklingError, RuntimeError, BadZipFile...
        reason = (str(err).strip().splitlines() or [""])[0][:120]
        try:
            moved = f"moved to {set_aside(path, 'unusable')}"
        except OSError as move_err:
            raise ValueError(f"{path}: unusable checkpoint ({type(err).__name__}: {reason}) and it cannot be moved "
                             f"aside ({move_err.strerror}); delete it to start over") from None
        print(f"warning: {path}: unusable checkpoint ({type(err).__name__}{': ' + reason if reason else ''}); "
              f"{moved}, training starts over", file=sys.stderr)
        return False
