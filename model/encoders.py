"""Encoders: (B, T, d_model) frames and a (B, T) bool mask (True = real frame) -> encoded frames.

Every encoder is batch-first and masks padding, so padded frames never change the real frames' outputs.
An encoder that shortens time (subsampling) returns the shortened mask with its output.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import ModelConfig
from model.registry import ENCODERS


@ENCODERS.register("transformer")
class TransformerEncoder(nn.Module):
    """The sample code's encoder made correct: batch-first, with a key padding mask; optional pre-norm.

    No positional encoding, like the sample: with mean pooling the order of frames matters only through
    attention, and the task is speaker identity, not content.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.nhead, cfg.ffn, cfg.dropout, batch_first=True, norm_first=cfg.norm_first
        )
        # The nested-tensor fast path drops padded positions and zero-fills them; we keep plain tensors
        # so every layer sees the same shapes in training and evaluation.
        self.layers = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers(x, src_key_padding_mask=~mask), mask
