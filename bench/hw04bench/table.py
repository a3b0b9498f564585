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

# cuBLAS's and cuDNN's word for running out of memory (search/errors.py): call 13 recorded two such lines, written
# before the recorder translated them
from search.errors import ALLOCATION_FAILURES


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


OUT_OF_MEMORY = "out of GPU memory"  # a run line's ``failed`` when CUDA ran out of memory (record.py)
# What a worker whose feature bank did not fit on the card failed with before data/bank.py's fix (call 14: 19 runs
# of workers started on a card five others had filled): the card's memory, not the configuration.
BANK_ON_HOST_FAILURE = "Expected a 'cuda' device type for generator but found 'cpu'"


def out_of_memory(failed: str | None) -> bool:
    """A run line's ``failed`` says the card ran out of memory (in PyTorch's allocator, cuBLAS's or cuDNN's, or
    for the worker's feature bank)."""
    return bool(failed) and (failed == OUT_OF_MEMORY or BANK_ON_HOST_FAILURE in failed
                             or any(code in failed for code in ALLOCATION_FAILURES))


@dataclass
class Table:
    sessions: list[dict] = field(default_factory=list)
    runs: list[dict] = field(default_factory=list)
    # ids of the runs ``_unfit_worker_runs`` finds, computed once when first asked (load() has read every line by then)
    _unfit: set[int] | None = field(default=None, init=False, repr=False, compare=False)
    # id of a run -> ``sharing``, computed for every run once when first asked
    _sharing: dict[int, float] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def budget(self) -> int:
        return self.sessions[0]["budget"]

    @property
    def profile(self) -> str:
        return self.sessions[0]["profile"]

    def session_of(self, run: dict) -> dict:
        return next((s for s in self.sessions if s["session"] == run.get("session")), {})

    def retry(self, run: dict) -> bool:
        """The run ran out of GPU memory for a reason outside its configuration, so it is neither done nor a result:
        beside other workers (what they held at the time), or in a session whose validation batches did not yet
        bound their attention (search/training/evaluation.py ``ATTENTION_LENGTH``: before it, HW04's longest
        utterances ran small-head configurations out of memory even alone). One that ran out of memory alone on
        the card with bounded batches (record.py ``--alone``) is done: that configuration does not fit the card."""
        return out_of_memory(run.get("failed")) and (not run.get("alone") or not self._bounded(run))

    def retry_alone(self, run: dict) -> bool:
        """The run ran out of GPU memory beside other workers with bounded validation batches: a later call trains it
        alone on the card (record.py ``--alone``). Runs of the sessions before the bound are retried beside others
        first: most of them ran out of memory in validation, which the bound takes away."""
        return out_of_memory(run.get("failed")) and not run.get("alone") and self._bounded(run) \
            and id(run) not in self._unfit_worker_runs()

    def _unfit_worker_runs(self) -> set[int]:
        """Runs (their ids) that failed in a worker process that had run out of memory earlier in its session: no
        evidence about their configurations (call 10: one such worker failed 105 runs in a row, 94 within 0.2 s).
        Sessions whose recorder replaces such a worker (its session line says ``replaces_workers``) have none."""
        if self._unfit is None:
            unfit, hit = set(), set()
            for run in self.runs:
                session = self.session_of(run)
                if session.get("replaces_workers"):
                    continue
                worker = (run.get("session"), run.get("worker"))
                if worker in hit and run.get("failed"):
                    unfit.add(id(run))
                if out_of_memory(run.get("failed")):
                    hit.add(worker)
            self._unfit = unfit
        return self._unfit

    def _bounded(self, run: dict) -> bool:
        """The run's session bounded its validation batches' attention (its session line says ``attention_length``)."""
        return "attention_length" in self.session_of(run)

    def done(self) -> set[tuple[str, int]]:
        """The (config, repeat) runs recorded, but those to ``retry``."""
        return {(r["config"], r["repeat"]) for r in self.runs if not self.retry(r)}

    def machine(self, run: dict) -> tuple:
        """What the run's costs were measured on: its session's host, torch, CPU model and card, and whether it had
        the card to itself (a retry after running out of memory: record.py). Accuracy curves do not depend on it;
        seconds do (a replay's clock is one machine's: surrogate.py)."""
        session = self.session_of(run)
        return session.get("host"), session.get("torch"), session.get("cpu"), run.get("card"), bool(run.get("alone"))

    def sharing(self, run: dict) -> float:
        """How many runs the card (or host) held on average while ``run`` trained, itself included: the time-weighted
        mean count of its session's runs in flight (failed ones too) over its wall seconds. Under MPS a run's
        seconds depend on it: the same configuration took 87 s beside ~4.3 runs and 234 s beside ~6.0 (Sobol 48).
        Runs carry ``handed_out`` since commit 7b83229; for the earlier sessions a worker's runs are taken as back
        to back in the order its lines were written (a line is written when its run ends)."""
        if self._sharing is None:
            self._sharing = {}
            spans: dict[str, list[tuple[float, float, dict]]] = {}
            ends: dict[tuple, float] = {}  # (session, worker) -> when its last run so far ended
            for r in self.runs:
                key = (r.get("session"), r.get("worker"))
                start = r["handed_out"] if "handed_out" in r else ends.get(key, 0.0)
                ends[key] = start + r["wall_seconds"]
                spans.setdefault(r.get("session"), []).append((start, start + r["wall_seconds"], r))
            for session_spans in spans.values():
                for start, end, r in session_spans:
                    if end <= start:
                        self._sharing[id(r)] = 1.0
                        continue
                    overlap = sum(max(0.0, min(end, e) - max(start, s)) for s, e, _ in session_spans)
                    self._sharing[id(r)] = overlap / (end - start)
        return self._sharing[id(run)]

    def results(self) -> list[dict]:
        """The runs a replay can use: every recorded run but those to ``retry``; one that ran out of memory alone
        (with bounded batches) is a failure of its configuration, as a NaN is."""
        return [r for r in self.runs if not self.retry(r)]


def final_scores(runs: list[dict]) -> dict[str, float]:
    """Each configuration's final validation accuracy: the mean over its complete runs (its repeats) of the
    accuracy at the end of the budget. Failed runs are left out."""
    finals: dict[str, list[float]] = {}
    for r in runs:
        if not r["failed"] and r["curve"]:
            finals.setdefault(r["config"], []).append(r["curve"][-1][1])
    return {config: sum(values) / len(values) for config, values in finals.items()}


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
