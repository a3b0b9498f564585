"""The sample-code model made correct: its size, and padding never changing its output."""

from __future__ import annotations

import torch

from model import ModelConfig, build_model, count_parameters


def test_sample_config_has_the_sample_codes_parameter_count():
    assert count_parameters(build_model(ModelConfig())) == 125_896  # ../shared/HW04.md


def _padded(x: torch.Tensor, extra: int):
    batch, frames, bins = x.shape
    mask = torch.ones(batch, frames, dtype=torch.bool)
    x_pad = torch.cat([x, torch.full((batch, extra, bins), -20.0)], 1)
    mask_pad = torch.cat([mask, torch.zeros(batch, extra, dtype=torch.bool)], 1)
    return mask, x_pad, mask_pad


def test_transformer_output_unchanged_by_extra_padding():
    torch.manual_seed(0)
    for norm_first in (False, True):
        model = build_model(ModelConfig(n_classes=7, layers=2, norm_first=norm_first)).eval()
        x = torch.randn(3, 50, 40)
        mask, x_pad, mask_pad = _padded(x, 37)
        with torch.no_grad():
            torch.testing.assert_close(model(x_pad, mask_pad), model(x, mask), rtol=1e-5, atol=1e-5)


def test_mixed_lengths_in_a_batch_equal_each_alone():
    torch.manual_seed(1)
    model = build_model(ModelConfig(n_classes=5)).eval()
    lengths = [12, 40, 25]
    utterances = [torch.randn(n, 40) for n in lengths]
    x = torch.full((3, 40, 40), -20.0)
    mask = torch.zeros(3, 40, dtype=torch.bool)
    for i, u in enumerate(utterances):
        x[i, : len(u)] = u
        mask[i, : len(u)] = True
    with torch.no_grad():
        batched = model(x, mask)
        alone = torch.cat([model(u[None], torch.ones(1, len(u), dtype=torch.bool)) for u in utterances])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
