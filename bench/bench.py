"""Speed benchmark: the project's trainer against the HW04 sample code's loop, measured in one run.

Prints one JSON object per measurement (and a summary table at the end):
1. steps/s at batch 32, sample loop vs our trainer, for d_model 80 / 2 heads and 512 / 16 heads;
2. segments/s of our trainer at its best batch size against the sample loop's;
3. trials per GPU-hour through ``search run`` (sample-model trials of --trial-steps steps, with full-length
   validation of the whole validation split at each evaluation), with K = 1, 2, 4, 8 workers on one GPU, with
   and without an MPS daemon (``--mps off,on``; search/processes/mps.py), and validation's share of those trials;
4. validation's share of a sample-model trial, before and after issue 12 (``--eval-schedules``): the old grid
   of 8 evaluations with the old per-batch evaluation, against the pruner's rungs (or, without pruning, the
   learning curve's points) with the bucketed evaluation (search/running/schedule.py, search/training/train.py EvalBatches);
5. GPU memory of the bank and of a training step; packing time and the packing process's peak host memory.

GPU (writes the numbers for BENCHMARKS.md):
    python bench/bench.py --data /path/to/hw04-scale-synth --device cuda
CPU smoke mode (seconds; the test suite runs it):
    python bench/bench.py --smoke
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sample_loop import time_sample_loop  # noqa: E402
from data.bank import cache_folder as bank_folder, pack  # noqa: E402
from data.hw04 import read_layout  # noqa: E402
from model import ModelConfig  # noqa: E402
from search.processes import mps
from search.running import schedule  # noqa: E402
from search.running.task import load_task  # noqa: E402
from search.training.train import EvalBatches, TrainConfig, _autocast, train  # noqa: E402


def script_parser(doc: str, data_help: str = "HW04-layout folder (default in --smoke: a tiny synthetic one)",
                  data_type: type = str) -> argparse.ArgumentParser:
    """The options every bench script starts with: ``--data`` and ``--device`` (cuda where there is one);
    ``doc``, the script's docstring, is its --help."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=data_type, help=data_help)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser


def smoke_dataset(folder: Path) -> Path:
    """The data of the bench scripts' --smoke runs: a tiny synthetic set (4 speakers x 12 short utterances),
    written into ``folder`` unless a run before wrote it there."""
    folder = Path(folder)
    if not (folder / "metadata.json").exists():  # synthesize writes it last: the set is complete
        from data.synth import synthesize

        synthesize(folder, speakers=4, utterances_per_speaker=12, length_scale=0.2, seed=0)
    return folder


def emit(results: list, **record) -> None:
    results.append(record)
    print(json.dumps(record), flush=True)


def _pack_child(data_dir: str, queue) -> None:
    started = time.perf_counter()
    layout = read_layout(data_dir)
    folder = bank_folder(layout, None)
    shutil.rmtree(folder, ignore_errors=True)  # a fresh pack, into the cache the runs below then use
    pack(layout, folder)
    queue.put((time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure_packing(data_dir: str) -> tuple[float, float]:
    """Pack the bank in a fresh process: (seconds, that process's peak RSS in MiB)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_pack_child, args=(data_dir, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def trainer_rate(task, d_model: int, nhead: int, batch: int, steps: int, cuda_graph: bool = True) -> dict:
    """Our trainer on the sample model (ffn 256, mlp head of width d_model): steps/s, excluding evaluation.

    The timed run includes the CUDA graph's warm-up and capture (a trial pays for them too)."""
    cfg = ModelConfig(d_model=d_model, nhead=nhead, ffn=256, head_hidden=d_model, n_classes=task.bank.n_speakers)
    train(cfg, TrainConfig(steps=20, eval_every=10**9, warmup_steps=5, batch_size=batch, cuda_graph=cuda_graph),
          task)  # warm the allocator and cuBLAS
    if task.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    result = train(cfg, TrainConfig(steps=steps, eval_every=10**9, warmup_steps=min(1000, steps // 10),
                                    batch_size=batch, cuda_graph=cuda_graph), task)
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20 if task.device.type == "cuda" else None
    return {"steps_per_second": result.steps_per_second, "cuda_graph": result.cuda_graph,
            "segments_per_second": result.steps_per_second * batch, "step_peak_mib": peak}


def _gpu_index(device: str) -> int:
    return int(device.split(":")[1]) if ":" in device else 0


@contextmanager
def mps_mode(mode: str, device: str, gpu_indices: list[int] | None = None):
    """An MPS daemon for the duration (``on``, search/processes/mps.py: started, or the one running), or none that the
    runs inside would reach (``off``); yields the status line."""
    if not device.startswith("cuda"):
        yield "MPS: off (not on a GPU)"
    elif mode == "on":
        with mps.mps_session(gpu_indices or [_gpu_index(device)]) as status:
            yield status
    else:
        with mps.bypassed() as note:
            yield "MPS: off" + note


@lru_cache(maxsize=None)
def _run_has_option(option: str) -> bool:
    done = subprocess.run([sys.executable, "-m", "search.cli", "run", "--help"], capture_output=True, text=True,
                          cwd=ROOT, env=_env())
    return option in done.stdout


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def trials_per_hour(data_dir: str, workers: int, trials: int, trial_steps: int, device: str, workdir: Path,
                    mps_wanted: str = "off", gpus: int = 0) -> dict:
    """Wall time of ``search run`` adding ``trials`` sample-code trials with ``workers`` processes, inside
    ``mps_mode(mps_wanted)`` (``search run`` uses a running daemon, and ``--no-mps`` keeps off one).

    ``gpus`` > 0: ``search run --gpus 0,..,gpus-1 --workers-per-gpu workers`` (``workers`` on each GPU)."""
    import optuna

    from search.running.space import KNOWN_CONFIGS

    study_name = f"bench-k{workers}-mps-{mps_wanted}" + (f"-gpus{gpus}" if gpus else "")
    storage = f"sqlite:///{workdir}/studies/{study_name}.db"
    (workdir / "studies").mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    for _ in range(trials):
        study.enqueue_trial(KNOWN_CONFIGS["sample-code"])
    command = [sys.executable, "-m", "search.cli", "run", "--trials", str(trials), "--study", study_name,
               "--storage", storage, "--data", data_dir, "--budget", str(trial_steps), "--device", device,
               "--no-warm-start", "--no-pruning", "--space", "full"]
    # --no-pruning: every trial runs its 2,000 steps (Hyperband would stop most of these identical trials)
    command += ["--workers-per-gpu", str(workers)] if device.startswith("cuda") else ["--workers", str(workers)]
    if gpus:
        command += ["--gpus", ",".join(map(str, range(gpus)))]
    processes = workers * max(1, gpus)
    with mps_mode(mps_wanted, device, list(range(gpus)) or None) as mps_status:
        if mps_wanted == "off" and device.startswith("cuda") and _run_has_option("--no-mps"):
            command.append("--no-mps")
        started = time.perf_counter()
        completed = subprocess.run(command, cwd=workdir, capture_output=True, text=True, env=_env())
        wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise RuntimeError(f"search run failed:\n{completed.stdout[-2000:]}\n{completed.stderr[-2000:]}")
    finished = [t for t in optuna.load_study(study_name=study_name, storage=storage).trials if t.state.is_finished()]
    # Steady state: trials finished after each worker's first one, over the time since the first finish
    # (leaves out process start, data loading and the first trial's warm-up, which a long search amortises).
    ends = sorted(t.datetime_complete.timestamp() for t in finished)
    steady = (len(ends) - processes) / (ends[-1] - ends[processes - 1]) * 3600 if len(ends) > processes else None
    timed = [t for t in finished if "eval_seconds" in t.user_attrs and t.user_attrs.get("wall_seconds")]
    return {"workers": workers, "gpus": max(1, gpus), "mps": mps_wanted, "mps_status": mps_status, "trials": len(finished),
            "wall_seconds": wall, "trials_per_hour": len(finished) / wall * 3600, "steady_trials_per_hour": steady,
            "mean_trial_seconds": sum(t.user_attrs.get("wall_seconds", 0) for t in finished) / max(1, len(finished)),
            # of which training (steps / the trial's steps/s, graph capture included): the rest is evaluation,
            # building the model and writing to the storage
            "mean_train_seconds": sum(trial_steps / t.user_attrs["steps_per_second"] for t in timed) / max(1, len(timed)),
            # validation's share of the trials' own wall time (evaluations, against everything a trial does)
            "eval_share": (sum(t.user_attrs["eval_seconds"] for t in timed)
                           / sum(t.user_attrs["wall_seconds"] for t in timed)) if timed else None,
            "evaluations_per_trial": len(next(iter(timed)).intermediate_values) if timed else None,
            "cuda_graph_trials": sum(bool(t.user_attrs.get("cuda_graph")) for t in finished)}


@torch.no_grad()
def evaluate_before(model, bank, ids: torch.Tensor, max_frames: int = 1 << 16) -> float:
    """The full-length evaluation before issue 12, kept here to measure against: per evaluation the lengths
    copied to the host and sorted; per batch its longest length read back from the device (a host sync), the
    batch padded to exactly that (a new shape each time), its slot indices built in Python and copied across."""
    was_training = model.training
    model.eval()
    device = bank.device
    position = {int(u): i for i, u in enumerate(ids.tolist())}
    predictions = torch.empty(len(ids), dtype=torch.long, device=device)
    host_ids = ids.cpu()
    lengths = bank.lengths.cpu()[host_ids]
    order = torch.argsort(lengths, descending=True, stable=True)
    start = 0
    try:
        while start < len(order):
            size = max(1, max_frames // int(lengths[order[start]]))
            batch = host_ids[order[start:start + size]].to(device)
            longest = int(bank.lengths[batch].max())
            x, mask = bank.gather(batch, torch.zeros_like(batch), longest)
            with _autocast(device):
                logits = model(x, mask)
            slots = torch.tensor([position[int(u)] for u in batch.tolist()], device=device)
            predictions[slots] = logits.argmax(-1)
            start += size
    finally:
        model.train(was_training)
    return float((predictions == bank.labels[ids]).sum()) / max(1, len(ids))


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls after one untimed call, the device synchronized."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


EVAL_SCHEDULES = ("grid", "rungs", "curve")


def evaluation_share(task, trial_steps: int, schedules: list[str], repeats: int, results: list) -> None:
    """Validation's share of a sample-model trial of ``trial_steps`` steps, before and after issue 12.

    One trial's training is timed (steps/s, CUDA graph capture included, no evaluation), and one evaluation of
    the whole validation split, the old way and the new (median of ``repeats``). Per schedule: ``grid`` is
    before (8 evaluations, the old evaluation), ``rungs`` a trial of a pruned study (Hyperband's rungs and the
    end, the new evaluation), ``curve`` one of an unpruned study (what the trials/hour part runs).
    """
    from search.running.space import KNOWN_CONFIGS, build_configs
    from search.running.sampler import make_pruner
    from search.running.settings import StudySettings

    device = task.device
    model_cfg, cfg = build_configs(KNOWN_CONFIGS["sample-code"], task.bank.n_mels, task.bank.n_speakers, trial_steps,
                                   seed=0, eval_steps=(trial_steps,))
    result = train(model_cfg, cfg, task)
    train_seconds = trial_steps / result.steps_per_second
    model, ids = result.model, task.valid_ids
    plan = EvalBatches(task.bank, ids, cfg.eval_max_frames)  # train() plans once per trial, so here too
    before = _median_seconds(lambda: evaluate_before(model, task.bank, ids, cfg.eval_max_frames), device, repeats)
    after = _median_seconds(lambda: plan.accuracy(model), device, repeats)
    emit(results, what="evaluation_cost", valid_utterances=len(ids), eval_ms_before=round(before * 1000, 2),
         eval_ms_after=round(after * 1000, 2), speedup=round(before / after, 2),
         accuracy_before=evaluate_before(model, task.bank, ids, cfg.eval_max_frames),
         accuracy_after=plan.accuracy(model), batches_after=len(plan.batches),
         shapes_after=len({(len(b), t) for b, _, _, t, _ in plan.batches}))
    settings = StudySettings(budget=trial_steps, eval_every=schedule.min_resource(trial_steps), data="", seed=0,
                             profile="full")
    steps = {"grid": (schedule.periodic_steps(trial_steps, schedule.min_resource(trial_steps)), before),
             "rungs": (schedule.trial_steps(trial_steps, make_pruner(settings)), after),
             "curve": (schedule.trial_steps(trial_steps, None), after)}
    for name in schedules:
        at, per = steps[name]
        eval_seconds = len(at) * per
        emit(results, what="evaluation", schedule=name, trial_steps=trial_steps, evaluations=len(at), steps=at,
             eval_ms=round(per * 1000, 2), eval_seconds=round(eval_seconds, 4), train_seconds=round(train_seconds, 4),
             share=round(eval_seconds / (eval_seconds + train_seconds), 4))


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on CPU, to check the script runs")
    parser.add_argument("--steps", type=int, default=1500, help="timed steps per steps/s measurement")
    parser.add_argument("--trial-steps", type=int, default=2000, help="steps of a trial for trials/hour")
    parser.add_argument("--batches", default="32,128,512,1024,2048", help="batch sizes for segments/s")
    parser.add_argument("--workers", default="1,2,4,8", help="worker counts for trials/hour")
    parser.add_argument("--trials-per-worker", type=int, default=4)
    parser.add_argument("--gpus", default="1", help="comma list of GPU counts for trials/hour: 1 (--device's GPU), "
                        "N (search run --gpus 0..N-1, --workers on each); a speed-up is against the first")
    parser.add_argument("--mps", default=None,
                        help="comma list, for trials/hour: off (no MPS daemon reachable), on (one running, started "
                             "if need be) [default: off,on on a GPU, off on the CPU]")
    parser.add_argument("--eval-schedules", default=",".join(EVAL_SCHEDULES),
                        help="comma list, for validation's share of a trial: grid (before: 8 evaluations, the old "
                             "evaluation), rungs (Hyperband's rungs and the end), curve (no pruning: 4 points)")
    parser.add_argument("--eval-repeats", type=int, default=10, help="timed evaluations, old and new, for their cost")
    parser.add_argument("--skip", default="", help="comma list of parts to skip: packing, sample (the sample loop), "
                        "rates (steps/s and segments/s), evaluation (validation's share), trials")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    tmp = Path(tempfile.mkdtemp(prefix="bench-"))
    if args.smoke:
        args.device, args.steps, args.trial_steps, args.batches = "cpu", 6, 8, "8,16"
        args.workers, args.trials_per_worker, args.eval_repeats = "1,2", 1, 2
        if args.data is None:
            args.data = str(smoke_dataset(tmp / "Dataset"))
    if args.data is None:
        parser.error("--data is required outside --smoke")
    mps_modes = (args.mps or ("off,on" if args.device.startswith("cuda") else "off")).split(",")
    schedules = args.eval_schedules.split(",")
    for value, allowed, option in ((mps_modes, ("off", "on"), "--mps"), (schedules, EVAL_SCHEDULES, "--eval-schedules")):
        if not set(value) <= set(allowed):
            parser.error(f"{option} {','.join(value)}: expected a comma list of {', '.join(allowed)}")
    results: list = []
    device = torch.device(args.device)
    emit(results, what="environment", device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
         torch=torch.__version__, data=args.data, date=time.strftime("%Y-%m-%d"))

    if "packing" not in skip:
        seconds, peak_rss = measure_packing(args.data)
        emit(results, what="packing", seconds=round(seconds, 2), peak_host_mib=round(peak_rss))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    task = load_task(args.data, seed=0, device=device)
    bank_mib = task.bank.frames.numel() * 2 / 2**20
    emit(results, what="bank", frames=task.bank.frames.shape[0], utterances=len(task.bank.names),
         gpu_mib=round(torch.cuda.memory_allocated() / 2**20) if device.type == "cuda" else None,
         frames_mib=round(bank_mib))

    for d_model, nhead in ((80, 2), (512, 16)) if "rates" not in skip else ():
        ours = trainer_rate(task, d_model, nhead, 32, args.steps)
        record = {"what": "steps_per_second_batch32", "d_model": d_model, "nhead": nhead,
                  "ours": round(ours["steps_per_second"], 1), "cuda_graph": ours["cuda_graph"],
                  "step_peak_mib": ours["step_peak_mib"]}
        if device.type == "cuda":  # what the graph buys: the same trainer, step by step
            record["ours_eager"] = round(trainer_rate(task, d_model, nhead, 32, args.steps, False)["steps_per_second"], 1)
        if "sample" not in skip:
            sample = time_sample_loop(args.data, d_model, nhead, steps=max(10, args.steps // 3),
                                      warmup_steps=min(50, args.steps), device=args.device,
                                      workers=0 if args.smoke else 8)
            record.update(sample=round(sample["steps_per_second"], 1),
                          ratio=round(ours["steps_per_second"] / sample["steps_per_second"], 2))
        emit(results, **record)

    best = None
    for batch in map(int, args.batches.split(",")) if "rates" not in skip else ():
        # fewer steps for big batches: each measurement a few seconds
        rate = trainer_rate(task, 80, 2, batch, max(100, args.steps * 32 // batch) if batch > 32 else args.steps)
        emit(results, what="segments_per_second", d_model=80, batch=batch,
             ours=round(rate["segments_per_second"]), steps_per_second=round(rate["steps_per_second"], 1),
             step_peak_mib=rate["step_peak_mib"])
        if best is None or rate["segments_per_second"] > best[1]:
            best = (batch, rate["segments_per_second"])
    sample_steps = next((r.get("sample") for r in results if r["what"] == "steps_per_second_batch32"
                         and r["d_model"] == 80), None)
    if sample_steps and best:
        emit(results, what="best_segments_per_second", batch=best[0], ours=round(best[1]),
             sample=round(sample_steps * 32), ratio=round(best[1] / (sample_steps * 32), 1))

    if "evaluation" not in skip:
        evaluation_share(task, args.trial_steps, schedules, args.eval_repeats, results)

    if "trials" not in skip:
        del task
        from search.running import task as task_module

        task_module._TASKS.clear()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        base = base_steady = None  # one worker without MPS (the first measured), the reference for speed-ups
        runs = [(gpus, mode, workers) for gpus in map(int, args.gpus.split(",")) for mode in mps_modes
                for workers in map(int, args.workers.split(","))]
        for gpus, mode, workers in runs:
            rate = trials_per_hour(args.data, workers, workers * gpus * args.trials_per_worker, args.trial_steps,
                                   args.device, tmp / f"k{workers}-mps-{mode}-gpus{gpus}", mode,
                                   gpus if gpus > 1 else 0)
            base = base or rate["trials_per_hour"]
            base_steady = base_steady or rate["steady_trials_per_hour"]
            emit(results, what="trials_per_hour", trial_steps=args.trial_steps,
                 **{k: round(v, 4 if k == "eval_share" else 1) if isinstance(v, float) else v for k, v in rate.items()},
                 speedup_vs_one_worker=round(rate["trials_per_hour"] / base, 2),
                 steady_speedup_vs_one_worker=round(rate["steady_trials_per_hour"] / base_steady, 2)
                 if rate["steady_trials_per_hour"] and base_steady else None)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
