"""The HW04 layout: round trip, validation of broken folders, the split, the feature bank."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from data.bank import open_bank
from data.errors import DataError
from data.hw04 import read_layout, stratified_split
from tests.helpers import TINY, invoke, one_error_line, study_dbs


def test_synth_then_load_round_trip(tiny_dataset, tmp_path):
    layout = read_layout(tiny_dataset)
    assert layout.n_mels == 40
    assert layout.n_speakers == TINY["speakers"]
    assert len(layout.test) > 0
    bank = open_bank(tiny_dataset, cache_root=tmp_path / "cache")
    assert bank.n_train == len(layout.train)
    assert len(bank.names) == len(layout.train) + len(layout.test)
    # The bank returns exactly the frames of each .pt file (at float16 precision).
    for i, utt in enumerate(layout.train + layout.test):
        original = torch.load(tiny_dataset / utt.feature_path, weights_only=True)
        start, length = int(bank.offsets[i]), int(bank.lengths[i])
        assert length == utt.mel_len
        assert torch.equal(bank.frames[start:start + length], original.half())
        assert int(bank.labels[i]) == utt.label


def test_bank_is_rebuilt_when_the_source_changes(dataset_copy, tmp_path):
    cache = tmp_path / "cache"
    bank = open_bank(dataset_copy, cache_root=cache)
    first = read_layout(dataset_copy).train[0]
    changed = torch.full((first.mel_len, 40), 1.5)
    torch.save(changed, dataset_copy / first.feature_path)
    rebuilt = open_bank(dataset_copy, cache_root=cache)
    assert not torch.equal(bank.frames[: first.mel_len], rebuilt.frames[: first.mel_len])
    assert torch.equal(rebuilt.frames[: first.mel_len], changed.half())


def _edit_json(folder: Path, name: str, edit) -> None:
    path = folder / name
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _first_train(folder: Path) -> Path:
    meta = json.loads((folder / "metadata.json").read_text())
    return folder / next(iter(meta["speakers"].values()))[0]["feature_path"]


def _first_len(folder: Path) -> int:
    meta = json.loads((folder / "metadata.json").read_text())
    return next(iter(meta["speakers"].values()))[0]["mel_len"]


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


BROKEN = {
    "missing mapping.json": (lambda d: (d / "mapping.json").unlink(), "mapping.json: file not found"),
    "malformed metadata.json": (lambda d: (d / "metadata.json").write_text("{not json"), "metadata.json: not valid JSON"),
    "metadata without speakers": (lambda d: _edit_json(d, "metadata.json", lambda m: m.pop("speakers")),
                                  "'speakers' must be a non-empty object"),
    "empty speaker list": (lambda d: _edit_json(d, "metadata.json", lambda m: m.update(speakers={})),
                           "'speakers' must be a non-empty object"),
    "speaker with no utterances": (
        lambda d: _edit_json(d, "metadata.json", lambda m: m["speakers"].update({next(iter(m["speakers"])): []})),
        "has no utterances"),
    "speaker absent from mapping": (
        lambda d: _edit_json(d, "metadata.json", lambda m: m["speakers"].update(
            {"id99999": m["speakers"].pop(next(iter(m["speakers"])))})),
        "speaker 'id99999' is not in mapping.json"),
    "empty testdata": (lambda d: _edit_json(d, "testdata.json", lambda t: t.update(utterances=[])),
                       "testdata.json: 'utterances' must be a non-empty list"),
    "n_mels disagreement between json files": (lambda d: _edit_json(d, "testdata.json", lambda t: t.update(n_mels=80)),
                                               "n_mels 80 disagrees"),
    "missing feature file": (lambda d: _first_train(d).unlink(), "feature file not found"),
    "wrong shape": (lambda d: torch.save(torch.zeros(_first_len(d), 39), _first_train(d)), "expected (mel_len, 40)"),
    "wrong dtype": (lambda d: torch.save(torch.zeros(_first_len(d), 40, dtype=torch.float64), _first_train(d)),
                    "dtype float64, expected float32"),
    "NaN values": (lambda d: torch.save(torch.full((_first_len(d), 40), float("nan")), _first_train(d)),
                   "contains NaN or infinite values"),
    # issue 24: a finite float32 beyond float16's range passed the check and became inf in the bank, then a NaN loss
    "a value beyond float16": (lambda d: torch.save(torch.full((_first_len(d), 40), 1e6), _first_train(d)),
                               "holds the value 1e+06, beyond the feature bank's float16 range (|x| <= 65504)"),
    "mel_len disagreement": (lambda d: torch.save(torch.zeros(_first_len(d) + 3, 40), _first_train(d)),
                             "but the json says mel_len"),
    "n_mels disagreeing with the tensors": (
        lambda d: (_edit_json(d, "metadata.json", lambda m: m.update(n_mels=80)),
                   _edit_json(d, "testdata.json", lambda t: t.update(n_mels=80))),
        "expected (mel_len, 80) (n_mels from metadata.json)"),
    "pickled object instead of a tensor": (lambda d: _first_train(d).write_bytes(pickle.dumps(_Evil())),
                                           "cannot load as a plain tensor with weights_only=True"),
    "not a tensor": (lambda d: torch.save({"features": torch.zeros(3, 40)}, _first_train(d)), "holds a dict"),
    # issue 10: each of these was a traceback or a silently wrong dataset
    "text file as a tensor": (lambda d: _first_train(d).write_text("hello\n"), "not a file written by torch.save"),
    "html page as a tensor": (lambda d: _first_train(d).write_text("<!DOCTYPE html><html><body>404</body></html>"),
                              "not a file written by torch.save"),
    "huge mel_len": (lambda d: _set_first_len(d, 10**13), "has an invalid mel_len 10000000000000"),
    "5,000-digit mel_len": (lambda d: _replace_first_len(d, "9" * 5000), "metadata.json: not valid JSON"),
    "200,000 nested brackets": (lambda d: (d / "metadata.json").write_text("[" * 200_000),
                                "metadata.json: not valid JSON (nested too deeply)"),
    "a speaker key twice": (lambda d: _duplicate_first_speaker(d), "appears twice in one object"),
    "a speaker2id key twice": (lambda d: (d / "mapping.json").write_text((d / "mapping.json").read_text().replace(
        '"speaker2id": {', '"speaker2id": {"%s": 0, ' % next(iter(json.loads((d / "mapping.json").read_text())[
            "speaker2id"])), 1)), "appears twice in one object"),
    "every speaker with one utterance": (
        lambda d: _edit_json(d, "metadata.json", lambda m: m.update(speakers={k: v[:1] for k, v in m["speakers"].items()})),
        "every speaker has a single utterance"),
    "symlink outside the folder": (lambda d: _symlink_out(d), "outside the data folder"),
}


def _set_first_len(folder: Path, value) -> None:
    _edit_json(folder, "metadata.json", lambda m: next(iter(m["speakers"].values()))[0].update(mel_len=value))


def _replace_first_len(folder: Path, digits: str) -> None:
    text = (folder / "metadata.json").read_text()
    old = f'"mel_len": {_first_len(folder)}'
    (folder / "metadata.json").write_text(text.replace(old, f'"mel_len": {digits}', 1))


def _duplicate_first_speaker(folder: Path) -> None:
    """The first speaker listed twice, its first utterance alone in the first copy: json.loads keeps the last."""
    meta = json.loads((folder / "metadata.json").read_text())
    speaker, items = next(iter(meta["speakers"].items()))
    text = json.dumps(meta).replace('"speakers": {', f'"speakers": {{"{speaker}": {json.dumps(items[:1])}, ', 1)
    (folder / "metadata.json").write_text(text)


def _symlink_out(folder: Path) -> None:
    path = _first_train(folder)
    outside = folder.parent / "outside.pt"
    path.replace(outside)
    path.symlink_to(outside)


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_folder_is_refused_with_one_line(case, dataset_copy, capfd):
    breaker, message = BROKEN[case]
    breaker(dataset_copy)
    line = one_error_line(invoke("data", "check", str(dataset_copy)), alone=True)
    assert message in line, line
    assert "this must never run" not in capfd.readouterr().out


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        read_layout(tmp_path / "nowhere")


@pytest.mark.parametrize("given, problem", [("nowhere", "data folder not found"), ("a-file", "not a folder")])
def test_data_check_of_a_missing_folder_or_a_file_is_one_line_naming_it(given, problem, tmp_path):
    (tmp_path / "a-file").write_text("mapping.json\n")
    line = one_error_line(invoke("data", "check", str(tmp_path / given)), alone=True)
    assert line == f"Error: {tmp_path / given}: {problem}", line


def test_data_check_prints_counts(tiny_dataset):
    result = invoke("data", "check", str(tiny_dataset), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["speakers"] == TINY["speakers"]
    assert summary["train"]["utterances"] == len(read_layout(tiny_dataset).train)


def test_split_is_fixed_by_the_seed_and_stratified():
    labels = np.repeat(np.arange(20), 30)
    a_train, a_valid = stratified_split(labels, 0.1, seed=7)
    b_train, b_valid = stratified_split(labels, 0.1, seed=7)
    c_train, c_valid = stratified_split(labels, 0.1, seed=8)
    assert np.array_equal(a_valid, b_valid) and np.array_equal(a_train, b_train)
    assert not np.array_equal(a_valid, c_valid)
    assert sorted(np.concatenate([a_train, a_valid]).tolist()) == list(range(len(labels)))
    assert np.all(np.bincount(labels[a_valid]) == 3)  # the same share of every speaker


# --- issue 10: a huge mel_len in `search run`, the bank cache, stale features, an empty validation split ---

def test_a_huge_mel_len_is_one_line_in_search_run_too(dataset_copy, workdir):
    for value in (10**13, 10**6):  # refused by the json check, and by the bank before allocating for it
        _set_first_len(dataset_copy, value)
        line = one_error_line(invoke("run", "--trials", "1", "--data", str(dataset_copy), "--budget", "8",
                                     "--device", "cpu"))
        assert "mel_len" in line, line
    assert not study_dbs(workdir)


def test_a_value_beyond_float16_is_one_line_in_search_run_not_a_nan_loss(dataset_copy, workdir):
    """Issue 24: 1e6 is a finite float32 that the float16 feature bank cannot hold (it became inf, then NaN)."""
    features = torch.zeros(_first_len(dataset_copy), 40)
    features[3, 7] = -1e6
    torch.save(features, _first_train(dataset_copy))
    result = invoke("run", "--trials", "1", "--data", str(dataset_copy), "--budget", "8", "--device", "cpu")
    line = one_error_line(result)
    assert f"{_first_train(dataset_copy)}: holds the value 1e+06, beyond the feature bank's float16 range" in line, line
    assert "nan" not in result.output.lower()
    assert not study_dbs(workdir)


@pytest.mark.parametrize("damage", ["garbage index", "truncated frames", "empty frames", "index of other data"])
def test_a_damaged_bank_cache_is_rebuilt_saying_so(damage, dataset_copy, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = open_bank(dataset_copy, cache_root=cache)
    [folder] = cache.iterdir()
    if damage == "garbage index":
        (folder / "index.npz").write_bytes(b"garbage" * 100)
    elif damage == "truncated frames":
        frames = folder / "frames.npy"
        frames.write_bytes(frames.read_bytes()[: frames.stat().st_size // 2])
    elif damage == "empty frames":
        (folder / "frames.npy").write_bytes(b"")
    else:
        index = dict(np.load(folder / "index.npz"))
        index["lengths"] = index["lengths"][:-1]
        np.savez(folder / "index.npz", **index)
    capsys.readouterr()
    rebuilt = open_bank(dataset_copy, cache_root=cache)
    assert f"warning: {folder}: the feature-bank cache is unusable" in capsys.readouterr().err
    assert torch.equal(rebuilt.frames, first.frames) and rebuilt.names == first.names
    assert open_bank(dataset_copy, cache_root=cache).n_train == first.n_train  # sound again: no more warning
    assert "unusable" not in capsys.readouterr().err


def test_a_replaced_file_with_its_mtime_kept_is_not_served_stale(dataset_copy, tmp_path):
    import os

    cache = tmp_path / "cache"
    bank = open_bank(dataset_copy, cache_root=cache)
    first = read_layout(dataset_copy).train[0]
    path = dataset_copy / first.feature_path
    stat = path.stat()
    original = torch.load(path, weights_only=True)
    torch.save(original + 1.0, path)  # same shape: same size
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # cp -p, rsync -t
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    rebuilt = open_bank(dataset_copy, cache_root=cache)
    assert torch.equal(rebuilt.frames[: first.mel_len], (original + 1.0).half())
    assert not torch.equal(rebuilt.frames[: first.mel_len], bank.frames[: first.mel_len])


def test_an_empty_validation_split_is_refused():
    with pytest.raises(DataError, match="validation split would be empty"):
        stratified_split(np.arange(5), 0.1, seed=0)  # five speakers, one utterance each
