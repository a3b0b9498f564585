"""The model configuration: one plain dataclass, defaults equal to the HW04 sample code's model.

Plain data that knows no component: ``model.build_model`` checks it against the registries.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields


@dataclass
class ModelConfig:
    n_mels: int = 40  # input features per frame (HW04: 40 log-mel bins)
    n_classes: int = 600  # speakers to tell apart
    # --- encoder ---
    encoder: str = "transformer"  # name in model.registry.ENCODERS
    d_model: int = 80  # encoder width; the prenet maps n_mels -> d_model
    layers: int = 1  # encoder blocks
    nhead: int = 2  # attention heads; must divide d_model
    ffn: int = 256  # feed-forward hidden size
    dropout: float = 0.1
    norm_first: bool = False  # pre-norm: deeper stacks train at lr 1e-3 (the sample is post-norm)
    conformer_kernel: int = 31  # depthwise convolution kernel (conformer only)
    subsampling: bool = False  # conv2d front end with 4x fewer frames (conformer only)
    # conformer only: conv2d channels of the subsampling front end. ESPnet/WeNet use d_model, but there the
    # input is 80 mels; here it is d_model wide, so its Linear would hold channels * d_model**2 / 4 weights.
    subsampling_channels: int = 64
    rel_pos_clip: int = 64  # conformer only: relative positions clipped to +-this many frames (Shaw et al.)
    # --- pooling over time: (B, T, d) -> (B, d') ---
    pooling: str = "mean"  # name in model.registry.POOLINGS
    pool_hidden: int = 128  # hidden width of the sap / asp attention scorers (ECAPA-TDNN: 128)
    # --- head: pooled vector -> embedding ---
    head: str = "mlp"  # name in model.registry.HEADS: "mlp" (the sample's) or "linear" (no layer)
    head_hidden: int = 80  # width of the mlp head's hidden layer (sample code: d_model)
    # --- classification layer and loss: embedding -> logits ---
    loss: str = "ce"  # name in model.registry.LOSSES
    label_smoothing: float = 0.0  # cross-entropy only
    margin: float = 0.2  # additive (am) or angular (aam) margin
    scale: float = 30.0  # logit scale s of the cosine losses
    # --- SpecAugment (training only) ---
    time_masks: int = 0  # number of time masks per crop
    time_mask_width: int = 0  # max frames per time mask
    freq_masks: int = 0  # number of frequency masks
    freq_mask_width: int = 0  # max mel bins per frequency mask

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelConfig":
        """Build from a dict, ignoring keys this version does not know (older or newer studies)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
