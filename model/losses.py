"""Classification layers with their losses: embedding (B, e) -> logits (B, n_classes).

Contract: ``forward(emb)`` gives the logits used for prediction; ``loss(emb, labels, margin_scale)``
gives (loss, logits) for training, where ``margin_scale`` in [0, 1] lets margin losses warm their
margin up from 0 (the trainer passes the schedule's value; plain cross-entropy ignores it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import ModelConfig
from model.registry import LOSSES


@LOSSES.register("ce")
class SoftmaxCrossEntropy(nn.Module):
    """A linear layer and softmax cross-entropy, with optional label smoothing."""

    def __init__(self, cfg: ModelConfig, emb_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(emb_dim, cfg.n_classes)
        self.label_smoothing = cfg.label_smoothing

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.linear(emb)

    def loss(self, emb: torch.Tensor, labels: torch.Tensor, margin_scale: float = 1.0):
        logits = self.linear(emb)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing), logits
