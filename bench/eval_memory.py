"""Validation's peak memory and time with the attention bound and without it (search/training/evaluation.py
``ATTENTION_LENGTH``), on a dataset's whole validation split, for models of the kinds that ran out of GPU memory in
HW04-Bench: head sizes that are not a multiple of 8 (no fused attention kernel with a padding mask) and Conformers
(whose relative-position bias is a (B, H, T, T) tensor), beside the sample model.

Prints one JSON line per model and bound: batches, median milliseconds of one validation, peak memory above the
model's own (CUDA), accuracy (the same for both bounds: untrained models, but the same predictions), or the error.

GPU (the HW04-scale synthetic set of bench/hw04bench/gpu.sh):
    python bench/eval_memory.py --data /tmp/hw04 --device cuda
CPU smoke mode (seconds; the test suite runs it):
    python bench/eval_memory.py --smoke
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench import script_parser, smoke_dataset  # noqa: E402
from model import build_model  # noqa: E402
from search.running.space import KNOWN_CONFIGS, build_configs  # noqa: E402
from search.running.task import load_task  # noqa: E402
from search.training.evaluation import ATTENTION_LENGTH, EvalBatches  # noqa: E402

SAMPLE, CONFORMER = KNOWN_CONFIGS["sample-code"], KNOWN_CONFIGS["conformer-d512-h16-linear"]
MODELS = {  # name: parameters; head size = d_model / nhead
    "sample-code (head 40)": SAMPLE,
    "transformer d80 h16 x6 (head 5, HW04-Bench Sobol 1)": dict(SAMPLE, nhead=16, layers=6, pooling="sap"),
    "transformer d160 h8 x3 (head 20, Sobol 17)": dict(SAMPLE, d_model=160, nhead=8, layers=3),
    "conformer d80 h8 (head 10, Sobol 19)": dict(CONFORMER, d_model=80, nhead=8, ffn=512, conformer_kernel=7),
    "conformer d512 h16 (head 32, a warm start)": CONFORMER,
}


def _timed_accuracy(plan: EvalBatches, model, repeats: int) -> tuple[float, float]:
    """(accuracy, median seconds of one whole validation); the first run warms up and is not timed."""
    accuracy = plan.accuracy(model)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        plan.accuracy(model)  # reads one number back: the device is done when it returns
        seconds.append(time.perf_counter() - start)
    return accuracy, statistics.median(seconds)


def measure(task, name: str, params: dict, attention_length: int, repeats: int) -> dict:
    device = task.device
    model_cfg, train_cfg = build_configs(params, task.bank.n_mels, task.bank.n_speakers, 2000, seed=0)
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device)
    plan = EvalBatches(task.bank, task.valid_ids, train_cfg.eval_max_frames, attention_length)
    row = {"model": name, "attention_length": attention_length, "batches": len(plan.batches),
           "longest_padded": plan.batches[0][3], "utterances": len(task.valid_ids)}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    held = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    try:
        accuracy, seconds = _timed_accuracy(plan, model, repeats)
        row.update(accuracy=round(accuracy, 5), eval_ms=round(seconds * 1000, 1))
    except torch.OutOfMemoryError:
        row.update(error="out of GPU memory")
    if device.type == "cuda":
        row["peak_mib"] = round((torch.cuda.max_memory_allocated(device) - held) / 2**20, 1)
    del model
    return row


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--smoke", action="store_true", help="a tiny synthetic set on the CPU, 1 repeat")
    parser.add_argument("--repeats", type=int, default=5, help="timed validations per model and bound")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        data = smoke_dataset(Path(scratch) / "tiny") if args.smoke else args.data
        if data is None:
            parser.error("--data is required (or --smoke)")
        device = torch.device("cpu" if args.smoke else args.device)
        task = load_task(data, seed=0, device=device)
        print(json.dumps({"what": "environment", "device": torch.cuda.get_device_name(device)
                          if device.type == "cuda" else "cpu", "torch": torch.__version__,
                          "date": time.strftime("%Y-%m-%d"), "data": str(data)}), flush=True)
        # Unbounded: a batch may hold as many frames squared as frames x max_frames, i.e. only max_frames counts.
        bounds = (1 if args.smoke else ATTENTION_LENGTH, 1 << 30)  # the smoke set is short: bound it hard
        with torch.no_grad():
            for name, params in MODELS.items():
                for bound in bounds:
                    row = measure(task, name, params, bound, 1 if args.smoke else args.repeats)
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
