"""The model and training configurations: plain dataclasses, defaults equal to the HW04 sample code's.

Plain data that knows no component: ``model.build_model`` checks a ``ModelConfig`` against the registries, and
the training loop (search/training/train.py) reads a ``TrainConfig``.
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


@dataclass
class TrainConfig:
    steps: int = 70_000  # optimiser steps (the sample code: 70,000)
    batch_size: int = 32
    segment: int = 128  # training crop length in frames
    lr: float = 1e-3  # peak learning rate, after warm-up
    weight_decay: float = 0.01
    warmup_steps: int = 1000  # linear warm-up, then cosine decay to 0
    eval_every: int = 2000  # steps between full-length validations (and one at the end), unless eval_steps
    # The steps to validate at, instead of every eval_every (search trials: search/running/schedule.py trial_steps)
    eval_steps: tuple[int, ...] = ()
    margin_warmup: float = 0.2  # share of training over which margin losses ramp their margin from 0
    seed: int = 0  # model init, dropout and crop sampling
    eval_max_frames: int = 1 << 16  # padded frames per evaluation batch
    cuda_graph: bool = True  # replay the training step as a CUDA graph on GPUs (ignored on CPU)
    # Clip the global L2 norm of the gradients to this (0: off): a safety bound against the rare spike that AdamW
    # would turn into a full-size step in a bad direction, set above the norms of ordinary training so that it
    # seldom clips (lower values slowed learning: BENCHMARKS.md, "Gradient clipping"). Fixed, not searched.
    grad_clip: float = 20.0
    # Detect a collapse and roll back (search/training/collapse.py). Off by default, i.e. in search trials: a trial's
    # collapse is information for the sampler and pruner, and its runs are too short to collapse; finalize
    # turns it on, where hours of training would otherwise end with the weights of before the collapse.
    recover_collapse: bool = False
    # On CUDA: "bf16" autocast (search trials: fastest, and short runs are stable in it); "tf32": fp32 weights and
    # activations with TF32 tensor-core matmuls (finalize: long runs that diverged in bf16 trained through in fp32,
    # BENCHMARKS.md "Finalize over 70,000 steps"); "fp32": no tensor-core rounding at all (slowest). The CPU
    # always trains in fp32.
    precision: str = "bf16"
