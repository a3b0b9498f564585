"""The user's changes to a profile's space: a space file (JSON or YAML), ``--set`` and ``--range``, checked against
the profile (and so the registries) and written as one canonical dict that the study stores and every process
applies (search/running/space.py ``build_space``).

A change narrows a parameter, never widens it: a categorical keeps some of its choices, a number a part of its
range (one value fixes it). What is outside the profile is refused with one line naming the file or option and
the parameter, before any study is created: a typo must not become a study of its own.

Canonical form, in the space's order: ``{"encoder": {"choices": ["conformer"]}, "lr": {"low": 0.0001, "high":
0.001}}``; no change is None.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from pathlib import Path

from search.errors import UserError

FILE_KEYS = ("profile", "parameters")


@dataclass(frozen=True)
class SpaceRequest:
    """What ``search run`` / ``search enqueue`` were given: a space file, ``--set`` and ``--range`` texts."""

    file: Path | None = None
    sets: tuple[str, ...] = ()
    ranges: tuple[str, ...] = ()

    def given(self) -> bool:
        return self.file is not None or bool(self.sets) or bool(self.ranges)


def _reject_duplicates(pairs: list) -> dict:
    keys = [k for k, _ in pairs]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"key {twice[0]!r} given twice")
    return dict(pairs)


def read_space_file(path: Path) -> tuple[str | None, dict]:
    """(profile or None, the raw ``parameters`` mapping) of a space file; one UserError line naming the file."""
    from data.errors import printable

    name = printable(str(path))
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise UserError(f"{name}: a space file is .json, .yaml or .yml")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{name}: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{name}: cannot read it ({printable(type(err).__name__ + ': ' + str(err))[:200]})") from None
    try:
        if suffix == ".json":
            content = json.loads(text, object_pairs_hook=_reject_duplicates)
        else:
            import yaml  # PyYAML: an Optuna dependency

            content = yaml.safe_load(text)
    except Exception as err:  # noqa: BLE001 - json's and yaml's errors alike: the parser's own words, one line
        kind = "JSON" if suffix == ".json" else "YAML"
        reason = " ".join(str(err).split())[:200]
        raise UserError(f"{name}: not valid {kind}: {printable(reason)}") from None
    if not isinstance(content, dict) or not isinstance(content.get("parameters", {}), dict):
        raise UserError(f"{name}: expected a mapping with 'parameters' (a mapping of parameter to choices or range) "
                        "and optionally 'profile'")
    unknown = [k for k in content if k not in FILE_KEYS]
    if unknown:
        raise UserError(f"{name}: unknown key {printable(str(unknown[0]))!r} (a space file has {', '.join(FILE_KEYS)})")
    profile = content.get("profile")
    from search.running.space import PROFILES

    if profile is not None and profile not in PROFILES:
        raise UserError(f"{name}: profile {printable(str(profile))!r} is not one of {', '.join(PROFILES)}")
    return profile, dict(content.get("parameters") or {})


def _parse_option(text: str, option: str, form: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip() or not value.strip():
        raise UserError(f"{option} {text}: expected {form}")
    return name.strip(), value.strip()


def _raw_changes(request: SpaceRequest) -> dict[str, tuple[str, object]]:
    """parameter -> (where it was given, raw value): the file first, then --set and --range (which win)."""
    raw: dict[str, tuple[str, object]] = {}
    if request.file is not None:
        from data.errors import printable

        for key, value in read_space_file(request.file)[1].items():
            raw[str(key)] = (printable(str(request.file)), value)
    for text in request.sets:
        name, value = _parse_option(text, "--set", "NAME=VALUE[,VALUE...], e.g. --set encoder=conformer")
        raw[name] = (f"--set {text}", [v.strip() for v in value.split(",")])
    for text in request.ranges:
        name, value = _parse_option(text, "--range", "NAME=LOW:HIGH, e.g. --range lr=1e-4:1e-3")
        low, sep, high = value.partition(":")
        if not sep:
            raise UserError(f"--range {text}: expected NAME=LOW:HIGH, e.g. --range lr=1e-4:1e-3")
        raw[name] = (f"--range {text}", {"low": low.strip(), "high": high.strip()})
    return raw


def resolve(request: SpaceRequest, profile: str) -> dict | None:
    """The canonical changes ``request`` makes to ``profile``'s space (None: none), or one UserError line."""
    from search.running.space import build_space

    base = build_space(profile)
    params = {p.name: p for p in base}
    raw = _raw_changes(request)
    changes: dict = {}
    for name, (where, value) in raw.items():
        if name not in params:
            close = difflib.get_close_matches(name, list(params), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (parameters: {', '.join(params)})"
            raise UserError(f"{where}: no parameter {name!r} in the space{hint}")
        changes[name] = _change(params[name], value, where, profile)
    ordered = {p.name: changes[p.name] for p in base if p.name in changes}
    return ordered or None


def _change(p, value, where: str, profile: str) -> dict:
    if p.kind == "categorical":
        if isinstance(value, dict):
            if set(value) != {"choices"}:
                raise UserError(f"{where}: {p.name} is categorical: keep some of its choices (--set {p.name}=A,B, "
                                "or a value or list in a space file), it has no range")
            value = value["choices"]
        values = value if isinstance(value, list) else [value]
        if not values:
            raise UserError(f"{where}: {p.name}: give at least one choice")
        chosen = [_choice(p, v, where, profile) for v in values]
        return {"choices": list(dict.fromkeys(chosen))}
    if isinstance(value, list):
        if len(value) != 1:
            raise UserError(f"{where}: {p.name} is a number: give one value or a range "
                            f"(--range {p.name}=LOW:HIGH, or low and high in a file)")
        value = value[0]
    if isinstance(value, dict):
        if set(value) != {"low", "high"}:
            raise UserError(f"{where}: {p.name}: a range has exactly 'low' and 'high'")
        low, high = (_number(p, value[k], where) for k in ("low", "high"))
    else:
        low = high = _number(p, value, where)
    _check_range(p, low, high, where, profile)
    return {"low": low, "high": high}


def _choice(p, value, where: str, profile: str):
    for choice in p.choices:
        if (type(value) is type(choice) and value == choice) or (
                isinstance(value, str) and value.strip().lower() == str(choice).lower()):
            return choice
    shown = ", ".join(map(str, p.choices))
    raise UserError(f"{where}: {value!r} is not a choice of {p.name} in the {profile} profile (choices: {shown})")


def _number(p, value, where: str):
    if p.kind == "categorical" or isinstance(value, bool):
        raise UserError(f"{where}: {p.name}: {value!r} is not a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: {p.name}: {value!r} is not a number") from None
    if not math.isfinite(number):
        raise UserError(f"{where}: {p.name}: {value!r} is not a finite number")
    if p.kind == "int":
        if not number.is_integer():
            raise UserError(f"{where}: {p.name} takes whole numbers, not {value!r}")
        return int(number)
    return number


def _check_range(p, low, high, where: str, profile: str) -> None:
    base = f"{p.low:g} .. {p.high:g}"
    if low > high:
        raise UserError(f"{where}: {p.name}: the range {low:g}:{high:g} is inverted (low above high)")
    if low < p.low or high > p.high:
        raise UserError(f"{where}: {p.name}: {low:g}:{high:g} is outside the {profile} profile's range {base}"
                        " (a space file or --range narrows a range; --space full has the widest)")
    for end in (low, high):
        if p.step and (end - p.low) % p.step:
            raise UserError(f"{where}: {p.name}: {end} is not on the profile's grid ({base} in steps of {p.step})")


def describe(changes: dict | None) -> str:
    """The changes in one line, for the run's first line, ``show`` and the study note: ``encoder conformer; lr
    0.0001 .. 0.001``; no change: ``as the profile``."""
    if not changes:
        return "as the profile"
    parts = []
    for name, change in changes.items():
        if "choices" in change:
            parts.append(f"{name} " + ", ".join(map(str, change["choices"])))
        elif change["low"] == change["high"]:
            parts.append(f"{name} {change['low']:g}")
        else:
            parts.append(f"{name} {change['low']:g} .. {change['high']:g}")
    return "; ".join(parts)
