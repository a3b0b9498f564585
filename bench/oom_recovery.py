"""After a training runs out of GPU memory, can the same process train the next one?

HW04-Bench call 10 (BENCHMARKS.md): one recorder worker ran out of memory on a small configuration (625k
parameters), and then every run handed to that worker failed with "out of memory", 105 in a row (94 within 0.2 s),
while the other five workers trained on. This script asks the question on its own: in a fresh process, cap this
process's share of the card (``torch.cuda.set_per_process_memory_fraction``) so that a large configuration runs
out of memory (at warm-up, at CUDA-graph capture or at validation, depending on the cap), then lift the cap,
clean up as the recorder did (``empty_cache``) or as ``search run``'s objective does (``gc.collect`` first), and
train a small configuration. One JSON line per case; the cases run without MPS, then under it.

    python bench/oom_recovery.py --data /tmp/hw04 --fractions 0.01,0.03,0.06
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# HW04-Bench's Sobol 1 (d80, 16 heads, 6 layers, 384-frame segments): the largest activations of the space's
# small models; and the sample code's model, which fits anywhere.
LARGE = {"encoder": "transformer", "d_model": 80, "nhead": 16, "layers": 6, "ffn": 1024, "dropout": 0.01,
         "norm_first": True, "pooling": "sap", "head": "linear", "loss": "am", "margin": 0.07, "scale": 22.0,
         "time_masks": 1, "time_mask_width": 25, "freq_masks": 0, "lr": 0.00017, "weight_decay": 0.06,
         "batch_size": 32, "segment": 384}
SMALL = {"encoder": "transformer", "d_model": 80, "nhead": 2, "layers": 1, "ffn": 256, "norm_first": False,
         "pooling": "mean", "head": "mlp", "head_hidden": 80, "dropout": 0.1, "loss": "ce", "label_smoothing": 0.0,
         "time_masks": 0, "freq_masks": 0, "lr": 0.001, "weight_decay": 0.01, "batch_size": 32, "segment": 128}


def _train(task, params: dict, steps: int) -> dict:
    import torch

    from search.running import space
    from search.training.train import train

    model_cfg, train_cfg = space.build_configs(params, task.bank.n_mels, task.bank.n_speakers, steps, 0,
                                               eval_steps=[steps])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = train(model_cfg, train_cfg, task)
            outcome = {"ended": "complete", "cuda_graph": result.cuda_graph}
        except torch.OutOfMemoryError as err:
            outcome = {"ended": "out of memory", "error": str(err).splitlines()[0][:160]}
        except Exception as err:  # noqa: BLE001 - what else a poisoned process raises is part of the answer
            outcome = {"ended": f"{type(err).__name__}", "error": str(err).splitlines()[0][:160]}
    graph = [str(w.message)[:160] for w in caught if "CUDA graph" in str(w.message)]
    return {**outcome, **({"graph_warning": graph[0]} if graph else {})}


def one_case(data: str, fraction: float, collect: bool, steps: int) -> dict:
    import gc

    import torch

    from search.running.task import load_task

    device = torch.device("cuda", 0)  # set_per_process_memory_fraction needs an index
    task = load_task(data, 0, device)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    large = _train(task, LARGE, steps)
    if collect:
        gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(1.0, device)
    held = torch.cuda.memory_allocated(device)
    small = _train(task, SMALL, steps)
    return {"fraction": fraction, "cap_mib": round(fraction * torch.cuda.get_device_properties(device).total_memory
                                                   / 2**20), "cleanup": "gc.collect + empty_cache" if collect
            else "empty_cache", "large": large, "held_after_cleanup_mib": round(held / 2**20, 1), "small": small}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a prepared HW04-layout folder (its bank packed)")
    parser.add_argument("--fractions", default="0.01,0.03,0.06", help="caps on this process's share of the card")
    parser.add_argument("--steps", type=int, default=20, help="training steps of each configuration")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # "fraction,collect": one case, in this process
    args = parser.parse_args(argv)
    if args.case:
        fraction, collect = args.case.split(",")
        print(json.dumps(one_case(args.data, float(fraction), collect == "1", args.steps)), flush=True)
        return 0
    from search.processes.mps import gpu_sharing

    # every case in a fresh process (a poisoned allocator must not carry over to the next case), all side by side,
    # without MPS and then under MPS as the recorder's and `search run`'s workers share a card
    cases = [(f, c) for f in args.fractions.split(",") for c in ("0", "1")]
    for sharing in (False, True):
        with gpu_sharing(["cuda:0", "cuda:0"], enabled=sharing) as status:
            procs = [subprocess.Popen([sys.executable, __file__, "--data", args.data, "--steps", str(args.steps),
                                       "--case", f"{f},{c}"], stdout=subprocess.PIPE, text=True) for f, c in cases]
            for (f, c), proc in zip(cases, procs):
                out, _ = proc.communicate()
                line = json.loads(out) if out.strip() else {"fraction": float(f), "collect": c == "1",
                                                             "exit": proc.returncode}
                print(json.dumps({"mps": status, **line}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
