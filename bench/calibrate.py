"""Calibration (issue 11, part 4): the warm-start configurations trained as long as the sample code trains.

Each configuration of search/running/space.py's KNOWN_CONFIGS (the sample code, the d_model 512 / 16-head "medium" model,
the one-block Conformer with a linear head) is trained for --steps steps (default 70,000, the sample code's) with
finalize's settings (warm-up, evaluation spacing, gradient clipping and collapse recovery), and validated on
full-length utterances every --eval-every steps. It answers: does any of them collapse on this data, does the
guard catch it, and how do their accuracies compare with HW04's (../shared/HW04.md: sample model ~0.857
full-length validation, the one-block Conformer 0.951-0.955 on Kaggle).

Prints one JSON object per evaluation ("what": "eval") and per configuration ("what": "summary": final and best
full-length validation accuracy, best step, rollbacks, seconds), then a table.

GPU (the numbers for BENCHMARKS.md):
    python bench/calibrate.py --data /path/to/hw04-scale-synth
    python bench/calibrate.py --data ... --configs conformer-1block-linear --no-recover --grad-clip 0  # as issue 11
CPU smoke mode (seconds; the test suite runs it):
    python bench/calibrate.py --smoke
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench import script_parser, smoke_dataset  # noqa: E402
from search.finalizing.final_pipeline import final_configs  # noqa: E402
from search.running.space import KNOWN_CONFIGS  # noqa: E402
from search.running.task import load_task  # noqa: E402
from search.training.train import TrainConfig, train  # noqa: E402


def emit(**record) -> None:
    print(json.dumps(record), flush=True)


def calibrate(name: str, task, steps: int, eval_every: int, seed: int, recover: bool, grad_clip: float | None,
              lr: float | None, overrides: dict | None = None, cuda_graph: bool = True,
              precision: str | None = None) -> dict:
    params = {**KNOWN_CONFIGS[name], **(overrides or {})}
    if lr is not None:
        params["lr"] = lr
    model_cfg, cfg = final_configs(params, task, steps, seed)  # exactly what finalize trains, then the overrides
    cfg.eval_every = eval_every
    cfg.recover_collapse = recover
    cfg.cuda_graph = cuda_graph
    if grad_clip is not None:
        cfg.grad_clip = grad_clip
    if precision is not None:
        cfg.precision = precision

    def on_eval(step: int, metrics: dict) -> None:
        emit(what="eval", config=name, **{k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()})

    started = time.perf_counter()
    result = train(model_cfg, cfg, task, on_eval=on_eval)
    seconds = time.perf_counter() - started
    final = result.history[-1]["valid_accuracy"]
    summary = {"what": "summary", "config": name, "steps": steps, "eval_every": eval_every, "lr": cfg.lr,
               "grad_clip": cfg.grad_clip, "recover_collapse": recover, "final_accuracy": round(final, 4),
               "best_accuracy": round(result.best_accuracy, 4), "best_step": result.best_step,
               "rollbacks": result.rollbacks,
               # what the issue saw: the run ends far below its own best (a collapse nothing undid)
               "collapsed_at_end": final < 0.5 * result.best_accuracy,
               "steps_per_second": round(result.steps_per_second, 1), "seconds": round(seconds, 1),
               "cuda_graph": result.cuda_graph, "seed": seed, "precision": cfg.precision}
    emit(**summary)
    return summary


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="training steps per configuration")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between full-length validations [default: finalize's, min(2000, steps/8)]")
    parser.add_argument("--configs", default=",".join(KNOWN_CONFIGS), help="comma list of KNOWN_CONFIGS names")
    parser.add_argument("--seed", type=int, default=0, help="split and training seed")
    parser.add_argument("--lr", type=float, default=None, help="peak lr for every configuration [default: its own]")
    parser.add_argument("--grad-clip", type=float, default=None,
                        help=f"gradient-norm clip, 0 for none [default: TrainConfig's, {TrainConfig.grad_clip}]")
    parser.add_argument("--no-recover", action="store_true", help="no collapse detection / rollback (issue 11's runs)")
    parser.add_argument("--precision", choices=["bf16", "tf32", "fp32"], default=None,
                        help="training precision on CUDA [default: finalize's]; bf16 is the search trials'")
    parser.add_argument("--eager", action="store_true", help="no CUDA graph (to tell a graph-replay problem)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, to check the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.device, args.steps, args.eval_every = "cpu", 4, 2
        if args.data is None:
            args.data = str(smoke_dataset(Path(tempfile.mkdtemp(prefix="calibrate-")) / "Dataset"))
    if args.data is None:
        parser.error("--data is required outside --smoke")
    names = [n.strip() for n in args.configs.split(",") if n.strip()]
    unknown = [n for n in names if n not in KNOWN_CONFIGS]
    if unknown:
        parser.error(f"--configs: unknown {', '.join(unknown)}; known: {', '.join(KNOWN_CONFIGS)}")
    eval_every = args.eval_every or min(2000, max(1, args.steps // 8))
    device = torch.device(args.device)
    task = load_task(args.data, args.seed, device)
    emit(what="environment", device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
         torch=torch.__version__, data=args.data, speakers=task.bank.n_speakers, train=len(task.train_ids),
         valid=len(task.valid_ids), date=time.strftime("%Y-%m-%d"))
    smaller = {"batch_size": 4, "segment": 64} if args.smoke else None  # the d512 models take seconds a step on a CPU
    summaries = [calibrate(name, task, args.steps, eval_every, args.seed, not args.no_recover, args.grad_clip, args.lr,
                           smaller, cuda_graph=not args.eager, precision=args.precision) for name in names]
    print(f"\n{'config':<26}{'final':>8}{'best':>8}{'best step':>11}{'rollbacks':>11}{'seconds':>9}")
    for s in summaries:
        print(f"{s['config']:<26}{s['final_accuracy']:>8.4f}{s['best_accuracy']:>8.4f}{s['best_step']:>11}"
              f"{len(s['rollbacks']):>11}{s['seconds']:>9.1f}")


if __name__ == "__main__":
    main()
