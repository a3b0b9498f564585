"""Registries of model components, chosen by name (as in WeSpeaker / SpeechBrain).

Each component module registers its classes with a decorator::

    @POOLINGS.register("mean")
    class MeanPooling(nn.Module): ...

and the classifier builds them with ``POOLINGS.build(name, cfg, in_dim)``. The search space offers
``POOLINGS.names()``, so a new component is searchable as soon as it is registered.
"""

from __future__ import annotations

from typing import Callable


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Callable] = {}

    def register(self, name: str) -> Callable:
        def add(builder: Callable) -> Callable:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} registered twice")
            self._entries[name] = builder
            return builder

        return add

    def check(self, name: str) -> None:
        _load_components()
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {', '.join(self.names())}")

    def names(self) -> list[str]:
        _load_components()
        return list(self._entries)

    def build(self, name: str, *args, **kwargs):
        self.check(name)
        return self._entries[name](*args, **kwargs)


ENCODERS = Registry("encoder")  # (cfg) -> module: (B, T, d_model), mask (B, T) -> (B, T', d_model), mask (B, T')
POOLINGS = Registry("pooling")  # (cfg, in_dim) -> module with .out_dim: (B, T, d), mask -> (B, out_dim)
LOSSES = Registry("loss")  # (cfg, emb_dim) -> module: logits(emb) and loss(emb, labels, margin_scale)


def _load_components() -> None:
    """Import the component modules so their decorators have run (cheap after the first call)."""
    import model.encoders  # noqa: F401
    import model.losses  # noqa: F401
    import model.pooling  # noqa: F401
