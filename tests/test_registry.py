"""The component registries and the model package's layout: every registered name builds and keeps its
contract's shapes, unknown names are refused in one line that lists the choices, every pooling ignores
padding, a registry refuses a class that does not meet its contract, and ``model/`` imports without a cycle."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from model import ENCODERS, HEADS, LOSSES, POOLINGS, Encoder, Head, Loss, ModelConfig, Pooling, build_model
from model.registry import Registry
from search.running.space import build_space

ROOT = Path(__file__).resolve().parent.parent
TINY = ModelConfig(d_model=16, nhead=2, ffn=32, n_classes=5, conformer_kernel=7, subsampling_channels=8,
                   rel_pos_clip=8, pool_hidden=8, head_hidden=12)
REGISTRIES = {"encoder": (ENCODERS, Encoder), "pooling": (POOLINGS, Pooling), "head": (HEADS, Head),
              "loss": (LOSSES, Loss)}


def _every(registry):
    return [pytest.param(name, id=name) for name in registry.names()]


# --- every registered name builds, with its contract's shapes ----------------------------------------------


def test_the_registries_hold_the_documented_components_in_search_order():
    assert ENCODERS.names() == ["transformer", "conformer"]
    assert POOLINGS.names() == ["mean", "sap", "asp"]
    assert HEADS.names() == ["linear", "mlp"]
    assert LOSSES.names() == ["ce", "am", "aam"]


@pytest.mark.parametrize("name", _every(ENCODERS))
def test_every_encoder_builds_and_keeps_width_and_mask(name):
    torch.manual_seed(0)
    encoder = ENCODERS.build(name, TINY).eval()
    assert isinstance(encoder, Encoder)
    x, mask = torch.randn(2, 9, 16), torch.arange(9)[None] < torch.tensor([9, 6])[:, None]
    with torch.no_grad():
        h, out_mask = encoder(x, mask)
    assert h.shape == (2, 9, 16) and torch.equal(out_mask, mask)


@pytest.mark.parametrize("kind, name", [pytest.param(kind, name, id=f"{kind}-{name}") for kind in ("pooling", "head")
                                        for name in REGISTRIES[kind][0].names()])
def test_every_pooling_and_head_builds_and_gives_out_dim_wide_vectors(kind, name):
    registry, contract = REGISTRIES[kind]
    stage = registry.build(name, TINY, 6)
    assert isinstance(stage, contract) and isinstance(stage.out_dim, int)
    inputs = (torch.randn(3, 5, 6), torch.ones(3, 5, dtype=torch.bool)) if kind == "pooling" else (torch.randn(3, 6),)
    assert stage(*inputs).shape == (3, stage.out_dim)


@pytest.mark.parametrize("name", _every(LOSSES))
def test_every_loss_builds_and_gives_logits_and_a_scalar_loss(name):
    loss_layer = LOSSES.build(name, TINY, 6)
    assert isinstance(loss_layer, Loss)
    emb, labels = torch.randn(3, 6), torch.tensor([0, 4, 2])
    loss, logits = loss_layer.loss(emb, labels, 1.0)
    assert loss.shape == () and torch.isfinite(loss)
    assert logits.shape == loss_layer(emb).shape == (3, TINY.n_classes)


def test_heads_give_the_loss_its_width():
    """linear: the pooled vector itself (d_model wide, 2 * d_model after asp); mlp: head_hidden wide."""
    for head, pooling, width in [("linear", "mean", 16), ("linear", "asp", 32), ("mlp", "asp", 12)]:
        model = build_model(ModelConfig(**{**TINY.to_dict(), "head": head, "pooling": pooling}))
        assert model.head.out_dim == width and model.classify.linear.in_features == width


# --- unknown names -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", list(REGISTRIES))
def test_an_unknown_name_is_one_line_naming_the_field_and_the_choices(field):
    registry, _ = REGISTRIES[field]
    message = f"unknown {field} 'nope'; choose from {', '.join(registry.names())}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_model(ModelConfig(**{field: "nope"}))


# --- pooling ignores padding -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", _every(POOLINGS))
def test_padded_frames_do_not_change_the_pooled_vector(name):
    """Whatever the padded frames hold, each utterance of a mixed-length batch pools as it does alone."""
    torch.manual_seed(2)
    pool = POOLINGS.build(name, TINY, 6).eval()
    lengths = [11, 4, 7]
    x = torch.randn(3, 11, 6)
    mask = torch.arange(11)[None] < torch.tensor(lengths)[:, None]
    with torch.no_grad():
        pooled = pool(x, mask)
        for garbage in (torch.zeros_like(x), torch.full_like(x, -20.0), torch.randn_like(x) * 1e3):
            torch.testing.assert_close(pool(torch.where(mask[..., None], x, garbage), mask), pooled)
        for i, n in enumerate(lengths):
            alone = pool(x[i:i + 1, :n], torch.ones(1, n, dtype=torch.bool))
            torch.testing.assert_close(alone, pooled[i:i + 1], rtol=1e-5, atol=1e-6)


# --- the registry's own rules ------------------------------------------------------------------------------


def test_a_registry_takes_only_complete_subclasses_of_its_contract_and_each_name_once():
    things = Registry("pooling", Pooling)

    with pytest.raises(TypeError, match="pooling 'plain': .* is not a subclass of Pooling"):
        things.register("plain")(nn.Identity)

    class NoForward(Pooling):
        pass

    with pytest.raises(TypeError, match="^pooling 'lazy': NoForward does not implement forward$"):
        things.register("lazy")(NoForward)

    @things.register("first")
    class First(Pooling):
        def forward(self, x, mask):
            return x[:, 0]

    with pytest.raises(KeyError, match="pooling 'first' registered twice"):
        things.register("first")(First)
    assert things.names() == ["first"]


def test_a_newly_registered_component_is_in_the_search_space(monkeypatch):
    """The space reads its choices from the registries: registering is all a new component needs."""

    class Doubled(Head):
        def __init__(self, cfg, in_dim):
            super().__init__()
            self.out_dim = in_dim

        def forward(self, pooled):
            return 2 * pooled

    monkeypatch.setattr(HEADS, "_entries", dict(HEADS._entries))  # the real registry is left as it was
    HEADS.register("doubled")(Doubled)
    head = {p.name: p for p in build_space("cpu")}["head"]
    assert list(head.choices) == ["linear", "mlp", "doubled"]
    assert build_model(ModelConfig(**{**TINY.to_dict(), "head": "doubled"})).head.out_dim == 16


# --- no import cycle in model/ -----------------------------------------------------------------------------


def _model_imports(path: Path) -> set[str]:
    """The ``model`` modules one module of the package imports (``model`` itself for ``from model import x``
    when x is not a submodule)."""
    submodules = {p.stem for p in (ROOT / "model").glob("*.py")} - {"__init__"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name == "model" or a.name.startswith("model.")}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "model":
            found |= {f"model.{a.name}" if a.name in submodules else "model" for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("model."):
            found.add(node.module)
    return found


def test_model_submodules_import_each_other_without_a_cycle():
    modules = {f"model.{p.stem}": _model_imports(p) for p in (ROOT / "model").glob("*.py") if p.stem != "__init__"}
    for name, imports in modules.items():
        assert "model" not in imports, f"{name} imports the package, which imports it back"
    done: list[str] = []  # a topological order: each module after everything it imports
    while len(done) < len(modules):
        ready = [m for m in modules if m not in done and modules[m] <= set(done)]
        assert ready, f"import cycle among {sorted(set(modules) - set(done))}"
        done += sorted(ready)


def test_each_model_submodule_imports_alone_in_a_fresh_interpreter_with_the_registries_full():
    names = sorted(f"model.{p.stem}" for p in (ROOT / "model").glob("*.py") if p.stem != "__init__")
    script = "\n".join([
        "import importlib, sys",
        f"for name in {names!r}:",
        "    for loaded in [m for m in sys.modules if m == 'model' or m.startswith('model.')]:",
        "        del sys.modules[loaded]",
        "    importlib.import_module(name)",
        "    registry = importlib.import_module('model.registry')",
        "    print(name, *(len(r.names()) for r in (registry.ENCODERS, registry.POOLINGS, registry.HEADS,"
        " registry.LOSSES)))",
    ])
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [f"{name} 2 3 2 3" for name in names]


def test_reading_recorded_configurations_does_not_load_torch():
    """`search report` and `show` read a study's recorded configurations (model.config's dataclasses): torch, a
    large part of such a command's memory and start-up, stays unloaded; the first torch-side name loads it."""
    script = "\n".join([
        "import sys",
        "import search.reporting.report, search.reporting.attrs, search.reporting.inspection",
        "from model import ModelConfig, TrainConfig",
        "print('torch' in sys.modules)",
        "from model import ENCODERS",
        "print('torch' in sys.modules, ENCODERS.names())",
    ])
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == ["False", "True ['transformer', 'conformer']"]
