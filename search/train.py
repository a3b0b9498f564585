"""The training loop. It knows nothing of Optuna: it calls ``on_eval(step, metrics)`` at each
evaluation, and a caller that wants to stop early (a pruner) raises from that callback.

What it does differently from the HW04 sample code, and why:
- crops are cut from the feature bank on the device: no DataLoader, no host-to-device copy per step;
- the loss is summed on the device and read back only at evaluation: no host sync per step;
- validation runs on full-length utterances, batched by length with padding masks (crops understate
  accuracy by ~0.17 on HW04), in batches of a few fixed shapes with one host sync per evaluation
  (``EvalBatches``), and only at the steps where something reads it (search/schedule.py);
- the best weights are copied, not kept by reference;
- bf16 autocast and fused AdamW on CUDA;
- on CUDA the whole step (forward, backward, AdamW) is captured once as a CUDA graph and replayed: a
  small model's step is a few hundred tiny kernels, and launching them one by one from Python costs
  more than running them (see BENCHMARKS.md: ~10x the steps/s for the sample model on an H100). Capture
  is cheap (a 1,500-step timed run on the H100, warm-up and capture included, took 0.84 s), so it pays
  for itself within the shortest trial;
- the gradient norm is clipped (``grad_clip``, inside the graph: no host sync);
- with ``recover_collapse`` (finalize's long runs), a collapse (the training loss jumping far above its recent
  level, or validation accuracy below half the best twice in a row) rolls the model and AdamW state back to the
  last good evaluation, halves the peak learning rate and goes on (``CollapseGuard``). Issue 11 measured the
  one-block Conformer at lr 1e-3 collapsing from 0.695 to 0.013 between 10k and 30k of 70k steps, never to
  recover: a 2,000-step search trial never reaches that regime, a 70,000-step finalize does.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from data.bank import FeatureBank
from model import Classifier, ModelConfig, build_model, count_parameters
from search.checkpoints import other_data, set_aside, usable_checkpoint
from search import schedule
from search.errors import TrainingDiverged
from search.files import replaced
from search.task import Task


@dataclass
class TrainConfig:
    steps: int = 70_000  # optimiser steps (the sample code: 70,000)
    batch_size: int = 32
    segment: int = 128  # training crop length in frames
    lr: float = 1e-3  # peak learning rate, after warm-up
    weight_decay: float = 0.01
    warmup_steps: int = 1000  # linear warm-up, then cosine decay to 0
    eval_every: int = 2000  # steps between full-length validations (and one at the end), unless eval_steps
    # The steps to validate at, instead of every eval_every (search trials: search/schedule.py trial_steps)
    eval_steps: tuple[int, ...] = ()
    margin_warmup: float = 0.2  # share of training over which margin losses ramp their margin from 0
    seed: int = 0  # model init, dropout and crop sampling
    eval_max_frames: int = 1 << 16  # padded frames per evaluation batch
    cuda_graph: bool = True  # replay the training step as a CUDA graph on GPUs (ignored on CPU)
    # Clip the global L2 norm of the gradients to this (0: off), to cut the rare spike that AdamW would turn into a
    # full-size step in a bad direction. Not the 5.0 of ESPnet/WeNet Conformer and SpeechBrain recipes: measured
    # here (NVIDIA H200, 64 speakers x 20 utterances of synthetic data, 8,000 steps, the history's grad_norm and
    # clipped), the sample model's mean norm is 5-12.6 in ordinary training, so 5.0 clipped 94-99% of its steps and
    # left its loss 24% higher at the end (0.383 against 0.309); 10.0 still clipped 31-66%. At 20.0 the sample
    # model clips <= 3% of its steps (loss 0.306) and the one-block Conformer (norms <= 5.2) none; steps/s do not
    # change measurably (the clip is a few foreach kernels in the graph). A fixed setting, not a searched one: a
    # safety bound, whose effect on 70,000-step runs 2,000-step trials could not measure.
    grad_clip: float = 20.0
    # Detect a collapse and roll back (see CollapseGuard). Off by default, i.e. in search trials: a trial's
    # collapse is information for the sampler and pruner, and its runs are too short to collapse; finalize
    # turns it on, where hours of training would otherwise end with the weights of before the collapse.
    recover_collapse: bool = False
    # On CUDA: "bf16" autocast (search trials: fastest, and 2,000-step runs are stable in it); "tf32": fp32 weights
    # and activations with TF32 tensor-core matmuls (finalize); "fp32": no tensor-core rounding at all (slowest).
    # Measured (NVIDIA H200, HW04-scale synthetic set, 70,000 steps, clip 20; BENCHMARKS.md): in bf16 the
    # sample-code model (seed 0) collapsed with and without clipping, and the post-norm d512 Transformer and the
    # d512/16-head Conformer diverged; the same sample-code run in fp32 did not. The CPU always trains in fp32.
    precision: str = "bf16"

    def evaluation_steps(self) -> list[int]:
        """The steps at which validation runs (and the pruner may be asked); always the last one."""
        if self.eval_steps:
            return sorted({s for s in self.eval_steps if 0 < s <= self.steps} | {self.steps})
        return schedule.periodic_steps(self.steps, self.eval_every)


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


def _autocast(device: torch.device, cache: bool = True, bf16: bool = True):
    """bf16 on CUDA (unless ``bf16`` is False), off on the CPU. ``cache=False`` inside CUDA-graph capture:
    cached weight casts would live in the graph's memory pool."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return torch.autocast("cpu", enabled=False)


def bucket_length(frames: int) -> int:
    """The padded length of an evaluation batch whose longest utterance has ``frames`` frames: rounded up to
    8 lengths per octave (at most 12.5% of padding beyond the longest), multiples of 8."""
    frames = max(1, frames)
    granule = max(8, 1 << max(0, frames.bit_length() - 4))
    return -(-frames // granule) * granule


class EvalBatches:
    """Full-length evaluation of utterances ``ids``, planned once (per trial) and run with no host sync.

    Utterances sorted by length, longest first, fill batches in turn. A batch is padded to its longest
    utterance's ``bucket_length`` T and holds ``max_frames // T`` utterances, so its shape is a function of T
    alone, from a small fixed set: the same at every evaluation, in every trial on the same data, so the
    same kernels (and cuBLAS/cuDNN choices) serve them all. The last batch is filled up to a power of two with
    copies of its first utterance, which count for nothing. Padding is masked (equal to one utterance at a
    time; tests/test_train.py checks it against the earlier per-batch evaluation).

    The plan reads the lengths on the host once; an evaluation then only launches work: each batch's correct
    predictions are added up on the device and the total is read once, at the end (``accuracy``). The
    earlier evaluation read each batch's longest length back (a sync per batch), copied index tensors across
    and padded each batch to its own length, a different shape each time.
    """

    def __init__(self, bank: FeatureBank, ids: torch.Tensor, max_frames: int = 1 << 16) -> None:
        self.bank, self.count = bank, len(ids)
        self.labels = bank.labels[ids.to(bank.device)]
        host_ids = ids.cpu()
        lengths = bank.lengths.cpu()[host_ids]
        order = torch.argsort(lengths, descending=True, stable=True)
        # (ids (rows,), slots (n,): their positions in ``ids``, n real rows, padded length T, zeros (rows,))
        self.batches: list[tuple[torch.Tensor, torch.Tensor, int, int, torch.Tensor]] = []
        start = 0
        while start < len(order):
            padded = bucket_length(int(lengths[order[start]]))
            size = max(1, max_frames // padded)
            take = order[start:start + size]
            n = len(take)
            rows = size if n == size else min(size, 1 << (n - 1).bit_length())
            batch = torch.cat([host_ids[take], host_ids[take[:1]].expand(rows - n)])
            self.batches.append((batch.to(bank.device), take.to(bank.device), n, padded,
                                 torch.zeros(rows, dtype=torch.long, device=bank.device)))
            start += n

    def logits(self, model: Classifier):
        """Yield ``(slots, logits)``: logits (n, n_classes) of the utterances at positions ``slots`` of ``ids``,
        at full length. The model is in eval mode meanwhile; callers run it under ``torch.no_grad``."""
        was_training = model.training
        model.eval()
        try:
            for batch, slots, n, padded, starts in self.batches:
                x, mask = self.bank.gather(batch, starts, padded)
                with _autocast(self.bank.device):
                    logits = model(x, mask)
                yield slots, logits[:n]
        finally:
            model.train(was_training)

    @torch.no_grad()
    def correct(self, model: Classifier) -> torch.Tensor:
        """The number of correct predictions, a device tensor: nothing is read back."""
        total = torch.zeros((), dtype=torch.long, device=self.bank.device)
        for slots, logits in self.logits(model):
            total += (logits.argmax(-1) == self.labels[slots]).sum()
        return total

    def accuracy(self, model: Classifier) -> float:
        """Full-length accuracy: the one host sync of an evaluation."""
        return self.correct(model).item() / max(1, self.count)


@torch.no_grad()
def predict(model: Classifier, bank: FeatureBank, ids: torch.Tensor, max_frames: int = 1 << 16) -> torch.Tensor:
    """Predicted labels for utterances ``ids`` at full length, in the order of ``ids``."""
    predictions = torch.empty(len(ids), dtype=torch.long, device=bank.device)
    for slots, logits in EvalBatches(bank, ids, max_frames).logits(model):
        predictions[slots] = logits.argmax(-1)
    return predictions


@torch.no_grad()
def predict_proba(model: Classifier, bank: FeatureBank, ids: torch.Tensor, max_frames: int = 1 << 16) -> torch.Tensor:
    """Class probabilities (softmax of the logits, float32, shape (len(ids), n_speakers)) for utterances
    ``ids`` at full length, in the order of ``ids``: what an ensemble averages."""
    probabilities = torch.zeros(len(ids), bank.n_speakers, dtype=torch.float32, device=bank.device)
    for slots, logits in EvalBatches(bank, ids, max_frames).logits(model):
        probabilities[slots] = torch.softmax(logits.float(), dim=-1)
    return probabilities


def evaluate(model: Classifier, bank: FeatureBank, ids: torch.Tensor, max_frames: int = 1 << 16) -> float:
    """Full-length accuracy on utterances ``ids`` (``EvalBatches``; train() plans its batches once)."""
    return EvalBatches(bank, ids, max_frames).accuracy(model)


def _save_atomically(state: dict, path: Path) -> None:
    """Write to a temporary file and rename, so a kill never leaves a half-written checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with replaced(path) as tmp:
        torch.save(state, tmp)


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
        if cfg.precision not in ("bf16", "tf32", "fp32"):
            raise ValueError(f"precision: expected 'bf16', 'tf32' or 'fp32', got {cfg.precision!r}")
        self.bf16 = cfg.precision == "bf16"
        if device.type == "cuda" and not self.bf16:
            # Process-wide, read when kernels are chosen (and baked into a captured graph): a training process
            # trains one model, and evaluation in the same process is fine with either.
            torch.set_float32_matmul_precision("high" if cfg.precision == "tf32" else "highest")
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
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip = float(cfg.grad_clip)
        self.grad_norm_sum = torch.zeros((), device=device)  # pre-clip global norms, summed like the loss
        self.clipped_sum = torch.zeros((), device=device, dtype=torch.long)  # steps whose norm was clipped
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
        with _autocast(self.device, cache=not self.graph_wanted, bf16=self.bf16):
            loss, logits = self.model.loss(x, mask, labels, self.margin)
        loss.backward()
        if self.clip > 0:
            # foreach norms and one foreach multiply by min(1, clip / norm), all on the device: no .item(), so
            # it is captured into the graph (error_if_nonfinite=False: checking would sync). A non-finite norm
            # gives non-finite weights and loss, which the evaluation sees (a rollback, or TrainingDiverged).
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip, error_if_nonfinite=False, foreach=True)
            self.grad_norm_sum += norm  # () float32
            self.clipped_sum += norm > self.clip
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

    def optimizer_snapshot(self) -> list[dict[str, torch.Tensor]]:
        """A copy of AdamW's per-parameter state (step, exp_avg, exp_avg_sq), in parameter order."""
        return [{k: v.detach().clone() for k, v in self.optimizer.state[p].items()} for p in self.params]

    def restore_optimizer(self, snapshot: list[dict[str, torch.Tensor]]) -> None:
        """Copy ``snapshot`` into the optimizer's state tensors *in place*: a captured graph reads those very
        tensors (load_state_dict would put new ones in their place, which the graph never sees)."""
        with torch.no_grad():
            for p, saved in zip(self.params, snapshot, strict=True):
                live = self.optimizer.state[p]
                for key, value in saved.items():
                    live[key].copy_(value)

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)  # replaces each group's lr with the saved value
        if torch.is_tensor(self.margin):  # the graph path fills the lr in place: it must stay a device tensor
            for group in self.optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=self.device)

    def close(self) -> None:
        """Free the graph's private memory pool (the next trial in this process needs the memory)."""
        self.optimizer.zero_grad(set_to_none=True)  # the .grad tensors live in the graph's pool
        self.graph, self.static = None, None


class CollapseGuard:
    """Tells a collapse from training noise at each evaluation, and keeps what a rollback needs.

    ``check`` gives "ok", "suspect" (a first low validation accuracy) or, for a collapse, why:
    - the training loss (the mean over the ``eval_every`` steps since the last evaluation) is above LOSS_JUMP x
      the lowest of the last RECENT good evaluations' losses (a reference of at least LOSS_FLOOR nats, so that
      a memorised training set going from 0.01 to 0.04 is no collapse). A collapse sends the loss towards chance,
      ln(600) = 6.4 nats for HW04, from 0.5-1.5; window means of a healthy run move by a few percent. A margin
      loss's own warm-up raises its loss several-fold (the margin grows from 0), so for margin losses only
      windows after the ramp count, as loss and as reference;
    - validation accuracy below ACCURACY_DROP x the best for the second evaluation in a row, and by more than
      3 standard errors of the validation split (a 6-utterance split never fires on one utterance);
    - a non-finite training loss.
    At an "ok" evaluation it keeps the model, AdamW's state and the reference losses (the last good state);
    ``roll_back`` copies them back in place and halves the peak learning rate for the rest of the run.
    Its state goes into the checkpoint, so a resumed run rolls back (or not) like an uninterrupted one.
    """

    LOSS_JUMP = 3.0
    LOSS_FLOOR = 0.1
    RECENT = 3
    ACCURACY_DROP = 0.5
    LR_FACTOR = 0.5
    MAX_ROLLBACKS = 3  # then the peak lr is 1/8 of the configured one; a further collapse is only recorded

    def __init__(self, cfg: TrainConfig, margin_loss: bool, n_valid: int) -> None:
        self.margin_ramp_end = cfg.margin_warmup * cfg.steps if margin_loss else 0.0
        self.n_valid = max(1, n_valid)
        self.lr_scale = 1.0
        self.rollbacks: list[dict] = []
        self.recent: list[float] = []  # training losses of the last RECENT good evaluations
        self.suspect = 0  # consecutive evaluations below the accuracy threshold (0 or 1)
        self.good: dict | None = None  # step, model (a state dict), optimizer (snapshot), recent

    def _comparable(self, window_start: int) -> bool:
        return window_start >= self.margin_ramp_end

    def check(self, window_start: int, train_loss: float, accuracy: float, best_accuracy: float) -> str:
        if not math.isfinite(train_loss):
            return f"training loss {train_loss}"
        if self.recent and self._comparable(window_start):
            reference = max(min(self.recent), self.LOSS_FLOOR)
            if train_loss > self.LOSS_JUMP * reference:
                return f"training loss {train_loss:.4f} > {self.LOSS_JUMP:g} x recent {min(self.recent):.4f}"
        standard_error = math.sqrt(max(best_accuracy * (1 - best_accuracy), 0.0) / self.n_valid)
        if accuracy < self.ACCURACY_DROP * best_accuracy and best_accuracy - accuracy > 3 * standard_error:
            self.suspect += 1
            if self.suspect >= 2:
                return (f"valid accuracy {accuracy:.4f} < {self.ACCURACY_DROP:g} x best {best_accuracy:.4f}"
                        " twice in a row")
            return "suspect"
        self.suspect = 0
        return "ok"

    def keep(self, step: int, window_start: int, train_loss: float, model_state: dict,
             optimizer_snapshot: list) -> None:
        """Remember the state after a good evaluation (``model_state``: a copy, never the live tensors)."""
        if self._comparable(window_start):
            self.recent = (self.recent + [train_loss])[-self.RECENT:]
        self.good = {"step": step, "model": model_state, "optimizer": optimizer_snapshot, "recent": list(self.recent)}

    def can_roll_back(self) -> bool:
        return self.good is not None and len(self.rollbacks) < self.MAX_ROLLBACKS

    def roll_back(self, step: int, reason: str, model: Classifier, train_step: TrainStep, peak_lr: float) -> dict:
        # load_state_dict copies into the parameters and buffers in place (param.copy_), and restore_optimizer
        # copies into AdamW's state tensors in place: a captured CUDA graph, which reads exactly those tensors
        # (and the lr tensor, refilled before every step), replays on from the restored state, no recapture.
        model.load_state_dict(self.good["model"])
        train_step.restore_optimizer(self.good["optimizer"])
        self.lr_scale *= self.LR_FACTOR
        self.recent, self.suspect = list(self.good["recent"]), 0
        record = {"step": step, "to_step": self.good["step"], "lr": peak_lr * self.lr_scale, "reason": reason}
        self.rollbacks.append(record)
        return record

    def state_dict(self) -> dict:
        return {"lr_scale": self.lr_scale, "rollbacks": self.rollbacks, "recent": self.recent,
                "suspect": self.suspect, "good": self.good}

    def load_state_dict(self, state: dict) -> None:
        self.lr_scale, self.rollbacks, self.recent = state["lr_scale"], state["rollbacks"], state["recent"]
        self.suspect, self.good = state["suspect"], state["good"]


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


def describe_rollback(record: dict) -> str:
    """The line `search finalize` prints for a rollback record (``TrainResult.rollbacks``)."""
    return (f"collapse at step {record['step']} ({record['reason']}): rolled back to step {record['to_step']}, "
            f"peak lr now {record['lr']:.3g}")


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
    ``train_loss``, ``train_accuracy`` (over the steps since the last evaluation) and ``elapsed``; with
    ``grad_clip``, ``grad_norm`` (the mean pre-clip norm) and ``clipped`` (the share of steps clipped); with
    ``recover_collapse``, ``rollback`` (a dict: step, to_step, lr, reason) when this evaluation found a collapse
    and training goes on from step ``to_step``. With ``checkpoint`` set, the full training state is saved there atomically every
    ``checkpoint_every`` steps and at each evaluation, and a later call resumes from it.
    """
    device = task.device
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg).to(device)
    train_step = TrainStep(model, cfg, device)
    schedule = lr_lambda(cfg.warmup_steps, cfg.steps)
    generator = torch.Generator(device=device)
    generator.manual_seed(cfg.seed)
    guard = CollapseGuard(cfg, model_cfg.loss != "ce", len(task.valid_ids)) if cfg.recover_collapse else None

    step, best_accuracy, best_step, best_state, history = 0, -1.0, 0, None, []
    state = None
    if checkpoint is not None and usable_checkpoint(checkpoint):  # an unusable one is moved aside, saying so
        state = torch.load(checkpoint, map_location=device, weights_only=True)
        if (old := other_data(state, task.bank.fingerprint)) is not None:
            # trained on other data: resuming would finish (and predict with) the old data's model
            aside = set_aside(checkpoint, "other-data")
            print(f"warning: {checkpoint}: trained on other data (fingerprint {old}, the data now "
                  f"{task.bank.fingerprint}); moved to {aside}, training starts over", file=sys.stderr)
            state = None
    if state is not None:
        saved_cfg = {**asdict(TrainConfig()), **state["train_config"]}  # fields added since: their defaults
        if state["model_config"] != model_cfg.to_dict() or saved_cfg != asdict(cfg):
            raise ValueError(f"{checkpoint}: written for another configuration; remove it to start over")
        model.load_state_dict(state["model"])
        train_step.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        step, best_accuracy, best_step = state["step"], state["best_accuracy"], state["best_step"]
        best_state, history = state["best_model"], state["history"]
        if guard is not None:
            guard.load_state_dict(state["guard"])

    def save_checkpoint() -> None:
        if checkpoint is not None:
            _save_atomically({
                "model_config": model_cfg.to_dict(), "train_config": asdict(cfg), "step": step,
                "data_fingerprint": task.bank.fingerprint,
                "model": model.state_dict(), "optimizer": train_step.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(), "best_accuracy": best_accuracy, "best_step": best_step,
                "best_model": best_state, "history": history,
                # the guard's last good model is often best_state itself: torch.save stores shared tensors once
                "guard": guard.state_dict() if guard is not None else None,
            }, checkpoint)

    eval_steps = set(cfg.evaluation_steps())
    valid_batches = EvalBatches(task.bank, task.valid_ids, cfg.eval_max_frames)  # planned once, run at each
    eval_seconds = 0.0
    steps_run = 0  # optimiser steps taken by this call (a rollback moves ``step`` back, not this)
    loss_sum, correct_sum = train_step.loss_sum, train_step.correct_sum  # summed on the device
    since_eval, train_time, started = 0, 0.0, time.perf_counter()
    tick = time.perf_counter()
    listener = _PROGRESS.get()
    next_report = started + listener[0] if listener else math.inf
    model.train()
    try:
        while step < cfg.steps:
            ids = task.train_ids[torch.randint(len(task.train_ids), (cfg.batch_size,), device=device, generator=generator)]
            x, mask = task.bank.random_crops(ids, cfg.segment, generator)
            labels = task.bank.labels[ids]
            lr_scale = guard.lr_scale if guard is not None else 1.0  # halved by each rollback
            train_step.set_schedule(cfg.lr * lr_scale * schedule(step), margin_scale(step, cfg))
            train_step(x, mask, labels)
            step += 1
            steps_run += 1
            since_eval += 1
            if time.perf_counter() >= next_report:  # a few host-side reads every ~10 s; no device sync
                now = time.perf_counter()
                listener[1]({"step": step, "steps": cfg.steps, "steps_per_second": steps_run / (now - started),
                             "valid_accuracy": best_accuracy if best_accuracy >= 0 else None,
                             "elapsed": now - started})
                next_report = time.perf_counter() + listener[0]

            if step in eval_steps or (checkpoint_every and step % checkpoint_every == 0):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                train_time += time.perf_counter() - tick
                evaluated = step if step in eval_steps else None
                if evaluated is not None:
                    train_loss = float(loss_sum) / since_eval  # the one host sync per evaluation
                    if not math.isfinite(train_loss) and not (guard is not None and guard.can_roll_back()):
                        raise TrainingDiverged(f"training loss became {train_loss} before step {step}")
                    eval_started = time.perf_counter()
                    accuracy = valid_batches.accuracy(model)  # reads one number back: the device is done
                    eval_seconds += time.perf_counter() - eval_started
                    metrics = {"step": step, "valid_accuracy": accuracy, "train_loss": train_loss,
                               "train_accuracy": float(correct_sum) / (since_eval * cfg.batch_size),
                               "elapsed": time.perf_counter() - started,
                               "steps_per_second": steps_run / max(train_time, 1e-9)}
                    if cfg.grad_clip > 0:
                        metrics["grad_norm"] = float(train_step.grad_norm_sum) / since_eval
                        metrics["clipped"] = float(train_step.clipped_sum) / since_eval
                    history.append(metrics)
                    window_start = step - since_eval
                    verdict = "ok" if guard is None else guard.check(window_start, train_loss, accuracy, best_accuracy)
                    if verdict not in ("ok", "suspect") and guard.can_roll_back():
                        metrics["rollback"] = guard.roll_back(step, verdict, model, train_step, cfg.lr)
                        step = metrics["rollback"]["to_step"]  # the steps since then run again, at the lower lr
                    elif verdict not in ("ok", "suspect"):
                        metrics["collapse"] = verdict  # no rollback left: recorded; the best weights stay
                    improved = accuracy > best_accuracy and "rollback" not in metrics
                    if improved:
                        best_accuracy, best_step = accuracy, step
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    if verdict == "ok" and guard is not None:
                        model_state = best_state if improved else {
                            k: v.detach().clone() for k, v in model.state_dict().items()}
                        guard.keep(step, window_start, train_loss, model_state, train_step.optimizer_snapshot())
                    for total in (loss_sum, correct_sum, train_step.grad_norm_sum, train_step.clipped_sum):
                        total.zero_()
                    since_eval = 0
                save_checkpoint()
                if evaluated is not None and on_eval is not None:
                    on_eval(evaluated, history[-1])
                tick = time.perf_counter()
    except KeyboardInterrupt as interrupt:  # Ctrl-C / SIGTERM: the step reached, for the line that says so
        interrupt.step = step
        raise
    finally:  # pruned, diverged or done: give the graph's memory back either way
        graphed = train_step.graphed
        train_step.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(model, best_accuracy, best_step, history,
                       steps_per_second=steps_run / max(train_time, 1e-9), eval_seconds=eval_seconds,
                       parameters=count_parameters(model),
                       cuda_graph=graphed, rollbacks=list(guard.rollbacks) if guard is not None else [])
