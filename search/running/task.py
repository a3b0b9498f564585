"""The data a worker trains on: a feature bank on the device and a seeded train/valid split.

Loaded once per process and reused by every trial of that process (``load_task`` caches it).
With no data folder, the embedded synthetic dataset is generated once into the user's cache folder
(``~/.cache/hw04-search``, else ``studies/.cache/``: search/files.py ``cache_dir``), where the feature banks of
read-only data folders go too. Processes that start together on it (workers, two runs in two folders) take turns
under a file lock: one generates and packs, the others then find it ready.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from data.bank import FeatureBank, open_bank
from data.hw04 import stratified_split
from search.files import cache_dir

VALID_FRACTION = 0.1  # the sample code's 90/10 split
EMBEDDED_SEED = 0  # the embedded dataset is one fixed dataset, whatever the search seed


@dataclass
class Task:
    bank: FeatureBank  # on the training device
    train_ids: torch.Tensor  # (N_train,) utterance ids on the device
    valid_ids: torch.Tensor  # (N_valid,)
    seed: int
    source: str  # the data folder, for the user attributes

    @property
    def device(self) -> torch.device:
        return self.bank.device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from search.errors import UserError

        raise UserError(f"--device {name}: CUDA is not available on this machine (try --device cpu)")
    return torch.device(name)


def use_device(name: str) -> torch.device:
    """``torch.device(name)``, made this process's current CUDA device when it names a GPU (``cuda:i``),
    so the process creates its CUDA context on that GPU only (one worker per GPU)."""
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device.index)
    return device


EMBEDDED_NAME = f"embedded-synth-v2-s{EMBEDDED_SEED}"  # versioned: a cache of other generator bytes is never used


def embedded_data_dir(cache: Path | None = None, progress=None) -> Path:
    """The embedded default dataset, generated deterministically on first use (under the caller's
    ``embedded_lock``, where processes may start together)."""
    from data import synth

    folder = (cache or cache_dir()) / EMBEDDED_NAME
    if not (folder / "metadata.json").exists():  # metadata.json is written last: its presence = complete
        synth.synthesize(folder, seed=EMBEDDED_SEED, progress=progress)
    return folder


# ``progress`` below: ``progress(phase)`` gives the ``(done, total)`` counter of one phase of the preparation, so that
# each line says what is being prepared (search/reporting/logs.py ``Console.data_progress``); None: silent.

def _phase(progress, label: str):
    return None if progress is None else progress(label)


@contextmanager
def embedded_lock(data_dir: str | Path | None) -> Iterator[None]:
    """Held while the embedded dataset (``data_dir`` None) is generated and packed: one process does it, the others
    wait and then find it ready (synthesize and the bank's pack each write in place of the other's files)."""
    if data_dir is not None:
        yield
        return
    from filelock import FileLock

    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)  # the fallback, studies/.cache, is made here
    with FileLock(str(cache / f"{EMBEDDED_NAME}.lock")):
        yield


def data_folder(data_dir: str | Path | None, progress=None) -> Path:
    """The data folder itself, or (None) the embedded dataset's, generated on first use."""
    if data_dir is not None:
        return Path(data_dir)
    return embedded_data_dir(progress=_phase(progress, "generating the embedded dataset (utterances)"))


def _open(folder: Path, progress=None) -> FeatureBank:
    # the cache only for a read-only data folder's bank: made only when one needs it
    read_only = folder.is_dir() and not os.access(folder, os.W_OK)
    return open_bank(folder, progress=_phase(progress, "packing the feature bank (train and test utterances)"),
                     readonly_cache=cache_dir() if read_only else None)


def prepare_bank(data_dir: str | Path | None, progress=None) -> FeatureBank:
    """Validate the data and open its feature bank (packed on first use, beside the data or in the cache)."""
    with embedded_lock(data_dir):
        return _open(data_folder(data_dir, progress), progress)


_TASKS: dict[tuple, Task] = {}


def load_task(data_dir: str | Path | None, seed: int, device: torch.device, progress=None) -> Task:
    from data.bank import fingerprint
    from data.hw04 import read_layout

    with embedded_lock(data_dir):
        folder = data_folder(data_dir, progress)
        # the data's fingerprint is part of the key: a folder whose data changed since (regenerated, replaced) is
        # loaded again, not served from memory to a later command of the same process
        key = (str(folder.resolve()), seed, str(device), fingerprint(read_layout(folder)))
        bank = _open(folder, progress) if key not in _TASKS else None
    if bank is not None:
        labels = bank.labels[: bank.n_train].numpy()
        train, valid = stratified_split(labels, VALID_FRACTION, seed)
        _TASKS.clear()  # one dataset per process: free the previous bank's memory
        _TASKS[key] = Task(bank.to(device), torch.from_numpy(train).to(device), torch.from_numpy(valid).to(device),
                           seed, str(folder))
    return _TASKS[key]
