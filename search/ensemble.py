"""``search finalize top --k K`` and ``--all-data``: an ensemble of finalized members, and training on all labels.

Members are the K best *distinct* configurations of a study (distinct parameters: the copies of a trial that
Optuna re-queues after a killed worker count once), or with ``seeds`` the best configuration trained with K
seeds. Each member is a finalize like ``search finalize N`` (the same configurations, seed and checkpoint:
``studies/<study>/final/checkpoint-trial<N>-steps<S>[-seed<s>].pt``), so a killed ensemble finalize (or one
stopped by Ctrl-C or SIGTERM, with one line naming the member and its checkpoint: search/finalize.py) resumes:
a member whose checkpoint is at its last step is not retrained, the one in progress goes on from its
checkpoint. The predictions are the argmax of the members' weighted mean class probabilities (softmax of the
logits, full-length test utterances).

The weights are chosen on the validation split only (``select_weights``: Caruana et al. 2004, "Ensemble
selection from libraries of models"): greedy forward selection with replacement, starting from the best member
alone, adding the member that most improves the validation accuracy of the averaged probabilities (log-loss
breaks ties), until nothing improves; each member's weight is how often it was picked. The ensemble's validation
accuracy is thus never below its best member's, and a member that only outvotes a better one is left out
(weight 0). An unweighted mean measured on an H200 scored 0.5 points below its best member (BENCHMARKS.md).

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
from search.files import artifact_folder, check_writable, final_folder, replaced, write_text
from search.finalize import (FinalizeRequest, _checkpoint_step, echo_eval, echo_results, final_configs, setup,
                             outputs_begin, publish, study_seed, training_run, write_labels)
from search.notes import write_study_note
from search.objective import trial_seed
from search.queries import best_trials, pick_trial
from search.scoring import answer_key, read_rows, score_files, score_rows
from search.task import Task
from search.train import predict_proba, train


@dataclass
class Member:
    trial: optuna.trial.FrozenTrial
    seed: int
    default_seed: bool  # the seed `search finalize N` uses: the same checkpoint file

    @property
    def name(self) -> str:
        return f"trial{self.trial.number}-seed{self.seed}"


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


def single(trial: optuna.trial.FrozenTrial, study_seed: int) -> list[Member]:
    """One member: ``search finalize N --all-data``."""
    return [Member(trial, trial_seed(study_seed, trial.number), True)]


def _checkpoint(folder: Path, member: Member, steps: int, all_data_steps: int | None = None) -> Path:
    name = f"checkpoint-trial{member.trial.number}-steps{steps}"
    if all_data_steps is not None:
        name += f"-alldata{all_data_steps}"
    if not member.default_seed:
        name += f"-seed{member.seed}"
    return folder / f"{name}.pt"


def _train_member(model_cfg, train_cfg, task: Task, checkpoint: Path, on_eval, checkpoint_every: int,
                  say: Callable[[str], None], done_line: str, resumed_line: str, what: str, after_others: bool):
    """(TrainResult, already trained?, resumed-from step) of one checkpointed, resumable run; ``say``s
    ``done_line`` if its checkpoint was at the last step, ``resumed_line`` (its ``{}``: the step) if training
    went on from a checkpoint. ``what`` names the run in the line a signal stops it with (``after_others``:
    runs trained before it are kept)."""
    done_step = _checkpoint_step(checkpoint, task.bank.fingerprint)
    try:
        with training_run(what, checkpoint, train_cfg.steps, after_others):
            result = train(model_cfg, train_cfg, task, on_eval=on_eval, checkpoint=checkpoint,
                           checkpoint_every=checkpoint_every)
    except ValueError as err:  # a checkpoint of another configuration
        raise UserError(str(err)) from None
    already = done_step is not None and done_step >= train_cfg.steps
    if done_step is not None:
        say(done_line if already else resumed_line.format(done_step))
    return result, already, (None if already else done_step)


def finalize_ensemble(study: optuna.Study, members: list[Member], task: Task, steps: int, out: Path, folder: Path,
                      label: str, all_data: bool = False, say: Callable[[str], None] = print,
                      on_eval: Callable[[int, str, int, int, dict], None] | None = None,
                      checkpoint_every: int = 1000) -> EnsembleResult:
    """Train (or resume) every member, choose their weights on the validation split (``combine``), average
    their probabilities with those weights, write the CSV, config and artifacts.

    ``on_eval(member_index, phase, step, total, metrics)`` gets each evaluation (phase ``valid`` or
    ``all-data``); ``say`` the lines that tell which member is where."""
    answers = answer_key(task.source)  # a broken answer key fails now, before any training or folder
    check_writable(out, "--out")
    home = folder / label
    check_writable(home / "config.json", "study folder")
    answer_rows = read_rows(answers) if answers else None
    bank = task.bank
    test_ids, valid_ids = bank.test_ids(), task.valid_ids
    valid_probs: list[torch.Tensor] = []  # per member, on the CPU: the weights are chosen once all are trained
    test_probs: list[torch.Tensor] = []
    results: list[MemberResult] = []
    member_configs: list[dict] = []
    k = len(members)
    for i, member in enumerate(members):
        trial = member.trial
        say(f"member {i + 1}/{k}: trial #{trial.number}, seed {member.seed} "
            f"(valid accuracy {trial.value:.4f} in the search)")
        model_cfg, train_cfg = final_configs(trial.params, task, steps, member.seed)
        evals = (lambda step, metrics, i=i: on_eval(i, "valid", step, steps, metrics)) if on_eval else None
        result, already, resumed = _train_member(
            model_cfg, train_cfg, task, _checkpoint(folder, member, steps), evals, checkpoint_every, say,
            f"member {i + 1}/{k}: already trained (its checkpoint is at step {steps}): not retrained",
            f"member {i + 1}/{k}: resumed from the checkpoint at step {{}} of an earlier finalize",
            f"member {i + 1}/{k}", i > 0)
        mr = MemberResult(trial.number, member.seed, trial.value, result.best_accuracy, result.best_step,
                          already_trained=already, resumed_from_step=resumed, history=result.history)
        # the validation run's model: with --all-data too, these (not the retrained models) choose the weights
        valid_probs.append(predict_proba(result.model, bank, valid_ids, train_cfg.eval_max_frames).cpu())
        model, configs = result.model, {"model_config": model_cfg.to_dict(), "train_config": asdict(train_cfg)}
        if all_data:
            chosen = max(1, result.best_step)
            say(f"member {i + 1}/{k}: training again on train + validation for {chosen} steps "
                f"(the validation run's best step)")
            all_cfg = final_configs(trial.params, task, chosen, member.seed)[1]
            all_cfg.eval_every = chosen  # one evaluation, at the end: the weights are those of the last step
            everything = Task(bank, torch.cat([task.train_ids, task.valid_ids]), valid_ids, task.seed, task.source)
            evals = (lambda step, metrics, i=i: on_eval(i, "all-data", step, chosen, metrics)) if on_eval else None
            full, already, resumed = _train_member(
                model_cfg, all_cfg, everything, _checkpoint(folder, member, steps, chosen), evals, checkpoint_every,
                say, f"member {i + 1}/{k}: its train + validation run is already done (checkpoint at step {chosen})",
                f"member {i + 1}/{k}: train + validation run resumed from the checkpoint at step {{}}",
                f"member {i + 1}/{k}'s train + validation run", True)
            mr.all_data_steps, mr.all_data_already_trained, mr.all_data_resumed_from_step = chosen, already, resumed
            model = full.model
            configs["all_data_train_config"] = asdict(all_cfg)
        test_probs.append(predict_proba(model, bank, test_ids, train_cfg.eval_max_frames).cpu())
        model_file = home / f"member{i + 1}-{member.name}.pt"
        with replaced(model_file) as tmp:
            torch.save({**configs, "state_dict": model.state_dict(), "id2speaker": bank.id2speaker,
                        "trial": trial.number, "seed": member.seed, "all_data_steps": mr.all_data_steps}, tmp)
        mr.model_file = str(model_file)
        if answer_rows is not None:
            own = {bank.names[u]: bank.id2speaker[c] for u, c in zip(test_ids.tolist(), test_probs[-1].argmax(-1).tolist())}
            mr.test_accuracy = score_rows(own, answer_rows, f"member {i + 1}", bank.id2speaker)[0]
        results.append(mr)
        member_configs.append({**configs, "params": trial.params})
        del model, result
    combination = combine(valid_probs, bank.labels[valid_ids].cpu(), all_data)
    for mr, weight in zip(results, combination.weights):
        mr.weight = weight
    valid_accuracy = combination.valid_accuracy
    test_mix = sum(weight * probs for weight, probs in zip(combination.weights, test_probs) if weight)
    outputs_begin()  # from here on a signal waits: the CSV, config and artifacts are written whole
    write_labels(task, test_mix.argmax(-1).tolist(), out)
    test_accuracy, test_n = score_files(out, answers, bank.id2speaker) if answers else (None, None)
    config_path = home / "config.json"
    write_text(config_path, json.dumps({
        "study": study.study_name, "label": label, "steps": steps, "all_data": all_data,
        "combine": "weighted mean of the members' softmax probabilities: " + combination.describe(),
        "weights": combination.weights,
        "selection": {"method": "ensemble selection (Caruana et al. 2004): greedy forward selection with "
                                "replacement on validation accuracy, ties broken by validation log-loss",
                      "chosen_on": combination.chosen_on, "picks": combination.picks,
                      "equal_mean_valid_accuracy": combination.equal_mean_valid_accuracy},
        "valid_accuracy": valid_accuracy, "test_accuracy": test_accuracy, "test_utterances": test_n,
        "answers": str(answers) if answers else None,
        "members": [{**asdict(m), **c} for m, c in zip(results, member_configs)],
    }, indent=2))
    from search.artifacts import upload_files

    files = [Path(m.model_file) for m in results] + [config_path, out]
    artifacts = upload_files(study, label, files, artifact_folder(study.study_name), steps)
    study.set_user_attr("final_ensemble", {
        "label": label, "steps": steps, "all_data": all_data, "valid_accuracy": valid_accuracy,
        "test_accuracy": test_accuracy, "combine": combination.describe(),
        "members": [{"trial": m.trial, "seed": m.seed, "weight": m.weight, "valid_accuracy": m.valid_accuracy,
                     "best_step": m.best_step, "test_accuracy": m.test_accuracy, "all_data_steps": m.all_data_steps}
                    for m in results],
        "artifacts": artifacts, "artifact_dir": str(artifact_folder(study.study_name)),
    })
    write_study_note(study)  # the dashboard's study note shows the ensemble
    return EnsembleResult(label, results, valid_accuracy, out, home, all_data, test_accuracy, test_n, answers,
                          artifacts, combination)


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


def finalize_members(study: optuna.Study, request: FinalizeRequest) -> None:
    """``search finalize top --k K [--seeds] [--all-data]`` and ``search finalize best|N --all-data``: pick
    the members, train them (printing progress) and print the members' and the ensemble's results."""
    settings_seed = study_seed(study)
    k, steps, all_data = request.k or 3, request.steps, request.all_data
    if request.which == "top":
        members = pick_top(study, k, request.seeds, settings_seed)
        first = members[0].trial.number
        label = (f"trial{first}-seeds{k}" if request.seeds else f"top{k}") + ("-all-data" if all_data else "")
        what = (f"the best configuration (trial #{first}) with {k} seeds" if request.seeds else
                f"the top {k} distinct configurations (trials " + ", ".join(f"#{m.trial.number}" for m in members) + ")")
    else:
        members = single(pick_trial(study, request.which), settings_seed)
        label, what = f"trial{members[0].trial.number}-all-data", f"trial #{members[0].trial.number}"
    name = f"{label}-steps{steps}"
    out, echo, task = setup(study, request, name)
    echo(f"finalizing {what} of {study.study_name!r}: {steps} steps each on {task.device}"
         + ("; then each again on train + validation for its best step count" if all_data else ""))

    def on_eval(i: int, phase: str, step: int, total: int, metrics: dict) -> None:
        echo_eval(echo, step, total, metrics, member=f"member {i + 1}/{len(members)}", phase=phase)

    result = finalize_ensemble(study, members, task, steps, out, final_folder(study.study_name), label, all_data,
                               echo, on_eval, request.checkpoint_every)
    for line in summary_lines(result):
        echo(line)
    if all_data:
        echo("--all-data: the predictions come from models trained on train + validation for the step count "
             "their validation run chose; the validation split no longer scores them (valid above: the validation runs)")
    echo_results(echo, result, study.study_name, f"members and config saved in {result.folder}")
    publish(study, request, name, result.predictions_path, result.valid_accuracy, result.test_accuracy, echo)
