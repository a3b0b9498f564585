"""Pooling over time: (B, T, d) frames and a (B, T) mask -> (B, out_dim), ignoring padded frames."""

from __future__ import annotations

import torch
from torch import nn

from model.config import ModelConfig
from model.registry import POOLINGS


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real frames only: (B, T, d), (B, T) -> (B, d)."""
    weights = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@POOLINGS.register("mean")
class MeanPooling(nn.Module):
    def __init__(self, cfg: ModelConfig, in_dim: int) -> None:
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, mask)
