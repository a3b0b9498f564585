"""The synthetic dataset: exact HW04 layout, determinism, test labels and HW04-like lengths."""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import re

import numpy as np
import pytest
import torch

from data import synth

TINY = dict(speakers=6, utterances_per_speaker=5, length_scale=0.2)
HEX_NAME = re.compile(r"^uttr-[0-9a-f]{32}\.pt$")
SPEAKER_NAME = re.compile(r"^id\d{5}$")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("synth") / "a"
    calls = []
    counts = synth.synthesize(folder, seed=7, progress=lambda done, total: calls.append((done, total)), **TINY)
    return folder, counts, calls


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_layout_matches_hw04(tiny):
    folder, counts, calls = tiny
    mapping = json.loads((folder / "mapping.json").read_text())
    meta = json.loads((folder / "metadata.json").read_text())
    test = json.loads((folder / "testdata.json").read_text())
    assert set(mapping) == {"speaker2id", "id2speaker"}
    speaker2id = mapping["speaker2id"]
    assert len(speaker2id) == 6 and all(SPEAKER_NAME.match(name) for name in speaker2id)
    assert sorted(speaker2id.values()) == list(range(6))
    assert mapping["id2speaker"] == {str(i): name for name, i in speaker2id.items()}
    assert set(meta) == {"n_mels", "speakers"} and meta["n_mels"] == 40
    assert set(meta["speakers"]) == set(speaker2id)
    assert set(test) == {"n_mels", "utterances"} and test["n_mels"] == 40

    train = [e for items in meta["speakers"].values() for e in items]
    entries = train + test["utterances"]
    assert len(train) == counts["train"] == 6 * 5  # the mean count is exact
    assert len(test["utterances"]) == counts["test"] == round(synth.TEST_SHARE * 30)
    assert counts["frames"] == sum(e["mel_len"] for e in entries)
    assert calls[-1] == (len(entries), len(entries))
    assert len({e["feature_path"] for e in entries}) == len(entries)

    floor = math.log(1e-9)
    reached_floor = 0
    for entry in entries:
        assert set(entry) == {"feature_path", "mel_len"}
        assert HEX_NAME.match(entry["feature_path"]) and isinstance(entry["mel_len"], int)
        x = torch.load(folder / entry["feature_path"], weights_only=True)
        assert x.dtype == torch.float32 and x.is_contiguous()
        assert tuple(x.shape) == (entry["mel_len"], 40)
        assert torch.isfinite(x).all() and x.min() >= -20.8 and x.max() <= 12.0
        assert x.min() >= floor - 1e-4  # the clamp: nothing below ln(1e-9)
        reached_floor += bool((x <= floor + 1e-4).any())
        assert x.max() > 5.0  # peak-normalised like HW04's -3 dB gain
    assert reached_floor > 0  # silence sits exactly on the floor in some utterances, like HW04


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tiny, tmp_path):
    folder, _, _ = tiny
    synth.synthesize(tmp_path / "again", seed=7, **TINY)
    assert _digests(tmp_path / "again") == _digests(folder)

    synth.synthesize(tmp_path / "other", seed=8, **TINY)
    names = set(json.loads((folder / "mapping.json").read_text())["speaker2id"])
    other = set(json.loads((tmp_path / "other" / "mapping.json").read_text())["speaker2id"])
    assert names != other
    assert set(_digests(tmp_path / "other").values()).isdisjoint(_digests(folder).values())


def test_regenerating_over_a_folder_rewrites_it(tiny, tmp_path):
    """An interrupted earlier run must not leave a stale metadata.json that looks complete."""
    folder, _, _ = tiny
    target = tmp_path / "re"
    target.mkdir()
    (target / "metadata.json").write_text("{}")
    seen = []
    synth.synthesize(target, seed=7, progress=lambda d, t: seen.append((target / "metadata.json").exists()), **TINY)
    assert not any(seen)  # absent while utterances are written
    assert (target / "metadata.json").read_bytes() == (folder / "metadata.json").read_bytes()


def test_answers_follow_testdata(tiny):
    folder, _, _ = tiny
    test = json.loads((folder / "testdata.json").read_text())["utterances"]
    speakers = set(json.loads((folder / "mapping.json").read_text())["speaker2id"])
    with open(folder / "answers.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["Id", "Category"]
    assert [r[0] for r in rows[1:]] == [e["feature_path"] for e in test]
    assert all(r[1] in speakers for r in rows[1:])


def test_lengths_follow_hw04():
    rng = np.random.default_rng(123)
    lengths = synth.sample_lengths(rng, 600, 1.0)
    assert abs(np.median(lengths) - 541) <= 54
    assert lengths.min() >= 91 and np.percentile(lengths, 95) > 1000  # HW04's long right tail
    scaled = synth.sample_lengths(np.random.default_rng(123), 600, 0.4)
    assert abs(np.median(scaled) - 0.4 * np.median(lengths)) <= 2
    assert scaled.min() >= synth.length_floor(0.4) == 36


def test_test_utterances_argument_and_count_spread(tmp_path):
    counts = synth.synthesize(tmp_path / "n", speakers=3, utterances_per_speaker=20, test_utterances=2,
                              length_scale=0.1, seed=1)
    assert counts["test"] == 2
    per_speaker = [len(v) for v in json.loads((tmp_path / "n" / "metadata.json").read_text())["speakers"].values()]
    assert sum(per_speaker) == 60 and min(per_speaker) >= 17 and max(per_speaker) <= 23


def test_mel_filterbank_covers_50_to_8000_hz():
    fb = synth.MEL_FB
    assert fb.shape == (201, 40)
    assert (fb.sum(0) > 0).all()  # no empty filter at the low end
    assert fb[synth.FREQS < 50].sum() == 0 and fb[synth.FREQS > 8000].sum() == 0
    centres = synth.FREQS[fb.argmax(0)]
    assert (np.diff(centres) >= 0).all() and centres[0] < 150 and centres[-1] > 7000


def test_parallel_rendering_writes_the_same_files(tmp_path, monkeypatch):
    """``workers`` only changes speed: every utterance has its own generator. The one-thread BLAS settings of
    the rendering processes are the caller's again afterwards: a value it had comes back, an unset one is gone."""
    import hashlib

    from data.synth import synthesize

    def digest(folder):
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    before = dict(os.environ)
    synthesize(tmp_path / "one", speakers=3, utterances_per_speaker=4, length_scale=0.2, seed=11)
    synthesize(tmp_path / "two", speakers=3, utterances_per_speaker=4, length_scale=0.2, seed=11, workers=2)
    assert digest(tmp_path / "one") == digest(tmp_path / "two")
    assert dict(os.environ) == before


def test_rendering_does_not_depend_on_the_blas_kernel(tmp_path):
    """The same seed gives the same bytes whatever BLAS kernel or thread count a machine's numpy picks.

    A fresh CI machine wrote different files serially and in parallel: OpenBLAS chose another sgemm path
    for one thread than for several. OPENBLAS_CORETYPE forces other kernels here (the build is DYNAMIC_ARCH)
    and OPENBLAS_NUM_THREADS other splits; each run is a fresh process, as each machine would be.
    """
    import hashlib
    import subprocess
    import sys

    def render(folder, **env):
        code = ("import sys; from data.synth import synthesize; "
                "synthesize(sys.argv[1], speakers=3, utterances_per_speaker=4, length_scale=0.6, seed=5)")
        subprocess.run([sys.executable, "-c", code, str(folder)], check=True, env={**os.environ, **env})
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}

    reference = render(tmp_path / "default")
    assert render(tmp_path / "prescott", OPENBLAS_CORETYPE="Prescott", OPENBLAS_NUM_THREADS="1") == reference
    assert render(tmp_path / "sandybridge", OPENBLAS_CORETYPE="Sandybridge", OPENBLAS_NUM_THREADS="2") == reference


def test_cli_synth_makes_hw04_lengths_by_default(tmp_path):
    """`search data synth DIR --speakers 600` is the HW04-scale set: HW04's lengths unless told otherwise."""
    from click.testing import CliRunner

    from data.hw04 import read_layout
    from search.cli import main

    out = tmp_path / "hw04ish"
    result = CliRunner().invoke(main, ["data", "synth", str(out), "--speakers", "3", "--utterances-per-speaker", "3",
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    layout = read_layout(out)
    lengths = [u.mel_len for u in layout.train + layout.test]
    assert len(layout.train) == 9 and len(layout.test) == 1  # 0.14 x 9 test utterances, rounded
    assert np.median(lengths) > 300  # HW04: p5 368, median 541; the embedded 0.4 scale: median 216
