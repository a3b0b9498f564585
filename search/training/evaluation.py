"""Full-length evaluation: validation accuracy, predictions and class probabilities on whole utterances.

Validation runs on full-length utterances, batched by length with padding masks (random crops understate the
accuracy), in batches of a few fixed shapes with one host sync per evaluation (``EvalBatches``).
"""

from __future__ import annotations

import torch

from data.bank import FeatureBank
from model import Classifier
from search.training.train_step import autocast


def bucket_length(frames: int) -> int:
    """The padded length of an evaluation batch whose longest utterance has ``frames`` frames: rounded up to
    8 lengths per octave (at most 12.5% of padding beyond the longest), multiples of 8."""
    frames = max(1, frames)
    granule = max(8, 1 << max(0, frames.bit_length() - 4))
    return -(-frames // granule) * granule


# Attention in a batch of B utterances padded to T frames holds (B, H, T, T) scores, and more where no fused kernel
# applies: the conformer's relative-position bias always, and a transformer's math fallback when the head size is
# not a multiple of 8 (d_model 80 with 4 or more heads, 160 with 8 or more). At max_frames = B * T that grows as T:
# HW04's longest validation utterances (up to 7,193 frames) gave 8 x 16 x 7,680^2 scores, 15 GB in bf16 per copy,
# and such configurations ran out of memory on an 80 GB H100 even alone (BENCHMARKS.md, HW04-Bench). So past this
# length a batch holds at most max_frames * ATTENTION_LENGTH / T^2 utterances: no larger attention than a batch of
# ATTENTION_LENGTH-frame utterances, which every trial already evaluates (HW04's 95th percentile is 1,338 frames).
ATTENTION_LENGTH = 1024


def batch_size(padded: int, max_frames: int, attention_length: int = ATTENTION_LENGTH) -> int:
    """Utterances in an evaluation batch padded to ``padded`` frames: at most ``max_frames`` frames, and at most
    ``max_frames * attention_length`` frames squared (the attention's size per head); at least one."""
    return max(1, min(max_frames // padded, max_frames * attention_length // padded**2))


class EvalBatches:
    """Full-length evaluation of utterances ``ids``, planned once (per trial) and run with no host sync.

    Utterances sorted by length, longest first, fill batches in turn. A batch is padded to its longest
    utterance's ``bucket_length`` T and holds ``batch_size(T)`` utterances (``max_frames // T``, fewer past
    ``attention_length`` frames), so its shape is a function of T alone, from a small fixed set: the same at every
    evaluation, in every trial on the same data, so the same kernels (and cuBLAS/cuDNN choices) serve them all.
    The last batch is filled up to a power of two with copies of its first utterance, which count for nothing.
    Padding is masked (equal to one utterance at a time; tests/test_train.py checks it against the earlier
    per-batch evaluation).

    The plan reads the lengths on the host once; an evaluation then only launches work: each batch's correct
    predictions are added up on the device and the total is read once, at the end (``accuracy``): no sync
    per batch, and no new shape per batch.
    """

    def __init__(self, bank: FeatureBank, ids: torch.Tensor, max_frames: int = 1 << 16,
                 attention_length: int = ATTENTION_LENGTH) -> None:
        self.bank, self.count = bank, len(ids)
        self.labels = bank.labels[ids.to(bank.device)]
        host_ids = ids.cpu()
        lengths = bank.lengths.cpu()[host_ids]
        order = torch.argsort(lengths, descending=True, stable=True)
        # (ids (rows,), slots (n,): their positions in ``ids``, n real rows, padded length T, zeros (rows,))
        self.batches: list[tuple[torch.Tensor, torch.Tensor, int, int, torch.Tensor]] = []
        start = 0
        while start < len(order):
            padded = bucket_length(int(lengths[order[start]]))
            size = batch_size(padded, max_frames, attention_length)
            take = order[start:start + size]
            n = len(take)
            rows = size if n == size else min(size, 1 << (n - 1).bit_length())
            batch = torch.cat([host_ids[take], host_ids[take[:1]].expand(rows - n)])
            self.batches.append((batch.to(bank.device), take.to(bank.device), n, padded,
                                 torch.zeros(rows, dtype=torch.long, device=bank.device)))
            start += n

    def logits(self, model: Classifier):
        """Yield ``(slots, logits)``: logits (n, n_classes) of the utterances at positions ``slots`` of ``ids``,
        at full length. The model is in eval mode meanwhile; callers run it under ``torch.no_grad``."""
        was_training = model.training
        model.eval()
        try:
            for batch, slots, n, padded, starts in self.batches:
                x, mask = self.bank.gather(batch, starts, padded)
                with autocast(self.bank.device):
                    logits = model(x, mask)
                yield slots, logits[:n]
        finally:
            model.train(was_training)

    @torch.no_grad()
    def correct(self, model: Classifier) -> torch.Tensor:
        """The number of correct predictions, a device tensor: nothing is read back."""
        total = torch.zeros((), dtype=torch.long, device=self.bank.device)
        for slots, logits in self.logits(model):
            total += (logits.argmax(-1) == self.labels[slots]).sum()
        return total

    def accuracy(self, model: Classifier) -> float:
        """Full-length accuracy: the one host sync of an evaluation."""
        return self.correct(model).item() / max(1, self.count)


@torch.no_grad()
def predict(model: Classifier, bank: FeatureBank, ids: torch.Tensor, max_frames: int = 1 << 16) -> torch.Tensor:
    """Predicted labels for utterances ``ids`` at full length, in the order of ``ids``."""
    predictions = torch.empty(len(ids), dtype=torch.long, device=bank.device)
    for slots, logits in EvalBatches(bank, ids, max_frames).logits(model):
        predictions[slots] = logits.argmax(-1)
    return predictions


@torch.no_grad()
def predict_proba(model: Classifier, bank: FeatureBank, ids: torch.Tensor, max_frames: int = 1 << 16) -> torch.Tensor:
    """Class probabilities (softmax of the logits, float32, shape (len(ids), n_speakers)) for utterances
    ``ids`` at full length, in the order of ``ids``: what an ensemble averages."""
    probabilities = torch.zeros(len(ids), bank.n_speakers, dtype=torch.float32, device=bank.device)
    for slots, logits in EvalBatches(bank, ids, max_frames).logits(model):
        probabilities[slots] = torch.softmax(logits.float(), dim=-1)
    return probabilities


def evaluate(model: Classifier, bank: FeatureBank, ids: torch.Tensor, max_frames: int = 1 << 16) -> float:
    """Full-length accuracy on utterances ``ids`` (``EvalBatches``; train() plans its batches once)."""
    return EvalBatches(bank, ids, max_frames).accuracy(model)
