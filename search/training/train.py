"""The training loop. It knows nothing of Optuna: it calls ``on_eval(step, metrics)`` at each
evaluation, and a caller that wants to stop early (a pruner) raises from that callback.

What it does differently from the HW04 sample code, and why:
- crops are cut from the feature bank on the device: no DataLoader, no host-to-device copy per step;
- the loss is summed on the device and read back only at evaluation: no host sync per step;
- validation runs on full-length utterances (search/training/evaluation.py), and only at the steps where something
  reads it (search/running/schedule.py);
- the best weights are copied, not kept by reference;
- bf16 autocast and fused AdamW on CUDA, the whole step replayed as a CUDA graph (search/training/train_step.py);
- the gradient norm is clipped (``grad_clip``, inside the graph: no host sync);
- with ``recover_collapse`` (finalize's long runs), a collapse rolls the model and AdamW state back to the last
  good evaluation, halves the peak learning rate and goes on (search/training/collapse.py): long runs of some
  configurations collapsed without recovering, where search trials are too short to (BENCHMARKS.md, "Finalize
  over 70,000 steps").
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from model import Classifier, ModelConfig, TrainConfig, build_model, count_parameters
from search.running import schedule
from search.training.checkpoints import REQUIRED, is_finished, other_data, set_aside, usable_checkpoint
from search.training.collapse import CollapseGuard, describe_rollback
from search.errors import TrainingDiverged
from search.training.evaluation import EvalBatches, bucket_length, evaluate, predict, predict_proba
from search.files import save_torch
from search.running.task import Task
from search.training.train_step import TrainStep, autocast as _autocast

# Imported from here by callers written before the loop's parts had modules of their own.
__all__ = ["TrainConfig", "TrainResult", "TrainStep", "CollapseGuard", "EvalBatches", "bucket_length", "evaluate",
           "predict", "predict_proba", "describe_rollback", "report_progress", "train", "lr_lambda", "margin_scale",
           "evaluation_steps", "_autocast", "_save_atomically"]


@dataclass
class TrainResult:
    model: Classifier  # with the best validation weights loaded
    best_accuracy: float
    best_step: int
    history: list[dict] = field(default_factory=list)  # one dict of metrics per evaluation
    steps_per_second: float = 0.0  # training steps only, evaluations excluded
    eval_seconds: float = 0.0  # wall time in validation (the device synchronized), all evaluations together
    parameters: int = 0
    cuda_graph: bool = False  # whether the steps ran as a replayed CUDA graph
    # one dict per collapse rolled back: step, to_step, lr (the new peak lr), reason (also in the history,
    # under "rollback", at the evaluation that detected it)
    rollbacks: list[dict] = field(default_factory=list)


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    """Linear warm-up then half-cosine decay to 0, as the sample code's scheduler."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))

    return factor


def margin_scale(step: int, cfg: TrainConfig) -> float:
    """0 -> 1 over the first ``margin_warmup`` share of training, so early scores aren't distorted."""
    ramp = cfg.margin_warmup * cfg.steps
    return 1.0 if ramp <= 0 else min(1.0, step / ramp)


def evaluation_steps(cfg: TrainConfig) -> list[int]:
    """The steps at which validation runs (and the pruner may be asked); always the last one."""
    if cfg.eval_steps:
        return sorted({s for s in cfg.eval_steps if 0 < s <= cfg.steps} | {cfg.steps})
    return schedule.periodic_steps(cfg.steps, cfg.eval_every)


def _save_atomically(state: dict, path: Path) -> None:
    """Write to a temporary file and rename, so a kill never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_torch(state, path)  # a full disk: one line naming the checkpoint (search/files.py)


# A listener for progress while a long training runs (`search run`'s in-trial lines, `search finalize`), set with
# ``report_progress``. A context variable rather than an argument of ``train``: the code between the command and
# the loop (the Optuna objective) need not know, and the loop stays free of Optuna.
_PROGRESS: ContextVar[tuple[float, Callable[[dict], None]] | None] = ContextVar("train_progress", default=None)


@contextmanager
def report_progress(callback: Callable[[dict], None], seconds: float = 10.0):
    """While the block runs, every ``train`` call in this thread calls ``callback(info)`` every ``seconds`` of
    training (none for a training shorter than that). ``info``: ``step``, ``steps`` (the total),
    ``steps_per_second`` (since this call started, evaluations included: the pace an ETA needs),
    ``valid_accuracy`` (the best so far, None before the first evaluation) and ``elapsed``. Reading the step
    count needs no host sync: the CUDA step stays asynchronous."""
    token = _PROGRESS.set((seconds, callback))
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@dataclass
class _Run:
    """One training run's state: what a checkpoint holds (``state_dict``) and the objects that train."""

    model_cfg: ModelConfig
    cfg: TrainConfig
    task: Task
    model: Classifier
    train_step: TrainStep
    generator: torch.Generator  # draws the training batches and crops
    guard: CollapseGuard | None  # with ``recover_collapse``
    step: int = 0
    best_accuracy: float = -1.0
    best_step: int = 0
    best_state: dict | None = None  # a copy of the best weights
    history: list[dict] = field(default_factory=list)
    since_eval: int = 0  # steps summed into the training step's running totals

    @classmethod
    def start(cls, model_cfg: ModelConfig, cfg: TrainConfig, task: Task) -> "_Run":
        torch.manual_seed(cfg.seed)
        model = build_model(model_cfg).to(task.device)
        train_step = TrainStep(model, cfg, task.device)
        generator = torch.Generator(device=task.device)
        generator.manual_seed(cfg.seed)
        guard = CollapseGuard(cfg, model_cfg.loss != "ce", len(task.valid_ids)) if cfg.recover_collapse else None
        return cls(model_cfg, cfg, task, model, train_step, generator, guard)

    def state_dict(self) -> dict:
        return {
            "model_config": self.model_cfg.to_dict(), "train_config": asdict(self.cfg), "step": self.step,
            "data_fingerprint": self.task.bank.fingerprint,
            "model": self.model.state_dict(), "optimizer": self.train_step.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(), "best_accuracy": self.best_accuracy, "best_step": self.best_step,
            "best_model": self.best_state, "history": self.history,
            # the guard's last good model is often best_state itself: torch.save stores shared tensors once
            "guard": self.guard.state_dict() if self.guard is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.step, self.best_accuracy, self.best_step = state["step"], state["best_accuracy"], state["best_step"]
        self.history = state["history"]
        if is_finished(state):  # a finished run (checkpoints.finish): its best weights, nothing left to train
            self.best_state = state["model"]
            return
        self.best_state = state["best_model"]
        self.train_step.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if self.guard is not None:
            self.guard.load_state_dict(state["guard"])


def _read_checkpoint(path: Path, device: torch.device) -> dict | None:
    """The training state saved in ``path``, read once, onto ``device``; None without the file, or when it is
    unusable (``usable_checkpoint`` then moves it aside, saying why)."""
    if not path.exists():
        return None
    error: Exception | None = None
    try:
        state = torch.load(path, map_location=device, weights_only=True)
        if isinstance(state, dict) and all(k in state for k in REQUIRED):
            return state
    except Exception as err:  # noqa: BLE001 - whatever the damage: usable_checkpoint names it
        error = err
    if usable_checkpoint(path) and error is not None:
        raise error  # the file is sound (read on the CPU): the device's own error, e.g. out of memory
    return None


def _resume(run: _Run, checkpoint: Path) -> None:
    """Continue from ``checkpoint`` when it holds this run's training; one of other data is moved aside."""
    state = _read_checkpoint(checkpoint, run.task.device)
    if state is None:
        return
    fingerprint = run.task.bank.fingerprint
    if (old := other_data(state, fingerprint)) is not None:
        # trained on other data: resuming would finish (and predict with) the old data's model
        aside = set_aside(checkpoint, "other-data")
        print(f"warning: {checkpoint}: trained on other data (fingerprint {old}, the data now "
              f"{fingerprint}); moved to {aside}, training starts over", file=sys.stderr)
        return
    saved_cfg = {**asdict(TrainConfig()), **state["train_config"]}  # fields added since: their defaults
    if state["model_config"] != run.model_cfg.to_dict() or saved_cfg != asdict(run.cfg):
        raise ValueError(f"{checkpoint}: written for another configuration; remove it to start over")
    run.load_state_dict(state)


@dataclass
class _Clock:
    """Wall time of one ``train`` call: training steps apart from validation (the device synchronized)."""

    started: float = field(default_factory=time.perf_counter)
    tick: float = field(default_factory=time.perf_counter)  # when the current stretch of training steps began
    train_time: float = 0.0
    eval_seconds: float = 0.0
    steps_run: int = 0  # optimiser steps taken by this call (a rollback moves the run's step back, not this)

    def stop(self, device: torch.device) -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()
        self.train_time += time.perf_counter() - self.tick

    def steps_per_second(self) -> float:
        return self.steps_run / max(self.train_time, 1e-9)


class _Reporter:
    """Calls the ``report_progress`` listener, if any, every few seconds of training: a few host-side reads,
    no device sync."""

    def __init__(self, clock: _Clock) -> None:
        listener = _PROGRESS.get()
        self.clock, self.listener = clock, listener
        self.next = clock.started + listener[0] if listener else math.inf

    def __call__(self, run: _Run) -> None:
        if time.perf_counter() < self.next:
            return
        now = time.perf_counter()
        self.listener[1]({"step": run.step, "steps": run.cfg.steps,
                          "steps_per_second": self.clock.steps_run / (now - self.clock.started),
                          "valid_accuracy": run.best_accuracy if run.best_accuracy >= 0 else None,
                          "elapsed": now - self.clock.started})
        self.next = time.perf_counter() + self.listener[0]


def _take_step(run: _Run, lr_factor: Callable[[int], float]) -> None:
    """One optimiser step on a random batch of crops."""
    cfg, task = run.cfg, run.task
    ids = task.train_ids[torch.randint(len(task.train_ids), (cfg.batch_size,), device=task.device,
                                       generator=run.generator)]
    x, mask = task.bank.random_crops(ids, cfg.segment, run.generator)
    labels = task.bank.labels[ids]
    lr_scale = run.guard.lr_scale if run.guard is not None else 1.0  # halved by each rollback
    run.train_step.set_schedule(cfg.lr * lr_scale * lr_factor(run.step), margin_scale(run.step, cfg))
    run.train_step(x, mask, labels)
    run.step += 1
    run.since_eval += 1


def _validate(run: _Run, valid_batches: EvalBatches, clock: _Clock) -> dict:
    """Validate at the current step, record the metrics in the history, handle a collapse, keep the best
    weights, and start the next window of running totals."""
    cfg, step, ts = run.cfg, run.step, run.train_step
    train_loss = float(ts.loss_sum) / run.since_eval  # the one host sync per evaluation
    if not math.isfinite(train_loss) and not (run.guard is not None and run.guard.can_roll_back()):
        raise TrainingDiverged(f"training loss became {train_loss} before step {step}")
    eval_started = time.perf_counter()
    accuracy = valid_batches.accuracy(run.model)  # reads one number back: the device is done
    clock.eval_seconds += time.perf_counter() - eval_started
    metrics = {"step": step, "valid_accuracy": accuracy, "train_loss": train_loss,
               "train_accuracy": float(ts.correct_sum) / (run.since_eval * cfg.batch_size),
               "elapsed": time.perf_counter() - clock.started, "steps_per_second": clock.steps_per_second()}
    if cfg.grad_clip > 0:
        metrics["grad_norm"] = float(ts.grad_norm_sum) / run.since_eval
        metrics["clipped"] = float(ts.clipped_sum) / run.since_eval
    run.history.append(metrics)
    window_start = step - run.since_eval
    verdict = "ok" if run.guard is None else run.guard.check(window_start, train_loss, accuracy, run.best_accuracy)
    _handle_collapse(run, verdict, metrics)
    improved = accuracy > run.best_accuracy and "rollback" not in metrics
    if improved:
        run.best_accuracy, run.best_step = accuracy, run.step
        run.best_state = _copy_weights(run.model)
    if verdict == "ok" and run.guard is not None:
        model_state = run.best_state if improved else _copy_weights(run.model)
        run.guard.keep(run.step, window_start, train_loss, model_state, ts.optimizer_snapshot())
    for total in (ts.loss_sum, ts.correct_sum, ts.grad_norm_sum, ts.clipped_sum):
        total.zero_()
    run.since_eval = 0
    return metrics


def _handle_collapse(run: _Run, verdict: str, metrics: dict) -> None:
    """On a collapse, roll back (the steps since the last good evaluation run again, at a lower lr) while
    rollbacks are left; after that, only record it: the best weights stay."""
    if verdict in ("ok", "suspect"):
        return
    if run.guard.can_roll_back():
        metrics["rollback"] = run.guard.roll_back(run.step, verdict, run.model, run.train_step, run.cfg.lr)
        run.step = metrics["rollback"]["to_step"]
    else:
        metrics["collapse"] = verdict


def _copy_weights(model: Classifier) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    task: Task,
    on_eval: Callable[[int, dict], None] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
    resume_from: Path | None = None,
) -> TrainResult:
    """Train a classifier from scratch (or resume from ``checkpoint`` if it exists).

    ``on_eval(step, metrics)`` runs after each validation; metrics hold ``valid_accuracy``,
    ``train_loss``, ``train_accuracy`` (over the steps since the last evaluation) and ``elapsed``; with
    ``grad_clip``, ``grad_norm`` (the mean pre-clip norm) and ``clipped`` (the share of steps clipped); with
    ``recover_collapse``, ``rollback`` (a dict: step, to_step, lr, reason) when this evaluation found a collapse
    and training goes on from step ``to_step``. With ``checkpoint`` set, the full training state is saved there
    atomically every ``checkpoint_every`` steps and at each evaluation, and a later call resumes from it;
    ``resume_from``: resume from that file instead (a finished run's, search/training/checkpoints.py ``finish``).
    """
    run = _Run.start(model_cfg, cfg, task)
    lr_factor = lr_lambda(cfg.warmup_steps, cfg.steps)
    if checkpoint is not None or resume_from is not None:
        _resume(run, resume_from or checkpoint)
    eval_steps = set(evaluation_steps(cfg))
    valid_batches = EvalBatches(task.bank, task.valid_ids, cfg.eval_max_frames)  # planned once, run at each
    clock = _Clock()
    report = _Reporter(clock)
    run.model.train()
    try:
        while run.step < cfg.steps:
            _take_step(run, lr_factor)
            clock.steps_run += 1
            report(run)
            if run.step in eval_steps or (checkpoint_every and run.step % checkpoint_every == 0):
                clock.stop(task.device)
                metrics = _validate(run, valid_batches, clock) if run.step in eval_steps else None
                if checkpoint is not None:
                    _save_atomically(run.state_dict(), checkpoint)
                if metrics is not None and on_eval is not None:
                    on_eval(metrics["step"], metrics)
                clock.tick = time.perf_counter()
    except KeyboardInterrupt as interrupt:  # Ctrl-C / SIGTERM: the step reached, for the line that says so
        interrupt.step = run.step
        raise
    finally:  # pruned, diverged or done: give the graph's memory back either way
        graphed = run.train_step.graphed
        run.train_step.close()
    if run.best_state is not None:
        run.model.load_state_dict(run.best_state)
    return TrainResult(run.model, run.best_accuracy, run.best_step, run.history,
                       steps_per_second=clock.steps_per_second(), eval_seconds=clock.eval_seconds,
                       parameters=count_parameters(run.model), cuda_graph=graphed,
                       rollbacks=list(run.guard.rollbacks) if run.guard is not None else [])
