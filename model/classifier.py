"""The speaker classifier: prenet -> encoder -> masked pooling -> head -> classification layer.

Shapes: x (B, T, n_mels) log-mel frames, mask (B, T) bool with True on real frames (padding False).
Padding never changes the output: the encoder masks attention, pooling averages real frames only.
"""

from __future__ import annotations

import numbers

import torch
from torch import nn

from model.config import ModelConfig
from model.registry import ENCODERS, HEADS, LOSSES, POOLINGS


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
    """The components named by ``cfg``, built in a fixed order (so a seed gives the same weights).

    Build it with ``build_model``, which checks the configuration first.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.augment = SpecAugment(cfg)
        self.prenet = nn.Linear(cfg.n_mels, cfg.d_model)
        self.encoder = ENCODERS.build(cfg.encoder, cfg)
        self.pooling = POOLINGS.build(cfg.pooling, cfg, cfg.d_model)
        self.head = HEADS.build(cfg.head, cfg, self.pooling.out_dim)
        self.classify = LOSSES.build(cfg.loss, cfg, self.head.out_dim)

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


# Sizes every model uses, whatever its components; a component's own sizes are checked where it is built.
_POSITIVE_INTS = ("n_mels", "n_classes", "d_model", "nhead", "layers", "ffn")


def validate(cfg: ModelConfig) -> None:
    """Raise one ValueError naming the first field of ``cfg`` that can't make a model.

    Checked here, before any layer is built, so a bad warm-start or enqueued configuration fails its trial
    with a sentence instead of a shape error from inside torch.
    """
    for name in _POSITIVE_INTS:
        value = getattr(cfg, name)
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if cfg.d_model % cfg.nhead:
        raise ValueError(f"nhead {cfg.nhead} must divide d_model {cfg.d_model}")
    if not (isinstance(cfg.dropout, numbers.Real) and 0.0 <= cfg.dropout <= 1.0):
        raise ValueError(f"dropout must be a number from 0 to 1, got {cfg.dropout!r}")
    ENCODERS.check(cfg.encoder)
    POOLINGS.check(cfg.pooling)
    LOSSES.check(cfg.loss)
    HEADS.check(cfg.head)


def build_model(cfg: ModelConfig) -> Classifier:
    """The classifier ``cfg`` describes; ValueError naming the field when ``cfg`` is not valid."""
    validate(cfg)
    return Classifier(cfg)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
