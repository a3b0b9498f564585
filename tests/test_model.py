"""The sample-code model made correct: its size and weight names, padding never changing its output, and
``build_model`` refusing a configuration that can't make a model, in one line naming the field."""

from __future__ import annotations

import pytest
import torch

from model import ModelConfig, build_model, count_parameters


def test_sample_config_has_the_sample_codes_parameter_count():
    assert count_parameters(build_model(ModelConfig())) == 125_896  # ../shared/HW04.md


def test_weight_names_are_those_saved_checkpoints_hold():
    """Checkpoints store the state dict by name: renaming a layer would make every saved model unloadable."""
    assert list(build_model(ModelConfig()).state_dict()) == [
        "prenet.weight", "prenet.bias",
        *(f"encoder.layers.layers.0.{n}" for n in (
            "self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj.weight",
            "self_attn.out_proj.bias", "linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias",
            "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")),
        "head.0.weight", "head.0.bias", "classify.linear.weight", "classify.linear.bias",
    ]
    assert [n for n in build_model(ModelConfig(head="linear", loss="aam")).state_dict() if "encoder" not in n] == [
        "prenet.weight", "prenet.bias", "classify.weight"]


@pytest.mark.parametrize("change, message", [
    (dict(d_model=64, nhead=3), "nhead 3 must divide d_model 64"),
    (dict(nhead=0), "nhead must be a positive integer, got 0"),
    (dict(layers=0), "layers must be a positive integer, got 0"),
    (dict(d_model=80.0), "d_model must be a positive integer, got 80.0"),
    (dict(n_classes=True), "n_classes must be a positive integer, got True"),
    (dict(dropout=1.5), "dropout must be a number from 0 to 1, got 1.5"),
    (dict(encoder="lstm"), "unknown encoder 'lstm'; choose from transformer, conformer"),
])
def test_an_invalid_config_is_refused_in_one_line_naming_the_field(change, message):
    with pytest.raises(ValueError) as caught:
        build_model(ModelConfig(**change))
    assert str(caught.value) == message


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
