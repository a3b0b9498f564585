"""The HW04 feature recipe's spectral frame and mel filterbank, for the synthetic set (data/synth.py).

The recipe of yistLin/dvector: 16 kHz, n_fft 400, hop 160, 40 HTK mel filters from 50 Hz.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
N_FFT = 400
N_BINS = N_FFT // 2 + 1
N_MELS = 40
F_MIN, F_MAX = 50.0, 8000.0
POWER_FLOOR = 1e-9
FRAMES_PER_SECOND = 100
FREQS = np.linspace(0.0, SAMPLE_RATE / 2, N_BINS).astype(np.float32)  # 0, 40, ..., 8000 Hz


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

# The filterbank in sparse form, by filter: each bin feeds at most two neighbouring filters, so few of its
# weights are non-zero. ``mel_project`` sums each filter's bins in this fixed order with numpy's
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
