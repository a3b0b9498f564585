"""Reading and writing a HW04-Bench table: JSON lines, plain while recording (appended and flushed line by line,
so a recorder killed mid-run loses only its runs in flight) and gzip-compressed for the repository.

Each recording session starts with a ``session`` line (command, card, date, commit, workers, MPS, budget, the
steps validated at); each run is a ``run`` line that names its session. See ``record.py`` for the fields.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path


def _open(path: Path, mode: str = "rt"):
    return gzip.open(path, mode, encoding="utf-8") if path.suffix == ".gz" else open(path, mode, encoding="utf-8")


def read_lines(path: Path) -> list[dict]:
    """Every complete line of ``path`` (.jsonl or .jsonl.gz); a last line cut off by a kill is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    with _open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break  # the recorder was killed while writing this line
            records.append(json.loads(line))
    return records


@dataclass
class Table:
    sessions: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)

    @property
    def budget(self) -> int:
        return self.sessions[0]["budget"]

    @property
    def profile(self) -> str:
        return self.sessions[0]["profile"]

    def done(self) -> set[tuple[str, int]]:
        return {(r["config"], r["repeat"]) for r in self.runs}


def load(*paths: Path) -> Table:
    """The table held by ``paths`` together (a recording spread over several files: one per device call)."""
    table = Table()
    for path in paths:
        for record in read_lines(Path(path)):
            (table.sessions if record["kind"] == "session" else table.runs).append(record)
    return table


def compress(source: Path, target: Path) -> None:
    """``source`` (.jsonl) as ``target`` (.jsonl.gz), written whole then renamed."""
    tmp = target.with_name(target.name + ".tmp")
    with open(source, "rb") as f, gzip.open(tmp, "wb", compresslevel=9) as g:
        g.write(f.read())
    tmp.replace(target)
