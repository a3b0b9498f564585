"""The speech model of the synthetic set (data/synth.py): who speaks, what is said, through which channel.

Built with the source-filter picture of speech, straight in the power-spectrum domain:
* per speaker (``draw_speaker``, drawn once): mean pitch and intonation range, vocal-tract scale (multiplies all
  formants), spectral tilt, breathiness, bandwidths, speaking rate, personal offsets of each phone's formant
  targets (accent), and the high "anatomical" formants F4/F5;
* shared by everyone: a phone inventory (vowels, nasals, liquids, fricatives, stops with formant or noise-peak
  targets, durations, levels) and a pool of recording channels (``draw_world``: EQ, low cut, optional codec
  low-pass, noise level and colour), drawn per utterance from the same pool for every speaker;
* per utterance (``render_utterance``): a random syllable sequence with pauses, formant tracks interpolated
  between sonorants, an F0 contour (declination reset at pauses, wobble, accents), an energy envelope, and
  within-speaker variation (pitch, effort, rate); each 10 ms frame is a harmonic comb (voiced) and noise
  (breath, frication, bursts, channel) on the bins of the recipe's FFT (data/mel.py), shaped by the formant
  envelope, tilt and channel, then the mel filters, clamp, natural log.

Every function draws from the generator it is given, in a fixed order: the same generator state gives the
same bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from data.mel import F_MAX, F_MIN, FRAMES_PER_SECOND, FREQS, N_BINS, POWER_FLOOR, mel_project


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
# Difficulty knobs (calibrated against simple classifiers: BENCHMARKS.md, "The synthetic set"). Spreads
# between speakers make the task easy; within-speaker variation and channels make it hard.

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


def draw_world(rng: np.random.Generator) -> World:
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


def draw_speaker(rng: np.random.Generator) -> Speaker:
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


@dataclass
class _Phones:
    """An utterance's phone tokens and, per frame, which token and phone sounds."""

    seq: np.ndarray  # (tokens,) phone ids
    dur: np.ndarray  # (tokens,) frames
    starts: np.ndarray  # (tokens,) first frame
    token: np.ndarray  # (T,) the token of each frame
    phone: np.ndarray  # (T,) the phone of each frame
    t: np.ndarray  # (T,) frame numbers

    @property
    def centres(self) -> np.ndarray:
        return self.starts + self.dur / 2.0

    @property
    def is_pause(self) -> np.ndarray:
        return self.phone == INVENTORY.pause


def _phone_sequence(rng: np.random.Generator, spk: Speaker, T: int) -> _Phones:
    """Syllables (onset?) vowel (coda?) (pause?). Vowels last >= 3 frames, so T // 3 + 2 syllables always
    cover T frames. What is said changes from one utterance to the next: each draws its own phone frequencies
    (Dirichlet) and pause rate, so the average spectrum of an utterance depends on its words too."""
    inv = INVENTORY
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
    return _Phones(seq, dur, starts, token, phone, t)


def _formant_tracks(rng: np.random.Generator, spk: Speaker, ph: _Phones) -> tuple[np.ndarray, np.ndarray]:
    """(formants, bandwidths), each (T, 3) Hz: linear between the centres of the sonorant tokens
    (coarticulation); obstruents and pauses take the tract shape of their neighbours (what an "h" or a burst's
    aspiration colours)."""
    inv, seq, t, centres = INVENTORY, ph.seq, ph.t, ph.centres
    son = inv.sonorant[seq]
    vt_utt = np.exp(rng.normal(0.0, UTT_VT_SD))
    tok_f = spk.targets[seq[son]] * vt_utt * np.exp(rng.normal(0.0, 0.03, (son.sum(), 3)))
    bw = _BANDWIDTHS * spk.bandwidth * np.where(inv.kind[seq[son]] == "N", 1.8, 1.0)[:, None]
    formants = np.stack([np.interp(t, centres[son], tok_f[:, j]) for j in range(3)], 1).astype(np.float32)
    widths = np.stack([np.interp(t, centres[son], bw[:, j]) for j in range(3)], 1).astype(np.float32)
    return formants, widths


def _pitch(rng: np.random.Generator, spk: Speaker, ph: _Phones, since: np.ndarray) -> np.ndarray:
    """F0 (T, 1) Hz, in semitones around the speaker's mean: an utterance offset, declination that resets
    after each pause (``since``: seconds since the last one), a slow wobble, per-vowel accents and a little
    frame jitter."""
    inv, seq, t = INVENTORY, ph.seq, ph.t
    vowel_tok = inv.kind[seq] == "V"
    accents = rng.normal(0.0, spk.f0_range / 2, vowel_tok.sum())
    semis = (rng.normal(0.0, UTT_F0_SD) + spk.f0_range * 0.6
             - np.minimum(since * spk.f0_range * rng.uniform(0.4, 1.0), 2.0 * spk.f0_range)
             + _smooth_wobble(rng, t, spk.f0_range / 3, 0.3, 2.5)
             + np.interp(t, ph.centres[vowel_tok], accents)
             + rng.normal(0.0, 0.15, len(t)))
    return np.clip(spk.f0 * 2.0 ** (semis / 12.0), 60.0, 400.0).astype(np.float32)[:, None]


def _energy(rng: np.random.Generator, ph: _Phones, since: np.ndarray) -> np.ndarray:
    """Gain per frame (power): phone level, token jitter, a slow swell, decay along each phrase; smoothed so
    onsets ramp over ~3 frames; zero in pauses."""
    inv, seq, t = INVENTORY, ph.seq, ph.t
    level = inv.level_db[seq] + rng.normal(0.0, 2.0, len(seq))
    env_db = level[ph.token] + _smooth_wobble(rng, t, 2.0, 0.1, 1.0) - np.minimum(since * 1.5, 6.0)
    env_db = np.convolve(np.pad(env_db, 1, mode="edge"), [0.25, 0.5, 0.25], mode="valid")
    return np.where(ph.is_pause, 0.0, 10.0 ** (env_db / 10.0))


def _sources(ph: _Phones) -> tuple[np.ndarray, np.ndarray]:
    """(voicing, frication) amounts per frame. Stops: a closure (silence, or a faint voice bar for b/d/g),
    then a burst of their own noise peaks that decays over a few frames while voicing (b/d/g) sets in."""
    inv, phone, token, dur = INVENTORY, ph.phone, ph.token, ph.dur
    k_in = ph.t - ph.starts[token]  # frame index inside its phone
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
    return voicing, frication


def _spectra(rng: np.random.Generator, spk: Speaker, ph: _Phones, formants: np.ndarray, widths: np.ndarray,
             f0: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(harmonic power, noise power spectral density), each (T, N_BINS) float32, before the channel."""
    inv, phone = INVENTORY, ph.phone
    voicing, frication = _sources(ph)
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
    return harmonic, noise_psd


def _record(rng: np.random.Generator, world: World, harmonic: np.ndarray, noise_psd: np.ndarray,
            is_pause: np.ndarray) -> np.ndarray:
    """Through a channel of the pool, with its noise: the periodogram (T, N_BINS)."""
    T = len(harmonic)
    channel = world.channels[rng.integers(len(world.channels))]
    eq = channel.eq * (10.0 ** (_ripple(rng, UTT_EQ_SD, 3) / 10.0)).astype(np.float32)
    speech_level = float((harmonic + noise_psd).mean())
    snr = channel.snr_db + rng.normal(0.0, 3.0)
    noise_psd = noise_psd * eq + channel.noise_color * np.float32(speech_level * 10.0 ** (-snr / 10.0))
    power = harmonic * eq + noise_psd * rng.standard_exponential((T, N_BINS), dtype=np.float32)
    if rng.random() < DIGITAL_SILENCE_SHARE:
        power[is_pause] = 0.0  # edited-out pauses: digital zeros, the clamp floor of HW04
    return power


def render_utterance(rng: np.random.Generator, speaker: Speaker, world: World, n_frames: int) -> np.ndarray:
    """Render one utterance of n_frames frames: float32 log-mel of shape (n_frames, 40)."""
    ph = _phone_sequence(rng, speaker, n_frames)
    formants, widths = _formant_tracks(rng, speaker, ph)
    last_pause = np.maximum.accumulate(np.where(ph.is_pause, ph.t, 0))
    since = (ph.t - last_pause) / FRAMES_PER_SECOND
    f0 = _pitch(rng, speaker, ph, since)
    gain = _energy(rng, ph, since)
    harmonic, noise_psd = _spectra(rng, speaker, ph, formants, widths, f0, gain)
    power = _record(rng, world, harmonic, noise_psd, ph.is_pause)
    mel = mel_project(power)
    mel *= np.float32(math.exp(rng.uniform(*PEAK_LOG_MEL)) / mel.max())
    return np.log(np.maximum(mel, np.float32(POWER_FLOOR)))
