"""The search space keeps the promises of search/space.py's docstring: every (d_model, nhead) pair it can
sample makes a model, conditional parameters appear exactly when their condition holds, the cpu profile is
a narrower copy of the full one, and the warm-start configurations are points of the space."""

from __future__ import annotations

import itertools

import optuna
import pytest
import torch

from model import ENCODERS, HEADS, LOSSES, POOLINGS, ModelConfig, build_model
from search.space import (CPU_CONFIGS, KNOWN_CONFIGS, PROFILES, build_configs, build_space, contains, suggest,
                          warm_start_configs)


def _by_name(profile: str) -> dict:
    return {p.name: p for p in build_space(profile)}


def _samples(profile: str, n: int, seed: int = 0) -> list[dict]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    space = build_space(profile)
    samples = []
    for _ in range(n):
        trial = study.ask()
        samples.append(suggest(trial, space))
        study.tell(trial, 0.0)
    return samples


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.mark.parametrize("profile", PROFILES)
def test_every_d_model_nhead_pair_makes_a_working_model_with_either_encoder(profile):
    """space.py: 'every (d_model, nhead) pair is valid: nhead always divides d_model'."""
    space = _by_name(profile)
    pairs = list(itertools.product(space["d_model"].choices, space["nhead"].choices))
    assert len(pairs) == len(space["d_model"].choices) * len(space["nhead"].choices) > 1
    x, mask = torch.randn(1, 9, 40), torch.ones(1, 9, dtype=torch.bool)
    for (d_model, nhead), encoder in itertools.product(pairs, ENCODERS.names()):
        model = build_model(ModelConfig(encoder=encoder, d_model=d_model, nhead=nhead, ffn=32, n_classes=3)).eval()
        with torch.no_grad():
            assert model(x, mask).shape == (1, 3), (d_model, nhead, encoder)


# Each conditional parameter and when it must be present, written out here independently of space.py.
CONDITIONS = {
    "norm_first": lambda p: p["encoder"] == "transformer",
    "conformer_kernel": lambda p: p["encoder"] == "conformer",
    "subsampling": lambda p: p["encoder"] == "conformer",
    "head_hidden": lambda p: p["head"] == "mlp",
    "label_smoothing": lambda p: p["loss"] == "ce",
    "margin": lambda p: p["loss"] in ("am", "aam"),
    "scale": lambda p: p["loss"] in ("am", "aam"),
    "time_mask_width": lambda p: p["time_masks"] > 0,
    "freq_mask_width": lambda p: p["freq_masks"] > 0,
}


@pytest.mark.parametrize("profile", PROFILES)
def test_conditional_parameters_are_sampled_exactly_when_their_condition_holds(profile):
    space = build_space(profile)
    conditional = {p.name for p in space if p.when is not None}
    assert conditional == set(CONDITIONS)
    samples = _samples(profile, 60)
    for params in samples:
        assert contains(space, params), params
        for name, holds in CONDITIONS.items():
            assert (name in params) == holds(params), (name, params)
        assert set(params) == {p.name for p in space} - {n for n in CONDITIONS if not CONDITIONS[n](params)}
    for name, holds in CONDITIONS.items():  # 60 random samples see every condition both ways
        assert {holds(p) for p in samples} == {True, False}, name


@pytest.mark.parametrize("profile", PROFILES)
def test_a_condition_reads_only_parameters_sampled_before_it(profile):
    """Define-by-run: a condition is evaluated on the parameters so far, so it may look only backwards."""
    space = build_space(profile)
    for i, p in enumerate(space):
        if p.when is not None:
            before = {q.name for q in space[:i]}
            assert p.condition.split()[0] in before, (p.name, p.condition)


def test_the_component_choices_are_the_registries():
    space = _by_name("full")
    assert list(space["encoder"].choices) == ENCODERS.names()
    assert list(space["pooling"].choices) == POOLINGS.names()
    assert list(space["head"].choices) == HEADS.names()
    assert list(space["loss"].choices) == LOSSES.names()


# Where the cpu profile offers sizes the full one does not: smaller models, not a subset of the full space.
CPU_ONLY = {"d_model": {32, 48, 64}, "ffn": {128}, "head_hidden": {128}}


def test_the_cpu_profile_has_the_same_parameters_over_narrower_and_smaller_ranges():
    """space.py: 'cpu, a narrower range for a CPU'. Same parameters, kinds and conditions; never more choices,
    a wider range or a larger value; and, apart from the smaller sizes in CPU_ONLY, inside the full space."""
    full, cpu = build_space("full"), build_space("cpu")
    assert [p.name for p in cpu] == [p.name for p in full]
    for small, big in zip(cpu, full):
        assert (small.kind, small.log, small.step, small.condition) == (big.kind, big.log, big.step, big.condition)
        if small.kind == "categorical":
            assert len(small.choices) <= len(big.choices), small.name
            assert max(small.choices) <= max(big.choices), small.name
            assert set(small.choices) - set(big.choices) == CPU_ONLY.get(small.name, set()), small.name
        else:
            assert big.low <= small.low <= small.high <= big.high, small.name
    narrower = {s.name for s, b in zip(cpu, full) if s.describe() != b.describe()}
    assert narrower == {"d_model", "nhead", "layers", "ffn", "head_hidden", "lr", "batch_size", "segment"}
    full_by_name = {p.name: p for p in full}
    for params in _samples("cpu", 40, seed=1):
        outside = {k for k, v in params.items() if k in CPU_ONLY and v in CPU_ONLY[k]}
        if not outside:
            assert contains(full, params), params
        else:
            assert not contains(full, params)
        assert all(full_by_name[k].applies(params) for k in params)  # same conditions


def test_every_known_configuration_is_a_point_of_the_full_space_and_builds():
    """The warm start runs them first; one that is not a point of the space would be silently dropped."""
    full = build_space("full")
    assert warm_start_configs(full) == KNOWN_CONFIGS
    cpu_known = warm_start_configs(build_space("cpu"))
    assert "sample-code" in cpu_known and set(cpu_known) - set(CPU_CONFIGS) < set(KNOWN_CONFIGS)
    for params in [*KNOWN_CONFIGS.values(), *CPU_CONFIGS.values()]:
        model_cfg, _ = build_configs(params, n_mels=40, n_classes=600, steps=100, seed=0)
        build_model(model_cfg)


def test_a_cpu_study_starts_with_the_cpu_configurations_and_a_gpu_study_never_runs_them():
    """The CPU's own warm start runs first on the cpu profile, the sample code last (its score is the reference a
    study prints beside its best); the full profile's warm start is the published table alone, in its order."""
    cpu = build_space("cpu")
    assert list(warm_start_configs(cpu)) == [*CPU_CONFIGS, "sample-code"]
    assert all(contains(cpu, params) for params in CPU_CONFIGS.values())
    assert list(warm_start_configs(build_space("full"))) == list(KNOWN_CONFIGS)
    assert not set(CPU_CONFIGS) & set(warm_start_configs(build_space("full")))


def test_sampled_configurations_build_models():
    for params in _samples("cpu", 20, seed=2):
        model_cfg, train_cfg = build_configs(params, n_mels=40, n_classes=7, steps=100, seed=0)
        assert build_model(model_cfg).cfg == model_cfg
        assert (train_cfg.batch_size, train_cfg.segment, train_cfg.lr) == (
            params["batch_size"], params["segment"], params["lr"])


def test_an_unknown_profile_is_named_with_the_choices():
    with pytest.raises(ValueError, match="^unknown space profile 'gpu'; choose from full, cpu$"):
        build_space("gpu")
