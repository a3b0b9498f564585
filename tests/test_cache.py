"""The cache shared by every folder (search/files.py ``cache_dir``, search/running/task.py): the embedded dataset is generated
once per user, not once per working folder, and processes that start together on it take turns."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# one process preparing the embedded data: says whether it generated it (the progress callback runs only then)
PREPARE = """
import sys
from search.running.task import prepare_bank
generated = []
bank = prepare_bank(None, progress=lambda phase: lambda done, total: generated.append(done))
print("generated" if generated else "found", bank.fingerprint, len(bank.labels))
"""


def _start(folder: Path, cache_home: str) -> subprocess.Popen:
    env = {**os.environ, "XDG_CACHE_HOME": cache_home, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-c", PREPARE], cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_two_folders_starting_together_share_one_embedded_dataset_in_the_user_cache(tmp_path):
    cache_home = tmp_path / "xdg"
    folders = [tmp_path / "one", tmp_path / "two"]
    for folder in folders:
        folder.mkdir()
    processes = [_start(folder, str(cache_home)) for folder in folders]  # at once: the lock decides who generates
    outputs = [p.communicate(timeout=300) for p in processes]
    assert [p.returncode for p in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    lines = sorted(out.split() for out, _ in outputs)
    assert [line[0] for line in lines] == ["found", "generated"], lines  # generated once, then found
    assert lines[0][1:] == lines[1][1:]  # the same data: fingerprint and size
    cache = cache_home / "hw04-search"
    assert (cache / "embedded-synth-v2-s0" / "metadata.json").is_file()
    assert (cache / "embedded-synth-v2-s0" / ".bank" / "index.npz").is_file()
    assert not any((folder / "studies").exists() for folder in folders)  # nothing in the working folders
    # a third folder, later: nothing generated again
    third = tmp_path / "three"
    third.mkdir()
    out, err = _start(third, str(cache_home)).communicate(timeout=300)
    assert out.startswith("found "), err[-2000:]


def test_an_unwritable_user_cache_falls_back_to_studies_cache(tmp_path, monkeypatch):
    from search.files import CACHE, cache_dir

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    assert cache_dir() == CACHE == Path("studies/.cache")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/cache")  # ignored, as the XDG spec says: ~/.cache then
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "hw04-search" and cache_dir().is_dir()
