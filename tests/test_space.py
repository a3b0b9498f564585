"""The search space keeps the promises of search/running/space.py's docstring: every (d_model, nhead) pair it can
sample makes a model, conditional parameters appear exactly when their condition holds, the cpu profile is
a narrower copy of the full one, and the warm-start configurations are points of the space."""

from __future__ import annotations

import itertools

import optuna
import pytest
import torch

from model import ENCODERS, HEADS, LOSSES, POOLINGS, ModelConfig, build_model
from search.running.space import (CPU_CONFIGS, KNOWN_CONFIGS, PROFILES, build_configs, build_space, contains, suggest,
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


# --- the user's space: a space file, --set, --range (search/running/user_space.py) ----------------------------------

def _user_space(profile: str = "cpu", file=None, sets=(), ranges=()):
    from search.running.user_space import SpaceRequest, resolve

    changes = resolve(SpaceRequest(file, tuple(sets), tuple(ranges)), profile)
    return changes, build_space(profile, changes)


def test_set_and_range_narrow_the_profile_and_every_sample_stays_inside():
    changes, space = _user_space(sets=["encoder=conformer", "pooling=SAP,asp", "layers=1"],
                                 ranges=["lr=1e-3:2e-3", "segment=128:128"])
    assert changes == {"encoder": {"choices": ["conformer"]}, "layers": {"low": 1, "high": 1},
                       "pooling": {"choices": ["sap", "asp"]}, "lr": {"low": 1e-3, "high": 2e-3},
                       "segment": {"low": 128, "high": 128}}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(30):
        trial = study.ask()
        params = suggest(trial, space)
        study.tell(trial, 0.0)
        assert params["encoder"] == "conformer" and params["pooling"] in ("sap", "asp")
        assert 1e-3 <= params["lr"] <= 2e-3 and "norm_first" not in params
        assert contains(space, params) and contains(build_space("cpu"), params)
    # the known configurations outside the user's space are not its warm starts
    assert warm_start_configs(space) == {}
    assert list(warm_start_configs(_user_space(sets=["pooling=asp"])[1])) == list(CPU_CONFIGS)


def test_a_space_file_in_yaml_or_json_gives_the_same_space_as_the_options(tmp_path):
    from search.running.user_space import read_space_file

    (tmp_path / "s.yaml").write_text("profile: cpu\nparameters:\n  encoder: conformer\n  pooling: [sap, asp]\n"
                                     "  lr: {low: 1e-3, high: 2e-3}\n  norm_first: false\n")
    (tmp_path / "s.json").write_text('\ufeff{"parameters": {"encoder": ["conformer"], "pooling": ["sap", "asp"], '
                                     '"lr": {"low": 0.001, "high": 0.002}, "norm_first": false}}')
    from_options = _user_space(sets=["encoder=conformer", "pooling=sap,asp", "norm_first=false"],
                               ranges=["lr=0.001:0.002"])[0]
    assert read_space_file(tmp_path / "s.yaml")[0] == "cpu" and read_space_file(tmp_path / "s.json")[0] is None
    assert _user_space(file=tmp_path / "s.yaml")[0] == _user_space(file=tmp_path / "s.json")[0] == from_options
    assert from_options["norm_first"] == {"choices": [False]}


@pytest.mark.parametrize("args, expected", [
    (["--set", "encodr=conformer"], "Error: --set encodr=conformer: no parameter 'encodr' in the space (did you mean "
                                    "encoder?)"),
    (["--set", "encoder=lstm"], "Error: --set encoder=lstm: 'lstm' is not a choice of encoder in the cpu profile "
                                "(choices: transformer, conformer)"),
    (["--set", "d_model=512"], "Error: --set d_model=512: '512' is not a choice of d_model in the cpu profile "
                               "(choices: 32, 48, 64, 80)"),
    (["--range", "lr=1e-5:1e-3"], "Error: --range lr=1e-5:1e-3: lr: 1e-05:0.001 is outside the cpu profile's range "
                                  "0.0005 .. 0.003"),
    (["--range", "lr=2e-3:1e-3"], "Error: --range lr=2e-3:1e-3: lr: the range 0.002:0.001 is inverted"),
    (["--range", "segment=130:160", "--space", "full"], "Error: --range segment=130:160: segment: 130 is not on the "
                                                        "profile's grid"),
    (["--range", "encoder=1:2"], "Error: --range encoder=1:2: encoder is categorical"),
    (["--range", "lr=1e-3"], "Error: --range lr=1e-3: expected NAME=LOW:HIGH"),
    (["--set", "layers=1.5"], "Error: --set layers=1.5: layers takes whole numbers"),
    (["--set", "lr=nan"], "Error: --set lr=nan: lr: 'nan' is not a finite number"),
    (["--space", "bad.json"], "Error: bad.json: not valid JSON: Expecting property name enclosed in double quotes"),
    (["--space", "twice.json"], "Error: twice.json: not valid JSON: key 'encoder' given twice"),
    (["--space", "bad.yaml"], "Error: bad.yaml: not valid YAML"),
    (["--space", "other.yaml"], "Error: other.yaml: unknown key 'params' (a space file has profile, parameters)"),
    (["--space", "gpu.yaml"], "Error: gpu.yaml: profile 'gpu' is not one of full, cpu"),
    (["--space", "missing.json"], "Error: missing.json: no such file"),
    (["--space", "space.txt"], "Error: space.txt: a space file is .json, .yaml or .yml"),
])
def test_a_wrong_space_is_one_line_and_creates_nothing(args, expected, workdir):
    from tests.helpers import invoke, one_error_line

    (workdir / "bad.json").write_text('{"parameters": {"encoder": "conformer",}}')
    (workdir / "twice.json").write_text('{"parameters": {"encoder": "conformer", "encoder": "transformer"}}')
    (workdir / "bad.yaml").write_text("parameters: [encoder: {")
    (workdir / "other.yaml").write_text("params: {}")
    (workdir / "gpu.yaml").write_text("profile: gpu")
    (workdir / "space.txt").write_text("{}")
    line = one_error_line(invoke("run", "--trials", "1", "--study", "mine", "--device", "cpu", *args), alone=True)
    assert line.startswith(expected), line
    assert not (workdir / "studies").exists()  # no study, no log folder


def test_misfit_names_the_parameter_that_does_not_fit():
    from search.running.space import misfit

    space = _user_space(sets=["encoder=conformer"])[1]
    assert misfit(space, KNOWN_CONFIGS["sample-code"]) == "encoder transformer is not in the space (conformer)"
    assert misfit(build_space("cpu"), KNOWN_CONFIGS["sample-code"]) is None
    assert misfit(build_space("cpu"), KNOWN_CONFIGS["medium-d512-h16"]).startswith("d_model 512 is not in the space")
    assert misfit(build_space("cpu"), {**KNOWN_CONFIGS["sample-code"], "margin": 0.2}) == (
        "margin is not a parameter of this space here")


def test_a_study_keeps_its_space_and_shows_it(micro_dataset, workdir):
    """Created with --set/--range: the trials sample inside, the warm starts outside are skipped with a line, the
    study stores the space; `space --study`, `show` and the note say it; a resume needs no option, the same space
    again is accepted and another one refused."""
    import json

    from search.reporting.notes import study_note
    from search.running.study import load_study
    from tests.helpers import invoke, one_error_line

    (workdir / "conf.json").write_text(json.dumps({"parameters": {"encoder": "conformer", "layers": 1}}))
    args = ["--study", "conf", "--device", "cpu", "--budget", "8"]
    created = invoke("run", "--trials", "1", "--data", str(micro_dataset), "--space", "conf.json",
                     "--range", "lr=1e-3:2e-3", *args)
    assert created.exit_code == 0, created.output
    assert "space cpu (encoder conformer; layers 1; lr 0.001 .. 0.002)" in created.output
    assert ("warm start 'sample-code': skipped, it does not fit the study's space: encoder transformer is not in the "
            "space (conformer)") in created.output
    study = load_study("conf", None)
    assert study.user_attrs["space"] == {"encoder": {"choices": ["conformer"]}, "layers": {"low": 1, "high": 1},
                                         "lr": {"low": 0.001, "high": 0.002}}
    again = invoke("run", "--trials", "1", *args, "--set", "encoder=conformer", "--set", "layers=1",
                   "--range", "lr=0.001:0.002")  # the same space, written another way
    assert again.exit_code == 0, again.output
    trials = load_study("conf", None).get_trials()
    assert len(trials) == 2 and all(t.params["encoder"] == "conformer" and 1e-3 <= t.params["lr"] <= 2e-3
                                    for t in trials)
    refused = one_error_line(invoke("run", "--trials", "1", *args, "--set", "encoder=transformer"), alone=True)
    assert refused.startswith("Error: --space/--set/--range: study 'conf' was created with its own space (cpu "
                              "profile, encoder conformer; layers 1; lr 0.001 .. 0.002)")
    shown = invoke("space", "--study", "conf")
    assert shown.exit_code == 0 and shown.output.splitlines()[0] == (
        "study 'conf': profile cpu, encoder conformer; layers 1; lr 0.001 .. 0.002")
    assert any(line.split()[:3] == ["encoder", "categorical", "conformer"] for line in shown.output.splitlines())
    as_json = json.loads(invoke("space", "--study", "conf", "--json").output)
    assert as_json["changes"] == study.user_attrs["space"] and as_json["warm_start"] == {}
    assert "  space        cpu profile, encoder conformer; layers 1; lr 0.001 .. 0.002" in invoke(
        "show", "--study", "conf", "--trial", "0").output
    assert "**space**: cpu profile, encoder conformer; layers 1; lr 0.001 .. 0.002" in study_note(study)
