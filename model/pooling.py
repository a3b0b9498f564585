"""Pooling over time: (B, T, d) frames and a (B, T) mask -> (B, out_dim), ignoring padded frames.

The contract is ``model.base.Pooling``.
"""

from __future__ import annotations

import torch
from torch import nn

from model.base import Pooling
from model.config import ModelConfig
from model.registry import POOLINGS


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the real frames only: (B, T, d), (B, T) -> (B, d)."""
    weights = mask.to(x.dtype).unsqueeze(-1)  # (B, T, 1)
    return (x * weights).sum(1) / weights.sum(1).clamp(min=1.0)


@POOLINGS.register("mean")
class MeanPooling(Pooling):
    def __init__(self, cfg: ModelConfig, in_dim: int) -> None:
        super().__init__()
        self.out_dim = in_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_mean(x, mask)


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over time (dim 1) of the real frames only: scores (B, T) or (B, T, c), mask (B, T).

    Computed in float32. Padded frames get weight exactly 0, so a padded utterance gets the same weights
    as alone. A row with no real frame gets all-zero weights (not NaN): padded scores are filled with the
    most negative finite float, not -inf, so the softmax stays finite, and then multiplied by the mask.
    """
    m = mask if scores.dim() == 2 else mask[..., None]  # broadcastable to scores
    scores = scores.float().masked_fill(~m, torch.finfo(torch.float32).min)
    return torch.softmax(scores, dim=1) * m


def weighted_stats(x: torch.Tensor, weights: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and standard deviation over time, in float32.

    x (B, T, d); weights (B, T, 1) or (B, T, d), summing to 1 over real frames and 0 on padding.
    The variance is the weighted mean of squared deviations (not E[x^2] - mean^2, which cancels badly),
    and ``eps`` inside the sqrt keeps the gradient finite when a channel is constant.
    """
    x = x.float()
    mean = (weights * x).sum(1)  # (B, d)
    var = (weights * (x - mean[:, None, :]).square()).sum(1)  # (B, d)
    return mean, torch.sqrt(var.clamp(min=0.0) + eps)


@POOLINGS.register("sap")
class SelfAttentivePooling(Pooling):
    """Self-attentive pooling (SAP; Cai et al. 2018, Okabe et al. 2018): a weighted mean of the frames.

    Each frame gets a scalar score v . tanh(W h_t + b) (hidden size cfg.pool_hidden), the weights are the
    softmax of the scores over the real frames only, and the output is the weighted mean (out_dim = in_dim).
    """

    def __init__(self, cfg: ModelConfig, in_dim: int) -> None:
        super().__init__()
        self.out_dim = in_dim
        self.score = nn.Sequential(nn.Linear(in_dim, cfg.pool_hidden), nn.Tanh(), nn.Linear(cfg.pool_hidden, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), mask (B, T) -> (B, d)."""
        weights = masked_softmax(self.score(x).squeeze(-1), mask)  # (B, T), float32
        return (weights[..., None] * x.float()).sum(1)


@POOLINGS.register("asp")
class AttentiveStatisticsPooling(Pooling):
    """Attentive statistics pooling as in ECAPA-TDNN (Desplanques et al. 2020; Okabe et al. 2018).

    Channel-wise attention with global context: every frame h_t is concatenated with the utterance's
    (masked) mean and standard deviation, scored per channel by Linear(3d, hidden) -> tanh ->
    Linear(hidden, d), and the scores are softmaxed over the real frames per channel. The output is the
    weighted mean and weighted standard deviation concatenated: out_dim = 2 * in_dim.

    Unlike ECAPA there is no BatchNorm in the scorer: its statistics over time would include padded frames.
    """

    EPS = 1e-5  # inside the sqrt of the variances

    def __init__(self, cfg: ModelConfig, in_dim: int) -> None:
        super().__init__()
        self.out_dim = 2 * in_dim
        self.score = nn.Sequential(
            nn.Linear(3 * in_dim, cfg.pool_hidden), nn.Tanh(), nn.Linear(cfg.pool_hidden, in_dim)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), mask (B, T) -> (B, 2d)."""
        frames = x.shape[1]
        uniform = mask.float()[..., None] / mask.sum(1).clamp(min=1)[:, None, None]  # (B, T, 1)
        mean, std = weighted_stats(x, uniform, self.EPS)  # (B, d) each: the global context
        context = torch.cat([mean, std], -1)[:, None, :].expand(-1, frames, -1)  # (B, T, 2d)
        scores = self.score(torch.cat([x.float(), context], -1))  # (B, T, d)
        mean, std = weighted_stats(x, masked_softmax(scores, mask), self.EPS)
        return torch.cat([mean, std], -1)
