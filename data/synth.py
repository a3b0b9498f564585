"""A deterministic speech-like dataset in the exact HW04 ``Dataset/`` layout (see ../shared/SYNTH.md).

Why not random blobs: every model would score 100% and every search would be meaningless. Instead each
utterance is built with the source-filter picture of speech, straight in the power-spectrum domain:

* per speaker (drawn once): mean pitch and intonation range, vocal-tract scale (multiplies all
  formants), spectral tilt, breathiness, bandwidths, speaking rate, personal offsets of each phone's
  formant targets (accent), and the high "anatomical" formants F4/F5;
* shared by everyone: a phone inventory (vowels, nasals, liquids, fricatives, stops with formant or
  noise-peak targets, durations, levels) and a pool of recording channels (EQ, low cut, optional codec
  low-pass, noise level and colour), drawn per utterance from the same pool for every speaker;
* per utterance: a random syllable sequence with pauses, formant tracks interpolated between
  sonorants, an F0 contour (declination reset at pauses, wobble, accents), an energy envelope, and
  within-speaker variation (pitch, effort, rate); each 10 ms frame is a harmonic comb (voiced) and
  noise (breath, frication, bursts, channel) on the 201 bins of a 400-point FFT at 16 kHz, shaped by
  the formant envelope, tilt and channel, then 40 HTK mel filters 50-8000 Hz, clamp 1e-9, natural log.

Like HW04, values peak near 8-9 (each utterance is normalised to a peak, as sox's -3 dB gain did) and
digital silence (about half the utterances have zeroed pauses, some channels cut the top band) sits
exactly at ln(1e-9) = -20.723.

Everything is drawn from numpy PCG64 generators derived from the seed with SeedSequence spawn keys:
one for the plan (names, counts, lengths, file names), one per speaker, one per utterance, one for the
shared channel pool (the phone inventory is a fixed table). The same arguments therefore give byte-identical files whatever the
generation order.

Calibration measured on the default set (32 speakers x 48 utterances, length_scale 0.4: 1,536 train +
217 test utterances, median 216 frames, seed 0), 90/10 speaker-stratified split, one run each:
  * linear (multinomial logistic regression on per-utterance mean+std of log-mel, 80 standardised
    features, L-BFGS to convergence, best L2 of 1e-4/1e-3): 0.61 valid (0.38 with L2 1e-3);
  * the sample model (Linear(40,80), one post-norm TransformerEncoderLayer(80, 2, 256), masked mean,
    Linear-Sigmoid-Linear head; AdamW 1e-3, batch 32, random 128-frame crops, pad -20; scored on
    full-length held-out utterances; trained on a GPU, which does not change what it learns):
    0.25 / 0.54 / 0.72 after 400 / 800 / 1600 steps;
  * generation of the default set: 3.3 s on the 2-core CPU (shared, load ~4); HW04 scale measured on
    20 speakers x 94 utterances at length_scale 1.0 (1.39M frames): 52k frames/s under that load
    (~12 min for HW04's 37M frames; ~180k frames/s, ~3.5 min, on an idle core).
  Knob sweeps (48-64 speakers, stronger EQ, less accent, fewer speakers ...) kept the same picture:
  the sample model passes the converged linear classifier between 800 and 1600 steps, never before.
"""

from __future__ import annotations

import csv
import json
import math
import multiprocessing
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data.environment import restore_environment

DEFAULT_SPEAKERS = 32
DEFAULT_UTTERANCES_PER_SPEAKER = 48
DEFAULT_LENGTH_SCALE = 0.4

# The HW04 feature recipe (yistLin/dvector): 16 kHz, n_fft 400, hop 160, 40 mels from 50 Hz.
SAMPLE_RATE = 16_000
N_FFT = 400
N_BINS = N_FFT // 2 + 1
N_MELS = 40
F_MIN, F_MAX = 50.0, 8000.0
POWER_FLOOR = 1e-9
FRAMES_PER_SECOND = 100
FREQS = np.linspace(0.0, SAMPLE_RATE / 2, N_BINS).astype(np.float32)  # 0, 40, ..., 8000 Hz

TEST_SHARE = 8000 / 56666  # HW04's test/train ratio
UTTERANCE_COUNT_SPREAD = 0.15  # HW04: 80..111 utterances per speaker around 94

# Spawn keys of the SeedSequence children: one stream per purpose, so they never overlap.
_PLAN, _SPEAKER, _UTTERANCE, _WORLD = 0, 1, 2, 3


def mel_filterbank(n_mels: int = N_MELS, f_min: float = F_MIN, f_max: float = F_MAX) -> np.ndarray:
    """HTK-scale triangular filters without area normalisation (torchaudio's default), (N_BINS, n_mels)."""

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (m / 2595.0) - 1.0)

    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    widths = np.diff(edges)
    slopes = edges[None, :] - FREQS.astype(np.float64)[:, None]
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return np.maximum(0.0, np.minimum(rising, falling)).astype(np.float32)


MEL_FB = mel_filterbank()

# The filterbank in sparse form, by filter: each bin feeds at most two neighbouring filters (384 of the
# 8,040 weights are non-zero). ``mel_project`` sums each filter's bins in this fixed order with numpy's
# own loops. A BLAS matmul (``power @ MEL_FB``) may split and order its sums by thread count and CPU
# kernel, so the serial and the parallel rendering wrote different bytes on some machines.
_MEL_FILTER, _MEL_BIN = np.nonzero(MEL_FB.T)  # sorted by filter, then bin
_MEL_WEIGHT = MEL_FB.T[_MEL_FILTER, _MEL_BIN][:, None]  # (nnz, 1)
_MEL_START = np.searchsorted(_MEL_FILTER, np.arange(N_MELS))  # first non-zero of each filter
assert len(np.unique(_MEL_FILTER)) == N_MELS, "every mel filter must cover at least one FFT bin"


def mel_project(power: np.ndarray) -> np.ndarray:
    """(T, N_BINS) power spectra -> (T, N_MELS) mel energies, ``power @ MEL_FB`` without BLAS: the
    same bytes whatever the thread count."""
    contributions = np.ascontiguousarray(power.T)[_MEL_BIN] * _MEL_WEIGHT  # (nnz, T)
    return np.ascontiguousarray(np.add.reduceat(contributions, _MEL_START, axis=0).T)


# ---------------------------------------------------------------------------------------------------
# Lengths

# A shifted lognormal fitted to HW04's train quantiles (frames): shift + median_excess * exp(sigma * z)
# gives p5/p25/p50/p75/p95 = 378/443/541/734/1381 and mean 671 against HW04's 368/441/541/740/1338
# and 658. A 2% share drawn uniformly from HW04's short range fills its tail below p5 (min 91).
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
# The shared phone inventory

# kinds: V vowel, N nasal, L liquid/glide (sonorants: formant targets F1-F3 of the vocal tract);
# F voiceless fricative, Z voiced fricative, S voiceless stop, B voiced stop (obstruents: F1-F3 are the
# centres of their noise peaks); H aspiration (noise through the neighbouring vowels' formants).
# Formants are adult-male averages (Peterson & Barney / Hillenbrand); the speaker's scale moves them.
# name kind F1 F2 F3 duration_ms level_dB
_PHONES = """
i V 270 2290 3010 110 -2 | I V 390 1990 2550 80 -1 | e V 480 2200 2800 120 0 | E V 530 1840 2480 100 0
a V 660 1720 2410 130 1 | A V 730 1090 2440 130 1 | O V 570 840 2410 120 1 | o V 500 900 2450 120 0
U V 440 1020 2240 80 -1 | u V 300 870 2240 110 -2 | V V 640 1190 2390 90 0 | R V 490 1350 1690 110 -1
@ V 500 1500 2500 60 -3 | m N 250 1000 2200 70 -7 | n N 250 1500 2500 65 -7 | G N 250 2000 2600 70 -8
l L 360 1300 2700 60 -4 | r L 350 1200 1600 60 -4 | w L 300 700 2200 55 -5 | j L 280 2200 2900 55 -5
s F 4500 6500 7800 110 -11 | S F 2500 3500 5000 110 -9 | f F 1500 4000 7000 100 -20 | T F 2000 5000 7500 90 -22
z Z 4500 6500 7800 80 -13 | Z Z 2500 3500 5000 80 -11 | v Z 1500 4000 7000 70 -18 | D Z 2000 5000 7500 60 -19
p S 800 1500 3000 90 -12 | t S 3500 5000 6500 90 -9 | k S 1800 2500 4000 95 -9
b B 800 1500 3000 75 -14 | d B 3500 5000 6500 75 -12 | g B 1800 2500 4000 80 -12 | h H 0 0 0 60 -10
"""


@dataclass(frozen=True)
class Inventory:
    """The phone table as arrays indexed by phone id; the last id is the pause."""

    names: list[str]
    kind: np.ndarray  # (P,) one-letter kind codes
    formants: np.ndarray  # (P, 3) Hz: formant targets (sonorants) or noise-peak centres (obstruents)
    duration: np.ndarray  # (P,) typical duration in frames
    level_db: np.ndarray  # (P,) level relative to an open vowel
    voicing: np.ndarray  # (P,) share of the harmonic source (1 sonorants, ~0.35 voiced fricatives)
    frication: np.ndarray  # (P,) 1 where the phone's own noise peaks sound (fricatives, stop bursts)
    aspiration: np.ndarray  # (P,) noise through the vocal-tract envelope ("h")
    sonorant: np.ndarray  # (P,) bool: has formant targets the tracks interpolate between
    stop: np.ndarray  # (P,) bool: closure then burst
    vowels: np.ndarray  # phone ids that may be syllable nuclei
    consonants: np.ndarray  # phone ids that may be onsets and codas
    pause: int


def _inventory() -> Inventory:
    rows = [cell.split() for line in _PHONES.strip().splitlines() for cell in line.split("|")]
    names = [r[0] for r in rows] + ["_"]
    kind = np.array([r[1] for r in rows] + ["P"])
    num = np.array([[float(x) for x in r[2:]] for r in rows] + [[0, 0, 0, 200, -99]])
    voicing = np.select([np.isin(kind, list("VNL")), kind == "Z"], [1.0, 0.35], 0.0)
    frication = np.isin(kind, list("FZSB")).astype(np.float64)
    return Inventory(
        names=names,
        kind=kind,
        formants=num[:, :3],
        duration=num[:, 3] / 10.0,
        level_db=num[:, 4],
        voicing=voicing,
        frication=frication,
        aspiration=(kind == "H").astype(np.float64),
        sonorant=np.isin(kind, list("VNL")),
        stop=np.isin(kind, list("SB")),
        vowels=np.flatnonzero(kind == "V"),
        consonants=np.flatnonzero(np.isin(kind, list("NLFZSBH"))),
        pause=len(names) - 1,
    )


INVENTORY = _inventory()

# ---------------------------------------------------------------------------------------------------
# Difficulty knobs (calibrated, see the module docstring). Spreads between speakers make the task
# easy; within-speaker variation and channels make it hard.

F0_LOG_SD = 0.22  # log-sd of mean pitch within each sex (0.22: about 3.8 semitones)
VT_SD = 0.06  # sd of the vocal-tract scale within each sex
TILT_SD = 2.0  # dB/octave: sd of the speakers' source tilt
UPPER_AMPS = (0.08, 0.3)  # range of the F4/F5 peak heights (a fixed spectral signature per speaker)
ACCENT_SD = 0.08  # log-sd of a speaker's personal offset of each phone's formant targets
UTT_F0_SD = 1.5  # semitones: a speaker's pitch moves between utterances (mood, context)
UTT_EFFORT_SD = 1.5  # dB/octave: vocal effort changes the tilt between utterances
UTT_VT_SD = 0.02  # log-sd: formant scale differs a little between utterances
N_CHANNELS = 24  # size of the shared pool of recording channels
CHANNEL_EQ_SD = 4.0  # dB: strength of a channel's EQ ripple
UTT_EQ_SD = 1.5  # dB: per-utterance EQ ripple on top (microphone distance, room)
SNR_DB = (8.0, 35.0)  # range of channel noise levels
DIGITAL_SILENCE_SHARE = 0.45  # utterances whose pauses are exact zeros (HW04: 47% reach the floor)
PAUSE_PROB = 0.07  # mean chance of a pause after each syllable (each utterance draws 0..2x this)
CONTENT_ALPHA = 0.5  # Dirichlet concentration of an utterance's phone frequencies (small: lopsided)
PEAK_LOG_MEL = (7.6, 8.9)  # each utterance is scaled so its largest log-mel value lands here


@dataclass(frozen=True)
class Channel:
    eq: np.ndarray  # (N_BINS,) power gain of the channel (EQ, low cut, low-pass), exact 0 above a codec cut
    noise_color: np.ndarray  # (N_BINS,) spectral shape of its noise, same band limits
    snr_db: float


@dataclass(frozen=True)
class World:
    """What every speaker shares besides the fixed phone inventory: the pool of recording channels."""

    channels: list[Channel]


_LOG_FREQ = np.log(np.maximum(FREQS, F_MIN) / F_MIN) / np.log(F_MAX / F_MIN)  # 0..1 on a log axis


def _ripple(rng: np.random.Generator, sd_db: float, terms: int) -> np.ndarray:
    """A smooth random EQ curve in dB on the log-frequency axis (a few cosines, weaker when faster)."""
    amp = rng.normal(0.0, sd_db, terms) / np.arange(1, terms + 1)
    phase = rng.uniform(0, 2 * np.pi, terms)
    return (amp[:, None] * np.cos(np.pi * np.arange(1, terms + 1)[:, None] * _LOG_FREQ + phase[:, None])).sum(0)


def _draw_world(rng: np.random.Generator) -> World:
    channels = []
    f = np.maximum(FREQS.astype(np.float64), 1.0)
    for _ in range(N_CHANNELS):
        low_cut = rng.uniform(60.0, 250.0)
        band = 1.0 / (1.0 + (low_cut / f) ** 4)
        if rng.random() < 0.35:  # a lossy codec: nothing at all above its cut-off
            band = band * (FREQS <= rng.uniform(3800.0, 7600.0))
        else:
            band = band / (1.0 + (f / rng.uniform(6500.0, 8500.0)) ** 8)
        eq = 10.0 ** (_ripple(rng, CHANNEL_EQ_SD, 4) / 10.0) * band
        color = (np.maximum(f, 100.0) / 1000.0) ** (rng.uniform(-6.0, 0.0) / 3.0103) * band
        channels.append(Channel(eq.astype(np.float32), color.astype(np.float32), rng.uniform(*SNR_DB)))
    return World(channels)


# ---------------------------------------------------------------------------------------------------
# Speakers


@dataclass(frozen=True)
class Speaker:
    f0: float  # mean pitch, Hz
    f0_range: float  # intonation range, semitones
    vt_scale: float  # multiplies every formant (shorter vocal tract -> higher formants)
    tilt: float  # source spectral slope above 300 Hz, dB/octave
    breathiness: float  # share of aspiration noise in voiced sounds
    rate: float  # speaking rate (>1: faster)
    bandwidth: float  # multiplies formant bandwidths
    targets: np.ndarray  # (P, 3) the speaker's formant / noise-peak targets (scale and accent applied)
    upper: np.ndarray  # (N_BINS,) envelope of F4/F5 (anatomy, fixed per speaker) plus a floor
    frication_env: np.ndarray  # (P, N_BINS) spectral shape of each obstruent's noise, zeros otherwise


def _peaks(centres: np.ndarray, widths: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Sum of Lorentzian power peaks (a parallel formant synthesiser): (..., k) -> (..., N_BINS)."""
    x = (FREQS - centres[..., None]) * (2.0 / widths[..., None])
    return (amps[..., None] / (1.0 + x * x)).sum(-2)


def _draw_speaker(rng: np.random.Generator) -> Speaker:
    inv = INVENTORY
    # Pitch and vocal-tract length go together (two sexes), which makes speakers harder to tell apart
    # than independent draws would; both stay within SYNTH.md's ranges.
    female = rng.random() < 0.5
    f0 = float(np.clip(np.exp(rng.normal(np.log(210.0 if female else 118.0), F0_LOG_SD)), 80.0, 260.0))
    vt_scale = float(np.clip(rng.normal(1.08 if female else 0.93, VT_SD), 0.85, 1.15))
    accent = np.exp(rng.normal(0.0, ACCENT_SD, inv.formants.shape))
    targets = inv.formants * vt_scale * accent
    # Fricative and burst peaks sit in the front cavity, which scales less than the whole tract.
    obstruent = ~inv.sonorant
    targets[obstruent] = inv.formants[obstruent] * vt_scale**0.5 * accent[obstruent]
    upper_f = np.array([3500.0, 4500.0]) * vt_scale * np.exp(rng.normal(0.0, 0.05, 2))
    upper = _peaks(upper_f, np.array([250.0, 350.0]), rng.uniform(*UPPER_AMPS, 2)) + 0.002
    widths = np.array([900.0, 1400.0, 1800.0]) * np.exp(rng.normal(0.0, 0.1))
    frication_env = _peaks(np.minimum(targets, 7900.0), widths, np.array([1.0, 0.8, 0.6]))
    frication_env[inv.frication == 0] = 0.0
    return Speaker(
        f0=f0,
        f0_range=float(rng.uniform(1.0, 4.0)),
        vt_scale=vt_scale,
        tilt=float(rng.normal(-9.0, TILT_SD)),
        breathiness=float(rng.uniform(0.03, 0.35)),
        rate=float(np.exp(rng.normal(0.0, 0.12))),
        bandwidth=float(np.exp(rng.normal(0.0, 0.15))),
        targets=targets,
        upper=upper.astype(np.float32),
        frication_env=frication_env.astype(np.float32),
    )


# ---------------------------------------------------------------------------------------------------
# One utterance

_BANDWIDTHS = np.array([80.0, 110.0, 160.0])  # F1-F3 bandwidths, Hz, before the speaker's factor
_FORMANT_AMPS = (1.0, 0.6, 0.35)
# Harmonics get wider with frequency: pitch moves inside the 25 ms window (jitter), so the comb
# fades into a continuum in the top band, as in real spectrograms.
_COMB_SIGMA = (22.0 + 0.02 * FREQS).astype(np.float32)
_COMB_INV = (0.5 / _COMB_SIGMA**2).astype(np.float32)
_COMB_NORM = (1.0 / (_COMB_SIGMA * math.sqrt(2 * math.pi))).astype(np.float32)  # comb mean -> 1


def _smooth_wobble(rng: np.random.Generator, t: np.ndarray, sd: float, lo_hz: float, hi_hz: float) -> np.ndarray:
    """A slow random curve over frames: three sinusoids of random rate, phase and amplitude."""
    freq = rng.uniform(lo_hz, hi_hz, 3) / FRAMES_PER_SECOND
    amp = rng.normal(0.0, sd, 3)
    phase = rng.uniform(0, 2 * np.pi, 3)
    return (amp[:, None] * np.sin(2 * np.pi * freq[:, None] * t + phase[:, None])).sum(0)


def render_utterance(rng: np.random.Generator, speaker: Speaker, world: World, n_frames: int) -> np.ndarray:
    """Render one utterance of n_frames frames: float32 log-mel of shape (n_frames, 40)."""
    inv, spk, T = INVENTORY, speaker, n_frames

    # Phone sequence: syllables (onset?) vowel (coda?) (pause?). Vowels last >= 3 frames, so T // 3 + 2
    # syllables always cover T frames.
    # What is said changes from one utterance to the next: each draws its own phone frequencies
    # (Dirichlet) and pause rate, so the average spectrum of an utterance depends on its words too.
    n_syl = T // 3 + 2
    consonant_p = rng.dirichlet(np.full(len(inv.consonants), CONTENT_ALPHA))
    vowel_p = rng.dirichlet(np.full(len(inv.vowels), CONTENT_ALPHA))
    slots = np.stack([rng.choice(inv.consonants, n_syl, p=consonant_p), rng.choice(inv.vowels, n_syl, p=vowel_p),
                      rng.choice(inv.consonants, n_syl, p=consonant_p), np.full(n_syl, inv.pause)], axis=1)
    pause_prob = rng.uniform(0.0, 2.0 * PAUSE_PROB)
    keep = np.stack([rng.random(n_syl) < 0.75, np.ones(n_syl, bool),
                     rng.random(n_syl) < 0.35, rng.random(n_syl) < pause_prob], axis=1)
    seq = slots[keep]
    rate = spk.rate * np.exp(rng.normal(0.0, 0.08))
    jitter = np.exp(rng.normal(0.0, np.where(seq == inv.pause, 0.5, 0.25)))
    min_frames = np.where(inv.kind[seq] == "V", 3, np.where(inv.stop[seq], 3, 1))
    dur = np.maximum(min_frames, np.rint(inv.duration[seq] / rate * jitter)).astype(np.int64)
    starts = np.cumsum(dur) - dur
    t = np.arange(T)
    token = np.repeat(np.arange(len(seq)), dur)[:T]  # which phone token each frame belongs to
    phone = seq[token]
    k_in = t - starts[token]  # frame index inside its phone

    # Formant tracks: linear between the centres of the sonorant tokens (coarticulation); obstruents
    # and pauses take the tract shape of their neighbours (what an "h" or a burst's aspiration colours).
    centres = starts + dur / 2.0
    son = inv.sonorant[seq]
    vt_utt = np.exp(rng.normal(0.0, UTT_VT_SD))
    tok_f = spk.targets[seq[son]] * vt_utt * np.exp(rng.normal(0.0, 0.03, (son.sum(), 3)))
    bw = _BANDWIDTHS * spk.bandwidth * np.where(inv.kind[seq[son]] == "N", 1.8, 1.0)[:, None]
    formants = np.stack([np.interp(t, centres[son], tok_f[:, j]) for j in range(3)], 1).astype(np.float32)
    widths = np.stack([np.interp(t, centres[son], bw[:, j]) for j in range(3)], 1).astype(np.float32)

    # F0 contour (semitones around the speaker's mean): an utterance offset, declination that resets
    # after each pause, a slow wobble, per-vowel accents and a little frame jitter.
    is_pause = phone == inv.pause
    last_pause = np.maximum.accumulate(np.where(is_pause, t, 0))
    since = (t - last_pause) / FRAMES_PER_SECOND
    vowel_tok = inv.kind[seq] == "V"
    accents = rng.normal(0.0, spk.f0_range / 2, vowel_tok.sum())
    semis = (rng.normal(0.0, UTT_F0_SD) + spk.f0_range * 0.6
             - np.minimum(since * spk.f0_range * rng.uniform(0.4, 1.0), 2.0 * spk.f0_range)
             + _smooth_wobble(rng, t, spk.f0_range / 3, 0.3, 2.5)
             + np.interp(t, centres[vowel_tok], accents)
             + rng.normal(0.0, 0.15, T))
    f0 = np.clip(spk.f0 * 2.0 ** (semis / 12.0), 60.0, 400.0).astype(np.float32)[:, None]

    # Energy (dB per frame): phone level, token jitter, a slow swell, decay along each phrase; smoothed
    # so onsets ramp over ~3 frames.
    level = inv.level_db[seq] + rng.normal(0.0, 2.0, len(seq))
    env_db = level[token] + _smooth_wobble(rng, t, 2.0, 0.1, 1.0) - np.minimum(since * 1.5, 6.0)
    env_db = np.convolve(np.pad(env_db, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    gain = np.where(is_pause, 0.0, 10.0 ** (env_db / 10.0))

    # Source amounts per frame. Stops: a closure (silence, or a faint voice bar for b/d/g), then a burst
    # of their own noise peaks that decays over a few frames while voicing (b/d/g) sets in.
    voicing = inv.voicing[phone].copy()
    frication = inv.frication[phone].copy()
    stop = inv.stop[phone]
    voiced_stop = inv.kind[phone] == "B"
    closure = np.maximum(1, np.rint(0.6 * dur[token]))
    after = k_in - closure
    in_closure = stop & (after < 0)
    frication[stop] = np.where(in_closure[stop], 0.0, 0.45 ** np.maximum(after[stop], 0))
    voicing[stop] = np.where(in_closure[stop], 0.0, 0.6) * voiced_stop[stop]
    voicing[in_closure & voiced_stop] = 0.03
    breath = float(np.clip(spk.breathiness * np.exp(rng.normal(0.0, 0.2)), 0.0, 0.6))
    effort = rng.normal(0.0, UTT_EFFORT_SD)
    glottal = ((np.maximum(FREQS, 300.0) / 300.0) ** ((spk.tilt + effort) / 3.0103)).astype(np.float32)

    # Spectra (T, N_BINS), float32. Harmonic comb: distance of each bin to the nearest harmonic and to
    # the next one, Gaussian main lobes, normalised so the comb's average over frequency is 1.
    h = FREQS * (1.0 / f0)
    d = np.abs(h - np.rint(h)) * f0
    comb = (np.exp(-d * d * _COMB_INV) + np.exp(-(f0 - d) ** 2 * _COMB_INV)) * (f0 * _COMB_NORM)
    x = (FREQS - formants[:, :, None]) * (2.0 / widths[:, :, None])  # (T, 3, N_BINS)
    tract = np.einsum("j,tjk->tk", np.asarray(_FORMANT_AMPS, np.float32), 1.0 / (1.0 + x * x)) + spk.upper
    tract *= glottal
    voicing = (voicing * gain).astype(np.float32)[:, None]
    harmonic = comb * tract * (voicing * (1.0 - breath))
    # Every noise component (breath, aspiration, frication, channel) is Gaussian, so their sum is one
    # noise whose periodogram is its power spectrum times a unit exponential per bin.
    noise_psd = tract * (voicing * breath + (inv.aspiration[phone] * gain).astype(np.float32)[:, None])
    noise_psd += spk.frication_env[phone] * (frication * gain).astype(np.float32)[:, None]

    channel = world.channels[rng.integers(len(world.channels))]
    eq = channel.eq * (10.0 ** (_ripple(rng, UTT_EQ_SD, 3) / 10.0)).astype(np.float32)
    speech_level = float((harmonic + noise_psd).mean())
    snr = channel.snr_db + rng.normal(0.0, 3.0)
    noise_psd = noise_psd * eq + channel.noise_color * np.float32(speech_level * 10.0 ** (-snr / 10.0))
    power = harmonic * eq + noise_psd * rng.standard_exponential((T, N_BINS), dtype=np.float32)
    if rng.random() < DIGITAL_SILENCE_SHARE:
        power[is_pause] = 0.0  # edited-out pauses: digital zeros, the clamp floor of HW04

    mel = mel_project(power)
    mel *= np.float32(math.exp(rng.uniform(*PEAK_LOG_MEL)) / mel.max())
    return np.log(np.maximum(mel, np.float32(POWER_FLOOR)))


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


def _start_render_worker(seed: int, voices: list, world) -> None:
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

    # The plan: names, labels, counts, lengths and file names all come from one stream, in a fixed order.
    plan = _generator(seed, _PLAN)
    pool = 10_000 if speakers <= 2_000 else 100_000  # VoxCeleb-like ids (id00012..id09272) when they fit
    names = [f"id{n:05d}" for n in plan.choice(pool, speakers, replace=False)]  # label order: random
    counts = _utterance_counts(plan, speakers, utterances_per_speaker)
    train_speaker = np.repeat(np.arange(speakers), counts)
    test_speaker = plan.integers(0, speakers, test_utterances)
    owner = np.concatenate([train_speaker, test_speaker])
    lengths = sample_lengths(plan, len(owner), length_scale)
    files = _file_names(plan, len(owner))
    listing_order = plan.permutation(speakers)  # metadata.json lists speakers unsorted, like HW04

    world = _draw_world(_generator(seed, _WORLD))
    voices = [_draw_speaker(_generator(seed, _SPEAKER, i)) for i in range(speakers)]
    jobs = [(i, int(who), int(n_frames), str(out / name)) for i, (who, n_frames, name) in enumerate(zip(owner, lengths, files))]
    if workers > 1:
        # Spawned (not forked) processes that load BLAS with one thread each: the mel projection is a
        # small matmul that OpenBLAS would otherwise spread over every core in every process. That
        # oversubscription made 16 processes on 16 cores slower than one (566 s for HW04 scale); one
        # thread per process renders 2.7x faster than the default on this 2-core machine.
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

    entries = [{"feature_path": f, "mel_len": int(n)} for f, n in zip(files, lengths)]
    n_train = len(train_speaker)
    mapping = {"speaker2id": {name: i for i, name in enumerate(names)},
               "id2speaker": {str(i): name for i, name in enumerate(names)}}
    (out / "mapping.json").write_text(json.dumps(mapping))
    (out / "testdata.json").write_text(json.dumps({"n_mels": N_MELS, "utterances": entries[n_train:]}))
    answers = out / f"answers.csv.tmp{os.getpid()}"
    with open(answers, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["Id", "Category"])
        writer.writerows((e["feature_path"], names[s]) for e, s in zip(entries[n_train:], test_speaker))
    os.replace(answers, out / "answers.csv")
    starts = np.cumsum(counts) - counts
    by_speaker = {names[s]: entries[starts[s]: starts[s] + counts[s]] for s in listing_order}
    (out / "metadata.json").write_text(json.dumps({"n_mels": N_MELS, "speakers": by_speaker}))
    return {"train": n_train, "test": int(test_utterances), "speakers": speakers, "frames": int(lengths.sum())}
