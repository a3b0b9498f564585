"""Registries of model components, chosen by name (as in WeSpeaker / SpeechBrain).

Each component module registers its classes with a decorator::

    @POOLINGS.register("mean")
    class MeanPooling(Pooling): ...

and the classifier builds them with ``POOLINGS.build(name, cfg, in_dim)``. The search space offers
``POOLINGS.names()``, so a new component is searchable as soon as it is registered. A registry accepts
only subclasses of its contract (``model.base``), and lists names in registration order, which is the
order of the search space's choices.

This module imports no component at its own import (the components import it to register); every read of a
registry (``names``, ``check``, ``build``) first imports the component modules, so the registries are full whenever
they are read, however the reader got here.
"""

from __future__ import annotations

import importlib
import inspect

from model.base import Encoder, Head, Loss, Pooling


COMPONENT_MODULES = ("model.encoders", "model.heads", "model.losses", "model.pooling")


def load_components() -> None:
    """Import every component module (each registers its classes); after the first call, a dict lookup each."""
    for module in COMPONENT_MODULES:
        importlib.import_module(module)


class Registry:
    """Names -> classes for one kind of component; it takes only complete subclasses of its contract."""

    def __init__(self, kind: str, contract: type) -> None:
        self.kind = kind
        self.contract = contract
        self._entries: dict[str, type] = {}

    def register(self, name: str):
        """Class decorator adding the class under ``name``."""

        def add(cls: type) -> type:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} registered twice")
            if not (isinstance(cls, type) and issubclass(cls, self.contract)):
                raise TypeError(f"{self.kind} {name!r}: {cls!r} is not a subclass of {self.contract.__name__}")
            if inspect.isabstract(cls):
                missing = ", ".join(sorted(cls.__abstractmethods__))
                raise TypeError(f"{self.kind} {name!r}: {cls.__name__} does not implement {missing}")
            self._entries[name] = cls
            return cls

        return add

    def check(self, name: str) -> None:
        """Raise ValueError naming the kind and the choices when ``name`` is not registered."""
        load_components()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}")

    def names(self) -> list[str]:
        load_components()
        return list(self._entries)

    def build(self, name: str, *args, **kwargs):
        self.check(name)
        return self._entries[name](*args, **kwargs)


ENCODERS = Registry("encoder", Encoder)  # cls(cfg)
POOLINGS = Registry("pooling", Pooling)  # cls(cfg, in_dim)
HEADS = Registry("head", Head)  # cls(cfg, in_dim)
LOSSES = Registry("loss", Loss)  # cls(cfg, emb_dim)
