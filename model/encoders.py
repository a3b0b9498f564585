"""Encoders: (B, T, d_model) frames and a (B, T) bool mask (True = real frame) -> encoded frames.

Every encoder is batch-first and masks padding, so padded frames never change the real frames' outputs.
An encoder that shortens time (subsampling) returns the shortened mask with its output. The contract is
``model.base.Encoder``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.base import Encoder
from model.config import ModelConfig
from model.registry import ENCODERS


@ENCODERS.register("transformer")
class TransformerEncoder(Encoder):
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


# ---------------------------------------------------------------------------------------------------------
# Conformer (Gulati et al., 2020) with Shaw et al. (2018) relative position attention.
# ---------------------------------------------------------------------------------------------------------


def relative_position_index(frames: int, clip: int, device=None) -> torch.Tensor:
    """(T, T) long: entry [i, j] = clip(j - i, -clip, clip) + clip, an index into 2 * clip + 1 embeddings."""
    pos = torch.arange(frames, device=device)
    return (pos[None, :] - pos[:, None]).clamp(-clip, clip) + clip


def key_padding_bias(mask: torch.Tensor) -> torch.Tensor:
    """(B, T) bool (True = real) -> (B, 1, 1, T) bool of the keys attention may use.

    Only keys are masked, never query rows, so padded queries still attend to real keys and give finite
    (ignored) outputs. An utterance with no real frame at all (possible only after subsampling a clip
    shorter than 7 frames) keeps its first key, so no softmax row is all -inf (which would give NaN).
    """
    keep = mask.clone()
    keep[:, 0] |= ~mask.any(1)
    return keep[:, None, None, :]


class RelPositionMultiHeadAttention(nn.Module):
    """Multi-head self-attention with Shaw et al. (2018) relative position representations (key term).

    For head h, query frame i and key frame j::

        score[i, j] = q_i . (k_j + a[clip(j - i, -K, K)]) / sqrt(d_head)

    with a learned table ``a`` of 2K + 1 vectors of size d_head shared by the heads (as in the paper) and
    K = cfg.rel_pos_clip. The value-side term of the paper (a^V) is left out, as in most later uses (e.g.
    Huang et al., Music Transformer), because it can't go through a fused attention kernel.

    The relative term q_i . a[.] is built from q @ a^T, (B, H, T, 2K + 1), gathered into (B, H, T, T), and
    passed with the key padding (as -inf) as the float ``attn_mask`` of
    ``F.scaled_dot_product_attention``, which adds it to q k^T / sqrt(d_head) inside the fused kernel.
    No tensor bigger than (B, H, T, T) is made, and padded keys get zero weight, so padding never changes
    the real frames' outputs.
    """

    def __init__(self, d_model: int, nhead: int, dropout: float, clip: int) -> None:
        super().__init__()
        self.nhead, self.d_head, self.clip = nhead, d_model // nhead, clip
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.rel_key = nn.Parameter(torch.randn(2 * clip + 1, self.d_head) * self.d_head**-0.5)  # (2K+1, dh)
        self.dropout = dropout

    def relative_bias(self, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """q (B, H, T, dh), mask (B, T) -> float attn_mask (B, H, T, T): relative term, -inf on padded keys."""
        batch, heads, frames, _ = q.shape
        # (B, H, T, 2K+1): q_i . a_r / sqrt(dh) for every clipped distance r (scaled here, while small)
        qa = (q * self.d_head**-0.5) @ self.rel_key.to(q.dtype).t()
        index = relative_position_index(frames, self.clip, q.device)  # (T, T)
        # The index is expanded (stride 0), not copied, and the padding is filled in place: the gathered
        # (B, H, T, T) bias is the only tensor of that size made here.
        bias = qa.gather(-1, index.expand(batch, heads, frames, frames))
        return bias.masked_fill_(~key_padding_bias(mask), float("-inf"))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, d_model), mask (B, T) -> (B, T, d_model)."""
        batch, frames, d_model = x.shape
        q, k, v = self.qkv(x).view(batch, frames, 3, self.nhead, self.d_head).permute(2, 0, 3, 1, 4)  # (B,H,T,dh) each
        bias = self.relative_bias(q, mask)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=drop)  # (B, H, T, dh)
        return self.out(y.transpose(1, 2).reshape(batch, frames, d_model))


class FeedForward(nn.Module):
    """Conformer feed-forward module: LayerNorm -> Linear -> Swish -> Dropout -> Linear -> Dropout."""

    def __init__(self, d_model: int, ffn: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(d_model), nn.Linear(d_model, ffn), nn.SiLU(), nn.Dropout(dropout),
            nn.Linear(ffn, d_model), nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvModule(nn.Module):
    """Conformer convolution module, on a LayerNorm-ed input (B, T, d):

    pointwise conv (d -> 2d) -> GLU -> zero padded frames -> depthwise conv (kernel k, "same") ->
    LayerNorm -> Swish -> pointwise conv -> dropout.

    Padded frames are zeroed just before the depthwise convolution, the only step that mixes frames, so
    real frames near the end of an utterance see zeros whatever the batch's padding holds (exactly like an
    unpadded utterance, whose "same" convolution pads with zeros). The normalisation is a LayerNorm over
    channels per frame instead of the paper's BatchNorm: BatchNorm statistics over padded time would
    depend on the batch's padding.
    """

    def __init__(self, d_model: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.pointwise_in = nn.Linear(d_model, 2 * d_model)  # a 1x1 conv is a per-frame Linear
        self.depthwise = nn.Conv1d(d_model, d_model, kernel, padding="same", groups=d_model)
        self.norm = nn.LayerNorm(d_model)
        self.pointwise_out = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), mask (B, T) -> (B, T, d)."""
        x = F.glu(self.pointwise_in(x), dim=-1)  # (B, T, d)
        x = x.masked_fill(~mask[..., None], 0.0)
        x = self.depthwise(x.transpose(1, 2)).transpose(1, 2)  # (B, T, d)
        x = F.silu(self.norm(x))
        return self.dropout(self.pointwise_out(x))


class ConformerBlock(nn.Module):
    """x + FFN/2 -> x + MHSA(rel. pos.) -> x + Conv -> x + FFN/2 -> LayerNorm (Gulati et al., Fig. 1)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d = cfg.d_model
        self.ff1 = FeedForward(d, cfg.ffn, cfg.dropout)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = RelPositionMultiHeadAttention(d, cfg.nhead, cfg.dropout, cfg.rel_pos_clip)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        self.conv_norm = nn.LayerNorm(d)
        self.conv = ConvModule(d, cfg.conformer_kernel, cfg.dropout)
        self.ff2 = FeedForward(d, cfg.ffn, cfg.dropout)
        self.final_norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, d), mask (B, T) -> (B, T, d)."""
        x = x + 0.5 * self.ff1(x)
        x = x + self.attn_dropout(self.attn(self.attn_norm(x), mask))
        x = x + self.conv(self.conv_norm(x), mask)
        x = x + 0.5 * self.ff2(x)
        return self.final_norm(x)


class Conv2dSubsampling4(nn.Module):
    """ESPnet/WeNet Conv2dSubsampling4: two 3x3 stride-2 Conv2d + ReLU over (time, feature), then a Linear.

    (B, T, d) -> (B, T', d) with T' = ((T - 1) // 2 - 1) // 2, about T / 4. The convolutions have no
    padding, so output frame t of a layer reads input frames 2t .. 2t+2: it is real iff 2t + 2 < L for an
    utterance of L real frames, i.e. t < (L - 1) // 2. The same formula applied to L gives each utterance's
    real output length; those frames are computed from real input only (padding is also zeroed first, so
    nothing of its value leaks anywhere), so extra padding can't change them.
    """

    MIN_FRAMES = 7  # shortest input giving one output frame

    def __init__(self, d_model: int, channels: int, dropout: float) -> None:
        super().__init__()
        if d_model < 7:
            raise ValueError(f"conv2d subsampling needs d_model >= 7, got {d_model}")
        self.conv = nn.Sequential(
            nn.Conv2d(1, channels, 3, 2), nn.ReLU(), nn.Conv2d(channels, channels, 3, 2), nn.ReLU(),
        )
        freq = ((d_model - 1) // 2 - 1) // 2  # feature axis after the two convolutions
        self.out = nn.Sequential(nn.Linear(channels * freq, d_model), nn.Dropout(dropout))

    @staticmethod
    def output_length(length: torch.Tensor) -> torch.Tensor:
        """Real output frames for ``length`` real input frames (0 when fewer than 7)."""
        return (((length - 1) // 2 - 1) // 2).clamp(min=0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d), mask (B, T) -> (B, T', d), mask (B, T')."""
        if x.shape[1] < self.MIN_FRAMES:  # keep at least one (padded) output frame
            extra = self.MIN_FRAMES - x.shape[1]
            x = F.pad(x, (0, 0, 0, extra))
            mask = F.pad(mask, (0, extra), value=False)
        x = x.masked_fill(~mask[..., None], 0.0)
        h = self.conv(x.unsqueeze(1))  # (B, C, T', F')
        batch, channels, frames, freq = h.shape
        h = self.out(h.permute(0, 2, 1, 3).reshape(batch, frames, channels * freq))  # (B, T', d)
        # Masks are a prefix of real frames (padding at the end), so the lengths define the new mask.
        lengths = self.output_length(mask.sum(1))  # (B,)
        new_mask = torch.arange(frames, device=x.device)[None, :] < lengths[:, None]  # (B, T')
        return h, new_mask


@ENCODERS.register("conformer")
class ConformerEncoder(Encoder):
    """Conformer encoder (Gulati et al., 2020): optional conv2d 4x subsampling, then cfg.layers blocks.

    Each block: macaron half-step feed-forward, multi-head self-attention with Shaw et al. relative
    positions (no absolute positional encoding), the convolution module, a second half-step feed-forward
    and a final LayerNorm; all pre-norm. Batch-first; padded frames are masked as keys in attention and
    zeroed before the depthwise convolution, and no normalisation takes statistics over time, so padding
    never changes real frames' outputs. Padded output frames are set to 0.

    Assumes each mask is a prefix of real frames (padding at the end, as the data pipeline builds them);
    this matters only for the subsampling front end, which works with lengths.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.subsample = (
            Conv2dSubsampling4(cfg.d_model, cfg.subsampling_channels, cfg.dropout) if cfg.subsampling else None
        )
        self.blocks = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d_model), mask (B, T) -> (B, T', d_model), mask (B, T') (T' = T unless subsampling)."""
        if self.subsample is not None:
            x, mask = self.subsample(x, mask)
        for block in self.blocks:
            x = block(x, mask)
        return x.masked_fill(~mask[..., None], 0.0), mask
