"""One optimiser step: forward, loss, backward, gradient clipping and AdamW, eager or replayed as a CUDA graph.

On CUDA the whole step is captured once as a CUDA graph and replayed: a small model's step is a few hundred tiny
kernels, and launching them one by one from Python costs more than running them (BENCHMARKS.md, "GPU: our
trainer against the sample code's loop"); capture is cheap enough to pay for itself within the shortest trial.
"""

from __future__ import annotations

import warnings

import torch

from model import Classifier, TrainConfig


def autocast(device: torch.device, cache: bool = True, bf16: bool = True):
    """bf16 on CUDA (unless ``bf16`` is False), off on the CPU. ``cache=False`` inside CUDA-graph capture:
    cached weight casts would live in the graph's memory pool."""
    if device.type == "cuda" and bf16:
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=cache)
    return torch.autocast("cpu", enabled=False)


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
        with autocast(self.device, cache=not self.graph_wanted, bf16=self.bf16):
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
