"""``search data synth`` and ``search data check``: make a dataset in the HW04 layout, or check one.

The data layer (data/) reads, packs and synthesizes; this is what the two commands do with it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from search.errors import UserError


def synthesize(out_dir: Path, progress: Callable[[int, int], None] | None = None, **options) -> str:
    """Write a synthetic dataset into ``out_dir`` (new, or empty: nothing is overwritten); ``options`` are
    data.synth.synthesize's. Returns the line that says what was written."""
    from data import synth

    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError(f"{out_dir}: folder exists and is not empty")
    summary = synth.synthesize(out_dir, progress=progress, **options)
    return f"wrote {out_dir}: " + ", ".join(f"{k} {v}" for k, v in summary.items())


def check(folder: Path) -> dict:
    """Validate an HW04 folder: its json files and every tensor file (each loaded and checked). Returns its
    counts and length statistics (data.bank.describe); a DataError names the first bad file."""
    from data.bank import describe
    from data.hw04 import load_features, read_layout

    layout = read_layout(folder)
    for utt in layout.train + layout.test:
        load_features(layout.root, utt, layout.n_mels)
    return describe(layout)


def check_text(folder: Path, as_json: bool = False) -> str:
    """``search data check``: what ``check`` found, as text or JSON."""
    summary = check(folder)
    if as_json:
        return json.dumps(summary, indent=2)
    lines = [f"{folder}: OK, {summary['speakers']} speakers, n_mels {summary['n_mels']}"]
    for split in ("train", "test"):
        s = summary[split]
        lines.append(f"  {split:5s} {s['utterances']:6d} utterances, {s['frames']} frames; length min {s['min']} "
                     f"p5 {s['p5']:.0f} median {s['median']:.0f} mean {s['mean']} p95 {s['p95']:.0f} max {s['max']}")
    return "\n".join(lines)
