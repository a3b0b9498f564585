"""Classification layers with their losses: embedding (B, e) -> logits (B, n_classes).

The contract is ``model.base.Loss``: ``forward(emb)`` gives the logits used for prediction;
``loss(emb, labels, margin_scale)`` gives (loss, logits) for training, where ``margin_scale`` in [0, 1]
lets margin losses warm their margin up from 0 (plain cross-entropy ignores it).
"""

from __future__ import annotations

import abc
import math

import torch
import torch.nn.functional as F
from torch import nn

from model.base import Loss
from model.config import ModelConfig
from model.registry import LOSSES


@LOSSES.register("ce")
class SoftmaxCrossEntropy(Loss):
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


class _CosineClassifier(Loss):
    """Shared part of the margin losses: class weights W (n_classes, e) and scaled cosine logits.

    ``cosine(emb)`` = normalise(emb) @ normalise(W)^T, (B, n_classes), always in float32 with autocast off:
    under bf16 autocast a matmul would otherwise run in bf16, too coarse for cosines near 1 and margins of
    a few hundredths. ``forward(emb)`` returns scale * cos(theta), without margin (same argmax as cos).
    ``loss`` returns the same margin-free logits, so training accuracy counts what prediction would say.
    """

    def __init__(self, cfg: ModelConfig, emb_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cfg.n_classes, emb_dim))
        nn.init.xavier_uniform_(self.weight)
        self.margin = cfg.margin
        self.scale = cfg.scale

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """emb (B, e) -> cos(theta) (B, n_classes), float32."""
        with torch.autocast(emb.device.type, enabled=False):
            return F.linear(F.normalize(emb.float(), dim=-1), F.normalize(self.weight.float(), dim=-1))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.scale * self.cosine(emb)

    @abc.abstractmethod
    def target_logit(self, cos: torch.Tensor, margin: float) -> torch.Tensor:
        """cos of the target class (elementwise, any shape) -> its margin-penalised cosine (before scaling)."""

    def loss(self, emb: torch.Tensor, labels: torch.Tensor, margin_scale: float = 1.0):
        cos = self.cosine(emb)  # (B, C)
        # A float, or a 0-d tensor on emb's device (the trainer's CUDA-graph path fills it in place each step)
        margin = self.margin * margin_scale
        target = cos.gather(1, labels[:, None])  # (B, 1)
        penalised = cos.scatter(1, labels[:, None], self.target_logit(target, margin))  # (B, C)
        return F.cross_entropy(self.scale * penalised, labels), self.scale * cos.detach()


@LOSSES.register("am")
class AdditiveMarginSoftmax(_CosineClassifier):
    """AM-softmax / CosFace (Wang et al. 2018): logits s * (cos(theta_y) - m) for the target, s * cos(theta_j)
    for the others, with normalised weights and normalised embeddings (not raw logits: the bug in
    ../shared/HW04.md). m = cfg.margin * margin_scale, s = cfg.scale. ``forward`` gives s * cos(theta).
    """

    def target_logit(self, cos: torch.Tensor, margin: float) -> torch.Tensor:
        return cos - margin


@LOSSES.register("aam")
class AdditiveAngularMarginSoftmax(_CosineClassifier):
    """AAM-softmax / ArcFace (Deng et al. 2019): target logit s * cos(theta_y + m), others s * cos(theta_j).

    cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m), with sin(theta) = sqrt(1 - cos^2) >= 0. It
    falls as theta grows only while theta + m <= pi; past that (cos(theta) <= cos(pi - m)) the usual
    ArcFace/WeSpeaker fallback cos(theta) - m sin(m) (a CosFace-like penalty) is used, so the target logit
    stays decreasing in theta. m = cfg.margin * margin_scale; with m = 0 this is plain scaled-cosine CE.
    ``forward`` gives s * cos(theta).
    """

    def target_logit(self, cos: torch.Tensor, margin: float) -> torch.Tensor:
        # clamp keeps sqrt's gradient finite at |cos| = 1 (sin error < 1e-3 only there)
        sin = torch.sqrt((1.0 - cos.square()).clamp(min=1e-6))
        cos_m, sin_m = (margin.cos(), margin.sin()) if torch.is_tensor(margin) else (math.cos(margin), math.sin(margin))
        phi = cos * cos_m - sin * sin_m
        return torch.where(cos > -cos_m, phi, cos - margin * sin_m)  # -cos(m) = cos(pi - m)
