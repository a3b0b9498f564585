"""How numbers and configurations are written for people, one way in every command: parameter counts as ``117k``
(``search trials``, ``show``, ``report``'s summary, the dashboard's notes), floats rounded to what tells trials
apart (``dropout 0.124``, ``lr 3.2e-04``), a configuration on one line (``search run``'s start line of a trial),
and why a trial ended with what the pruner compared (``pruned at step 186: 0.2436, needed 0.3397``).

Machine output (``--json``, ``--csv``) keeps the stored values unrounded.
"""

from __future__ import annotations

import math

# The parameters that tell one configuration from another, in the order the one-line configuration prints them
# (the others are in `search show`, `search trials --wide` and the dashboard).
CONFIG_ORDER = ("encoder", "d_model", "layers", "nhead", "ffn", "pooling", "head", "loss", "lr", "dropout",
                "batch_size", "segment")
# short names for the one-line configuration: a start line must fit a terminal
SHORT = {"d_model": "d", "layers": "layers", "nhead": "heads", "batch_size": "batch", "weight_decay": "wd",
         "conformer_kernel": "kernel", "label_smoothing": "smoothing", "head_hidden": "hidden",
         "time_masks": "tmasks", "time_mask_width": "tmask_w", "freq_masks": "fmasks", "freq_mask_width": "fmask_w"}


def param_count(parameters) -> str:
    """``77.8k``, ``117k``, ``1.23M``: a model's parameter count at a glance (3 significant digits)."""
    if not isinstance(parameters, (int, float)) or isinstance(parameters, bool):
        return "-" if parameters is None else str(parameters)
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(parameters) >= scale:
            return f"{parameters / scale:.3g}{unit}"
    return f"{parameters:g}"


def number(value) -> str:
    """A value as a table shows it: a float to 3 significant digits (``0.124``, ``25.3``), one below 0.01 or of a
    million and more in scientific notation (``3.2e-04``, ``1.0e+30``: an lr typed by hand), one of 100 or more
    without decimals (``1779``), 0 as ``0``; anything else as ``str``."""
    if isinstance(value, bool) or not isinstance(value, float):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) < 0.01 or abs(value) >= 1e6:
        return f"{value:.1e}"
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def config_line(params: dict) -> str:
    """``transformer d80 layers 1 heads 2 ffn 256, mean pooling, mlp head, ce, lr 1.0e-03, dropout 0.1, batch 32,
    segment 128``: the key parameters (``CONFIG_ORDER``) of a configuration, rounded."""
    parts = []
    model = [params["encoder"]] if "encoder" in params else []
    model += [f"d{params['d_model']}"] if "d_model" in params else []
    model += [f"{SHORT[k]} {number(params[k])}" for k in ("layers", "nhead") if k in params]
    model += [f"ffn {params['ffn']}"] if "ffn" in params else []
    if model:
        parts.append(" ".join(model))
    parts += [f"{params[k]} {k}" for k in ("pooling", "head") if k in params]
    parts += [str(params["loss"])] if "loss" in params else []
    parts += [f"{SHORT.get(k, k)} {number(params[k])}" for k in ("lr", "dropout", "batch_size", "segment")
              if k in params]
    return ", ".join(parts)


def pruned_text(step, value, needed) -> str:
    """``pruned at step 186: 0.2436, needed 0.3397``: where the pruner stopped a trial, the trial's validation
    accuracy there and the value it needed to go on (each left out where it is not known: a table whose value
    column has the accuracy says ``pruned at step 186, needed 0.3397``)."""
    text = f"pruned at step {step}"
    if isinstance(value, (int, float)):
        text += f": {value:.4f}"
    if isinstance(needed, (int, float)):
        text += f", needed {needed:.4f}"
    return text


def ended_text(state: str, ended, value=None, attrs: dict | None = None) -> str:
    """Why a trial ended, said once: ``complete after 500 steps``, ``pruned at step 186: 0.2436, needed
    0.3397`` (``value``: its last validation accuracy; ``attrs``: its user attributes, ``last_step`` and
    ``prune_threshold``), ``failed: <reason>``; the state's name where nothing was recorded."""
    attrs = attrs or {}
    state = state.lower()
    if state == "pruned" and (attrs.get("last_step") is not None or str(ended or "").startswith("pruned at step")):
        step = attrs.get("last_step")
        if step is None:
            step = str(ended).removeprefix("pruned at step").strip().split()[0]
        return pruned_text(step, value, attrs.get("prune_threshold"))
    if state == "fail":
        if not ended:
            return "failed"
        return str(ended) if str(ended).startswith("failed") else f"failed: {ended}"
    return str(ended) if ended else state


def duration_text(seconds: float) -> str:
    """``45s``, ``12m30s``, ``3h05m``: a duration at a glance (negative: ``0s``)."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
