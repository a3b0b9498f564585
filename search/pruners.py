"""Pruners of our own, for what Optuna's do not cover (search/study.py ``make_pruner`` picks the study's).

A pruner here says where it decides (``decision_steps``), so that trials validate exactly there
(search/schedule.py ``rung_steps`` asks it).
"""

from __future__ import annotations

import optuna
from optuna.study import StudyDirection

from search import schedule


class SecondLookPruner(optuna.pruners.BasePruner):
    """Hyperband's decisions, and one more at ``step`` for the trials Hyperband let through: there a trial goes
    on only if it is among the best ``1 / reduction_factor`` of the trials that reached that step (while fewer than
    ``2 x reduction_factor`` have, only if no other trial was better there): Successive Halving's rule at its rungs.

    For the cpu profile (search/study.py ``make_pruner``): one Hyperband decision at budget/8, where the scores are
    a few right answers above chance, and whatever passes it trains its whole budget. Measured on this project's
    CPU machine (`search run --trials 20`, embedded data, seed 0, 2026-11-26): of the 4 sampled trials that passed
    step 62 on 0.077-0.096 validation accuracy (the warm start: 0.058), 3 ended at 0.49-0.61 against the warm
    start's 0.70, after 36-49 s each of a 310-s run. A second look at 3/8 of the budget stops such a trial there;
    it never adds training, only a validation where a trial got through the first decision. With it the same run
    took 230 s and found the same best trial (0.750); BENCHMARKS.md has the runs.
    """

    def __init__(self, hyperband: optuna.pruners.HyperbandPruner, step: int) -> None:
        self.hyperband, self.step = hyperband, step

    def decision_steps(self, budget: int) -> list[int]:
        """The steps at which this pruner can stop a trial of ``budget`` steps."""
        return sorted({*schedule.rung_steps(self.hyperband, budget), self.step})

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if self.hyperband.prune(study, trial):
            return True
        if trial.last_step != self.step:
            return False
        value = trial.intermediate_values[self.step]
        others = [t.intermediate_values[self.step] for t in study.get_trials(deepcopy=False)
                  if t.number != trial.number and self.step in t.intermediate_values]
        maximize = study.direction == StudyDirection.MAXIMIZE
        ranked = sorted([value, *others], reverse=maximize)  # best first
        threshold = ranked[max(1, len(ranked) // self.hyperband._reduction_factor) - 1]
        return value < threshold if maximize else value > threshold
