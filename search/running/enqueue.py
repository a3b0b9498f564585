"""``search enqueue``: carry work forward. Queue the configurations of chosen trials (one trial, or a study's K best)
into a study, created as ``search run`` creates it where it does not exist yet, so that the next ``search run``
runs them first.

Each configuration goes through ``queue_configs`` (search/running/study.py), the path the warm start takes too: checked
against the target study's space (one line per configuration that does not fit, naming the parameter), and
skipped when the same parameters are queued already. A pruned or failed trial's configuration is recorded in full
(its parameters), so it can be queued like a complete one; ``full_budget`` lets such a trial run its whole budget
(search/running/objective.py ``FULL_BUDGET``): the way to finalize a configuration the pruner stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import UserError
from search.running.settings import RequestedSettings
from search.running.user_space import SpaceRequest

ENQUEUED_FROM = "enqueued_from"  # a queued trial's user attribute: the study and trial its configuration came from


@dataclass
class EnqueueRequest:
    """What ``search enqueue`` was asked: the target study, where the configurations come from, and the
    settings of the target study if it must be created (as ``search run``'s)."""

    study_name: str
    storage: str | None = None
    from_trial: int | None = None
    from_study: str | None = None
    from_storage: str | None = None
    top: int | None = None
    full_budget: bool = False
    settings: RequestedSettings = field(default_factory=RequestedSettings)
    space: SpaceRequest = field(default_factory=SpaceRequest)
    device: str = "auto"
    warm_start: bool = True


def enqueue(request: EnqueueRequest) -> list[str]:
    """Queue the configurations ``request`` names; returns the lines to print. One UserError line for bad input,
    before the target study is created."""
    from search.db.storage import check_url, default_url, redact_url
    from search.running.study import (QueuedConfig, load_study, open_study, queue_configs, stored_settings,
                              warm_start_queue)
    from search.running.task import resolve_device
    from search.running.study import with_space

    if (request.from_trial is None) == (request.top is None):
        raise UserError("--from-trial: give --from-trial N (one trial) or --top K (a study's K best), one of them")
    source_name = request.from_study or request.study_name
    source_url = request.from_storage or request.storage or default_url(source_name)
    source = load_study(source_name, source_url, read_only=True, option="--from-study")
    lines: list[str] = []
    picked = _picked_trials(source, request, lines)
    attrs = {"full_budget": True} if request.full_budget else {}
    configs = [QueuedConfig(f"trial #{t.number} of study {source_name!r}", dict(t.params),
                            {ENQUEUED_FROM: f"{source_name}#{t.number}", **attrs}) for t in picked]
    url = request.storage or default_url(request.study_name)
    check_url(url)
    device_type = resolve_device(request.device).type
    requested = with_space(request.settings, request.space, request.study_name, url, device_type)
    stored = stored_settings(request.study_name, url)
    resolved = requested.resolve(request.study_name, stored, device_type)
    if stored is None:
        _check_some_fit(request.study_name, resolved, configs)  # else nothing to create the study for
    report: list[str] = []
    # A new study queues these before its warm starts: they run first
    study, settings, created = open_study(request.study_name, url, resolved, warm_start=False)
    queued = queue_configs(study, settings, configs, report.append)
    if created and request.warm_start:
        queue_configs(study, settings, warm_start_queue(settings.profile), report.append)
    from search.running.user_space import describe

    lines.append(f"{'created' if created else 'existing'} study {request.study_name!r} in {redact_url(url)} (space "
                 f"{settings.profile}, {describe(settings.space)}; {settings.budget} steps a trial"
                 + ("" if settings.pruning else ", pruning off") + ")")
    lines += [f"{c.name}: queued ({_short(c.params)})" + (", runs its whole budget" if request.full_budget else "")
              for c in queued]
    lines += report
    storage_words = f" --storage {redact_url(request.storage)}" if request.storage else ""
    lines.append(f"{len(queued)} of {len(configs)} configurations queued"
                 + (f"; next: search run --study {request.study_name}{storage_words} --trials {len(queued)} runs them "
                    "first" if queued else ""))
    return lines


def _picked_trials(source: optuna.Study, request: EnqueueRequest, lines: list[str]) -> list[FrozenTrial]:
    """The trials whose configurations are queued: trial ``from_trial`` (complete, pruned or failed), or the
    ``top`` best complete trials of distinct configurations."""
    from search.reporting.queries import best_trials, pick_trial

    if request.from_trial is not None:
        trial = pick_trial(source, request.from_trial, "--from-trial", complete=False)
        if trial.state in (TrialState.RUNNING, TrialState.WAITING):
            raise UserError(f"--from-trial {trial.number}: trial #{trial.number} of study {source.study_name!r} is "
                            f"{trial.state.name.lower()}: its configuration is not recorded in full until it ends")
        return [trial]
    distinct: list[FrozenTrial] = []
    for trial in best_trials(source):
        if all(trial.params != other.params for other in distinct):
            distinct.append(trial)
    if not distinct:
        raise UserError(f"--top {request.top}: study {source.study_name!r} has no complete trial")
    if len(distinct) < request.top:
        n = len(distinct)
        lines.append(f"--top {request.top}: study {source.study_name!r} has only {n} complete trial{'s' * (n != 1)} "
                     "of distinct configurations: queueing what there is")
    return distinct[:request.top]


def _check_some_fit(name: str, settings, configs: list) -> None:
    """Refuse, before creating it, a new study that none of the configurations fits (its space, as requested)."""
    from search.running import space as search_space

    space = search_space.build_space(settings.profile, settings.space)
    reasons = [search_space.misfit(space, c.params) for c in configs]
    if all(reasons):
        raise UserError(f"--study {name}: no configuration fits the new study's space ({settings.profile} profile): "
                        f"{configs[0].name}: {reasons[0]}; nothing created")


def _short(params: dict) -> str:
    """A configuration in one short line: the parameters that tell models apart."""
    from search.reporting.notes import KEY_PARAMS

    return ", ".join(f"{k} {params[k]:.4g}" if isinstance(params[k], float) else f"{k} {params[k]}"
                     for k in KEY_PARAMS if k in params)
