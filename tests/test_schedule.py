"""Where trials validate (search/running/schedule.py): at the pruner's rungs and the end, not on a fixed grid."""

from __future__ import annotations

import optuna
import pytest
import torch
from optuna.trial import TrialState

from search.running import schedule
from search.running.space import KNOWN_CONFIGS
from search.running.runner import run_trials
from search.running.sampler import make_pruner
from search.running.settings import StudySettings
from search.running.study import open_study
from search.running.task import load_task


def _pruner(budget: int, profile: str = "full") -> optuna.pruners.BasePruner:
    """The pruner of a new study of ``budget`` steps (full: a GPU study's; cpu: a CPU study's)."""
    return make_pruner(StudySettings(budget=budget, eval_every=schedule.min_resource(budget), data="embedded",
                                     seed=0, profile=profile))


def _hyperband(budget: int) -> optuna.pruners.HyperbandPruner:
    return _pruner(budget, "full")


@pytest.mark.parametrize("budget, expected", [(2000, [250, 750, 2000]), (200, [25, 75, 200]), (64, [8, 24, 64]),
                                              (8, [1, 3, 8])])
def test_a_trial_validates_at_the_study_pruners_rungs_and_at_the_end(budget, expected):
    assert schedule.trial_steps(budget, _hyperband(budget)) == expected


def test_the_rungs_are_those_at_which_hyperband_decides():
    """Reports between rungs never change the pruner's decision: SuccessiveHalving returns 'keep going' below
    the next rung without looking at the value. So a trial that reports only at the rungs is pruned at the
    same steps as one that reports on the old grid."""
    budget = 2000
    rungs = schedule.trial_steps(budget, _hyperband(budget))

    def run(report_at: list[int]) -> list[tuple[int, int | None]]:
        # the same name: Hyperband puts a trial in a bracket by a hash of the study name and trial number
        study = optuna.create_study(study_name="rungs", direction="maximize", pruner=_hyperband(budget),
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        ended = []
        for number in range(30):
            trial = study.ask()
            quality = (number * 7919 % 30) / 30  # a fixed spread of good and bad trials
            pruned_at = _report_until_pruned(trial, report_at, quality, budget)
            if pruned_at is None:
                study.tell(trial, quality)
            else:
                study.tell(trial, state=TrialState.PRUNED)
            ended.append((number, pruned_at))
        return ended

    grid = run(schedule.periodic_steps(budget, schedule.min_resource(budget)))
    assert run(rungs) == grid
    assert any(step is not None for _, step in grid)  # the pruner did stop some trials


def _report_until_pruned(trial: optuna.Trial, steps, quality: float, budget: int) -> int | None:
    """Report a learning curve that rises linearly to ``quality`` at ``budget``, at ``steps``, as a trial does;
    the step where the pruner stopped the trial, or None if it ran to the end."""
    for step in steps:
        trial.report(quality * step / budget, step)
        if trial.should_prune():
            return step
    return None


@pytest.mark.parametrize("budget", [400, 200, 64, 63, 18, 9, 8])
def test_a_cpu_studys_trial_validates_at_its_two_decisions_and_its_end(budget):
    """A CPU study's pruner decides at budget/8 (one Hyperband bracket, whatever the rounding of budget/8) and takes
    a second look at three times that (search/running/sampler.py): a trial validates there and at the end."""
    first = schedule.min_resource(budget)
    assert schedule.trial_steps(budget, _pruner(budget, "cpu")) == [first, 3 * first, budget]


def test_a_cpu_study_stops_a_trial_only_at_its_decisions_and_only_when_behind():
    """The CPU pruner (Hyperband with reduction factor 3, and the second look): once 2 trials are complete, a trial
    is stopped only at budget/8 or 3/8 of the budget, and only when an earlier trial was ahead of it there; a trial
    at least as good as every earlier one is never stopped."""
    budget = 400
    first = schedule.min_resource(budget)
    study = optuna.create_study(study_name="cpu-rungs", direction="maximize", pruner=_pruner(budget, "cpu"),
                                sampler=optuna.samplers.RandomSampler(seed=0))
    steps = schedule.trial_steps(budget, study.pruner)
    best_so_far, pruned, complete = -1.0, [], []
    for number in range(30):
        trial = study.ask()
        quality = (number * 7919 % 17) / 17  # a fixed spread of good and bad trials
        stopped = _report_until_pruned(trial, steps, quality, budget)
        if stopped is None:
            study.tell(trial, quality)
            complete.append(number)
        else:
            study.tell(trial, state=TrialState.PRUNED)
            pruned.append(number)
            # curves rise linearly to their quality: behind at a step is behind in quality
            assert stopped in (first, 3 * first) and quality < best_so_far and len(complete) >= 2
        best_so_far = max(best_so_far, quality)
    assert pruned and len(complete) > 2


def test_a_cpu_study_stops_a_fast_starter_at_its_second_look():
    """A trial that passes budget/8 on a quick start but is behind an earlier trial at 3/8 of the budget stops
    there, instead of training its whole budget; one ahead at both trains on; one behind at budget/8 stops there."""
    budget = 400
    study = optuna.create_study(study_name="cpu-second-look", direction="maximize", pruner=_pruner(budget, "cpu"))
    steps = schedule.trial_steps(budget, study.pruner)
    assert steps == [50, 150, 400]

    def run(curve: dict[int, float]) -> int | None:
        """The step where the trial was stopped, or None if it trained its whole budget."""
        trial = study.ask()
        for step in steps:
            trial.report(curve[step], step)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                return step
        study.tell(trial, curve[budget])
        return None

    assert run({50: 0.05, 150: 0.30, 400: 0.70}) is None  # the first trial: nothing to compare with
    assert run({50: 0.01, 150: 0.10, 400: 0.20}) is None  # behind at both, but the study needs 2 complete trials
    assert run({50: 0.08, 150: 0.20, 400: 0.50}) == 150  # ahead at 50, behind at 150
    assert run({50: 0.09, 150: 0.35, 400: 0.75}) is None  # ahead at both
    assert run({50: 0.02, 150: 0.40, 400: 0.80}) == 50  # behind at the first decision: Hyperband's


def test_a_cpu_study_prunes_nothing_until_two_trials_are_complete():
    """With 7 of 8 trials pruned, a report had one point per figure and `finalize top --k 2` nothing to pick: a
    cpu study's pruner lets trials complete until KEEP_COMPLETE (2) are, then decides as before."""
    from search.running.sampler import KEEP_COMPLETE

    budget = 400
    study = optuna.create_study(study_name="cpu-keep", direction="maximize", pruner=_pruner(budget, "cpu"))
    steps = schedule.trial_steps(budget, study.pruner)
    outcomes = []
    for quality in (0.9, 0.1, 0.05, 0.2, 0.01):  # the first the best: every later one is behind it everywhere
        trial = study.ask()
        for step in steps:
            trial.report(quality * step / budget, step)
            if trial.should_prune():
                study.tell(trial, state=TrialState.PRUNED)
                outcomes.append(step)
                break
        else:
            study.tell(trial, quality)
            outcomes.append("complete")
    # each later one stopped at its bracket's first decision (budget/8 or 3/8 of the budget)
    assert KEEP_COMPLETE == 2 and outcomes[:2] == ["complete", "complete"] and set(outcomes[2:]) <= set(steps[:2])
    assert len(outcomes) == 5


def test_without_pruning_a_trial_validates_at_a_few_curve_points():
    nop = optuna.pruners.NopPruner()
    assert schedule.trial_steps(2000, nop) == schedule.trial_steps(2000, None) == [500, 1000, 1500, 2000]
    assert schedule.trial_steps(3, nop) == [1, 2, 3]  # tiny budgets: no step twice, none at 0


def test_a_pruner_of_unknown_decision_points_keeps_the_grid():
    grid = list(range(250, 2001, 250))
    assert schedule.trial_steps(2000, optuna.pruners.MedianPruner()) == grid
    assert schedule.trial_steps(2000, optuna.pruners.SuccessiveHalvingPruner()) == grid  # min_resource 'auto'
    sha = optuna.pruners.SuccessiveHalvingPruner(min_resource=250, reduction_factor=3, min_early_stopping_rate=1)
    assert schedule.trial_steps(2000, sha) == [750, 2000]


def test_report_steps_a_user_asked_for_are_added():
    assert schedule.trial_steps(2000, _hyperband(2000), report_steps=(100, 750, 5000, 0)) == [100, 250, 750, 2000]


def test_finalize_keeps_a_periodic_evaluation():
    assert schedule.periodic_every(70_000) == 2000 and schedule.periodic_every(800) == 100
    assert schedule.periodic_steps(70_000, 2000)[-2:] == [68_000, 70_000]
    assert schedule.periodic_steps(10, 4) == [4, 8, 10]
    assert schedule.warmup_steps(70_000) == 1000 and schedule.warmup_steps(200) == 20 and schedule.warmup_steps(5) == 1


def test_a_studys_trials_report_exactly_at_the_schedule(tiny_dataset, workdir):
    """Through the real objective: a pruned study's trial validates at its pruner's rungs and the end, an
    unpruned study's at the curve points, and it records the time its validations took."""
    task = load_task(tiny_dataset, seed=0, device=torch.device("cpu"))
    budget = 24
    for pruning in (True, False):
        name = f"sched-{pruning}"
        settings = StudySettings(budget=budget, eval_every=schedule.min_resource(budget), data=str(tiny_dataset),
                                 seed=0, profile="cpu", pruning=pruning)
        study, settings, _ = open_study(name, f"sqlite:///{workdir}/{name}.db", settings, warm_start=False)
        study.enqueue_trial(KNOWN_CONFIGS["sample-code"])  # a small model: the test is about when it validates
        run_trials(study, settings, task, 1)
        expected = schedule.trial_steps(budget, study.pruner)
        assert expected == ([3, 9, 24] if pruning else [6, 12, 18, 24])  # a cpu study: budget/8, 3/8, the end
        (trial,) = study.trials
        assert trial.state == TrialState.COMPLETE
        assert sorted(trial.intermediate_values) == expected
        assert 0 < trial.user_attrs["eval_seconds"] < trial.user_attrs["wall_seconds"]
