"""Record a HW04-Bench table: train each planned configuration unpruned with the search's own code, one JSON line
per run, appended as each run ends.

    python -m bench.hw04bench.record --profile full --data /tmp/hw04 --configs 512 --workers 8 \
        --out bench/results/hw04bench-gpu.jsonl --deadline 480

A run trains exactly as a search trial of that study would (search/running/space.py ``build_configs``: the same
warm-up, schedule, precision, CUDA graph, clipping, full-length validation), for the study's budget, but never
pruned and validated every ``budget/16`` steps as well as at the default pruner's rungs, so that a replay can put
any pruner's decisions at any of those steps. Workers share the GPU under MPS, as ``search run --workers-per-gpu``
does; the card, the number of workers and the MPS status are in the session line, since they set the costs.

A run line holds:
- ``config`` ("warm:<name>" or "sobol:<i>"), ``repeat`` (0, or 1 for the second training seed), ``seed``, ``params``
- ``curve``: one ``[step, valid_accuracy, train_loss, train_seconds, eval_seconds]`` per validation, the seconds
  cumulative from the run's start (training steps, graph capture included; validation apart)
- ``parameters``, ``steps_per_second`` (training only), ``wall_seconds`` (model build to the end),
  ``peak_memory_mib`` (CUDA), ``card``, ``worker``, and ``failed``: null, or why (a NaN loss at step N, out of
  memory); a failed run keeps its curve up to the failure. ``bank_on_host``: true where the worker's feature
  bank did not fit on the card and stayed in pinned host memory (data/bank.py ``FeatureBank.to``): batches are
  gathered on the host, so its seconds are another clock.

Resumable: runs already in ``--out`` (or in the tables given by ``--done``) are skipped, so a recorder stopped by
a device call's time limit goes on where it stopped. A run that ran out of GPU memory beside the other workers is
not done; a later call trains it first and alone on the card (at most ``--alone`` such runs a call; its line says
``"alone": true``: its seconds are one run's, not a shared card's), then the others. Runs out of memory in a session
from before validation bounded its batches' attention are retried beside the others (table.py ``retry``).
A worker whose run failed with out-of-memory or another error (not a NaN loss) ends after writing it, and a fresh
process takes its place: a process that failed so may not train the next run (BENCHMARKS.md, call 10).
``handed_out``: seconds from the recorder's start to the run's hand-out. ``--deadline`` stops handing out runs that
many seconds after the start (the runs in flight finish), so that a call ends inside its limit with nothing
half-done.

Long horizon (``--final``, a plan from ``configs.py --long-from``): runs with finalize's settings over 20,000 or
70,000 steps, validated every 1,000, to see how well a trial's 2,000-step score ranks what finalize delivers. With
``--checkpoints`` such a run is kept at each validation and goes on in the next call; its seconds add up over them.

``--end-at`` (a Unix time: a device call's limit) fills the call's last minutes instead of leaving
them idle: a run is handed out only where it is expected to end by then (``cost_bound``, fitted on the runs
recorded so far), so short runs fill the time the long ones would overrun and the long ones wait for the next
call, where they come first; a run still in flight at that time is stopped and not recorded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import queue
import socket
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path


def eval_steps(budget: int, profile: str) -> list[int]:
    """Every budget/16 steps, the default pruner's rungs and the end: at least every 125 steps of a 2,000-step
    trial, and every step where a pruner we compare (rungs at budget/8 times powers of 2, 3 or 4) decides,
    to within budget/16."""
    from search.running import schedule
    from search.running.sampler import make_pruner
    from search.running.settings import StudySettings

    settings = StudySettings(budget=budget, eval_every=schedule.min_resource(budget), data="embedded", seed=0,
                             profile=profile)
    grid = range(max(1, budget // 16), budget + 1, max(1, budget // 16))
    return sorted({*grid, *schedule.trial_steps(budget, make_pruner(settings)), budget})


MIN_COST_RUNS = 12  # fewer recorded runs fit no cost model: the recorder then hands out in plan order


def _cost_features(params: dict) -> list[float]:
    """What sets a run's seconds: the encoder and its depth, width and feed-forward size, and the frames a step
    trains (a Conformer that subsamples trains half as many)."""
    conformer = float(params["encoder"] == "conformer")
    frames = params["batch_size"] * params["segment"] / (2 if params.get("subsampling") else 1)
    width = math.log(params["d_model"])
    return [1.0, conformer, params["layers"], conformer * params["layers"], width, math.log(frames),
            math.log(params["ffn"]), params["layers"] * width]


def cost_bound(runs: list[dict], quantile: float = 0.9):
    """A function of a run's parameters that bounds its wall seconds from above, or None with fewer than
    ``MIN_COST_RUNS`` timed runs: log seconds fitted by least squares on ``_cost_features`` over the complete runs
    that shared their machine (not the lone retries), plus the ``quantile`` of the fit's residuals. On the GPU
    table's 68 such runs, left out one at a time, the 0.9 bound covered 87% of them at a median 1.3 times their
    seconds (the CPU table's 221: 90%, 1.65 times)."""
    import numpy as np

    timed = [r for r in runs if not r["failed"] and not r.get("alone") and r["wall_seconds"] > 0]
    if len(timed) < MIN_COST_RUNS:
        return None
    x = np.asarray([_cost_features(r["params"]) for r in timed])
    y = np.log([r["wall_seconds"] for r in timed])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    margin = float(np.quantile(y - x @ coef, quantile))
    return lambda params: float(np.exp(np.asarray(_cost_features(params)) @ coef + margin))


def first_fitting(pending: list, seconds_left: float, bound) -> int | None:
    """The index of the first pending run expected to end within ``seconds_left`` (``bound`` from ``cost_bound``;
    None: the first run), or None where none is."""
    if bound is None:
        return 0 if pending and seconds_left > 0 else None
    return next((i for i, run in enumerate(pending) if bound(run.params) <= seconds_left), None)


def train_seed(config: str, repeat: int) -> int:
    """The run's training seed: fixed by its configuration and repeat, on any machine and in any order."""
    return zlib.crc32(f"{config}/{repeat}".encode())


def final_eval_steps(budget: int) -> list[int]:
    """A long-horizon run's validations: every 1,000 steps (every budget/20 in a shorter one) and at the end."""
    every = min(1000, max(1, budget // 20))
    return sorted({*range(every, budget + 1, every), budget})


@dataclass(frozen=True)
class RunSettings:
    """How every run of a recording trains: ``budget`` steps validated at ``steps``; ``final``: with finalize's
    settings (tf32, collapse recovery: search/finalizing/final_pipeline.py ``final_configs``) instead of a
    trial's; ``checkpoints``: a folder where a run's state and curve so far are kept at each validation, so that a
    run stopped by a call's end goes on from there in the next call on the same machine."""

    budget: int
    steps: tuple[int, ...]
    final: bool = False
    checkpoints: str | None = None


def _configs(task, job: dict, settings: RunSettings):
    """A trial's configurations, or finalize's own (final_pipeline.final_configs), validated at ``settings.steps``."""
    import dataclasses

    from search.finalizing.final_pipeline import final_configs
    from search.running import space as search_space

    if settings.final:
        model_cfg, train_cfg = final_configs(job["params"], task, settings.budget, job["seed"])
        return model_cfg, dataclasses.replace(train_cfg, eval_steps=settings.steps)
    return search_space.build_configs(job["params"], task.bank.n_mels, task.bank.n_speakers, settings.budget,
                                      job["seed"], eval_steps=settings.steps)


class _Progress:
    """A run's curve and seconds so far, across the calls a long run spans: kept as JSON beside its checkpoint
    (written after the checkpoint at each validation), so a resumed run's seconds add up from where it stopped."""

    def __init__(self, checkpoint: Path | None) -> None:
        self.path = checkpoint.with_suffix(".json") if checkpoint else None
        if checkpoint and checkpoint.exists() and not self.path.exists():
            checkpoint.unlink()  # stopped before its first curve point was kept: start over, not from an unknown step
        kept = json.loads(self.path.read_text()) if self.path and self.path.exists() and checkpoint.exists() else {}
        self.curve: list[list] = kept.get("curve", [])
        self.wall_before: float = kept.get("wall", 0.0)
        last = self.curve[-1] if self.curve else [0, None, None, 0.0, 0.0]
        self.start_step, self.train_before, self.eval_before = last[0], last[3], last[4]

    def add(self, step: int, metrics: dict, wall: float) -> None:
        train_seconds = (step - self.start_step) / metrics["steps_per_second"]  # this call's steps, this call's speed
        self.curve.append([step, round(metrics["valid_accuracy"], 5), round(metrics["train_loss"], 5),
                           round(self.train_before + train_seconds, 3),
                           round(self.eval_before + metrics["elapsed"] - train_seconds, 3)])
        if self.path:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"curve": self.curve, "wall": self.wall_before + wall}))
            tmp.replace(self.path)


def run_one(task, job: dict, settings: RunSettings) -> tuple[dict, bool]:
    """Train one planned run: its line (see the module docstring), and whether this process can train the next one
    (False after a run that ended in out-of-memory or another error, not divergence: ``worker_main``)."""
    import torch

    from bench.hw04bench.table import OUT_OF_MEMORY
    from model import build_model, count_parameters
    from search.errors import TrainingDiverged, out_of_gpu_memory
    from search.training.train import train

    device = task.device
    model_cfg, train_cfg = _configs(task, job, settings)
    with torch.device("meta"):
        parameters = count_parameters(build_model(model_cfg))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    checkpoint = None
    if settings.checkpoints:
        name = f"{job['config']}-{job['repeat']}-{settings.budget}".replace(":", "_")
        checkpoint = Path(settings.checkpoints) / f"{name}.pt"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    progress = _Progress(checkpoint)
    curve = progress.curve
    started, failed, rollbacks, sound = time.perf_counter(), None, None, True
    try:
        result = train(model_cfg, train_cfg, task, checkpoint=checkpoint,
                       on_eval=lambda step, metrics: progress.add(step, metrics, time.perf_counter() - started))
        rollbacks = len(result.rollbacks) if settings.final else None
    except TrainingDiverged as err:
        failed = str(err)  # the configuration's own fault (a NaN loss): the process is as sound as before
    except Exception as err:  # noqa: BLE001 - recorded: a configuration the table cannot train is a fact too
        # out of memory (PyTorch's, cuBLAS's or cuDNN's) beside other workers is not done: a later call retries it
        # alone (table.py ``retry``)
        failed = OUT_OF_MEMORY if out_of_gpu_memory(err) else f"{type(err).__name__}: {err}"[:300]
        sound = False
    # the failed run's frames (model, optimizer, a half-captured graph) sit in reference cycles: free them now
    gc.collect()
    wall = progress.wall_before + time.perf_counter() - started
    if checkpoint is not None:  # the run is over: its line holds what the files kept for a resume
        checkpoint.unlink(missing_ok=True)
        progress.path.unlink(missing_ok=True)
    if device.type == "cuda":
        # Give the cached blocks back: the workers share one card, and memory one worker's allocator keeps after a
        # large run is memory the others cannot have (a call of 8 workers lost 10 of its 24 runs to
        # OOM at their first steps without this; the others' cached blocks are the likely cause, not verified).
        torch.cuda.empty_cache()
    last = curve[-1] if curve else None
    return {
        "kind": "run", **job, "curve": curve, "parameters": parameters,
        "steps_per_second": round(last[0] / last[3], 2) if last and last[3] > 0 else None,
        "wall_seconds": round(wall, 2),
        "peak_memory_mib": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "card": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "failed": failed, **({"rollbacks": rollbacks} if settings.final else {}),
        **({"bank_on_host": True} if task.bank.frames.device != device else {}),
    }, sound


def worker_main(index: int, device: str, data: str | None, seed: int, settings: RunSettings,
                threads: int, jobs, results) -> None:
    import torch

    from search.running.task import load_task, use_device
    from search.running.workers import stop_with_parent

    stop_with_parent(os.getppid())  # a recorder killed (a call's time limit, Ctrl-C) takes its workers with it
    torch.set_num_threads(threads)
    task = load_task(data, seed, use_device(device))
    results.put({"kind": "ready", "worker": index})
    while (job := jobs.get()) is not None:
        line, sound = run_one(task, job, settings)
        line["worker"] = index
        results.put(line)
        if not sound:
            # Call 10 (BENCHMARKS.md, HW04-Bench): after one run out of memory a worker failed the next 105 runs
            # handed to it (94 within 0.2 s), "out of memory" on a card the other five trained on. A process that
            # failed this way is not trusted with another run: it ends, and the recorder starts a fresh one.
            results.put({"kind": "replace", "worker": index})
            return


def _cpu_model() -> str:
    """The host's CPU model (Linux: /proc/cpuinfo's "model name"), else the platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _commit() -> str:
    if os.environ.get("HW04BENCH_COMMIT"):
        return os.environ["HW04BENCH_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hw04bench.record", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=("full", "cpu"), default="full", help="the search space's profile")
    parser.add_argument("--budget", type=int, help="training steps of a run (default: the profile's trial budget)")
    parser.add_argument("--data", help="an HW04 data folder (default: the embedded synthetic dataset)")
    parser.add_argument("--configs", type=int, default=512, help="Sobol points planned after the warm starts")
    parser.add_argument("--seed", type=int, default=0, help="the Sobol scramble and the train/valid split")
    parser.add_argument("--out", required=True, type=Path, help="the .jsonl file runs are appended to")
    parser.add_argument("--plan", type=Path, help="the planned runs as JSON (python -m bench.hw04bench.configs), "
                        "for a machine without scipy; default: planned here")
    parser.add_argument("--done", type=Path, nargs="*", default=[], help="tables whose runs are skipped")
    parser.add_argument("--workers", type=int, default=1, help="processes (on one GPU: under MPS)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, help="CPU threads a worker (default: cores / workers)")
    parser.add_argument("--deadline", type=float, default=float("inf"), help="seconds after which no run starts")
    parser.add_argument("--end-at", type=float, help="a Unix time by which every run has ended: runs are handed "
                        "out only where expected to end by then, and any in flight at it are stopped, unrecorded")
    parser.add_argument("--final", action="store_true", help="long-horizon runs: finalize's settings (tf32, "
                        "collapse recovery), validated every 1,000 steps (configs.py --long-from plans them)")
    parser.add_argument("--checkpoints", help="a folder for runs' checkpoints: a run stopped by --end-at goes on "
                        "from its last validation in the next call on this machine")
    parser.add_argument("--limit", type=int, help="at most this many runs in this call")
    parser.add_argument("--start", type=int, default=0, help="skip the plan's first N runs: two recorders on "
                        "two machines take different parts of one plan (the CPU table here and on the device host)")
    parser.add_argument("--no-mps", action="store_true", help="workers share the GPU without MPS")
    parser.add_argument("--alone", type=int, default=2, help="runs that ran out of GPU memory beside other workers "
                        "retried first, each alone, in this call")
    args = parser.parse_args(argv)

    import multiprocessing

    import torch

    from bench.hw04bench import configs, table
    from search.processes.cores import usable_cores
    from search.processes.mps import gpu_sharing
    from search.running.settings import CPU_BUDGET, GPU_BUDGET
    from search.training.evaluation import ATTENTION_LENGTH

    started = time.monotonic()
    budget = args.budget or (GPU_BUDGET if args.profile == "full" else CPU_BUDGET)
    steps = final_eval_steps(budget) if args.final else eval_steps(budget, args.profile)
    settings = RunSettings(budget, tuple(steps), args.final, args.checkpoints)
    recorded = table.load(args.out, *args.done)
    done = recorded.done()
    short_of_memory = {(r["config"], r["repeat"]) for r in recorded.runs if recorded.retry_alone(r)}
    planned = configs.load_plan(args.plan) if args.plan else configs.plan(args.profile, args.configs, args.seed)
    todo = [r for r in planned[args.start:] if r.key not in done][:args.limit]
    # the same large configurations ran out of memory in call after call beside 6-8 others: alone they get the card
    alone = [r for r in todo if r.key in short_of_memory][:args.alone]
    todo = alone + [r for r in todo if r not in alone]
    # a run that can go on in the next call (--checkpoints) need not end by this one's end
    bound = cost_bound(recorded.runs) if args.end_at and not args.checkpoints else None
    print(f"{len(done)} runs recorded, {len(todo)} to go", flush=True)
    if not todo:
        return 0
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    threads = args.threads or max(1, usable_cores() // args.workers)
    session_id = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{os.getpid()}"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from search.running.task import prepare_bank

    prepared = time.monotonic()
    prepare_bank(args.data)  # generated (embedded) and packed once here, not raced by the workers
    print(f"data ready in {time.monotonic() - prepared:.0f} s", flush=True)
    with gpu_sharing([device] * args.workers if device.startswith("cuda") else [], enabled=not args.no_mps) as mps, \
            open(args.out, "a", encoding="utf-8") as out:
        session = {"kind": "session", "session": session_id, "command": " ".join(sys.argv),
                   "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": _commit(),
                   "host": socket.gethostname(), "profile": args.profile, "budget": budget, "eval_steps": steps,
                   "data": args.data or "embedded", "seed": args.seed, "device": device, "workers": args.workers,
                   "threads": threads, "mps": mps or "off (one worker)", "torch": torch.__version__,
                   "cpu": _cpu_model(), "cores": usable_cores(), "attention_length": ATTENTION_LENGTH,
                   "replaces_workers": True,  # a worker whose run failed with an error is replaced (table.py)
                   **({"final": True} if args.final else {})}
        out.write(json.dumps(session) + "\n")
        out.flush()
        context = multiprocessing.get_context("spawn")
        jobs, results = context.Queue(), context.Queue()

        def new_worker(index: int):
            worker = context.Process(target=worker_main, daemon=True, args=(
                index, device, args.data, args.seed, settings, threads, jobs, results))
            worker.start()
            return worker

        workers = [new_worker(i) for i in range(args.workers)]
        replaced = 0
        pending = list(todo)
        in_flight, written, waiting, lone = 0, 0, 0, False

        def hand_out() -> None:
            """Give the worker that asks its next run, or keep it waiting while a run alone is due or in flight,
            or stop it."""
            nonlocal in_flight, waiting, lone
            index = first_fitting(pending, (args.end_at - time.time()) if args.end_at else math.inf, bound)
            if index is None or time.monotonic() - started >= args.deadline:
                jobs.put(None)  # this worker stops
                return
            if pending[index] in alone and in_flight or lone:
                waiting += 1  # the card empties first (or the lone run is on it)
                return
            run = pending.pop(index)
            lone = run in alone
            jobs.put({"config": run.config, "repeat": run.repeat, "seed": train_seed(run.config, run.repeat),
                      "params": run.params, "session": session_id, **({"alone": True} if lone else {}),
                      "handed_out": round(time.monotonic() - started, 2)})
            in_flight += 1

        print(f"{mps or 'MPS: off (one worker)'}; {args.workers} workers starting at {time.monotonic() - started:.0f} s"
              + (f"; {len(alone)} run(s) that ran out of GPU memory first, each alone" if alone else ""), flush=True)
        for _ in workers:
            hand_out()
        while in_flight:
            if args.end_at and time.time() >= args.end_at:
                print(f"the end time came: {in_flight} runs in flight stopped, not recorded", flush=True)
                for w in workers:
                    w.terminate()
                break
            try:
                line = results.get(timeout=min(10, max(0.1, (args.end_at or math.inf) - time.time())))
            except queue.Empty:
                if not any(w.is_alive() for w in workers):
                    print("every worker ended with runs in flight", file=sys.stderr)
                    return 1
                continue
            if line["kind"] == "ready":
                continue
            if line["kind"] == "replace":  # its run's line came first; the jobs queue waits for the new worker
                workers[line["worker"]].join(timeout=30)
                workers[line["worker"]] = new_worker(line["worker"])
                replaced += 1
                continue
            in_flight -= 1
            lone = lone and in_flight > 0
            out.write(json.dumps(line) + "\n")
            out.flush()
            written += 1
            last = line["curve"][-1] if line["curve"] else [0, float("nan")]
            print(f"{written}/{len(todo)} {line['config']}#{line['repeat']}{' (alone)' if line.get('alone') else ''}: "
                  f"acc {last[1]:.4f} at step {last[0]}, "
                  f"{line['wall_seconds']:.1f} s{', failed: ' + line['failed'] if line['failed'] else ''} "
                  f"[{time.monotonic() - started:.0f} s]", flush=True)
            # the card is empty: the workers kept waiting get work too
            asking, waiting = (1 + waiting, 0) if in_flight == 0 else (1, waiting)
            for _ in range(asking):
                hand_out()
        for w in workers:
            w.join(timeout=30)
    print(f"recorded {written} runs in {time.monotonic() - started:.0f} s; {len(pending)} planned runs left"
          + (f"; {replaced} worker(s) replaced after a failed run" if replaced else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
