"""Reading and validating the HW04 ``Dataset/`` layout (see ../shared/HW04.md).

The layout::

    mapping.json    {"speaker2id": {"id00464": 0, ...}, "id2speaker": {"0": "id00464", ...}}
    metadata.json   {"n_mels": 40, "speakers": {"id03074": [{"feature_path": "uttr-....pt", "mel_len": 435}, ...]}}
    testdata.json   {"n_mels": 40, "utterances": [{"feature_path": "uttr-....pt", "mel_len": 813}, ...]}
    uttr-<hex>.pt   float32 tensor (mel_len, n_mels), loadable with torch.load(weights_only=True)

``read_layout`` checks the json files and that every referenced file exists (cheap); the tensors
themselves are checked one by one by ``load_features`` (shape, dtype, finite values), which the feature
bank calls while packing, so a broken file is found exactly once and named.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.errors import DataError, printable

SILENCE = math.log(1e-9)  # -20.72: HW04 clamps power at 1e-9 before the log
PAD_VALUE = -20.0  # the sample code pads with -20 (about silence); masks make the value irrelevant


@dataclass(frozen=True)
class Utterance:
    feature_path: str  # file name inside the dataset folder
    mel_len: int  # frames, as metadata says
    label: int  # speaker id from mapping.json; -1 for test utterances


@dataclass(frozen=True)
class Layout:
    """A validated HW04 folder: json contents, with every referenced file known to exist."""

    root: Path
    n_mels: int
    id2speaker: list[str]  # label -> speaker name, e.g. id2speaker[0] == "id00464"
    train: list[Utterance]  # in metadata order (speaker by speaker)
    test: list[Utterance]  # in testdata.json order: the order of the submission rows

    @property
    def n_speakers(self) -> int:
        return len(self.id2speaker)


MAX_MEL_LEN = 10_000_000  # frames (28 hours at HW04's 10 ms hop): anything longer is a corrupt mel_len


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """json's object_pairs_hook: a key given twice would silently keep only the last value (a speaker's
    utterances dropped); refuse it instead."""
    value = dict(pairs)
    if len(value) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise _DuplicateKey(key)
    return value


class _DuplicateKey(Exception):
    pass


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        # utf-8-sig: a byte-order mark (Windows editors, spreadsheet exports) is accepted, as in the CSVs
        # (search/finalizing/scoring.py); json.loads refuses one ("Unexpected UTF-8 BOM")
        value = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as err:
        raise DataError(f"{path}: the key {str(err)[:80]} appears twice in one object") from None
    except RecursionError:
        raise DataError(f"{path}: not valid JSON (nested too deeply)") from None
    except (ValueError, UnicodeDecodeError) as err:  # JSONDecodeError, an integer of over 4,300 digits
        raise DataError(f"{path}: not valid JSON ({str(err)[:160]})") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object at the top level")
    return value


def _entry(path: Path, where: str, item: object) -> tuple[str, int]:
    """Validate one {"feature_path", "mel_len"} entry; returns (feature_path, mel_len)."""
    if not isinstance(item, dict) or "feature_path" not in item or "mel_len" not in item:
        raise DataError(f"{path}: {where} needs 'feature_path' and 'mel_len'")
    name, mel_len = item["feature_path"], item["mel_len"]
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name.startswith("."):
        raise DataError(f"{path}: {where} has an invalid feature_path {name!r}")
    if isinstance(mel_len, bool) or not isinstance(mel_len, int) or mel_len <= 0 or mel_len > MAX_MEL_LEN:
        shown = repr(mel_len) if len(repr(mel_len)) <= 40 else repr(mel_len)[:40] + "..."
        raise DataError(f"{path}: {where} ({printable(name)}) has an invalid mel_len {shown} (expected 1..{MAX_MEL_LEN:,})")
    return name, mel_len


def _n_mels(path: Path, doc: dict) -> int:
    n_mels = doc.get("n_mels")
    if isinstance(n_mels, bool) or not isinstance(n_mels, int) or n_mels <= 0:
        raise DataError(f"{path}: 'n_mels' must be a positive integer, got {n_mels!r}")
    return n_mels


def path_problem(path: Path, kind: str, name: str | None = None) -> str | None:
    """What keeps ``path`` from being read as a ``kind`` ("file" or "folder") a user named, or None:
    "<name> not found" (``name`` defaults to ``kind``) or "not a <kind>". The caller raises its own error
    with it, after the path: ``Error: answers.csv: file not found``."""
    if not path.exists():
        return f"{name or kind} not found"
    if not (path.is_dir() if kind == "folder" else path.is_file()):
        return f"not a {kind}"
    return None


def _read_mapping(path: Path) -> tuple[dict, list[str]]:
    """mapping.json: (speaker2id, id2speaker as a list by label)."""
    mapping = _read_json(path)
    speaker2id = mapping.get("speaker2id")
    if not isinstance(speaker2id, dict) or not speaker2id:
        raise DataError(f"{path}: 'speaker2id' must be a non-empty object")
    ids = sorted(speaker2id.values(), key=lambda v: (not isinstance(v, int), v if isinstance(v, int) else 0))
    if any(isinstance(v, bool) or not isinstance(v, int) for v in ids) or ids != list(range(len(ids))):
        raise DataError(f"{path}: speaker2id values must be the integers 0..{len(speaker2id) - 1}, each once")
    id2speaker = [""] * len(speaker2id)
    for name, label in speaker2id.items():
        id2speaker[label] = name
    id2 = mapping.get("id2speaker")
    if id2 is not None and (not isinstance(id2, dict) or any(id2.get(str(i)) != s for i, s in enumerate(id2speaker))):
        raise DataError(f"{path}: 'id2speaker' disagrees with 'speaker2id'")
    return speaker2id, id2speaker


def _read_train(path: Path, speaker2id: dict) -> tuple[int, list[Utterance]]:
    """metadata.json: (n_mels, the training utterances, labelled)."""
    meta = _read_json(path)
    n_mels = _n_mels(path, meta)
    speakers = meta.get("speakers")
    if not isinstance(speakers, dict) or not speakers:
        raise DataError(f"{path}: 'speakers' must be a non-empty object of speaker -> utterances")
    if all(isinstance(items, list) and len(items) == 1 for items in speakers.values()):
        raise DataError(f"{path}: every speaker has a single utterance: nothing is left for the validation "
                        "split (a speaker needs at least 2)")
    train: list[Utterance] = []
    for speaker, items in speakers.items():
        if speaker not in speaker2id:
            raise DataError(f"{path}: speaker {speaker!r} is not in mapping.json")
        if not isinstance(items, list) or not items:
            raise DataError(f"{path}: speaker {speaker!r} has no utterances")
        for i, item in enumerate(items):
            name, mel_len = _entry(path, f"speakers[{speaker!r}][{i}]", item)
            train.append(Utterance(name, mel_len, speaker2id[speaker]))
    return n_mels, train


def _read_test(path: Path, n_mels: int) -> list[Utterance]:
    """testdata.json: the test utterances (label -1), with the training data's n_mels."""
    test_doc = _read_json(path)
    test_n_mels = _n_mels(path, test_doc)
    if test_n_mels != n_mels:
        raise DataError(f"{path}: n_mels {test_n_mels} disagrees with metadata.json's {n_mels}")
    items = test_doc.get("utterances")
    if not isinstance(items, list) or not items:
        raise DataError(f"{path}: 'utterances' must be a non-empty list")
    return [Utterance(*_entry(path, f"utterances[{i}]", item), -1) for i, item in enumerate(items)]


def _check_files(root: Path, utterances: list[Utterance]) -> None:
    """Each feature file listed once, present, and inside the data folder."""
    seen: set[str] = set()
    for utt in utterances:
        if utt.feature_path in seen:
            raise DataError(f"{root}: {printable(utt.feature_path)} is listed twice")
        seen.add(utt.feature_path)
    present = {p.name: p for p in root.iterdir()}
    missing = [u.feature_path for u in utterances if u.feature_path not in present]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"{printable(root / missing[0])}: feature file not found{more}")
    inside = root.resolve()
    for utt in utterances:  # a symlink may point anywhere: only inside the data folder, like the names
        path = present[utt.feature_path]
        if path.is_symlink() and not path.resolve().is_relative_to(inside):
            raise DataError(f"{path}: a symbolic link to {path.resolve()}, outside the data folder {inside}")


def read_layout(root: str | Path) -> Layout:
    """Read and validate the json files of an HW04 folder; raise DataError naming the problem."""
    root = Path(root)
    problem = path_problem(root, "folder", "data folder")
    if problem is not None:
        raise DataError(f"{root}: {problem}")
    speaker2id, id2speaker = _read_mapping(root / "mapping.json")
    n_mels, train = _read_train(root / "metadata.json", speaker2id)
    test = _read_test(root / "testdata.json", n_mels)
    _check_files(root, train + test)
    return Layout(root, n_mels, id2speaker, train, test)


FLOAT16_MAX = float(torch.finfo(torch.float16).max)  # 65,504


def load_features(root: Path, utt: Utterance, n_mels: int) -> torch.Tensor:
    """Load one utterance's (mel_len, n_mels) float32 tensor, refusing anything but a plain tensor.

    ``weights_only=True`` refuses pickled objects (arbitrary code) outright.
    """
    path = root / utt.feature_path
    try:
        value = torch.load(path, map_location="cpu", weights_only=True)
    except MemoryError:
        raise DataError(f"{path}: cannot load: it declares more data than fits in memory") from None
    except Exception as err:  # noqa: BLE001 - any file at all may sit there: a text file gives KeyError,
        # IndexError, UnicodeDecodeError...; pickle.UnpicklingError, zipfile.BadZipFile, EOFError for others
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        try:
            with open(path, "rb") as f:
                head = f.read(16)
        except OSError:
            head = b"PK"
        if not head.startswith((b"PK\x03\x04", b"\x80")):  # neither torch's zip format nor its legacy pickle
            reason = f"not a file written by torch.save: it starts with {head!r}"
        raise DataError(f"{path}: cannot load as a plain tensor with weights_only=True ({reason[:160]})") from None
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{path}: holds a {type(value).__name__}, expected a tensor")
    if value.dtype != torch.float32:
        raise DataError(f"{path}: dtype {str(value.dtype).removeprefix('torch.')}, expected float32")
    if value.dim() != 2 or value.shape[1] != n_mels:
        raise DataError(f"{path}: shape {tuple(value.shape)}, expected (mel_len, {n_mels}) (n_mels from metadata.json)")
    if value.shape[0] != utt.mel_len:
        raise DataError(f"{path}: {value.shape[0]} frames, but the json says mel_len {utt.mel_len}")
    if not torch.isfinite(value).all():
        raise DataError(f"{path}: contains NaN or infinite values")
    # The feature bank stores float16 (data/bank.py): a finite float32 beyond its range would turn into inf there
    # and into a NaN loss mid-training. Log-mel features are tens at most, so such a value is a damaged file.
    peak = value.abs().max().item() if value.numel() else 0.0
    if peak > FLOAT16_MAX:
        raise DataError(f"{path}: holds the value {peak:.6g}, beyond the feature bank's float16 range "
                        f"(|x| <= {FLOAT16_MAX:g})")
    return value


def stratified_split(labels: np.ndarray, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split utterance indices into (train, valid), taking the same share of every speaker.

    Fixed by the seed alone: the same labels and seed give the same split on any machine. A speaker
    with a single utterance keeps it for training.
    """
    if not 0.0 < valid_fraction < 1.0:
        raise ValueError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    rng = np.random.default_rng(seed)
    train, valid = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[rng.permutation(len(members))]
        n_valid = min(len(members) - 1, max(1, round(valid_fraction * len(members))))
        valid.append(members[:n_valid])
        train.append(members[n_valid:])
    if sum(len(v) for v in valid) == 0:
        raise DataError("metadata.json: every speaker has a single utterance: the validation split would be empty")
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(valid))
