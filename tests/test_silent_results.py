"""Issue 23 ("Trust"), silent wrong results: each test is a case where a command did the wrong thing without a
word (an output replacing an input, a checkpoint of other data reused, a better CSV overwritten, an interrupted
warm start lost, a damaged feature bank trained on, a finished finalize reported as failed)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import optuna
import pytest

from tests.helpers import SAMPLE, invoke, one_error_line, run_configs


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_out_never_replaces_an_input(dataset_copy, workdir):
    """`report --out studies/vic.db` replaced the study database with HTML; `finalize --out` could replace a
    storage, the answer key (then scored its own output: test accuracy 1.0000) or the data's metadata.json."""
    run_configs(dataset_copy, "vic", [SAMPLE])
    optuna.create_study(study_name="other", storage="sqlite:///studies/other.db")  # some other study's storage
    inputs = [workdir / "studies" / "vic.db", workdir / "studies" / "other.db", dataset_copy / "answers.csv",
              dataset_copy / "metadata.json"]
    before = {path: digest(path) for path in inputs}
    finalize = ["finalize", "best", "--study", "vic", "--steps", "1", "--device", "cpu", "--quiet", "--out"]
    cases = [(["report", "--study", "vic", "--out"], "studies/vic.db", "the study's storage"),
             (["report", "--study", "vic", "--out"], "studies/other.db", "an SQLite database"),
             (["report", "--study", "vic", "--out"], str(dataset_copy / "report.html"), "inside the data folder"),
             (finalize, "studies/vic.db", "the study's storage"),
             (finalize, "studies/other.db", "an SQLite database"),
             (finalize, str(dataset_copy / "answers.csv"), "the answer key"),
             (finalize, str(dataset_copy / "metadata.json"), "inside the data folder")]
    for args, out, what in cases:
        line = one_error_line(invoke(*args, out))
        assert line.startswith(f"Error: --out {out}: ") and what in line, line
        assert {path: digest(path) for path in inputs} == before, (args, out)
    assert not (dataset_copy / "report.html").exists()
    assert not (workdir / "studies" / "vic" / "final" / "model.pt").exists()  # refused before any training
