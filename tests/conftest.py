"""Shared fixtures: small synthetic datasets in the HW04 layout, made once per test session, and an empty
working folder. Shared plain functions and constants are in ``tests/helpers.py``."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from data.synth import synthesize
from tests.helpers import POSTGRES, TINY, reachable


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A read-only-by-convention tiny dataset; copy it (``dataset_copy``) before changing anything."""
    folder = tmp_path_factory.mktemp("data") / "Dataset"
    synthesize(folder, **TINY)
    return folder


@pytest.fixture(scope="session")
def four_speakers(tmp_path_factory) -> Path:
    """Few speakers, more utterances each: a validation split big enough to rank short trials."""
    folder = tmp_path_factory.mktemp("data4") / "Dataset"
    synthesize(folder, speakers=4, utterances_per_speaker=40, length_scale=0.3, seed=5)
    return folder


@pytest.fixture(scope="session")
def micro_dataset(tmp_path_factory) -> Path:
    """Smaller than the tiny dataset (short utterances): a validation pass costs milliseconds."""
    folder = tmp_path_factory.mktemp("micro") / "Dataset"
    synthesize(folder, speakers=4, utterances_per_speaker=8, length_scale=0.06, seed=3)
    return folder


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path) -> Path:
    """A private copy of the tiny dataset that a test may break."""
    folder = tmp_path / "Dataset"
    shutil.copytree(tiny_dataset, folder, ignore=shutil.ignore_patterns(".bank"))
    return folder


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """Run in an empty folder, so ``studies/`` is created there and not in the repository, with a cache folder of its
    own beside it (``tmp_path/cache``: search/files.py cache_dir), so that what a test prepares there is its own."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return folder


@pytest.fixture
def postgres() -> str:
    """The URL of the PostgreSQL server on 127.0.0.1 (CI has one); the test skips, saying why, without it."""
    why = reachable(POSTGRES)
    if why:
        pytest.skip(why)
    return POSTGRES
