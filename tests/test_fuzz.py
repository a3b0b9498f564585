"""Property-based fuzzing of the data layer (Hypothesis): random corruptions of metadata.json, mapping.json,
testdata.json and of the tensor files. Whatever the corruption, `search data check` either passes (and then
the feature bank builds, the split has a validation set and a model trains two steps on it) or fails with
exactly one `Error:` line and no traceback.

Kept under ~60 s on the project's 2-core machine: ``MAX_EXAMPLES`` cases, each a fresh copy of a micro
dataset (3 speakers x 4 utterances). ``SEARCH_FUZZ_EXAMPLES`` runs more (or fewer).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from data.synth import synthesize
from tests.helpers import invoke, one_error_line

MAX_EXAMPLES = int(os.environ.get("SEARCH_FUZZ_EXAMPLES", "400"))
JSON_FILES = ("metadata.json", "mapping.json", "testdata.json")

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                         st.sampled_from([0, -1, 1, 10**13, 2**63]), st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=12), st.sampled_from(["uttr-x.pt", "../mapping.json", "", "id00000"]))
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)), max_leaves=8)


@st.composite
def json_corruption(draw):
    """(file, description, function text -> text)."""
    name = draw(st.sampled_from(JSON_FILES))
    kind = draw(st.sampled_from(["replace value", "delete key", "duplicate key", "truncate", "insert bytes",
                                 "wrap deeply", "huge integer"]))
    seed = draw(st.integers(0, 2**16))
    value = draw(json_values)
    depth = draw(st.integers(1, 100_000))
    junk = draw(st.binary(min_size=1, max_size=8))

    def corrupt(text: str) -> str:
        import random

        rng = random.Random(seed)
        if kind == "truncate":
            return text[: rng.randrange(len(text))]
        if kind == "insert bytes":
            at = rng.randrange(len(text))
            return text[:at] + junk.decode("latin-1") + text[at:]
        if kind == "wrap deeply":
            return "[" * depth + text + "]" * (depth if rng.random() < 0.5 else 0)
        if kind == "huge integer":
            return text.replace(": ", ": " + "9" * rng.choice([19, 400, 5000]), 1)
        doc = json.loads(text)
        containers = [(None, None, doc)]
        stack = [doc]
        while stack:  # every (parent, key) place of the document
            node = stack.pop()
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else []
            for key, child in items:
                containers.append((node, key, child))
                stack.append(child)
        parent, key, _ = containers[rng.randrange(1, len(containers))]
        if kind == "replace value":
            parent[key] = value
        elif kind == "delete key":
            del parent[key]
        elif kind == "duplicate key" and isinstance(parent, dict):
            out = json.dumps(doc)
            first = json.dumps({key: parent[key]})[1:-1]
            return out.replace(first, first + ", " + json.dumps({key: value})[1:-1], 1)
        return json.dumps(doc)

    return name, f"{name}: {kind}", corrupt


@st.composite
def tensor_corruption(draw):
    """(index of the feature file, description, function path -> None)."""
    index = draw(st.integers(0, 14))
    kind = draw(st.sampled_from(["truncate", "flip bytes", "random bytes", "other tensor", "empty", "text",
                                 "directory", "symlink inside", "symlink outside"]))
    seed = draw(st.integers(0, 2**16))
    shape = draw(st.lists(st.integers(0, 50), min_size=0, max_size=3))
    dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.float64, torch.int64, torch.bool]))
    fill = draw(st.sampled_from([0.0, 1.0, float("nan"), float("inf"), -20.7]))

    def corrupt(path: Path) -> None:
        import random

        rng = random.Random(seed)
        data = path.read_bytes()
        if kind == "truncate":
            path.write_bytes(data[: rng.randrange(len(data))])
        elif kind == "flip bytes":
            raw = bytearray(data)
            for _ in range(rng.randint(1, 8)):
                raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
            path.write_bytes(bytes(raw))
        elif kind == "random bytes":
            path.write_bytes(rng.randbytes(rng.randint(0, 4096)))
        elif kind == "other tensor":
            torch.save(torch.full(shape, fill).to(dtype), path)
        elif kind == "empty":
            path.write_bytes(b"")
        elif kind == "text":
            path.write_text("<html>not found</html>")
        elif kind == "directory":
            path.unlink()
            path.mkdir()
        else:
            target = (path.parent / "inside-copy.pt") if kind == "symlink inside" else (path.parent.parent / "out.pt")
            path.replace(target)
            path.symlink_to(target)

    return index, f"tensor: {kind}", corrupt


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fuzz") / "Dataset"
    synthesize(folder, speakers=3, utterances_per_speaker=4, length_scale=0.05, seed=11)
    return folder


CASES = {"run": 0, "passed": 0, "refused": 0}


@settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(corruptions=st.lists(st.one_of(json_corruption(), tensor_corruption()), min_size=1, max_size=3))
def test_any_corruption_passes_check_and_trains_or_is_one_error_line(corruptions, micro, tmp_path):
    case = tmp_path / f"case{CASES['run']}"
    CASES["run"] += 1
    folder = case / "Dataset"
    shutil.copytree(micro, folder, ignore=shutil.ignore_patterns(".bank"))
    names = sorted(p.name for p in folder.glob("uttr-*.pt"))
    applied = []
    for corruption in corruptions:
        target, description, corrupt = corruption
        if isinstance(target, int):
            path = folder / names[target % len(names)]
            if path.is_file() and not path.is_symlink():
                corrupt(path)
        else:
            path = folder / target
            if path.is_file():
                try:
                    path.write_text(corrupt(path.read_text(encoding="latin-1")), encoding="latin-1")
                except (ValueError, RecursionError):  # already not JSON: the corruption does not apply
                    continue
        applied.append(description)
    note(f"corruptions applied: {applied}")  # shown with a failing example
    result = invoke("data", "check", str(folder))
    assert "Traceback" not in result.output, result.output
    if result.exit_code != 0:
        one_error_line(result, alone=True)
        assert result.exception is None or isinstance(result.exception, SystemExit), (applied, result.exception)
        CASES["refused"] += 1
        return
    CASES["passed"] += 1
    from data.bank import open_bank
    from search.running.space import KNOWN_CONFIGS, build_configs
    from search.running.task import load_task
    from search.training.train import train

    bank = open_bank(folder, cache_root=case / "cache")
    task = load_task(folder, 0, torch.device("cpu"))
    assert len(task.valid_ids) > 0 and len(task.train_ids) > 0
    model_cfg, train_cfg = build_configs(KNOWN_CONFIGS["sample-code"], bank.n_mels, bank.n_speakers, 2, 0,
                                         eval_every=2)
    assert train(model_cfg, train_cfg, task).best_accuracy >= 0


def test_fuzz_case_count():
    """Reported in the closing note: how many cases the property above ran, and their outcome."""
    print(f"\nfuzz: {CASES['run']} cases, {CASES['passed']} passed data check and trained, "
          f"{CASES['refused']} refused with one Error line")
    assert CASES["run"] == 0 or CASES["passed"] + CASES["refused"] == CASES["run"]
