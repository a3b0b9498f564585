"""Heads: the pooled vector (B, in_dim) -> the utterance embedding (B, out_dim) that the loss classifies."""

from __future__ import annotations

from torch import nn

from model.base import Head
from model.config import ModelConfig
from model.registry import HEADS


@HEADS.register("linear")
class LinearHead(nn.Identity, Head):
    """No layer: the pooled vector is the embedding (out_dim = in_dim), so the loss's layer is the only one."""

    def __init__(self, cfg: ModelConfig, in_dim: int) -> None:
        super().__init__()
        self.out_dim = in_dim


@HEADS.register("mlp")
class MLPHead(nn.Sequential, Head):
    """The HW04 sample code's head: Linear(in_dim, cfg.head_hidden) -> Sigmoid (out_dim = cfg.head_hidden).

    An ``nn.Sequential``, so its weights keep the names ``head.0.weight`` and ``head.0.bias`` that saved
    checkpoints hold.
    """

    def __init__(self, cfg: ModelConfig, in_dim: int) -> None:
        super().__init__(nn.Linear(in_dim, cfg.head_hidden), nn.Sigmoid())
        self.out_dim = cfg.head_hidden
