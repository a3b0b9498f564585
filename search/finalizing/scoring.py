"""Score a Kaggle-format predictions CSV (``Id,Category``) against an answer key of the same format.

``search data synth`` writes the answer key of a synthetic set as ``answers.csv`` beside the HW04 files
(the real HW04 test labels are Kaggle's secret); ``search score`` and ``search finalize`` read it.

Every problem is one ``UserError`` naming the file: a missing or empty file, bytes that are not UTF-8,
a header other than ``Id,Category``, a row without exactly two cells, an empty or duplicate Id, Ids of the
answer key missing from the predictions, Ids the answer key does not have, and predicted speakers that are
unknown. Known speakers are those of ``mapping.json`` beside the answer key when it is there (a dataset
folder), else the speakers the answer key names.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable

from data.errors import printable
from data.hw04 import path_problem
from search.errors import UserError

HEADER = ["Id", "Category"]
ANSWERS_NAME = "answers.csv"


def _refuse_any(where: str, items: list[str], one: str, many: str | None = None) -> None:
    """One UserError when ``items`` is not empty: ``where``, how many (``one`` or ``many`` says what they are)
    and the first three: ``predictions.csv: 2 duplicate Ids: a, b``."""
    if items:
        shown = ", ".join(printable(item) for item in items[:3]) + (", ..." if len(items) > 3 else "")
        raise UserError(f"{where}: {len(items)} {one if len(items) == 1 else many or one}: {shown}")


def read_rows(path: Path) -> dict[str, str]:
    """``{Id: Category}`` of a Kaggle-format CSV, in file order, or one UserError naming the file."""
    path = Path(path)
    problem = path_problem(path, "file")
    if problem is not None:
        raise UserError(f"{path}: {problem}")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read it ({err.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")  # a byte-order mark (spreadsheet exports) is fine
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not a UTF-8 text file (byte {err.start} is {raw[err.start]:#04x})") from None
    if not text.strip():
        raise UserError(f"{path}: empty file (expected the header Id,Category and one row per utterance)")
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]  # blank lines are skipped
    except csv.Error as err:
        raise UserError(f"{path}: not a readable CSV ({err})") from None
    header = [cell.strip() for cell in rows[0]]
    if header != HEADER:
        shown = ",".join(rows[0])[:60]
        raise UserError(f"{path}: the header must be Id,Category, found {shown!r}")
    found: dict[str, str] = {}
    duplicates: list[str] = []
    for line, row in enumerate(rows[1:], 2):
        if len(row) != 2:
            raise UserError(f"{path}: row {line} has {len(row)} cells, expected 2 (Id,Category)")
        utt, speaker = row[0].strip(), row[1].strip()
        if not utt or not speaker:
            raise UserError(f"{path}: row {line} has an empty {'Id' if not utt else 'Category'}")
        if utt in found:
            duplicates.append(utt)
        found[utt] = speaker
    _refuse_any(str(path), duplicates, "duplicate Id", "duplicate Ids")
    if not found:
        raise UserError(f"{path}: no rows after the header")
    return found


def known_speakers(answers_path: Path, answers: dict[str, str]) -> set[str]:
    """The speakers a prediction may name: mapping.json's beside the answer key, else the key's own."""
    mapping = Path(answers_path).parent / "mapping.json"
    if mapping.is_file():
        try:
            speakers = json.loads(mapping.read_text(encoding="utf-8-sig")).get("speaker2id")  # a BOM, as data/hw04.py
            if isinstance(speakers, dict) and speakers:
                return set(speakers) | set(answers.values())
        except (OSError, ValueError, AttributeError):
            pass  # not a dataset's mapping: fall back on the answer key
    return set(answers.values())


def score_rows(predictions: dict[str, str], answers: dict[str, str], where: str,
               speakers: Iterable[str] | None = None) -> tuple[float, int]:
    """(accuracy, number of utterances) of ``predictions`` over the answer key's Ids.

    ``where`` names the predictions in errors; ``speakers`` are the known speakers (default: the key's)."""
    _refuse_any(where, [u for u in answers if u not in predictions],
                f"of the answer key's {len(answers)} Ids have no prediction")
    _refuse_any(where, [u for u in predictions if u not in answers], "Id is not in the answer key",
                "Ids are not in the answer key")
    known = set(speakers) if speakers is not None else set(answers.values())
    _refuse_any(where, sorted({s for s in predictions.values() if s not in known}),
                "unknown speaker (not in the answer key's dataset)",
                "unknown speakers (not in the answer key's dataset)")
    correct = sum(predictions[u] == speaker for u, speaker in answers.items())
    return correct / len(answers), len(answers)


def score_files(predictions_path: Path, answers_path: Path, speakers: Iterable[str] | None = None) -> tuple[float, int]:
    """(accuracy, n) of a predictions CSV against an answer key CSV; one UserError for any problem."""
    answers = read_rows(answers_path)
    predictions = read_rows(predictions_path)
    if speakers is None:
        speakers = known_speakers(answers_path, answers)
    return score_rows(predictions, answers, str(predictions_path), speakers)


def answer_key(data_folder: str | Path | None, test_ids: Iterable[str] | None = None) -> Path | None:
    """The answer key of a data folder (``answers.csv``), validated, or None when the folder has none.

    With ``test_ids`` (testdata.json's utterances, in order), its Ids must be exactly those: a key of another
    dataset would otherwise be refused only after training, when the predictions are scored against it."""
    if data_folder is None:
        return None
    path = Path(data_folder) / ANSWERS_NAME
    if not path.exists():
        return None
    rows = read_rows(path)  # a broken key fails now, not after hours of training
    if test_ids is not None:
        test_ids = list(test_ids)
        expected = set(test_ids)
        _refuse_any(f"{path}", [u for u in test_ids if u not in rows],
                    f"of testdata.json's {len(test_ids)} Ids are not in the answer key")
        _refuse_any(f"{path}", [u for u in rows if u not in expected], "Id is not in testdata.json",
                    "Ids are not in testdata.json")
    return path


def accuracy_line(accuracy: float, n: int) -> str:
    return f"accuracy {accuracy:.4f} on {n:,} utterances"
