"""A faithful re-implementation of the HW04 sample code's training loop (../shared/HW04.md), the baseline
our trainer is measured against. Only what the timing needs: no validation, no checkpoints.

- Dataset: one ``torch.load`` per utterance per step, a random 128-frame crop (shorter ones whole);
- DataLoader: batch 32, 8 workers, pin_memory, shuffle, drop_last, ``pad_sequence(padding_value=-20)``;
- Model: Linear(40, d) prenet, one sequence-first post-norm TransformerEncoderLayer(d, nhead,
  dim_feedforward=256, dropout 0.1), mean over time, Linear(d, d) -> Sigmoid -> Linear(d, 600);
- AdamW lr 1e-3, cosine schedule with 1,000 warm-up steps, float32, ``.item()`` of loss and accuracy
  every step.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader, Dataset


class SampleDataset(Dataset):
    def __init__(self, data_dir: str, segment_len: int = 128) -> None:
        self.data_dir = Path(data_dir)
        self.segment_len = segment_len
        mapping = json.loads((self.data_dir / "mapping.json").read_text())
        metadata = json.loads((self.data_dir / "metadata.json").read_text())["speakers"]
        self.data = [(u["feature_path"], mapping["speaker2id"][s]) for s, utts in metadata.items() for u in utts]
        self.n_speakers = len(mapping["speaker2id"])

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index):
        path, speaker = self.data[index]
        mel = torch.load(self.data_dir / path, weights_only=True)
        if len(mel) > self.segment_len:
            start = random.randint(0, len(mel) - self.segment_len)
            mel = mel[start:start + self.segment_len]
        return torch.FloatTensor(mel), torch.LongTensor([speaker])


def collate_batch(batch):
    mel, speaker = zip(*batch)
    mel = pad_sequence(mel, batch_first=True, padding_value=-20)
    return mel, torch.FloatTensor(speaker).long()


class SampleClassifier(nn.Module):
    def __init__(self, d_model: int = 80, nhead: int = 2, n_spks: int = 600, dropout: float = 0.1) -> None:
        super().__init__()
        self.prenet = nn.Linear(40, d_model)
        self.encoder_layer = nn.TransformerEncoderLayer(d_model=d_model, dim_feedforward=256, nhead=nhead,
                                                        dropout=dropout)
        self.pred_layer = nn.Sequential(nn.Linear(d_model, d_model), nn.Sigmoid(), nn.Linear(d_model, n_spks))

    def forward(self, mels):
        out = self.prenet(mels)  # (batch, length, d_model)
        out = out.permute(1, 0, 2)  # (length, batch, d_model): the layer is sequence-first
        out = self.encoder_layer(out)
        out = out.transpose(0, 1)
        stats = out.mean(dim=1)
        return self.pred_layer(stats)


def cosine_schedule(optimizer, warmup: int, total: int):
    def factor(step):
        if step < warmup:
            return float(step) / float(max(1, warmup))
        progress = float(step - warmup) / float(max(1, total - warmup))
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * 0.5 * 2.0 * progress)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def time_sample_loop(data_dir: str, d_model: int, nhead: int, steps: int, warmup_steps: int = 50,
                     batch_size: int = 32, workers: int = 8, device: str = "cuda") -> dict:
    """Steps/s of the sample loop over ``steps`` steps after ``warmup_steps`` untimed ones."""
    dataset = SampleDataset(data_dir)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=True, collate_fn=collate_batch)
    model = SampleClassifier(d_model, nhead, dataset.n_speakers).to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = cosine_schedule(optimizer, 1000, 70_000)
    iterator = iter(loader)

    def step():
        nonlocal iterator
        try:
            mels, labels = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            mels, labels = next(iterator)
        mels, labels = mels.to(device), labels.to(device)
        outs = model(mels)
        loss = criterion(outs, labels)
        accuracy = torch.mean((outs.argmax(1) == labels).float())
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        return loss.item(), accuracy.item()  # the host sync every step, as in the sample

    for _ in range(warmup_steps):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - started
    return {"steps_per_second": steps / elapsed, "segments_per_second": steps * batch_size / elapsed}
