"""The GPU budget: how long ``search finalize`` would take for a trial's configuration, and how many steps fit in a
given time (``finalize --time 2h``).

A finalize of S steps trains S steps and validates every ``schedule.periodic_every(S)`` steps (S/8, at most every
2,000) and at the end. A trial records its training speed (``steps_per_second``, training steps only), its wall time
and how far it got; the rest of its wall time, spread over its validations, stands in for one validation (start-up
included: a little on the safe side). From these each trial records ``finalize_seconds``: what a finalize at the
default steps of its device (70,000 on a GPU, 2,000 on a CPU) would take *on the device the trial ran on*. Finalize
trains in tf32 where trials train in bf16 (search/finalizing/final_pipeline.py), so on a GPU the estimate may be short of the
real time; another card is another speed. ``finalize --time`` therefore measures instead: it trains the configuration
for ``MEASURE_STEPS`` steps on this device, as finalize would, and plans from that speed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from search.running import schedule
from search.errors import UserError
from search.running.settings import CPU_FINALIZE_STEPS, GPU_FINALIZE_STEPS
from search.reporting.formats import duration_text

ATTR = "finalize_seconds"  # the trial's user attribute: a finalize at its device's default steps, in seconds
MEASURE_STEPS = 300  # steps `finalize --time` trains to measure this device's speed (one validation at the end)
MIN_STEPS = 100  # the fewest steps --time plans: less trains nothing worth predicting with


def default_steps_for(device: str) -> int:
    """``finalize --steps`` by default on ``device`` (``cpu``, ``cuda``, ``cuda (NVIDIA H100 ...)``)."""
    return GPU_FINALIZE_STEPS if str(device).startswith("cuda") else CPU_FINALIZE_STEPS


def validations(steps: int) -> int:
    """How many times a finalize of ``steps`` steps validates."""
    every = schedule.periodic_every(steps)
    return steps // every + (1 if steps % every else 0)


def finalize_seconds(steps: int, steps_per_second: float, seconds_per_validation: float) -> float:
    return steps / steps_per_second + validations(steps) * seconds_per_validation


def per_validation(wall_seconds: float, steps: int, steps_per_second: float, count: int) -> float:
    """One validation's seconds, from a run's wall time less its training time, over its ``count`` validations."""
    return max(0.0, wall_seconds - steps / steps_per_second) / max(1, count)


def trial_finalize_seconds(attrs: dict, validations_done: int) -> float | None:
    """``finalize_seconds`` of a trial from its attributes (``steps_per_second``, ``wall_seconds``, ``last_step``,
    ``device``), or None where it has no speed recorded."""
    rate, wall, last = attrs.get("steps_per_second"), attrs.get("wall_seconds"), attrs.get("last_step")
    if not isinstance(rate, (int, float)) or rate <= 0 or not isinstance(wall, (int, float)) or not last:
        return None
    return round(finalize_seconds(default_steps_for(attrs.get("device", "cpu")), rate,
                                  per_validation(wall, last, rate, validations_done)), 1)


def estimate_of(trial) -> tuple[int, float] | None:
    """(default steps, seconds) of a finalize of ``trial`` on the device it ran on: its recorded ``finalize_seconds``,
    else worked out from its attributes (a trial of before the attribute); None without a speed."""
    attrs = trial.user_attrs
    seconds = attrs.get(ATTR)
    if not isinstance(seconds, (int, float)):
        seconds = trial_finalize_seconds(attrs, len(trial.intermediate_values))
    return None if seconds is None else (default_steps_for(attrs.get("device", "cpu")), float(seconds))


def estimate_text(trial) -> str | None:
    """``finalize ~3h05m at 70,000 steps on cuda (NVIDIA H100 80GB HBM3)``, or None without a speed."""
    estimate = estimate_of(trial)
    if estimate is None:
        return None
    steps, seconds = estimate
    return f"~{duration_text(seconds)} at {steps:,} steps on {trial.user_attrs.get('device', 'cpu')}"


@dataclass
class Plan:
    steps: int
    seconds: float  # expected
    steps_per_second: float
    seconds_per_validation: float


def steps_within(seconds: float, steps_per_second: float, seconds_per_validation: float) -> int:
    """The most steps whose finalize, validations included, takes at most ``seconds`` (from 1,000 on, a multiple of
    100: a round number to read and to type again as ``--steps``)."""
    low, high = 0, int(seconds * steps_per_second) + 1  # finalize_seconds grows with the steps: bisect
    while low < high:
        middle = (low + high + 1) // 2
        if finalize_seconds(middle, steps_per_second, seconds_per_validation) <= seconds:
            low = middle
        else:
            high = middle - 1
    return low // 100 * 100 if low >= 1000 else low


def plan_for(seconds: float, steps_per_second: float, seconds_per_validation: float, option: str) -> Plan:
    steps = steps_within(seconds, steps_per_second, seconds_per_validation)
    if steps < MIN_STEPS:
        raise UserError(f"{option}: at {steps_per_second:.1f} steps/s and {seconds_per_validation:.1f} s per validation, "
                        f"fewer than {MIN_STEPS} steps fit; give more time")
    return Plan(steps, finalize_seconds(steps, steps_per_second, seconds_per_validation), steps_per_second,
                seconds_per_validation)


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, option: str = "--time") -> float:
    """``2h``, ``90m``, ``1h30m``, ``45s`` or plain seconds (``5400``) as seconds; anything else one line."""
    clean = text.strip().lower()
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)([dhms]))+", clean)
    if re.fullmatch(r"\d+(\.\d+)?", clean):
        seconds = float(clean)
    elif parts:
        seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([dhms])", clean))
    else:
        raise UserError(f"{option} {text}: expected a duration such as 2h, 90m, 1h30m or seconds (5400)")
    if not 0 < seconds <= 30 * 86400:
        raise UserError(f"{option} {text}: expected a duration above 0 and at most 30 days")
    return seconds


def device_name(device) -> str:
    """What a trial records as its ``device``: ``cpu``, or ``cuda (<the GPU's name>)``."""
    if device.type == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def expected_line(trial, steps: int, device) -> str:
    """Before a finalize of ``trial`` for ``steps`` steps on ``device``: how long it should take, at the speed the
    trial had in the search where it ran on the same device; else why there is no estimate."""
    here, attrs = device_name(device), trial.user_attrs
    rate, wall, last = attrs.get("steps_per_second"), attrs.get("wall_seconds"), attrs.get("last_step")
    if attrs.get("device") != here or not isinstance(rate, (int, float)) or rate <= 0 or not wall or not last:
        ran = f"trial #{trial.number} ran on {attrs['device']}" if attrs.get("device") else \
            f"trial #{trial.number} recorded no speed"
        return f"expected duration: unknown ({ran}, this finalize runs on {here}; `--time` measures this device)"
    seconds = finalize_seconds(steps, rate, per_validation(wall, last, rate, len(trial.intermediate_values)))
    caveat = ("; finalize trains in tf32, the search in bf16: it may take longer" if here.startswith("cuda") else "")
    return (f"expected duration: about {duration_text(seconds)} (trial #{trial.number}'s {rate:g} steps/s in the "
            f"search, on this device{caveat})")

