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


def short_of_shared_memory(run: dict) -> bool:
    """The run ran out of GPU memory while other workers shared the card."""
    return run.get("failed") == "out of GPU memory" and not run.get("alone")


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
        """The (config, repeat) runs recorded. A run that ran out of GPU memory beside other workers is not done:
        that says more about what the others held at the time than about the configuration. One that ran out of
        memory alone on the card (record.py ``--alone``) is: that configuration does not fit the card."""
        return {(r["config"], r["repeat"]) for r in self.runs if not short_of_shared_memory(r)}

    def machine(self, run: dict) -> tuple:
        """What the run's costs were measured on: its session's host, torch, CPU model and card, and whether it had
        the card to itself (a retry after running out of memory: record.py). Accuracy curves do not depend on it;
        seconds do (a replay's clock is one machine's: surrogate.py)."""
        session = next((s for s in self.sessions if s["session"] == run.get("session")), {})
        return session.get("host"), session.get("torch"), session.get("cpu"), run.get("card"), bool(run.get("alone"))

    def results(self) -> list[dict]:
        """The runs a replay can use: every recorded run but those that ran out of GPU memory beside other workers
        (see ``done``); one that did alone is a failure of its configuration, as a NaN is."""
        return [r for r in self.runs if not short_of_shared_memory(r)]


def load(*paths: Path) -> Table:
    """The table held by ``paths`` together (a recording spread over several files: one per device call)."""
    table = Table()
    for path in paths:
        for record in read_lines(Path(path)):
            (table.sessions if record["kind"] == "session" else table.runs).append(record)
    return table


def merge(target: Path, *sources: Path) -> int:
    """Append the complete lines of ``sources`` (each call's .jsonl) to the table ``target`` (.jsonl.gz), written
    whole then renamed; a line already there is not added twice. Returns the number of lines added."""
    target = Path(target)
    lines = [json.dumps(r) for r in read_lines(target)]
    seen = set(lines)
    added = 0
    for source in sources:
        for record in read_lines(Path(source)):
            line = json.dumps(record)
            if line not in seen:
                lines.append(line)
                seen.add(line)
                added += 1
    tmp = target.with_name(target.name + ".tmp")
    with gzip.open(tmp, "wt", encoding="utf-8", compresslevel=9) as g:
        g.writelines(line + "\n" for line in lines)
    tmp.replace(target)
    return added


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.hw04bench.table",
                                     description="add a device call's runs to a committed table")
    parser.add_argument("table", type=Path, help="the table (.jsonl.gz), created if absent")
    parser.add_argument("calls", type=Path, nargs="+", help="each call's .jsonl")
    args = parser.parse_args(argv)
    for source in args.calls:
        if not source.is_file():
            parser.error(f"{source}: no such file")
    print(f"{merge(args.table, *args.calls)} lines added to {args.table}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
