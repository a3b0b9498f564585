"""``search finalize top --k K`` and ``--all-data``: an ensemble of finalized members, and training on all labels.

Members are the K best *distinct* configurations of a study (distinct parameters: the copies of a trial that
Optuna re-queues after a killed worker count once), or with ``seeds`` the best configuration trained with K
seeds. Each member is a finalize like ``search finalize N`` (the same configurations, seed and checkpoint:
``studies/<study>/final/checkpoint-trial<N>-steps<S>[-seed<s>].pt``, ``finished-...pt`` once stored), so a
killed ensemble finalize (or one stopped by Ctrl-C or SIGTERM, with one line naming the member and its
checkpoint: search/finalizing/final_stop.py) resumes: a member whose checkpoint is at its last step (or that an
earlier finalize finished) is not retrained, the one in progress goes on from its checkpoint. The predictions
are the argmax of the members' weighted mean class probabilities (softmax of the logits, full-length test
utterances).

The weights are chosen on the validation split only (``select_weights``: Caruana et al. 2004, "Ensemble
selection from libraries of models"): greedy forward selection with replacement, starting from the best member
alone, adding the member that most improves the validation accuracy of the averaged probabilities (log-loss
breaks ties), until nothing improves; each member's weight is how often it was picked. The ensemble's validation
accuracy is thus never below its best member's, and a member that only outvotes a better one is left out
(weight 0). An unweighted mean can score below its best member (BENCHMARKS.md).

With ``all_data``, each member's validation run chooses the step count (its best validation step B); the
member is then trained again on train + validation for B steps (its own checkpoint,
``...-alldata<B>.pt``; a single evaluation, at the end, so the weights are those of step B) and that model
predicts. The validation split then no longer scores the predictions: validation accuracies reported are
those of the validation runs, and the weights are those chosen on the validation runs' models (which saw no
validation label in training); they are applied to the all-data models. Without a validation split there is
nothing honest to choose on: the members are then averaged with equal weights, and the output says so.

Writes ``studies/<study>/final/<label>/``: ``member<j>-trial<N>-seed<s>.pt`` (weights and model config,
``weights_only`` loadable) and ``config.json``; the CSV at ``out``; uploads them as study artifacts
``<label>-...`` and records the ensemble in the study's user attribute ``final_ensemble`` (``search show``
prints it for each member trial).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import optuna
import torch

from search.errors import UserError
from search.files import save_torch
from search.finalizing.final_pipeline import (Member, Trained, checkpoint_path, final_configs, prepare, train_run,
                                             write_outputs)
from search.training.checkpoints import finish
from search.finalizing.final_record import FinalRecord, MemberRecord
from search.running.objective import trial_seed
from search.reporting.queries import best_trials, pick_trial
from search.finalizing.scoring import read_rows, score_rows
from search.running.task import Task
from search.training.train import predict_proba


@dataclass
class MemberResult:
    trial: int
    seed: int
    search_value: float | None
    valid_accuracy: float  # of the validation run (best evaluation)
    best_step: int
    test_accuracy: float | None = None  # of this member's own predictions, with an answer key
    already_trained: bool = False  # its checkpoint was at the last step: nothing retrained
    resumed_from_step: int | None = None
    all_data_steps: int | None = None  # steps of the train + validation run
    all_data_already_trained: bool = False
    all_data_resumed_from_step: int | None = None
    model_file: str = ""
    weight: int = 1  # how often ensemble selection picked it (0: left out); see Combination
    history: list[dict] = field(default_factory=list)


@dataclass
class Combination:
    """How the members' probabilities are combined: integer weights (picks; 0 leaves a member out) and why."""

    weights: list[int]
    chosen_on: str  # "validation", "validation runs" (--all-data: the models before the retrain), or "equal"
    valid_accuracy: float  # the weighted ensemble's, on the validation split (the validation runs' models)
    equal_mean_valid_accuracy: float  # what the plain mean scores there, for comparison
    picks: list[dict] = field(default_factory=list)  # each pick: member (1-based), valid accuracy and log-loss after

    def describe(self) -> str:
        """One line: how the ensemble was combined."""
        if self.chosen_on == "equal":
            return ("equal weights: no validation split to choose them on, so the members' probabilities are "
                    "averaged as they are")
        where = ("on the validation split" if self.chosen_on == "validation" else
                 "on the validation split by the validation runs' models (before the train + validation retrain)")
        kept = ", ".join(f"member {i} x{w}" for i, w in enumerate(self.weights, 1) if w)
        out = [str(i) for i, w in enumerate(self.weights, 1) if not w]
        left = (f"; member{'s' if len(out) > 1 else ''} {', '.join(out)} left out" if out else "")
        return (f"weights chosen {where}: {kept}{left} (valid accuracy {self.valid_accuracy:.4f}; "
                f"the equal mean's: {self.equal_mean_valid_accuracy:.4f})")


# Log-loss alone can keep improving by ever smaller amounts for many picks: a gain below this is no gain, and
# MAX_PICKS_PER_MEMBER bounds the rounds (and the weights) however it goes.
LOG_LOSS_TOLERANCE = 1e-6
MAX_PICKS_PER_MEMBER = 5


def _scores(probabilities: torch.Tensor, labels: torch.Tensor) -> tuple[int, float]:
    """(correct predictions, mean log-loss) of class probabilities (rows need not sum to 1: a sum of members)."""
    probabilities = probabilities / probabilities.sum(-1, keepdim=True)
    correct = int((probabilities.argmax(-1) == labels).sum())
    true = probabilities.gather(1, labels[:, None]).squeeze(1)
    return correct, float(-true.clamp_min(1e-12).log().mean())


def select_weights(valid_probs: list[torch.Tensor], labels: torch.Tensor) -> tuple[list[int], list[dict]]:
    """Ensemble selection (Caruana et al. 2004) on validation probabilities: (picks per member, each pick).

    Starts from the best member alone (validation accuracy, then log-loss; then the earlier member), then
    repeatedly adds, with replacement, the member whose addition gives the averaged probabilities the best
    validation accuracy (log-loss breaking ties, so that a flat accuracy still leads somewhere), as long as that
    improves on the current ensemble: more correct, or as many with a lower log-loss. The first pick is a single
    member and each later one only improves, so the result is never below the best member on validation."""
    k = len(valid_probs)
    labels = labels.to(valid_probs[0].device)

    def better(a: tuple[int, float], b: tuple[int, float]) -> bool:
        return a[0] > b[0] or (a[0] == b[0] and a[1] < b[1] - LOG_LOSS_TOLERANCE)

    singles = [_scores(p, labels) for p in valid_probs]
    first = 0
    for j in range(1, k):
        if better(singles[j], singles[first]):
            first = j
    weights = [0] * k
    weights[first] = 1
    total, current = valid_probs[first].clone(), singles[first]
    n = max(1, len(labels))
    picks = [{"member": first + 1, "valid_accuracy": current[0] / n, "valid_log_loss": current[1]}]
    while sum(weights) < MAX_PICKS_PER_MEMBER * k:
        best_j, best = None, None
        for j in range(k):
            score = _scores(total + valid_probs[j], labels)
            if best is None or better(score, best):
                best_j, best = j, score
        if not better(best, current):
            break
        weights[best_j] += 1
        total += valid_probs[best_j]
        current = best
        picks.append({"member": best_j + 1, "valid_accuracy": current[0] / n, "valid_log_loss": current[1]})
    return weights, picks


def combine(valid_probs: list[torch.Tensor], labels: torch.Tensor, all_data: bool) -> Combination:
    """The members' weights, chosen on the validation split (``select_weights``), or equal without one."""
    k = len(valid_probs)
    if len(labels) == 0:
        return Combination([1] * k, "equal", 0.0, 0.0)
    equal = _scores(sum(valid_probs), labels)[0] / len(labels)
    weights, picks = select_weights(valid_probs, labels)
    chosen = picks[-1]["valid_accuracy"]
    return Combination(weights, "validation runs" if all_data else "validation", chosen, equal, picks)


@dataclass
class EnsembleResult:
    label: str
    members: list[MemberResult]
    valid_accuracy: float  # the weighted ensemble of the validation runs' models, on the validation split
    predictions_path: Path
    folder: Path
    all_data: bool
    test_accuracy: float | None = None
    test_utterances: int | None = None
    answers: Path | None = None
    artifacts: dict[str, str] = field(default_factory=dict)
    combination: Combination | None = None


def pick_top(study: optuna.Study, k: int, seeds: bool, study_seed: int) -> list[Member]:
    """The K best distinct configurations, or the best one with K seeds."""
    best = pick_trial(study, "best")
    if seeds:
        base = trial_seed(study_seed, best.number)
        return [Member(best, base + j, j == 0) for j in range(k)]
    members: list[Member] = []
    seen: set[str] = set()
    for t in best_trials(study):
        key = json.dumps(t.params, sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            members.append(Member(t, trial_seed(study_seed, t.number), True))
        if len(members) == k:
            return members
    raise UserError(f"--k {k}: study {study.study_name!r} has only {len(members)} distinct completed "
                    f"configuration{'s' if len(members) != 1 else ''} (use a smaller --k, or --seeds for one "
                    f"configuration with {k} seeds)")


@dataclass
class _Plan:
    """What every member of one ensemble finalize shares."""

    task: Task
    steps: int
    folder: Path  # final/: the checkpoints
    home: Path  # final/<label>/: the member models and config.json
    all_data: bool
    say: Callable[[str], None]
    on_eval: Callable[[int, str, int, int, dict], None] | None
    checkpoint_every: int
    k: int
    answer_rows: dict[str, str] | None  # the answer key's, to score each member's own predictions


@dataclass
class _Trained:
    """A trained member: its result, its probabilities (on the CPU: the weights are chosen once all are
    trained) and its configurations for config.json."""

    result: MemberResult
    valid_probs: torch.Tensor
    test_probs: torch.Tensor
    configs: dict
    checkpoints: list[Path]  # the files its runs were read from or saved to (finished once the outputs are stored)


def _say_resume(say: Callable[[str], None], run, done_line: str, resumed_line: str) -> None:
    """``done_line`` if the run's checkpoint was at its last step, ``resumed_line`` (its ``{}``: the step) if
    training went on from a checkpoint; nothing for a fresh start."""
    if run.found_step is not None:
        say(done_line if run.already else resumed_line.format(run.found_step))


def _train_member(plan: _Plan, i: int, member: Member) -> _Trained:
    """Train (or resume) member ``i``, then with ``all_data`` its train + validation run; save its model."""
    trial, task, bank, tag = member.trial, plan.task, plan.task.bank, f"member {i + 1}/{plan.k}"
    plan.say(f"{tag}: trial #{trial.number}, seed {member.seed} (valid accuracy {trial.value:.4f} in the search)")
    model_cfg, train_cfg = final_configs(trial.params, task, plan.steps, member.seed)
    evals = (lambda step, metrics: plan.on_eval(i, "valid", step, plan.steps, metrics)) if plan.on_eval else None
    run = train_run(model_cfg, train_cfg, task, checkpoint_path(plan.folder, member, plan.steps), evals,
                    plan.checkpoint_every, tag, i > 0)
    _say_resume(plan.say, run, f"{tag}: already trained (its checkpoint is at step {plan.steps}): not retrained",
                f"{tag}: resumed from the checkpoint at step {{}} of an earlier finalize")
    mr = MemberResult(trial.number, member.seed, trial.value, run.result.best_accuracy, run.result.best_step,
                      already_trained=run.already, resumed_from_step=run.resumed, history=run.result.history)
    # the validation run's model: with --all-data too, these (not the retrained models) choose the weights
    valid_probs = predict_proba(run.result.model, bank, task.valid_ids, train_cfg.eval_max_frames).cpu()
    model, configs = run.result.model, {"model_config": model_cfg.to_dict(), "train_config": asdict(train_cfg)}
    checkpoints = [run.checkpoint]
    if plan.all_data:
        all_data = _all_data_run(plan, i, member, model_cfg, mr, configs)
        model = all_data.result.model
        checkpoints.append(all_data.checkpoint)
    test_ids = bank.test_ids()
    test_probs = predict_proba(model, bank, test_ids, train_cfg.eval_max_frames).cpu()
    model_file = plan.home / f"member{i + 1}-{member.name}.pt"
    save_torch({**configs, "state_dict": model.state_dict(), "id2speaker": bank.id2speaker,
                "trial": trial.number, "seed": member.seed, "all_data_steps": mr.all_data_steps}, model_file)
    mr.model_file = str(model_file)
    if plan.answer_rows is not None:
        own = {bank.names[u]: bank.id2speaker[c] for u, c in zip(test_ids.tolist(), test_probs.argmax(-1).tolist())}
        mr.test_accuracy = score_rows(own, plan.answer_rows, f"member {i + 1}", bank.id2speaker)[0]
    return _Trained(mr, valid_probs, test_probs, {**configs, "params": trial.params}, checkpoints)


def _all_data_run(plan: _Plan, i: int, member: Member, model_cfg, mr: MemberResult, configs: dict) -> Trained:
    """The member trained again on train + validation for its validation run's best step count."""
    task, tag = plan.task, f"member {i + 1}/{plan.k}"
    chosen = max(1, mr.best_step)
    plan.say(f"{tag}: training again on train + validation for {chosen} steps (the validation run's best step)")
    all_cfg = final_configs(member.trial.params, task, chosen, member.seed)[1]
    all_cfg.eval_every = chosen  # one evaluation, at the end: the weights are those of the last step
    everything = Task(task.bank, torch.cat([task.train_ids, task.valid_ids]), task.valid_ids, task.seed, task.source)
    evals = (lambda step, metrics: plan.on_eval(i, "all-data", step, chosen, metrics)) if plan.on_eval else None
    run = train_run(model_cfg, all_cfg, everything, checkpoint_path(plan.folder, member, plan.steps, chosen), evals,
                    plan.checkpoint_every, f"{tag}'s train + validation run", True)
    _say_resume(plan.say, run, f"{tag}: its train + validation run is already done (checkpoint at step {chosen})",
                f"{tag}: train + validation run resumed from the checkpoint at step {{}}")
    mr.all_data_steps, mr.all_data_already_trained, mr.all_data_resumed_from_step = chosen, run.already, run.resumed
    configs["all_data_train_config"] = asdict(all_cfg)
    return run


def finalize_ensemble(study: optuna.Study, members: list[Member], task: Task, steps: int, out: Path, folder: Path,
                      label: str, all_data: bool = False, say: Callable[[str], None] = print,
                      on_eval: Callable[[int, str, int, int, dict], None] | None = None,
                      checkpoint_every: int = 1000) -> EnsembleResult:
    """Train (or resume) every member, choose their weights on the validation split (``combine``), average
    their probabilities with those weights, write the CSV, config and artifacts (search/finalizing/final_pipeline.py).

    ``on_eval(member_index, phase, step, total, metrics)`` gets each evaluation (phase ``valid`` or
    ``all-data``); ``say`` the lines that tell which member is where."""
    home = folder / label
    answers = prepare(task, out, home / "config.json")
    plan = _Plan(task, steps, folder, home, all_data, say, on_eval, checkpoint_every, len(members),
                 read_rows(answers) if answers else None)
    trained = [_train_member(plan, i, member) for i, member in enumerate(members)]
    results = [t.result for t in trained]
    combination = combine([t.valid_probs for t in trained], task.bank.labels[task.valid_ids].cpu(), all_data)
    for mr, weight in zip(results, combination.weights):
        mr.weight = weight
    test_mix = sum(weight * t.test_probs for weight, t in zip(combination.weights, trained) if weight)
    config = {
        "study": study.study_name, "label": label, "steps": steps, "all_data": all_data,
        "combine": "weighted mean of the members' softmax probabilities: " + combination.describe(),
        "weights": combination.weights,
        "selection": {"method": "ensemble selection (Caruana et al. 2004): greedy forward selection with "
                                "replacement on validation accuracy, ties broken by validation log-loss",
                      "chosen_on": combination.chosen_on, "picks": combination.picks,
                      "equal_mean_valid_accuracy": combination.equal_mean_valid_accuracy},
        "valid_accuracy": combination.valid_accuracy, "test_accuracy": None, "test_utterances": None, "answers": None,
        "members": [{**asdict(t.result), **t.configs} for t in trained],
    }
    record = FinalRecord(label, steps, all_data, combination.valid_accuracy, combine=combination.describe(),
                         members=[MemberRecord(m.trial, m.seed, m.weight, m.valid_accuracy, m.best_step,
                                               m.test_accuracy, m.all_data_steps) for m in results])
    write_outputs(study, task, test_mix.argmax(-1).tolist(), out, answers, home / "config.json", config,
                  [Path(m.model_file) for m in results], record)
    for checkpoint in (c for t in trained for c in t.checkpoints):  # each member's own files (trial and seed)
        finish(checkpoint)  # the outputs are stored: the full checkpoints are no longer needed
    return EnsembleResult(label, results, combination.valid_accuracy, out, home, all_data, record.test_accuracy,
                          config["test_utterances"], answers, record.artifacts, combination)


def summary_lines(result: EnsembleResult) -> list[str]:
    """The members' accuracies and weights beside the ensemble's, as a small table, and how they were combined."""
    with_test = result.test_accuracy is not None
    several = len(result.members) > 1
    head = f"{'':24s}  {'valid':>6s}" + (f"  {'test':>6s}" if with_test else "") + (f"  {'weight':>6s}" if several else "")
    lines = [head]
    picks = sum(m.weight for m in result.members)
    for i, m in enumerate(result.members, 1):
        what = f"member {i}: #{m.trial} seed {m.seed}"
        lines.append(f"{what:24s}  {m.valid_accuracy:6.4f}" + (f"  {m.test_accuracy:6.4f}" if with_test else "")
                     + (f"  {f'{m.weight}/{picks}':>6s}" + ("  left out" if not m.weight else "") if several else ""))
    if several:
        what = f"ensemble of {len(result.members)}"
        lines.append(f"{what:24s}  {result.valid_accuracy:6.4f}"
                     + (f"  {result.test_accuracy:6.4f}" if with_test else ""))
        if result.combination is not None:
            lines.append(result.combination.describe())
    return lines
