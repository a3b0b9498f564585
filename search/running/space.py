"""The search space: the one place that calls ``trial.suggest_*``.

The space is declared as data (a list of ``Param``), so the same declaration drives sampling, the
``search space`` table and its JSON, and the checks on warm-start configurations. A parameter with a
condition is sampled only when the condition holds on the parameters sampled before it (Optuna's
define-by-run conditional spaces): conformer settings exist only in conformer trials, margin settings
only with a margin loss.

d_model choices are all multiples of 16 and nhead choices are powers of two up to 16, so every
(d_model, nhead) pair is valid: nhead always divides d_model, with no rejected samples.

Two profiles: ``full`` (GPU) and ``cpu``, a narrower range for a CPU, where a 6-layer d_model 512
trial would take longer than a whole default study.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Callable, Sequence

import optuna

from model import ENCODERS, HEADS, LOSSES, POOLINGS, ModelConfig
from search.running import schedule
from model import TrainConfig

PROFILES = ("full", "cpu")


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "categorical", "int" or "float"
    choices: Sequence | None = None  # categorical
    low: float | None = None  # int / float
    high: float | None = None
    log: bool = False
    step: int | None = None  # int only
    when: Callable[[dict], bool] | None = None  # sampled only if when(params so far)
    condition: str = ""  # the same condition in words, for `search space`

    def applies(self, params: dict) -> bool:
        return self.when is None or self.when(params)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        if self.kind == "categorical":
            return optuna.distributions.CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def describe(self) -> dict:
        entry = {"name": self.name, "type": self.kind}
        if self.kind == "categorical":
            entry["choices"] = list(self.choices)
        else:
            entry.update(low=self.low, high=self.high, log=self.log)
            if self.step:
                entry["step"] = self.step
        entry["condition"] = self.condition or "always"
        return entry


def _is(name: str, *values) -> Callable[[dict], bool]:
    return lambda p: p.get(name) in values


class Space(list):
    """The parameters of one profile, in sampling order: a list of ``Param`` that knows its profile (the warm
    start adds the CPU's own configurations to a cpu space only) and the user's changes to it (None: none)."""

    def __init__(self, params: Sequence[Param], profile: str, changes: dict | None = None) -> None:
        super().__init__(params)
        self.profile = profile
        self.changes = changes


def build_space(profile: str = "full", changes: dict | None = None) -> Space:
    """The parameters, in sampling order (a condition may only look at parameters before it); ``changes``: the
    user's narrowing of some of them, checked already (search/running/user_space.py ``resolve``, stored with the study)."""
    space = _profile_space(profile)
    if not changes:
        return space
    return Space([_narrowed(p, changes[p.name]) if p.name in changes else p for p in space], profile, changes)


def _narrowed(p: Param, change: dict) -> Param:
    if "choices" in change:
        return replace(p, choices=list(change["choices"]))
    return replace(p, low=change["low"], high=change["high"])


def _profile_space(profile: str) -> Space:
    if profile not in PROFILES:
        raise ValueError(f"unknown space profile {profile!r}; choose from {', '.join(PROFILES)}")
    cpu = profile == "cpu"
    margin_losses = [n for n in LOSSES.names() if n != "ce"]
    return Space([
        Param("encoder", "categorical", ENCODERS.names()),
        Param("d_model", "categorical", [32, 48, 64, 80] if cpu else [80, 128, 160, 256, 384, 512]),
        # On a CPU the cost of a trial is mostly attention and convolution per layer: deeper models and many
        # small heads run several times slower than the sample model, and one of them promoted to its whole
        # budget took most of a default study (BENCHMARKS.md, "Search space profiles"). The cpu profile keeps
        # one layer and up to 4 heads.
        Param("nhead", "categorical", [1, 2, 4] if cpu else [1, 2, 4, 8, 16]),
        Param("layers", "int", low=1, high=1 if cpu else 6),
        Param("ffn", "categorical", [128, 256] if cpu else [256, 512, 1024, 2048]),
        Param("dropout", "float", low=0.0, high=0.3),
        Param("norm_first", "categorical", [False, True], when=_is("encoder", "transformer"),
              condition="encoder == transformer"),
        Param("conformer_kernel", "categorical", [7, 15, 31], when=_is("encoder", "conformer"),
              condition="encoder == conformer"),
        Param("subsampling", "categorical", [False, True], when=_is("encoder", "conformer"),
              condition="encoder == conformer"),
        Param("pooling", "categorical", POOLINGS.names()),
        Param("head", "categorical", HEADS.names()),
        Param("head_hidden", "categorical", [80, 128] if cpu else [80, 256, 512, 1024], when=_is("head", "mlp"),
              condition="head == mlp"),
        Param("loss", "categorical", LOSSES.names()),
        Param("label_smoothing", "float", low=0.0, high=0.2, when=_is("loss", "ce"), condition="loss == ce"),
        Param("margin", "float", low=0.05, high=0.4, when=_is("loss", *margin_losses),
              condition="loss in " + ", ".join(margin_losses)),
        Param("scale", "float", low=10.0, high=40.0, when=_is("loss", *margin_losses),
              condition="loss in " + ", ".join(margin_losses)),
        Param("time_masks", "int", low=0, high=2),
        Param("time_mask_width", "int", low=5, high=40, when=lambda p: p["time_masks"] > 0, condition="time_masks > 0"),
        Param("freq_masks", "int", low=0, high=2),
        Param("freq_mask_width", "int", low=2, high=10, when=lambda p: p["freq_masks"] > 0, condition="freq_masks > 0"),
        # A CPU trial is a few hundred steps, where a small learning rate leaves a model near chance (README, "How
        # hard it is"): the cpu profile keeps the upper part of the range.
        Param("lr", "float", low=5e-4 if cpu else 1e-4, high=3e-3, log=True),
        Param("weight_decay", "float", low=1e-4, high=0.1, log=True),
        Param("batch_size", "categorical", [32] if cpu else [32, 64, 128]),
        Param("segment", "int", low=128, high=128 if cpu else 384, step=32),
    ], profile)


def suggest(trial: optuna.Trial, space: list[Param]) -> dict:
    """Sample one configuration's parameters from the trial (the only ``suggest_*`` calls)."""
    params: dict = {}
    for p in space:
        if not p.applies(params):
            continue
        if p.kind == "categorical":
            params[p.name] = trial.suggest_categorical(p.name, list(p.choices))
        elif p.kind == "int":
            params[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log, step=p.step or 1)
        else:
            params[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
    return params


def contains(space: list[Param], params: dict) -> bool:
    """Whether ``params`` is exactly a point of ``space`` (all applicable parameters, in range)."""
    return misfit(space, params) is None


def misfit(space: list[Param], params: dict) -> str | None:
    """Why ``params`` is not a point of ``space`` (the first parameter that does not fit, in words), or None."""
    expected: dict = {}
    for p in space:
        if p.applies(params):
            if p.name not in params:
                return f"{p.name} missing"
            if not _in_range(p, params[p.name]):
                allowed = (", ".join(map(str, p.choices)) if p.kind == "categorical"
                           else f"{p.low:g} .. {p.high:g}" + (f" step {p.step}" if p.step else ""))
                return f"{p.name} {params[p.name]} is not in the space ({allowed})"
            expected[p.name] = params[p.name]
    extra = [k for k in params if k not in expected]
    return f"{extra[0]} is not a parameter of this space here" if extra else None


def _in_range(p: Param, value) -> bool:
    if p.kind == "categorical":
        return value in list(p.choices)
    if p.kind == "int" and (not isinstance(value, int) or (p.step and (value - p.low) % p.step)):
        return False
    return p.low <= value <= p.high


# Known configurations from ../shared/HW04.md ("What scores what"), run first in a new study (warm start),
# in the order of their published HW04 scores there, best first: a search cut short has tried the strongest
# known points first (BENCHMARKS.md, "Search space profiles"). The sample code runs last: its score is the
# reference every study prints beside its best. Where a write-up leaves a setting open (the d160 Conformer's
# heads and kernel), the space's middle value stands in.
_COMMON = dict(dropout=0.1, loss="ce", label_smoothing=0.0, time_masks=0, freq_masks=0, lr=1e-3,
               weight_decay=0.01, batch_size=32, segment=128)
KNOWN_CONFIGS = {
    # ymc039: torchaudio-style Conformer, d 512, 16 heads, ffn 2048, 1 layer, mean pool, linear head
    "conformer-d512-h16-linear": dict(encoder="conformer", d_model=512, nhead=16, layers=1, ffn=2048,
                                      conformer_kernel=31, subsampling=False, pooling="mean", head="linear",
                                      **_COMMON),
    # lordleeber: Conformer d 160, 2 layers, + self-attention pooling
    "conformer-d160-2layer-sap": dict(encoder="conformer", d_model=160, nhead=4, layers=2, ffn=512,
                                      conformer_kernel=15, subsampling=False, pooling="sap", head="linear",
                                      **_COMMON),
    # Hoper-J: one Conformer block (d 512, 8 heads, kernel 31) with a single linear head
    "conformer-1block-linear": dict(encoder="conformer", d_model=512, nhead=8, layers=1, ffn=2048,
                                    conformer_kernel=31, subsampling=False, pooling="mean", head="linear", **_COMMON),
    # lordleeber: post-norm d 256 x 3 layers diverges at lr 1e-3; pre-norm fixes it
    "prenorm-d256-3layer": dict(encoder="transformer", d_model=256, nhead=4, layers=3, ffn=1024, norm_first=True,
                                pooling="mean", head="linear", **_COMMON),
    # Hoper-J: the partial grid's best, d_model 512, nhead 16, head 512-1024-600
    "medium-d512-h16": dict(encoder="transformer", d_model=512, nhead=16, layers=1, ffn=2048, norm_first=False,
                            pooling="mean", head="mlp", head_hidden=1024, **_COMMON),
    # the HW04 sample code as given
    "sample-code": dict(encoder="transformer", d_model=80, nhead=2, layers=1, ffn=256, norm_first=False,
                        pooling="mean", head="mlp", head_hidden=80, **_COMMON),
}


# The CPU's own warm start, run first in a study of the cpu profile only (a GPU study's warm start is the table
# above). A CPU trial is a few hundred steps, where the published configurations have barely started to learn
# (README, "How hard it is"). What does learn that fast is what a linear classifier on each utterance's mean and
# standard deviation of log-mel uses: the sample code with attentive statistics pooling (a weighted mean and
# standard deviation of its frames) and a linear head is that classifier on learned frames, here at the top of the
# cpu profile's learning-rate range and without dropout (a short run has little to regularise); how it scored:
# BENCHMARKS.md, "Search space profiles". It runs first: the trial that starts a bracket is
# never pruned, so a new CPU study's best is at least its score.
CPU_CONFIGS = {
    "cpu-sample-code-stats-pooling": {**{k: v for k, v in KNOWN_CONFIGS["sample-code"].items() if k != "head_hidden"},
                                      "pooling": "asp", "head": "linear", "lr": 3e-3, "dropout": 0.0},
}


def warm_start_configs(space: list[Param]) -> dict[str, dict]:
    """The configurations a new study of this space runs first: on a cpu space, CPU_CONFIGS; then the known
    configurations that are points of the space (a cpu profile holds fewer), in their order."""
    cpu = CPU_CONFIGS if getattr(space, "profile", None) == "cpu" else {}
    return {name: params for name, params in {**cpu, **KNOWN_CONFIGS}.items() if contains(space, params)}


def build_configs(params: dict, n_mels: int, n_classes: int, steps: int, seed: int,
                  eval_every: int | None = None, eval_steps: Sequence[int] = ()) -> tuple[ModelConfig, TrainConfig]:
    """Turn sampled parameters into the model and training configurations for ``steps`` steps, validating at
    ``eval_steps`` (a trial: search/running/schedule.py trial_steps) or else every ``eval_every`` steps (default
    steps/8) and at the end."""
    model_keys = set(ModelConfig.__dataclass_fields__)
    model_cfg = ModelConfig.from_dict({**{k: v for k, v in params.items() if k in model_keys},
                                       "n_mels": n_mels, "n_classes": n_classes})
    train_cfg = TrainConfig(
        steps=steps, batch_size=params["batch_size"], segment=params["segment"], lr=params["lr"],
        weight_decay=params["weight_decay"], warmup_steps=schedule.warmup_steps(steps),
        eval_every=eval_every or schedule.min_resource(steps), eval_steps=tuple(eval_steps), seed=seed,
    )
    return model_cfg, train_cfg


def as_run_on(train_cfg: TrainConfig, device_type: str) -> TrainConfig:
    """The training configuration as it runs on a device of ``device_type``: a CPU steps eagerly in fp32
    (search/training/train_step.py), so what a CPU trial or finalize records is that, not the CUDA defaults it never used."""
    if device_type == "cuda":
        return train_cfg
    return dataclasses.replace(train_cfg, cuda_graph=False, precision="fp32")


def describe(space: list[Param]) -> list[dict]:
    return [p.describe() for p in space]
