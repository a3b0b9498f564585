"""The contracts of the model's components, as small abstract base classes (as Optuna states a sampler's).

A classifier is ``prenet -> Encoder -> Pooling -> Head -> Loss``; each stage is chosen by name from its
registry (``model.registry``), which accepts only subclasses of the stage's contract, so a new component
that misses a method fails when its module is imported, not in the middle of a trial.

Shapes: B utterances, T frames (T' after an encoder that shortens time), ``mask`` (B, T) bool with True
on real frames and False on padding, which always comes after an utterance's real frames. Padding must
never change a real frame's output or a pooled vector: a batch of mixed lengths gives each utterance the
output it gets alone.
"""

from __future__ import annotations

import abc

import torch
from torch import nn


class Encoder(nn.Module, abc.ABC):
    """Encoded frames: built as ``cls(cfg)``; (B, T, d_model) frames, (B, T) mask -> (B, T', d_model), (B, T').

    An encoder that keeps the frame count returns the mask it was given; one that shortens time
    (subsampling) returns the mask of its output frames.
    """

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d_model), mask (B, T) -> encoded frames (B, T', d_model), their mask (B, T')."""


class Pooling(nn.Module, abc.ABC):
    """Pooling over time: built as ``cls(cfg, in_dim)``; (B, T, in_dim), (B, T) mask -> (B, out_dim).

    ``out_dim`` (an int attribute, set in ``__init__``) is the pooled width the head is built for.
    Padded frames get no weight.
    """

    out_dim: int

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, in_dim), mask (B, T) -> pooled vector (B, out_dim)."""


class Head(nn.Module, abc.ABC):
    """Pooled vector -> utterance embedding: built as ``cls(cfg, in_dim)``; (B, in_dim) -> (B, out_dim).

    ``out_dim`` (an int attribute, set in ``__init__``) is the embedding width the loss is built for.
    """

    out_dim: int

    @abc.abstractmethod
    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """pooled (B, in_dim) -> embedding (B, out_dim)."""


class Loss(nn.Module, abc.ABC):
    """Classification layer and its loss: built as ``cls(cfg, emb_dim)``; embedding (B, emb_dim) -> logits.

    Two calls, because training and prediction differ for margin losses: ``forward`` gives the logits
    that predict, ``loss`` the training loss with the logits that training accuracy counts.
    """

    @abc.abstractmethod
    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        """emb (B, emb_dim) -> prediction logits (B, n_classes)."""

    @abc.abstractmethod
    def loss(self, emb: torch.Tensor, labels: torch.Tensor,
             margin_scale: float | torch.Tensor = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """emb (B, emb_dim), labels (B,) long -> (scalar loss, logits (B, n_classes)).

        ``margin_scale`` in [0, 1] lets a margin loss warm its margin up from 0 (the trainer passes its
        schedule's value, a float or a 0-d tensor on emb's device); a loss without a margin ignores it.
        """
