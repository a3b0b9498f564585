"""The user attributes a trial carries, in the shape users read them in: short and flat.

optuna-dashboard shows each user attribute as one line, ``key value``, in a box that neither wraps nor
widens: a nested dict (the resolved model configuration, hundreds of characters of JSON) ran off the trial
page.
So a trial's resolved configuration is stored one value per attribute, ``model.<field>`` and
``train.<field>``, and only where the sampled parameters do not already hold it (the dashboard shows those
in its Parameter box right above; Optuna stores them anyway): the data's sizes (``model.n_mels``,
``model.n_classes``), the schedule (``train.steps``, ``train.eval_steps``, ...) and the defaults the space
leaves alone. Scalar attributes are also what the dashboard's trial table can sort and filter by, and what
``study.trials_dataframe()`` turns into columns. The readable whole is the trial's note (search/reporting/notes.py).

``resolved_configs`` reads both this shape and the one of studies made before it (two dict attributes,
``model_config`` and ``train_config``).

The training loss is recorded beside the validation curve: ``train_loss_curve`` holds one value per
validation (the mean loss of the steps since the previous one), in step order, so its i-th value belongs
to the i-th step of the trial's intermediate values (both are written by the same evaluation callback).
"""

from __future__ import annotations

from dataclasses import fields

from optuna.trial import FrozenTrial

from model.config import ModelConfig, TrainConfig

GROUPS = (("model", ModelConfig), ("train", TrainConfig))


def _flat(value):
    return list(value) if isinstance(value, tuple) else value  # what the storage gives back, JSON


def config_attrs(params: dict, model_config: dict, train_config: dict) -> dict[str, object]:
    """``{"model.n_classes": 600, "train.steps": 2000, ...}``: each resolved value the sampled ``params``
    do not hold (or hold with another value)."""
    attrs = {}
    for (group, _), config in zip(GROUPS, (model_config, train_config)):
        for key, value in config.items():
            value = _flat(value)
            if key not in params or _flat(params[key]) != value:
                attrs[f"{group}.{key}"] = value
    return attrs


def resolved_configs(trial: FrozenTrial) -> tuple[dict, dict]:
    """The (model, training) configurations the trial ran with, each a dict in the dataclass's field order;
    empty for a trial that failed before it had one."""
    attrs, params = trial.user_attrs, trial.params
    if isinstance(attrs.get("model_config"), dict):  # a trial recorded before the attributes were flat
        return dict(attrs["model_config"]), dict(attrs.get("train_config") or {})
    resolved = []
    for group, config in GROUPS:
        names = [f.name for f in fields(config)]
        if not any(f"{group}.{name}" in attrs for name in names):
            resolved.append({})
            continue
        resolved.append({name: attrs[f"{group}.{name}"] if f"{group}.{name}" in attrs else params[name]
                         for name in names if f"{group}.{name}" in attrs or name in params})
    return resolved[0], resolved[1]


def rounded(value: float) -> float:
    """4 significant digits: what a curve needs, and a short attribute."""
    return float(f"{value:.4g}")


def train_loss_points(trial: FrozenTrial) -> list[tuple[int, float]]:
    """``[(step, training loss), ...]``: ``train_loss_curve`` paired with the validation curve's steps."""
    curve = trial.user_attrs.get("train_loss_curve")
    if not isinstance(curve, list):
        return []
    return list(zip(sorted(trial.intermediate_values), curve))
