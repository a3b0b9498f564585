"""The README cannot go stale: every `search ...` command in its code blocks parses with today's CLI
(each command and option exists, each value has the right type). The commands themselves are run by
the other tests on small data."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from search.cli import main

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_commands() -> list[str]:
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", README.read_text(), flags=re.S)
    lines = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|", line.split("#")[0]):
                part = part.strip()
                if part.startswith("search "):
                    lines.append(part)
    return lines


def parse(command: str) -> None:
    args = shlex.split(command)[1:]
    ctx = main.make_context("search", args)
    group: click.Group = main
    while isinstance(group, click.Group):
        name, sub, rest = group.resolve_command(ctx, ctx._protected_args + ctx.args)
        ctx = sub.make_context(name, rest, parent=ctx)
        group = sub


def test_the_readme_has_search_commands():
    assert len(readme_commands()) >= 15


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_parses(command):
    parse(command.replace("PASSWORD", "pw"))
