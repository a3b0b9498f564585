"""A deterministic speech-like dataset in the exact HW04 ``Dataset/`` layout (see ../shared/SYNTH.md).

Why not random blobs: every model would score 100% and every search would be meaningless. Instead each
utterance is rendered from a model of speech (data/speech.py: speakers, phones, recording channels) into the
HW04 features (data/mel.py: 40 log-mel bins of 10 ms frames).

Like HW04, values peak near 8-9 (each utterance is normalised to a peak, as sox's -3 dB gain did) and
digital silence (about half the utterances have zeroed pauses, some channels cut the top band) sits
exactly at ln(1e-9) = -20.723.

Everything is drawn from numpy PCG64 generators derived from the seed with SeedSequence spawn keys:
one for the plan (names, counts, lengths, file names), one per speaker, one per utterance, one for the
shared channel pool (the phone inventory is a fixed table). The same arguments therefore give byte-identical
files whatever the generation order.

The difficulty is calibrated so that a sequence model must train for a while to pass a linear classifier on
per-utterance statistics (BENCHMARKS.md, "The synthetic set").
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data.environment import restore_environment
from data.mel import FREQS, MEL_FB, N_MELS  # noqa: F401  (FREQS, MEL_FB: read from here by tests and callers)
from data.speech import Speaker, World, draw_speaker, draw_world, render_utterance

DEFAULT_SPEAKERS = 32
DEFAULT_UTTERANCES_PER_SPEAKER = 48
DEFAULT_LENGTH_SCALE = 0.4

TEST_SHARE = 8000 / 56666  # HW04's test/train ratio
UTTERANCE_COUNT_SPREAD = 0.15  # HW04: 80..111 utterances per speaker around 94

# Spawn keys of the SeedSequence children: one stream per purpose, so they never overlap.
_PLAN, _SPEAKER, _UTTERANCE, _WORLD = 0, 1, 2, 3


# ---------------------------------------------------------------------------------------------------
# Lengths

# A shifted lognormal, shift + median_excess * exp(sigma * z), fitted to the quantiles of HW04's training
# lengths in frames (the fit: BENCHMARKS.md, "The synthetic set"). A 2% share drawn uniformly from HW04's
# short range fills its tail below p5, down to its shortest utterance.
_LEN_SHIFT, _LEN_MEDIAN_EXCESS, _LEN_SIGMA = 340.0, 201.0, 1.0
_LEN_SHORT_SHARE, _LEN_MIN, _LEN_SHORT_MAX, _LEN_MAX = 0.02, 91.0, 368.0, 7193.0


def length_floor(length_scale: float) -> int:
    """The shortest utterance at a scale: HW04's minimum, scaled, and never under 24 frames."""
    return max(24, round(_LEN_MIN * length_scale))


def sample_lengths(rng: np.random.Generator, n: int, length_scale: float = 1.0) -> np.ndarray:
    """Draw n utterance lengths in frames distributed like HW04's, multiplied by length_scale."""
    body = _LEN_SHIFT + _LEN_MEDIAN_EXCESS * np.exp(_LEN_SIGMA * rng.standard_normal(n))
    short = rng.uniform(_LEN_MIN, _LEN_SHORT_MAX, n)
    lengths = np.where(rng.random(n) < _LEN_SHORT_SHARE, short, np.minimum(body, _LEN_MAX))
    return np.maximum(length_floor(length_scale), np.rint(lengths * length_scale)).astype(np.int64)


# ---------------------------------------------------------------------------------------------------
# The dataset


def _generator(seed: int, *key: int) -> np.random.Generator:
    """The PCG64 stream of one purpose (and item) of a dataset: independent of generation order."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=key)))


def _utterance_counts(rng: np.random.Generator, speakers: int, per_speaker: int) -> np.ndarray:
    """Utterances per speaker: around per_speaker by up to 15% like HW04, with a mean of exactly
    per_speaker (deviations come in +d/-d pairs) and never fewer than 1."""
    spread = int(UTTERANCE_COUNT_SPREAD * per_speaker)
    half = rng.integers(-spread, spread + 1, speakers // 2)
    deviations = np.concatenate([half, -half, np.zeros(speakers % 2, np.int64)])
    return per_speaker + deviations[rng.permutation(speakers)]


def _file_names(rng: np.random.Generator, n: int) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = f"uttr-{rng.bytes(16).hex()}.pt"
        if name not in seen:  # a collision of 128 random bits will not happen, but never write one twice
            seen.add(name)
            names.append(name)
    return names


_RENDER_STATE: tuple = ()


def _set_render_state(seed: int, voices: list, world) -> None:
    global _RENDER_STATE
    _RENDER_STATE = (seed, voices, world)


def _start_render_worker(seed: int, voices: list[Speaker], world: World) -> None:
    """Initializer of a rendering process: one thread each (the processes are the parallelism)."""
    torch.set_num_threads(1)
    _set_render_state(seed, voices, world)


_ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _render_job(job: tuple[int, int, int, str]) -> None:
    """Render utterance ``i`` of speaker ``who`` with ``n_frames`` frames and save it to ``path``."""
    i, who, n_frames, path = job
    seed, voices, world = _RENDER_STATE
    feats = render_utterance(_generator(seed, _UTTERANCE, i), voices[who], world, n_frames)
    torch.save(torch.from_numpy(feats), path)


@dataclass
class _Plan:
    """What the plan stream decides: speakers' names, who says each utterance, lengths and file names."""

    names: list[str]  # speaker names, in label order
    counts: np.ndarray  # training utterances per speaker
    test_speaker: np.ndarray  # the speaker of each test utterance
    owner: np.ndarray  # the speaker of each utterance, training ones first
    lengths: np.ndarray  # frames of each utterance
    files: list[str]
    listing_order: np.ndarray  # metadata.json lists speakers unsorted, like HW04


def _draw_plan(seed: int, speakers: int, utterances_per_speaker: int, test_utterances: int,
               length_scale: float) -> _Plan:
    """Names, labels, counts, lengths and file names, all from one stream, in a fixed order."""
    plan = _generator(seed, _PLAN)
    pool = 10_000 if speakers <= 2_000 else 100_000  # VoxCeleb-like ids (id00012..id09272) when they fit
    names = [f"id{n:05d}" for n in plan.choice(pool, speakers, replace=False)]  # label order: random
    counts = _utterance_counts(plan, speakers, utterances_per_speaker)
    train_speaker = np.repeat(np.arange(speakers), counts)
    test_speaker = plan.integers(0, speakers, test_utterances)
    owner = np.concatenate([train_speaker, test_speaker])
    lengths = sample_lengths(plan, len(owner), length_scale)
    files = _file_names(plan, len(owner))
    return _Plan(names, counts, test_speaker, owner, lengths, files, plan.permutation(speakers))


def _render_all(jobs: list, seed: int, voices: list[Speaker], world: World, workers: int,
                progress: Callable[[int, int], None] | None) -> None:
    if workers > 1:
        # Spawned (not forked) processes that load BLAS with one thread each: otherwise every process's BLAS
        # spreads over every core, and the oversubscribed processes render slower than one.
        context = multiprocessing.get_context("spawn")
        saved = {name: os.environ.get(name) for name in _ONE_THREAD}
        os.environ.update(_ONE_THREAD)  # read by the children's BLAS when they import numpy
        try:
            with context.Pool(workers, initializer=_start_render_worker, initargs=(seed, voices, world)) as pool:
                for done, _ in enumerate(pool.imap_unordered(_render_job, jobs, chunksize=64), 1):
                    if progress is not None:
                        progress(done, len(jobs))
        finally:
            restore_environment(saved)
    else:
        _set_render_state(seed, voices, world)
        for done, job in enumerate(jobs, 1):
            _render_job(job)
            if progress is not None:
                progress(done, len(jobs))


def _write_listing(out: Path, plan: _Plan) -> None:
    """mapping.json, testdata.json, answers.csv, and metadata.json last: its presence means complete."""
    names, counts = plan.names, plan.counts
    entries = [{"feature_path": f, "mel_len": int(n)} for f, n in zip(plan.files, plan.lengths)]
    n_train = int(counts.sum())
    mapping = {"speaker2id": {name: i for i, name in enumerate(names)},
               "id2speaker": {str(i): name for i, name in enumerate(names)}}
    (out / "mapping.json").write_text(json.dumps(mapping))
    (out / "testdata.json").write_text(json.dumps({"n_mels": N_MELS, "utterances": entries[n_train:]}))
    answers = out / f"answers.csv.tmp{os.getpid()}"
    with open(answers, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Id", "Category"])
        writer.writerows((e["feature_path"], names[s]) for e, s in zip(entries[n_train:], plan.test_speaker))
    os.replace(answers, out / "answers.csv")
    starts = np.cumsum(counts) - counts
    by_speaker = {names[s]: entries[starts[s]: starts[s] + counts[s]] for s in plan.listing_order}
    (out / "metadata.json").write_text(json.dumps({"n_mels": N_MELS, "speakers": by_speaker}))


def synthesize(out_dir, *, speakers: int = DEFAULT_SPEAKERS,
               utterances_per_speaker: int = DEFAULT_UTTERANCES_PER_SPEAKER, test_utterances: int | None = None,
               length_scale: float = DEFAULT_LENGTH_SCALE, seed: int = 0,
               progress: Callable[[int, int], None] | None = None, workers: int = 1) -> dict:
    """Write mapping.json, metadata.json, testdata.json and uttr-<32 hex>.pt files into out_dir.

    test_utterances=None means round(0.14 * speakers * utterances_per_speaker) (HW04's 8000/56666
    ratio); each test utterance comes from a speaker drawn uniformly. Training utterances per speaker
    vary by up to 15% around utterances_per_speaker (HW04: 80..111 around 94) with exactly that mean.
    Also writes answers.csv, the test answer key (Id,Category of the test utterances, in testdata.json
    order: the Kaggle format), so `search score` and `search finalize` can score predictions on synthetic
    data; it is not part of the HW04 layout (written to a temporary name and renamed).
    metadata.json is written last (and removed first when the folder is regenerated): a folder without
    it is incomplete. progress: optional callable(done, total) after each utterance. workers: processes
    rendering utterances in parallel (each utterance has its own generator: the files are the same).
    Returns {"train", "test", "speakers", "frames"} counts.
    """
    if speakers < 1 or speakers > 100_000 or utterances_per_speaker < 1:
        raise ValueError("need 1..100000 speakers and at least 1 utterance per speaker")
    if not 0 < length_scale <= 10:  # nan and inf too: they overflowed or rendered forever
        raise ValueError(f"length_scale must be in (0, 10], got {length_scale}")
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}")
    if test_utterances is None:
        test_utterances = round(TEST_SHARE * speakers * utterances_per_speaker)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metadata.json").unlink(missing_ok=True)
    plan = _draw_plan(seed, speakers, utterances_per_speaker, test_utterances, length_scale)
    world = draw_world(_generator(seed, _WORLD))
    voices = [draw_speaker(_generator(seed, _SPEAKER, i)) for i in range(speakers)]
    jobs = [(i, int(who), int(n_frames), str(out / name))
            for i, (who, n_frames, name) in enumerate(zip(plan.owner, plan.lengths, plan.files))]
    _render_all(jobs, seed, voices, world, workers, progress)
    _write_listing(out, plan)
    return {"train": int(plan.counts.sum()), "test": int(test_utterances), "speakers": speakers,
            "frames": int(plan.lengths.sum())}
