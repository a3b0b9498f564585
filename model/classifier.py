"""The speaker classifier: prenet -> encoder -> masked pooling -> head -> classification layer.

Shapes: x (B, T, n_mels) log-mel frames, mask (B, T) bool with True on real frames (padding False).
Padding never changes the output: the encoder masks attention, pooling averages real frames only.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import ModelConfig
from model.registry import ENCODERS, LOSSES, POOLINGS


class SpecAugment(nn.Module):
    """Random time and frequency masks on the input features, in training only.

    Masked values are set to each utterance's mean over its real frames (not 0, which is loud speech in
    log-mel terms, nor the silence floor).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.time = (cfg.time_masks, cfg.time_mask_width)
        self.freq = (cfg.freq_masks, cfg.freq_mask_width)

    @staticmethod
    def _band_mask(n: int, width: int, size: int, batch: int, device, limit=None) -> torch.Tensor:
        """(batch, size) bool: union of n random bands of width < ``width`` each, below ``limit``."""
        limit = torch.full((batch,), size, device=device) if limit is None else limit
        widths = (torch.rand(batch, n, device=device) * (width + 1)).long()  # (B, n)
        starts = (torch.rand(batch, n, device=device) * (limit[:, None] - widths).clamp(min=1)).long()
        pos = torch.arange(size, device=device)  # (size,)
        inside = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])  # (B, n, size)
        return inside.any(1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.training or (self.time[0] * self.time[1] + self.freq[0] * self.freq[1]) == 0:
            return x
        batch, frames, bins = x.shape
        fill = (x * mask[..., None]).sum(1, keepdim=True) / mask.sum(1).clamp(min=1)[:, None, None]
        drop = torch.zeros(batch, frames, bins, dtype=torch.bool, device=x.device)
        if self.time[0] and self.time[1]:
            drop |= self._band_mask(*self.time, frames, batch, x.device, mask.sum(1))[..., None]
        if self.freq[0] and self.freq[1]:
            drop |= self._band_mask(*self.freq, bins, batch, x.device)[:, None, :]
        return torch.where(drop, fill.expand_as(x), x)


class Classifier(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.augment = SpecAugment(cfg)
        self.prenet = nn.Linear(cfg.n_mels, cfg.d_model)
        self.encoder = ENCODERS.build(cfg.encoder, cfg)
        self.pooling = POOLINGS.build(cfg.pooling, cfg, cfg.d_model)
        if cfg.head == "mlp":
            self.head = nn.Sequential(nn.Linear(self.pooling.out_dim, cfg.head_hidden), nn.Sigmoid())
            emb_dim = cfg.head_hidden
        else:
            self.head = nn.Identity()
            emb_dim = self.pooling.out_dim
        self.classify = LOSSES.build(cfg.loss, cfg, emb_dim)

    def embed(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T, n_mels), (B, T) -> utterance embedding (B, emb_dim)."""
        x = self.augment(x, mask)
        h, mask = self.encoder(self.prenet(x), mask)  # (B, T', d_model), (B, T')
        return self.head(self.pooling(h, mask))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Prediction logits (B, n_classes)."""
        return self.classify(self.embed(x, mask))

    def loss(self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, margin_scale: float = 1.0):
        """Training loss and logits."""
        return self.classify.loss(self.embed(x, mask), labels, margin_scale)


def build_model(cfg: ModelConfig) -> Classifier:
    return Classifier(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
