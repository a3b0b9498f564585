"""The feature bank: a whole HW04 folder packed into one contiguous float16 array plus an index.

Why: the sample code opens one ``.pt`` per utterance per step through a DataLoader, which starves a GPU.
Packed once, the bank is loaded onto the device once per worker process and every trial of that process
cuts its training crops and validation batches from it with one gather, with no host round trip.

On disk (a folder ``.bank/`` beside the data, or a cache folder when the data folder is read-only)::

    frames.npy   float16, shape (total_frames, n_mels), utterances back to back
    index.npz    offsets, lengths, labels (-1 for test), names, id2speaker, n_mels, n_train, fingerprint,
                 frames_crc32 (``frames_checksum``: checked at every open)

Packing streams one utterance at a time into a memory-mapped file, so the host never holds the data
as float32. The fingerprint (``fingerprint``) covers the json files and a sample of every feature file's
content: when the source changes the bank is rebuilt. float16 keeps ~3 significant digits, far finer than
the spread of log-mel values (from the silence floor, ln(1e-9), to the peaks), and halves the memory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from data.errors import DataError
from data.hw04 import PAD_VALUE, Layout, load_features, read_layout
from data.tempfiles import remove_stale, temp_name

BANK_VERSION = 3  # 3: index.npz holds a checksum of frames.npy; 2: the fingerprint samples each file's content
CHECKSUM_CHUNK = 1 << 24  # bytes per zlib.crc32 call
SAMPLE_BYTES = 4096  # read at each sampled place of a feature file
SAMPLES = 4  # places sampled besides the head and the tail


def _content_sample(path: Path) -> bytes:
    """A cheap stand-in for a file's content: its size, head, tail and a few blocks spread between.

    A ``torch.save`` file is a zip archive whose directory, at the tail, holds the CRC-32 of every member,
    the tensor's bytes included: a tensor replaced by another one changes the tail even when the size and
    the mtime are kept. A few KB per file, so that fingerprinting a large dataset stays quick.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size <= SAMPLE_BYTES * (SAMPLES + 2):
            return size.to_bytes(8, "little") + f.read()
        parts = [size.to_bytes(8, "little")]
        for i in range(SAMPLES + 2):  # head, SAMPLES blocks evenly spread, tail
            f.seek((size - SAMPLE_BYTES) * i // (SAMPLES + 1))
            parts.append(f.read(SAMPLE_BYTES))
        return b"".join(parts)


def frames_checksum(frames: np.ndarray) -> int:
    """CRC-32 of the frames' bytes, in chunks (no copy): written at packing, checked at every open.

    A bank of the right size whose frames were damaged (NaN written into frames.npy, a bad disk block) was
    trained on as it was: every trial failed with a NaN loss. CRC-32 is a damage check, not a security one,
    and cheap: the array is read into memory at open anyway, and zlib.crc32 is fast beside that read."""
    data = memoryview(np.ascontiguousarray(frames)).cast("B")
    crc = 0
    for start in range(0, len(data), CHECKSUM_CHUNK):
        crc = zlib.crc32(data[start:start + CHECKSUM_CHUNK], crc)
    return crc


def fingerprint(layout: Layout) -> str:
    """Hash of everything the bank is made from: json bytes and a content sample of each feature file
    (``_content_sample``: its size, head, tail, where a torch file keeps its CRC-32s, and blocks between).
    Not size and mtime: a file replaced with its mtime kept (``cp -p``, ``rsync -t``, ``touch -r``) would
    serve stale features."""
    digest = hashlib.sha256(f"bank-v{BANK_VERSION}".encode())
    for name in ("mapping.json", "metadata.json", "testdata.json"):
        digest.update((layout.root / name).read_bytes())
    for utt in layout.train + layout.test:
        digest.update(f"{utt.feature_path}:".encode())
        try:
            digest.update(hashlib.sha256(_content_sample(layout.root / utt.feature_path)).digest())
        except OSError as err:
            raise DataError(f"{layout.root / utt.feature_path}: cannot read ({err.strerror})") from None
    return digest.hexdigest()[:20]


@dataclass
class FeatureBank:
    """All utterances of one dataset, train first then test, on one device.

    frames:  (total_frames, n_mels) float16
    offsets, lengths, labels: (n_utterances,) int64; labels are -1 for test utterances
    """

    frames: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    names: list[str]
    id2speaker: list[str]
    n_mels: int
    n_train: int  # utterances [0, n_train) are training data, the rest test data
    source: str  # the folder the bank was packed from
    fingerprint: str = ""  # of the data it was packed from (``fingerprint``): checkpoints and studies keep it

    @property
    def device(self) -> torch.device:
        """Where batches are cut and models train: the index tensors' device. The frames are there too, but in
        ``to``'s fallback, which keeps them in pinned host memory when they do not fit on the GPU: the device
        was then taken from the frames (the CPU), and every trial failed at its first step with "Expected a
        'cuda' device type for generator but found 'cpu'" (HW04-Bench call 14: workers started on a card that
        five others had filled)."""
        return self.offsets.device

    @property
    def n_speakers(self) -> int:
        return len(self.id2speaker)

    def test_ids(self) -> torch.Tensor:
        return torch.arange(self.n_train, len(self.names), device=self.device)

    def to(self, device: str | torch.device) -> "FeatureBank":
        """A copy on ``device``; falls back to pinned host memory when the frames do not fit on a GPU."""
        device = torch.device(device)
        try:
            frames = self.frames.to(device)
        except torch.OutOfMemoryError:
            frames = self.frames.pin_memory()  # gathers then copy only the batch across
        move = lambda t: t.to(device)  # noqa: E731 - the small index tensors always fit
        return FeatureBank(frames, move(self.offsets), move(self.lengths), move(self.labels), self.names,
                           self.id2speaker, self.n_mels, self.n_train, self.source, self.fingerprint)

    def gather(self, ids: torch.Tensor, starts: torch.Tensor, length: int, out_device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cut ``length`` frames of each utterance ``ids[i]`` from ``starts[i]``.

        Returns x (B, length, n_mels) float32 with PAD_VALUE past each utterance's end, and mask
        (B, length) bool, True on real frames. All on the bank's device, with no host sync when the frames are
        there too (frames kept on the host: the indices go to the host, the batch is gathered there and copied
        across).
        """
        device = out_device or self.device
        lengths = self.lengths[ids]
        pos = starts[:, None] + torch.arange(length, device=ids.device)  # (B, length)
        valid = pos < lengths[:, None]
        index = self.offsets[ids][:, None] + torch.minimum(pos, lengths[:, None] - 1)
        x = self.frames[index.to(self.frames.device)].to(device, non_blocking=True).float()
        valid = valid.to(device)
        x = x.masked_fill(~valid[..., None], PAD_VALUE)
        return x, valid

    def random_crops(self, ids: torch.Tensor, segment: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random ``segment``-frame crops (shorter utterances whole, padded): training batches."""
        room = (self.lengths[ids] - segment + 1).clamp(min=1)
        starts = (torch.rand(ids.shape, device=ids.device, generator=generator) * room).long()
        return self.gather(ids, starts, segment)


def cache_folder(layout: Layout, cache_root: Path | None, readonly_cache: Path | None = None) -> Path:
    """Where the bank of ``layout`` lives: under ``cache_root`` when given; else beside the data (``.bank/``)
    when its folder is writable, else under ``readonly_cache`` (the caller's cache folder)."""
    beside = layout.root / ".bank"
    if cache_root is None and os.access(layout.root, os.W_OK):
        return beside
    root = cache_root or readonly_cache
    if root is None:
        raise DataError(f"{layout.root}: the folder is read-only and no cache folder was given for its feature bank")
    return root / ("bank-" + hashlib.sha256(str(layout.root.resolve()).encode()).hexdigest()[:12])


def pack(layout: Layout, folder: Path, progress: Callable[[int, int], None] | None = None) -> None:
    """Write the bank of ``layout`` into ``folder`` (replaced atomically when complete)."""
    utterances = layout.train + layout.test
    for utt in utterances:  # a mel_len its file cannot hold (a corrupt json): refuse before allocating for it
        if utt.mel_len * layout.n_mels * 4 > (layout.root / utt.feature_path).stat().st_size:
            load_features(layout.root, utt, layout.n_mels)  # names the problem precisely
            raise DataError(f"{layout.root / utt.feature_path}: too small for mel_len {utt.mel_len} x n_mels "
                            f"{layout.n_mels} float32 values")
    lengths = np.array([u.mel_len for u in utterances], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    # the half-packed folder of a killed pack (SIGKILL, OOM) is as big as the bank: removed here (data/tempfiles.py)
    remove_stale(folder.parent, folder.name)
    tmp = folder.with_name(temp_name(folder.name))
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        frames = np.lib.format.open_memmap(tmp / "frames.npy", mode="w+", dtype=np.float16,
                                           shape=(int(lengths.sum()), layout.n_mels))
        for i, utt in enumerate(utterances):
            features = load_features(layout.root, utt, layout.n_mels)  # validates shape/dtype/values
            frames[offsets[i]:offsets[i] + lengths[i]] = features.numpy().astype(np.float16)
            if progress and (i % 500 == 0 or i == len(utterances) - 1):
                progress(i + 1, len(utterances))
        frames.flush()
        checksum = frames_checksum(np.asarray(frames))
        del frames
        np.savez(tmp / "index.npz", offsets=offsets, lengths=lengths,
                 labels=np.array([u.label for u in utterances], dtype=np.int64),
                 names=np.array([u.feature_path for u in utterances]), id2speaker=np.array(layout.id2speaker),
                 n_mels=layout.n_mels, n_train=len(layout.train), fingerprint=fingerprint(layout),
                 frames_crc32=np.int64(checksum))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_bank(root: str | Path, cache_root: Path | None = None,
              progress: Callable[[int, int], None] | None = None,
              notice: Callable[[str], None] | None = None, readonly_cache: Path | None = None) -> FeatureBank:
    """Validate the HW04 folder ``root``, pack it if its bank is missing, stale or damaged (saying so through
    ``notice``, stderr by default), and load it (CPU). The bank is kept where ``cache_folder`` says."""
    layout = read_layout(root)
    folder = cache_folder(layout, cache_root, readonly_cache)
    want = fingerprint(layout)
    bank, why = _load_packed(folder, layout, want)
    if bank is None:
        if why is not None:  # a cache that exists but cannot be used: say so, then rebuild it
            (notice or _warn)(f"warning: {folder}: the feature-bank cache is unusable ({why}); rebuilding it")
        try:
            folder.parent.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise DataError(f"{folder.parent}: cannot create the feature-bank cache ({err.strerror})") from None
        pack(layout, folder, progress)
        bank, why = _load_packed(folder, layout, want)
        if bank is None:
            raise DataError(f"{folder}: the feature-bank cache just written cannot be read back ({why})")
    return bank


def _warn(line: str) -> None:
    import sys

    print(line, file=sys.stderr)


def _load_packed(folder: Path, layout: Layout, want: str) -> tuple[FeatureBank | None, str | None]:
    """(bank, None) from a sound, current cache; (None, None) without one or when it is stale; (None, why)
    when it is damaged (garbage index, truncated frames): never an exception, the caller rebuilds."""
    index_path = folder / "index.npz"
    if not index_path.exists():
        return None, None
    try:
        with np.load(index_path, allow_pickle=False) as npz:
            index = {k: npz[k] for k in ("offsets", "lengths", "labels", "names", "id2speaker", "n_mels", "n_train",
                                         "fingerprint")}
            index["frames_crc32"] = npz["frames_crc32"] if "frames_crc32" in npz.files else None  # older: stale
        if str(index["fingerprint"]) != want:
            return None, None
        n_mels, n = int(index["n_mels"]), len(layout.train) + len(layout.test)
        lengths, offsets = index["lengths"], index["offsets"]
        expected_lengths = np.array([u.mel_len for u in layout.train + layout.test], dtype=np.int64)
        if lengths.shape != (n,) or offsets.shape != (n,) or not np.array_equal(lengths, expected_lengths):
            return None, "index.npz does not match the data"
        frames = np.load(folder / "frames.npy", mmap_mode="r", allow_pickle=False)
        if frames.dtype != np.float16 or frames.shape != (int(lengths.sum()), n_mels):
            return None, f"frames.npy has shape {frames.shape} {frames.dtype}"
        frames = np.array(frames)  # one read of the file into memory
        if index["frames_crc32"] is None or frames_checksum(frames) != int(index["frames_crc32"]):
            return None, "frames.npy does not match its checksum: damaged since it was written"
        return FeatureBank(
            frames=torch.from_numpy(frames),
            offsets=torch.from_numpy(offsets), lengths=torch.from_numpy(lengths),
            labels=torch.from_numpy(index["labels"]), names=[str(x) for x in index["names"]],
            id2speaker=[str(s) for s in index["id2speaker"]], n_mels=n_mels,
            n_train=int(index["n_train"]), source=str(layout.root), fingerprint=str(index["fingerprint"])), None
    except MemoryError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the damage (BadZipFile, KeyError, ValueError, OSError...)
        text = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        return None, f"{type(err).__name__}" + (f": {text}" if text else "")


def describe(layout: Layout) -> dict:
    """Counts and length statistics of a folder, as ``search data check`` prints them."""
    def stats(lengths: list[int]) -> dict:
        a = np.array(lengths)
        return {"utterances": len(a), "frames": int(a.sum()), "min": int(a.min()), "median": float(np.median(a)),
                "mean": round(float(a.mean()), 1), "max": int(a.max()),
                "p5": float(np.percentile(a, 5)), "p95": float(np.percentile(a, 95))}
    return {"folder": str(layout.root), "n_mels": layout.n_mels, "speakers": layout.n_speakers,
            "train": stats([u.mel_len for u in layout.train]), "test": stats([u.mel_len for u in layout.test])}
