"""The training loop. It knows nothing of Optuna: it calls ``on_eval(step, metrics)`` at each
evaluation, and a caller that wants to stop early (a pruner) raises from that callback.

What it does differently from the HW04 sample code, and why:
- crops are cut from the feature bank on the device: no DataLoader, no host-to-device copy per step;
- the loss is summed on the device and read back only at evaluation: no host sync per step;
- validation runs on full-length utterances, batched by length with padding masks (crops understate
  accuracy by ~0.17 on HW04);
- the best weights are copied, not kept by reference;
- bf16 autocast and fused AdamW on CUDA;
- on CUDA the whole step (forward, backward, AdamW) is captured once as a CUDA graph and replayed: a
  small model's step is a few hundred tiny kernels, and launching them one by one from Python costs
  more than running them (see BENCHMARKS.md: ~10x the steps/s for the sample model on an H100). Capture
  is cheap (a 1,500-step timed run on the H100, warm-up and capture included, took 0.84 s), so it pays
  for itself within the shortest trial.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from data.bank import FeatureBank
from model import Classifier, ModelConfig, build_model, count_parameters
from search.errors import TrainingDiverged
from search.task import Task


@dataclass
class TrainConfig:
    steps: int = 70_000  # optimiser steps (the sample code: 70,000)
    batch_size: int = 32
    segment: int = 128  # training crop length in frames
    lr: float = 1e-3  # peak learning rate, after warm-up
    weight_decay: float = 0.01
    warmup_steps: int = 1000  # linear warm-up, then cosine decay to 0
    eval_every: int = 2000  # steps between full-length validations (and one at the end)
    margin_warmup: float = 0.2  # share of training over which margin losses ramp their margin from 0
    seed: int = 0  # model init, dropout and crop sampling
    eval_max_frames: int = 1 << 16  # padded frames per evaluation batch
    cuda_graph: bool = True  # replay the training step as a CUDA graph on GPUs (ignored on CPU)

    def evaluation_steps(self) -> list[int]:
        """The steps at which validation runs (and the pruner may be asked)."""
        steps = list(range(self.eval_every, self.steps + 1, self.eval_every))
        return steps if steps and steps[-1] == self.steps else steps + [self.steps]


@dataclass
class TrainResult:
    model: Classifier  # with the best validation weights loaded
    best_accuracy: float
    best_step: int
    history: list[dict] = field(default_factory=list)  # one dict of metrics per evaluation
    steps_per_second: float = 0.0  # training steps only, evaluations excluded
    parameters: int = 0
    cuda_graph: bool = False  # whether the steps ran as a replayed CUDA graph


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


def _autocast(device: torch.device, cache: bool = True):
    """bf16 on CUDA, off on the CPU. ``cache=False`` inside CUDA-graph capture: cached weight casts would
    live in the graph's memory pool."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return torch.autocast("cpu", enabled=False)


@torch.no_grad()
def predict(model: Classifier, bank: FeatureBank, ids: torch.Tensor, max_frames: int = 1 << 16) -> torch.Tensor:
    """Predicted labels for utterances ``ids`` at full length, in the order of ``ids``.

    Batched by length with padding masks; equal to one utterance at a time because padding is masked.
    """
    was_training = model.training
    model.eval()
    device = bank.device
    predictions = torch.empty(len(ids), dtype=torch.long, device=device)
    position = {int(u): i for i, u in enumerate(ids.tolist())}
    for batch in bank.length_batches(ids, max_frames):
        batch = batch.to(device)
        longest = int(bank.lengths[batch].max())
        x, mask = bank.gather(batch, torch.zeros_like(batch), longest)
        with _autocast(device):
            logits = model(x, mask)
        slots = torch.tensor([position[int(u)] for u in batch.tolist()], device=device)
        predictions[slots] = logits.argmax(-1)
    model.train(was_training)
    return predictions


def evaluate(model: Classifier, bank: FeatureBank, ids: torch.Tensor, max_frames: int = 1 << 16) -> float:
    """Full-length accuracy on utterances ``ids``."""
    correct = (predict(model, bank, ids, max_frames) == bank.labels[ids]).sum()
    return float(correct) / max(1, len(ids))


def _save_atomically(state: dict, path: Path) -> None:
    """Write to a temporary file and rename, so a kill never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


class TrainStep:
    """One optimiser step on a batch: forward, loss, backward, AdamW, and the running loss/accuracy sums.

    Eager on the CPU; on CUDA with ``cfg.cuda_graph`` (the default) the step is captured as a CUDA graph
    after a few eager warm-up steps (which also create AdamW's state) and replayed from then on. Everything that changes
    between steps lives in tensors the graph reads in place: the batch (copied into static buffers),
    the learning rate and the margin scale. Dropout and SpecAugment draw from the default CUDA
    generator, whose state graphs advance on every replay. The model's parameters stay the same
    tensors, so evaluation, checkpoints and ``load_state_dict`` work on them as usual.
    """

    WARMUP = 3  # eager steps before capture (the CUDA-graph recipe: let lazy inits and allocations settle)

    def __init__(self, model: Classifier, cfg: TrainConfig, device: torch.device) -> None:
        self.model, self.device = model, device
        self.graph_wanted = cfg.cuda_graph and device.type == "cuda"
        # The margin scale is a float for eager steps, or a device tensor the graph reads in place; the
        # same for the learning rate, which the optimizer holds (a tensor lr needs capturable=True).
        self.margin: float | torch.Tensor
        if self.graph_wanted:
            self.margin = torch.ones((), device=device)
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=torch.tensor(cfg.lr, device=device),
                                               weight_decay=cfg.weight_decay, fused=True, capturable=True)
        else:
            self.margin = 1.0
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                               fused=device.type == "cuda")
        self.loss_sum = torch.zeros((), device=device)
        self.correct_sum = torch.zeros((), device=device, dtype=torch.long)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static: tuple[torch.Tensor, ...] | None = None  # x, mask, labels read by the graph
        self.eager_steps = 0
        self.graph_error: str | None = None  # why capture failed, if it did (the step then stays eager)

    def set_schedule(self, lr: float, margin_scale: float) -> None:
        if torch.is_tensor(self.margin):
            for group in self.optimizer.param_groups:
                group["lr"].fill_(lr)  # a kernel launch with the value as argument: no host sync
            self.margin.fill_(margin_scale)
        else:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self.margin = margin_scale

    def _forward_backward(self, x, mask, labels) -> None:
        # cache=False on the graph path: in its warm-up and fallback steps too, so every step is the same
        with _autocast(self.device, cache=not self.graph_wanted):
            loss, logits = self.model.loss(x, mask, labels, self.margin)
        loss.backward()
        self.optimizer.step()
        self.loss_sum += loss.detach().float()
        self.correct_sum += (logits.detach().argmax(-1) == labels).sum()

    def _eager(self, x, mask, labels) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._forward_backward(x, mask, labels)

    @property
    def graphed(self) -> bool:
        return self.graph is not None

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
        if not self.graph_wanted or self.graph_error is not None:  # CPU, graph off, or capture failed
            self._eager(x, mask, labels)
            return
        if self.graph is None and self.eager_steps < self.WARMUP:
            # Warm-up on a side stream, as PyTorch's whole-network capture recipe does.
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self._eager(x, mask, labels)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.eager_steps += 1
            return
        if self.graph is None:
            self.static = (x.clone(), mask.clone(), labels.clone())
            self.optimizer.zero_grad(set_to_none=True)  # the graph's backward then owns the .grad tensors
            graph = torch.cuda.CUDAGraph()
            try:
                # thread_local: Optuna's heartbeat thread may run meanwhile (it never touches CUDA)
                with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                    self._forward_backward(*self.static)
            except RuntimeError as err:  # an op that cannot be captured: train on, eagerly, and say so
                self.graph_error = str(err).splitlines()[0][:300]
                warnings.warn(f"CUDA graph capture failed, training eagerly: {self.graph_error}")
                self.static = None
                self._eager(x, mask, labels)
                return
            self.graph = graph
        else:
            for buffer, value in zip(self.static, (x, mask, labels)):
                buffer.copy_(value)
        self.graph.replay()

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)  # replaces each group's lr with the saved value
        if torch.is_tensor(self.margin):  # the graph path fills the lr in place: it must stay a device tensor
            for group in self.optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=self.device)

    def close(self) -> None:
        """Free the graph's private memory pool (the next trial in this process needs the memory)."""
        self.optimizer.zero_grad(set_to_none=True)  # the .grad tensors live in the graph's pool
        self.graph, self.static = None, None


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    task: Task,
    on_eval: Callable[[int, dict], None] | None = None,
    checkpoint: Path | None = None,
    checkpoint_every: int = 0,
) -> TrainResult:
    """Train a classifier from scratch (or resume from ``checkpoint`` if it exists).

    ``on_eval(step, metrics)`` runs after each validation; metrics hold ``valid_accuracy``,
    ``train_loss``, ``train_accuracy`` (over the steps since the last evaluation) and ``elapsed``.
    With ``checkpoint`` set, the full training state is saved there atomically every
    ``checkpoint_every`` steps and at each evaluation, and a later call resumes from it.
    """
    device = task.device
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg).to(device)
    train_step = TrainStep(model, cfg, device)
    schedule = lr_lambda(cfg.warmup_steps, cfg.steps)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)

    step, best_accuracy, best_step, best_state, history = 0, -1.0, 0, None, []
    if checkpoint is not None and checkpoint.exists():
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if state["model_config"] != model_cfg.to_dict() or state["train_config"] != asdict(cfg):
            raise ValueError(f"{checkpoint}: written for another configuration; remove it to start over")
        model.load_state_dict(state["model"])
        train_step.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        step, best_accuracy, best_step = state["step"], state["best_accuracy"], state["best_step"]
        best_state, history = state["best_model"], state["history"]

    def save_checkpoint() -> None:
        if checkpoint is not None:
            _save_atomically({
                "model_config": model_cfg.to_dict(), "train_config": asdict(cfg), "step": step,
                "model": model.state_dict(), "optimizer": train_step.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "best_accuracy": best_accuracy, "best_step": best_step,
                "best_model": best_state, "history": history,
            }, checkpoint)

    eval_steps = set(cfg.evaluation_steps())
    first_step = step
    loss_sum, correct_sum = train_step.loss_sum, train_step.correct_sum  # summed on the device
    since_eval, train_time, started = 0, 0.0, time.perf_counter()
    tick = time.perf_counter()
    model.train()
    try:
        while step < cfg.steps:
            ids = task.train_ids[torch.randint(len(task.train_ids), (cfg.batch_size,), device=device, generator=generator)]
            x, mask = task.bank.random_crops(ids, cfg.segment, generator)
            labels = task.bank.labels[ids]
            train_step.set_schedule(cfg.lr * schedule(step), margin_scale(step, cfg))
            train_step(x, mask, labels)
            step += 1
            since_eval += 1

            if step in eval_steps or (checkpoint_every and step % checkpoint_every == 0):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                train_time += time.perf_counter() - tick
                if step in eval_steps:
                    train_loss = float(loss_sum) / since_eval  # the one host sync per evaluation
                    if not math.isfinite(train_loss):
                        raise TrainingDiverged(f"training loss became {train_loss} before step {step}")
                    accuracy = evaluate(model, task.bank, task.valid_ids, cfg.eval_max_frames)
                    metrics = {"step": step, "valid_accuracy": accuracy, "train_loss": train_loss,
                               "train_accuracy": float(correct_sum) / (since_eval * cfg.batch_size),
                               "elapsed": time.perf_counter() - started,
                               "steps_per_second": (step - first_step) / max(train_time, 1e-9)}
                    history.append(metrics)
                    if accuracy > best_accuracy:
                        best_accuracy, best_step = accuracy, step
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    loss_sum.zero_()
                    correct_sum.zero_()
                    since_eval = 0
                save_checkpoint()
                if step in eval_steps and on_eval is not None:
                    on_eval(step, history[-1])
                tick = time.perf_counter()
    finally:  # pruned, diverged or done: give the graph's memory back either way
        graphed = train_step.graphed
        train_step.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(model, best_accuracy, best_step, history,
                       steps_per_second=(step - first_step) / max(train_time, 1e-9), parameters=count_parameters(model),
                       cuda_graph=graphed)
