"""Checkpoints left by a killed ``search finalize``: the step one holds, and whether it can be used.

One that cannot be used (empty, truncated, not a checkpoint at all) must not block every later finalize: it is
moved aside, with one line saying which file it was and where it went, and training starts over.

Once a finalize has written and stored its outputs, the full checkpoints of the runs it finished are replaced by
finished ones (``finish``: ``checkpoint-<run>.pt`` -> ``finished-<run>.pt``): the best weights, the step and the
record, without the optimizer state and the last step's weights (a quarter of the size: Adam keeps two
tensors a weight, and the last and best weights are two more). A later finalize of the same run (the command
again, or an ensemble with this member) reads the finished file and trains nothing."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from search.files import save_torch

REQUIRED = ("step", "model", "model_config", "train_config")
FINISHED_KEYS = ("model_config", "train_config", "step", "data_fingerprint", "best_accuracy", "best_step", "history")


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


def finished_path(checkpoint: Path) -> Path:
    """Where the finished form of ``checkpoint`` (``checkpoint-<run>.pt``) is kept: ``finished-<run>.pt``."""
    return checkpoint.with_name("finished-" + checkpoint.name.removeprefix("checkpoint-"))


def is_finished(state: dict) -> bool:
    return bool(state.get("finished"))


def finish(checkpoint: Path) -> None:
    """Replace a finished run's full checkpoint by its finished form (the module docstring): written whole
    first, then the checkpoint removed, so a kill in between leaves one usable file or both. Nothing to do for a
    run that was read from its finished file."""
    if not checkpoint.exists():
        return
    state = _load(checkpoint)
    if is_finished(state):
        return
    best = state.get("best_model") or state["model"]  # no evaluation improved on nothing: the last weights
    save_torch({**{k: state.get(k) for k in FINISHED_KEYS}, "model": best, "finished": True},
               finished_path(checkpoint))
    checkpoint.unlink()
