"""Questions asked of a study's trials, answered one way everywhere: how many in each state, which is best,
which one the user means ("best" or a number).

"Best" is Optuna's own ``study.best_trial`` (the direction of the study decides), and None where there is
none: no complete trial yet, or a study with several objectives (which has no single best trial).
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.errors import UserError


def counts(study: optuna.Study) -> dict[str, int]:
    """Trials by state, every state named (``{"complete": 3, "pruned": 1, "fail": 0, ...}``)."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {state.name.lower(): states.count(state) for state in TrialState}


def complete_trials(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def best_or_none(study: optuna.Study) -> FrozenTrial | None:
    if len(study.directions) != 1:
        return None
    try:
        return study.best_trial
    except ValueError:  # no complete trial
        return None


def best_trials(study: optuna.Study, n: int | None = None) -> list[FrozenTrial]:
    """The ``n`` best complete trials (all of them without ``n``), best first; ties by trial number."""
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    ranked = sorted(complete_trials(study), key=lambda t: (-t.value if maximize else t.value, t.number))
    return ranked if n is None else ranked[:n]


def pick_trial(study: optuna.Study, which: str | int | None, option: str = "TRIAL", complete: bool = True,
               none_hint: str = "run `search run` first") -> FrozenTrial:
    """The trial the user means: ``best`` (or None) is the best complete trial; a number is that trial,
    which must be COMPLETE where ``complete`` (a configuration worth retraining), else in any state.
    ``option`` names what the user typed in the errors (``TRIAL`` for finalize, ``--trial`` for show);
    ``none_hint`` says what to do when there is no complete trial yet."""
    if which is None or which == "best":
        best = best_or_none(study)
        if best is None:
            raise UserError(f"study {study.study_name!r} has no completed trial yet: {none_hint}")
        return best
    if isinstance(which, str):
        if not (which.isascii() and which.isdigit()):  # str.isdigit() also takes '²', which int() refuses
            raise UserError(f"{option} {which!r}: expected 'best', 'top' or a trial number")
        which = int(which)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    trial = trials.get(which)
    if complete and (trial is None or trial.state != TrialState.COMPLETE):
        raise UserError(f"{option} {which}: no completed trial #{which} in study {study.study_name!r}")
    if trial is None:
        span = f"trials #0 to #{max(trials)}" if trials else "no trial"
        raise UserError(f"{option} {which}: no such trial in study {study.study_name!r} (it has {span})")
    return trial
