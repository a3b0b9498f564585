"""Horizontal fusion, measured (issue 12, "Beyond"): K same-shape trials trained as one step.

Trials of one architecture differ only in scalars (learning rate, dropout, ...). HFTA (Wang et al., MLSys 2021)
trains such models fused: their weights stacked along a new leading dimension, one set of kernels each K times
wider. Here ``torch.func.stack_module_state`` stacks K sample-code models, ``vmap(grad_and_value(...))`` gives
the K losses' gradients in one pass, and one fused AdamW updates the stacked weights; on CUDA the whole step is
captured as one CUDA graph, as search/training/train.py's TrainStep does for one model.

Printed, one JSON line per K: steps/s of the fused step and model-steps/s (K x steps/s), against our graphed step
of one model (TrainStep, what a trial runs) timed in the same process. What is left out, so the figure is an
upper bound for what fused trials would gain: the batch sampling (static random batches here, copied into the
step's buffers each step as in a trial), gradient clipping, per-trial learning rates and weight decays (one for
all K here), evaluation and everything outside the step. ``ops_without_batching_rule`` names the operations vmap
ran model by model (a loop inside the step; on the CPU, PyTorch 2.13's flash attention).

    python bench/fusion.py --device cuda --ks 1,2,4,8,16 --steps 500
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import time
import warnings

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, stack_module_state, vmap

from model import build_model
from search.running.space import KNOWN_CONFIGS, build_configs
from search.training.train import TrainStep, _autocast


class _LossOf(nn.Module):
    """A classifier whose forward is its training loss: what ``functional_call`` calls."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.model.loss(x, mask, labels, 1.0)[0]


class FusedStep:
    """One AdamW step of K stacked models on K batches: x (K, B, T, n_mels), mask (K, B, T), labels (K, B)."""

    def __init__(self, models: list[nn.Module], device: torch.device, lr: float = 1e-3, weight_decay: float = 0.01):
        self.device = device
        params, buffers = stack_module_state([_LossOf(m) for m in models])  # name -> (K, ...)
        self.params = {name: value.detach().requires_grad_(False) for name, value in params.items()}
        self.buffers = buffers
        base = _LossOf(copy.deepcopy(models[0])).to("meta")  # the structure only; weights come from ``params``

        def loss(p, b, x, mask, labels):
            with _autocast(device, cache=False):
                return functional_call(base, (p, b), (x, mask, labels))

        # randomness="different": each model draws its own dropout masks, as separate trials would
        self.grads = vmap(grad_and_value(loss), in_dims=(0, 0, 0, 0, 0), randomness="different")
        cuda = device.type == "cuda"
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=torch.tensor(lr, device=device) if cuda else lr,
                                           weight_decay=weight_decay, fused=cuda, capturable=cuda)
        self.loss_sum = torch.zeros((), device=device)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> None:
        grads, losses = self.grads(self.params, self.buffers, x, mask, labels)
        for name, value in self.params.items():
            value.grad = grads[name]
        self.optimizer.step()
        self.loss_sum += losses.detach().float().sum()


class Graphed:
    """``step(x, mask, labels)`` replayed as a CUDA graph over static input buffers (eager on the CPU)."""

    def __init__(self, step, example: tuple[torch.Tensor, ...], device: torch.device) -> None:
        self.step, self.static, self.graph = step, tuple(t.clone() for t in example), None
        if device.type == "cuda":
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(3):  # warm-up: lazy inits, AdamW's state
                    step(*self.static)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                step(*self.static)

    def __call__(self, x, mask, labels) -> None:
        for buffer, value in zip(self.static, (x, mask, labels)):
            buffer.copy_(value)
        if self.graph is not None:
            self.graph.replay()
        else:
            self.step(*self.static)


def batches(k: int | None, batch: int, segment: int, n_mels: int, n_classes: int, device: torch.device):
    """A static random batch (leading K dimension unless ``k`` is None): x, an all-true mask, labels."""
    lead = () if k is None else (k,)
    generator = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(*lead, batch, segment, n_mels, device=device, generator=generator)
    mask = torch.ones(*lead, batch, segment, dtype=torch.bool, device=device)
    labels = torch.randint(n_classes, (*lead, batch), device=device, generator=generator)
    return x, mask, labels


def steps_per_second(step, inputs, steps: int, device: torch.device) -> float:
    for _ in range(5):
        step(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step(*inputs)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ks", default="1,2,4,8", help="comma list of fused trial counts K")
    parser.add_argument("--steps", type=int, default=500, help="timed steps per measurement")
    parser.add_argument("--speakers", type=int, default=600)
    parser.add_argument("--attention", default="default", choices=["default", "no-cudnn"],
                        help="no-cudnn: leave cuDNN's attention out (vmap has no batching rule for its backward; nor, "
                             "it turned out, for the memory-efficient kernel's; the plain-matmul path failed under vmap "
                             "and bf16 autocast in torch 2.11: 'expected scalar type Float but found BFloat16')")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.attention == "no-cudnn":
        torch.backends.cuda.enable_cudnn_sdp(False)
    params = KNOWN_CONFIGS["sample-code"]
    model_cfg, train_cfg = build_configs(params, 40, args.speakers, 2000, seed=0)
    shape = (train_cfg.batch_size, train_cfg.segment, model_cfg.n_mels, model_cfg.n_classes)
    print(json.dumps({"what": "environment", "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                      else "cpu", "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "model": "sample-code",
                      "batch": train_cfg.batch_size, "segment": train_cfg.segment,
                      "attention": args.attention}), flush=True)

    torch.manual_seed(0)
    single = TrainStep(build_model(model_cfg).to(device), train_cfg, device)  # a trial's step (graph on CUDA)
    one = steps_per_second(single, batches(None, *shape, device), args.steps, device)
    single.close()
    print(json.dumps({"what": "one_model", "steps_per_second": round(one, 1),
                      "cuda_graph": single.graph_error is None and device.type == "cuda"}), flush=True)
    for k in (int(v) for v in args.ks.split(",")):
        torch.manual_seed(0)
        models = [build_model(model_cfg).to(device) for _ in range(k)]
        inputs = batches(k, *shape, device)
        with warnings.catch_warnings(record=True) as caught:  # ops vmap runs one model at a time (no batching rule)
            warnings.simplefilter("always")
            fused = Graphed(FusedStep(models, device), inputs, device)
            rate = steps_per_second(fused, inputs, args.steps, device)
        looped = sorted({m.group(1) for w in caught if (m := re.search(r"batching rule for (\S+?)\.", str(w.message)))})
        memory = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        print(json.dumps({"what": "fused", "k": k, "steps_per_second": round(rate, 1),
                          "model_steps_per_second": round(k * rate, 1), "vs_one_model": round(k * rate / one, 2),
                          "peak_mib": None if memory is None else round(memory), "ops_without_batching_rule": looped}),
              flush=True)
        del fused, models
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
