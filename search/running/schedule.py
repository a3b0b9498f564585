"""When a run validates, and how long its learning-rate warm-up is: the one definition, by training step.

A full-length validation is worth running only where something reads it. In a search trial that is
- the pruner, at its rung steps only: Hyperband (and Successive Halving) decide at ``min_resource x
  reduction_factor ** k`` steps and ignore any report in between (``SuccessiveHalvingPruner.prune`` returns
  at once below the next rung), so a validation between rungs is paid for with nothing;
- the sampler and the study, at the end: the trial's value;
- a user, at the reporting steps they asked for.
``trial_steps`` gives exactly those steps. The rungs come from the pruner the study runs with (the numbers
that built it), so they cannot drift from it.

With pruning off nothing reads the steps in between either, but a trial still evaluates at a few points
(``CURVE_POINTS``), for what a single final number cannot show: the learning curve on the dashboard and in
``search trials`` (still climbing at the end: the budget is short; flat since the middle: it is long enough),
a divergence caught at the next evaluation rather than at the end of the budget, and best-weights selection
that has something to choose from.

A study's pruners (search/running/sampler.py) say where they decide (``decision_steps``). A pruner whose decision points
are not known here (a median pruner acts at every report after its warm-up; a wrapper such as
bench/efficiency.py's deadline pruner) keeps the grid of budget/8 steps: it gets the reports it was built on.

Finalize's long runs keep a periodic evaluation (``periodic_every``): their collapse detection
(search/training/train.py ``CollapseGuard``) compares evaluation to evaluation and rolls back to the last good one, so
the evaluations must be frequent and evenly spaced, and at 70,000 steps they are a small share of the run.
"""

from __future__ import annotations

import math
from typing import Iterable

import optuna

from search.db import optuna_internals

# budget/8 steps: the step unit of a study: the pruner's first rung (``min_resource``, stored in a study's settings
# as ``eval_every``), the smallest budget a trial may have, finalize's interval, and the grid of an unknown pruner.
GRID = 8
CURVE_POINTS = 4  # evaluations of a trial that no pruner reads (budget/4, budget/2, 3 budget/4, budget)
FINALIZE_MAX_EVERY = 2000  # finalize's longest interval between evaluations (collapse detection needs them)
MAX_WARMUP = 1000  # the learning rate's linear warm-up: a tenth of the steps, at most this many


def min_resource(budget: int) -> int:
    """The pruner's first rung for trials of ``budget`` steps (a study's ``eval_every``)."""
    return max(1, budget // GRID)


def warmup_steps(steps: int) -> int:
    """Linear learning-rate warm-up of a run of ``steps`` steps: a tenth of it, at most MAX_WARMUP."""
    return max(1, min(MAX_WARMUP, steps // 10))


def periodic_steps(steps: int, every: int) -> list[int]:
    """Every ``every`` steps, and at the end."""
    grid = list(range(every, steps + 1, every))
    return grid if grid and grid[-1] == steps else grid + [steps]


def periodic_every(steps: int) -> int:
    """Finalize's interval: steps/8, at most FINALIZE_MAX_EVERY (a 70,000-step run evaluates 35 times)."""
    return min(FINALIZE_MAX_EVERY, max(1, steps // GRID))


def halving_rungs(first: int, factor: int, rate: int, budget: int) -> list[int]:
    """Successive Halving's rungs up to ``budget``: ``first x factor ** (rate + k)`` for k = 0, 1, ..."""
    steps, k = [], 0
    while (step := first * factor ** (rate + k)) <= budget:
        steps.append(step)
        k += 1
    return steps


def rung_steps(pruner: optuna.pruners.BasePruner | None, budget: int) -> list[int] | None:
    """The steps at which ``pruner`` can stop a trial of ``budget`` steps: [] for one that never does (None
    or NopPruner), None for one whose decision points are not known here."""
    if pruner is None or isinstance(pruner, optuna.pruners.NopPruner):
        return []
    if hasattr(pruner, "decision_steps"):  # a study's pruner (search/running/sampler.py): from the numbers that built it
        return [s for s in pruner.decision_steps(budget) if s <= budget]
    # Optuna's own Hyperband or Successive Halving made elsewhere (a test, a benchmark): only its fields say
    numbers = optuna_internals.halving_numbers(pruner)
    if numbers is None:
        return None
    first, factor, rate, top, brackets = numbers
    if brackets is None:  # Successive Halving: one bracket, from its early-stopping rate
        return halving_rungs(first, factor, rate, budget)
    return hyperband_rungs(first, budget if top == "auto" else top, factor, budget, brackets)


def hyperband_rungs(first: int, top: int, factor: int, budget: int, brackets: int | None = None) -> list[int]:
    """Hyperband's rungs (resources ``first`` to ``top``) for a trial of ``budget`` steps: bracket b's rungs
    start at ``first x factor ** b``; without ``brackets``, Optuna's count (floor of log(top/first), plus one)."""
    brackets = brackets or math.floor(math.log(top / first, factor)) + 1
    return sorted({s for b in range(brackets) for s in halving_rungs(first, factor, b, budget)})


def trial_steps(budget: int, pruner: optuna.pruners.BasePruner | None = None,
                report_steps: Iterable[int] = ()) -> list[int]:
    """The steps at which a search trial of ``budget`` steps validates: the pruner's rungs and the end; with
    no pruner (or NopPruner), CURVE_POINTS evenly spaced points ending at the end; with a pruner of unknown
    decision points, the grid of budget/8 steps. Plus any ``report_steps`` (those within the budget)."""
    rungs = rung_steps(pruner, budget)
    if rungs is None:
        steps = periodic_steps(budget, min_resource(budget))
    elif not rungs:
        steps = [budget * i // CURVE_POINTS for i in range(1, CURVE_POINTS + 1)]
    else:
        steps = rungs
    return sorted({s for s in [*steps, *report_steps] if 0 < s <= budget} | {budget})
