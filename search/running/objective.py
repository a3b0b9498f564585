"""The Optuna objective: sample a configuration, train it, report validation accuracy as it goes.

The pruner sees the full-length validation accuracy at each evaluation step (the resource is the
training step; a trial validates at the pruner's rungs and at the end: search/running/schedule.py) and may stop the
trial there. Everything a user wants to see per trial goes into its
user attributes, short and flat (search/reporting/attrs.py): the resolved config, parameter count, speed, device,
the training loss at each validation, and why it ended.
"""

from __future__ import annotations

import gc
import os
import socket
import time
from typing import Callable

import optuna
import torch

from model import build_model, count_parameters
from search.db import optuna_internals
from search.running import schedule
from search.running import space as search_space
from search.reporting.attrs import config_attrs, rounded
from search.finalizing.budget import ATTR as FINALIZE_SECONDS, device_name, trial_finalize_seconds
from search.errors import TrainingDiverged, out_of_gpu_memory
from search.running.task import Task
from search.training.train import train


FULL_BUDGET = "full_budget"  # a queued trial's user attribute: never pruned


def trial_seed(study_seed: int, trial_number: int) -> int:
    """Training seed of a trial: fixed by the study seed and the trial number."""
    return study_seed * 100_003 + trial_number


def accuracy_decimals(n_valid: int) -> int:
    """Decimals that keep every validation accuracy of ``n_valid`` utterances apart: accuracies are multiples of
    1/n_valid, so rounded to d decimals with 10**d >= n_valid two different ones stay different and in order, and
    equal ones equal (at least 4: the precision every table prints)."""
    return max(4, len(str(max(n_valid, 1) - 1)))


class Objective:
    def __init__(self, task: Task, budget: int, space: list[search_space.Param], seed: int,
                 report_steps: tuple[int, ...] = (), on_start: Callable[[dict], None] | None = None) -> None:
        self.on_start = on_start  # told each trial's number, origin and parameters once they are sampled
        self.task = task
        self.budget = budget
        self.space = space
        self.seed = seed
        self.report_steps = report_steps  # steps a user wants validated besides the pruner's rungs and the end
        # The value Optuna stores and optuna-dashboard shows (its best-trial card: 0.6987 rather than
        # 0.6987179487179487), rounded without changing which trial is better or tied (accuracy_decimals)
        self.decimals = accuracy_decimals(len(task.valid_ids))

    def __call__(self, trial: optuna.Trial) -> float:
        """The trial's best validation accuracy; an interrupt is the runner's to record (search/running/runner.py)."""
        try:
            # Which machine and process ran the trial: the one to look at if it ends FAIL by heartbeat.
            trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            return self._run(trial)
        except optuna.TrialPruned:
            raise
        except Exception as err:  # e.g. a configuration the model refuses (an enqueued out-of-space one)
            if "ended" not in trial.user_attrs:
                trial.set_user_attr("ended", f"failed: {type(err).__name__}: {err}"[:500])
            raise

    def _record_end(self, trial: optuna.Trial, seconds: float, last: dict, evaluations: int) -> None:
        """The time the trial took and where it got to (``last``: its latest evaluation's metrics)."""
        trial.set_user_attr("wall_seconds", round(seconds, 2))
        if not last:
            return
        trial.set_user_attr("last_step", last["step"])
        trial.set_user_attr("train_loss", round(last["train_loss"], 4))
        # training steps only; at the last evaluation of a complete trial, the whole run's (TrainResult's)
        trial.set_user_attr("steps_per_second", round(last["steps_per_second"], 2))
        # a finalize of this configuration at the default steps, on this device (search/finalizing/budget.py)
        estimate = trial_finalize_seconds({"device": self.task.device.type, "steps_per_second": last["steps_per_second"],
                                           "wall_seconds": seconds, "last_step": last["step"]}, evaluations)
        if estimate is not None:
            trial.set_user_attr(FINALIZE_SECONDS, estimate)

    def _run(self, trial: optuna.Trial) -> float:
        params = search_space.suggest(trial, self.space)
        if self.on_start is not None:
            self.on_start({"number": trial.number, "origin": trial_origin(trial), "params": params})
        # Validate where it is read: the rungs of the pruner this study runs with, and the end (search/running/schedule.py)
        eval_steps = schedule.trial_steps(self.budget, trial.study.pruner, self.report_steps)
        model_cfg, train_cfg = search_space.build_configs(
            params, self.task.bank.n_mels, self.task.bank.n_speakers, self.budget, trial_seed(self.seed, trial.number),
            eval_steps=eval_steps)
        train_cfg = search_space.as_run_on(train_cfg, self.task.device.type)  # recorded as it runs (CPU: fp32, eager)
        # flat, one value per attribute, only what the sampled parameters lack (search/reporting/attrs.py)
        for key, value in config_attrs(params, model_cfg.to_dict(), vars(train_cfg)).items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("device", device_name(self.task.device))
        # on the meta device: no memory, no initialisation, the same count (train() builds the real one)
        with torch.device("meta"):
            trial.set_user_attr("parameters", count_parameters(build_model(model_cfg)))
        started = time.perf_counter()
        train_losses: list[float] = []
        last: dict = {}  # the latest evaluation's metrics, written once when the trial ends
        # `search enqueue --full-budget`: a configuration the user wants trained to the end (a pruned trial's, to
        # finalize it), which the study's pruner leaves alone
        prunable = not trial.user_attrs.get(FULL_BUDGET)

        def on_eval(step: int, metrics: dict) -> None:
            # Each write is one storage transaction (a lock other workers wait for on SQLite): per evaluation
            # only the value the pruner reads and the loss curve a running trial shows; the rest once, at the end.
            trial.report(round(metrics["valid_accuracy"], self.decimals), step)
            train_losses.append(rounded(metrics["train_loss"]))  # beside the validation curve (search/reporting/attrs.py)
            trial.set_user_attr("train_loss_curve", train_losses)
            last.update(metrics)
            if prunable and trial.should_prune():
                trial.set_user_attr("ended", f"pruned at step {step}")
                _record_threshold(trial)
                raise optuna.TrialPruned(f"pruned at step {step} (valid accuracy {metrics['valid_accuracy']:.4f})")

        try:
            result = train(model_cfg, train_cfg, self.task, on_eval=on_eval)
        except TrainingDiverged as err:
            trial.set_user_attr("ended", f"failed: {err}")
            raise
        except RuntimeError as err:
            if not out_of_gpu_memory(err):
                raise  # other failures: __call__
            trial.set_user_attr("ended", "failed: out of GPU memory")
            gc.collect()
            torch.cuda.empty_cache()  # give the memory back before the next trial of this worker
            raise
        finally:  # complete, pruned or failed (other failures: __call__)
            self._record_end(trial, time.perf_counter() - started, last, len(train_losses))
        trial.set_user_attr("eval_seconds", round(result.eval_seconds, 4))  # of wall_seconds: validation's share
        trial.set_user_attr("cuda_graph", result.cuda_graph)
        trial.set_user_attr("best_step", result.best_step)
        trial.set_user_attr("ended", f"complete after {self.budget} steps")
        return round(result.best_accuracy, self.decimals)


def trial_origin(trial: optuna.Trial) -> str:
    """Where a trial's configuration came from: ``warm start: <label>`` (a retry says of which trial), ``retry of
    #N`` (a dead worker's trial queued again), ``enqueued`` (by hand, ``study.enqueue_trial``) or ``sampled``."""
    label, retry_of = trial.user_attrs.get("warm_start"), trial.user_attrs.get("retry_of")
    enqueued, failed_trial = optuna_internals.queued_marks(trial)
    if label:
        return f"warm start: {label}" + (f", retry of #{retry_of}" if retry_of is not None else "")
    if failed_trial is not None:
        return f"retry of #{failed_trial}"
    return "enqueued" if enqueued else "sampled"


def _record_threshold(trial: optuna.Trial) -> None:
    """The value the pruner needed where it stopped ``trial`` (``prune_threshold``): what the trial lost to."""
    from search.running.sampler import needed_to_go_on

    frozen = optuna_internals.storage_of(trial.study).get_trial(optuna_internals.trial_id(trial))
    needed = needed_to_go_on(trial.study.pruner, trial.study, frozen)
    if needed is not None:
        trial.set_user_attr("prune_threshold", round(needed, 4))


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"
