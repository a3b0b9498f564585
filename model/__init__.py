"""Speaker classifiers built from a ``ModelConfig``: encoder, pooling, head and loss picked by name.

The package itself imports only the configurations (plain dataclasses, no torch), so a command that only reads
a study's recorded configuration (``search report``, ``show``) does not load torch; the other names
(``from model import build_model, ENCODERS``) are imported on first use. A registry imports the component
modules at its first read (``model.registry``), so it is full however it is reached. The submodules' imports
form a chain config, base -> registry -> components -> classifier; no submodule imports a module that imports
it back.
"""

from __future__ import annotations

import importlib

from model.config import ModelConfig, TrainConfig

_HOME = {
    **dict.fromkeys(("Encoder", "Head", "Loss", "Pooling"), "model.base"),
    **dict.fromkeys(("Classifier", "build_model", "count_parameters", "validate"), "model.classifier"),
    **dict.fromkeys(("ENCODERS", "POOLINGS", "HEADS", "LOSSES"), "model.registry"),
}

__all__ = ["ModelConfig", "TrainConfig", *_HOME]


def __getattr__(name: str):
    """The torch-side names, imported on first use (PEP 562)."""
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)
