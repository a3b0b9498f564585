"""``search run --gpus [all|LIST] [--workers-per-gpu K]``: the worker plan (a pure function, tested for any
number of GPUs through its ``visible_gpus`` argument) and the CLI's refusals, which need no GPU.

The last test runs real GPU workers and is skipped where torch sees no GPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from search.errors import UserError
from search.running.workers import worker_devices
from tests.helpers import invoke, one_error_line

GPU_COUNT = torch.cuda.device_count()


def plan(gpus=None, k=1, workers=1, device="cuda", visible=0) -> list[str]:
    return worker_devices(gpus, k, workers, device, visible)


def refusal(**kwargs) -> str:
    with pytest.raises(UserError) as info:
        plan(**kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the plan -------------------------------------------------------------------------------------------

def test_without_gpus_it_is_workers_on_the_one_device():
    assert plan(device="cpu") == ["cpu"]
    assert plan(device=torch.device("cpu"), workers=3) == ["cpu", "cpu", "cpu"]
    assert plan(device=torch.device("cuda")) == ["cuda"]
    assert plan(device="cuda:1", workers=2, visible=2) == ["cuda:1", "cuda:1"]


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("visible", [1, 2, 3, 4, 8])
def test_gpus_all_is_k_workers_on_every_visible_gpu_interleaved(visible, k):
    devices = plan(gpus="all", k=k, visible=visible)
    assert len(devices) == visible * k
    assert devices == [f"cuda:{i}" for i in range(visible)] * k  # round r: one worker on each GPU
    for i in range(visible):
        assert devices.count(f"cuda:{i}") == k


def test_gpus_list_takes_those_indices_in_the_order_given():
    assert plan(gpus="0,2", visible=4) == ["cuda:0", "cuda:2"]
    assert plan(gpus="0,2", k=2, visible=4) == ["cuda:0", "cuda:2", "cuda:0", "cuda:2"]
    assert plan(gpus="3,1", visible=4) == ["cuda:3", "cuda:1"]
    assert plan(gpus=" 1 , 3 ", visible=4) == ["cuda:1", "cuda:3"]
    assert plan(gpus="7", k=3, visible=8) == ["cuda:7"] * 3
    assert plan(gpus="ALL", visible=2) == ["cuda:0", "cuda:1"]


def test_one_gpu_and_k_1_is_a_single_worker():
    assert plan(gpus="1", visible=2) == ["cuda:1"]  # one worker: `search run` runs it in-process
    assert plan(gpus="all", visible=1) == ["cuda:0"]


def test_workers_per_gpu_without_gpus_uses_the_device_gpu():
    assert plan(k=4, device="cuda") == ["cuda"] * 4
    assert plan(k=2, device=torch.device("cuda:1"), visible=2) == ["cuda:1", "cuda:1"]


def test_workers_spread_over_the_gpus_first():
    devices = plan(gpus="all", k=2, visible=2)
    assert devices == ["cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert devices[:2] == ["cuda:0", "cuda:1"]  # fewer trials than workers: the ones started are on both GPUs


# --- the plan's refusals --------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(workers=2, gpus="0", visible=1), dict(workers=2, gpus="all", visible=4),
                                    dict(workers=2, k=2), dict(workers=3, gpus="0,1", k=2, visible=2)])
def test_workers_cannot_be_combined_with_gpus(kwargs):
    assert refusal(**kwargs) == ("--workers cannot be combined with --gpus/--workers-per-gpu: "
                                 "the worker count is GPUs x K")


@pytest.mark.parametrize("gpus", ["all", "0", "0,1"])
def test_gpus_without_a_visible_gpu(gpus):
    message = refusal(gpus=gpus, device="cpu", visible=0)
    assert message.startswith("--gpus: no GPU visible on this machine"), message


@pytest.mark.parametrize("gpus, missing", [("2", "2"), ("0,3", "3"), ("5,1,4", "5, 4")])
def test_gpus_index_out_of_range(gpus, missing):
    message = refusal(gpus=gpus, visible=2)
    assert message == f"--gpus {gpus}: no GPU {missing}; this machine sees 2 GPUs (0-1)"
    assert refusal(gpus="1", visible=1) == "--gpus 1: no GPU 1; this machine sees 1 GPU (0)"


@pytest.mark.parametrize("gpus", ["", " ", "0,x", "x", "-1", "1.5", "0,,1", "0,", "cuda:0", "0;1", "²"])
def test_gpus_malformed_list(gpus):
    message = refusal(gpus=gpus, visible=4)
    assert message == f"--gpus {gpus!r}: not a list of GPU indices; give all, or indices like 0,2"


@pytest.mark.parametrize("gpus, twice", [("0,0", "0"), ("1,0,1", "1"), ("2,2,3,3", "2, 3"), ("0, 0", "0")])
def test_gpus_duplicates(gpus, twice):
    message = refusal(gpus=gpus, visible=4)
    assert message.startswith(f"--gpus {gpus}: GPU {twice} given more than once"), message
    assert "--workers-per-gpu" in message


def test_gpus_with_device_cpu():
    assert refusal(gpus="all", device="cpu", visible=2) == "--gpus cannot be combined with --device cpu: drop one of them"
    assert refusal(gpus="0", device=torch.device("cpu"), visible=2).startswith("--gpus cannot be combined")


def test_workers_per_gpu_on_the_cpu():
    assert refusal(k=2, device="cpu") == "--workers-per-gpu: no GPU here (device cpu); use --workers for CPU processes"
    assert refusal(k=2, device=torch.device("cpu"), visible=2).startswith("--workers-per-gpu: no GPU here")


# --- the CLI, on this machine ---------------------------------------------------------------------------

def run_refused(workdir: Path, *args: str) -> str:
    """``search run --trials 2 --study g ARGS``, refused: its one-line error (nothing else printed), and
    nothing created (no study DB, no log folder)."""
    line = one_error_line(invoke("run", "--trials", "2", "--study", "g", *args), alone=True)
    assert not (workdir / "studies").exists()
    return line


no_gpu = pytest.mark.skipif(GPU_COUNT > 0, reason="checks the refusal on a machine without a GPU")


@no_gpu
@pytest.mark.parametrize("args", [["--gpus"], ["--gpus", "all"], ["--gpus", "0"], ["--gpus=0,1"],
                                  ["--gpus", "--workers-per-gpu", "2"], ["--gpus", "--device", "cpu"]])
def test_cli_gpus_without_a_gpu(args, workdir):
    line = run_refused(workdir, *args)
    assert line.startswith("Error: --gpus: no GPU visible on this machine"), line


@pytest.mark.parametrize("gpus", ["0,x", "", "0,0"])
def test_cli_gpus_bad_list(gpus, workdir):
    line = run_refused(workdir, "--gpus", gpus)
    assert line.startswith(f"Error: --gpus {gpus!r}" if gpus != "0,0" else "Error: --gpus 0,0: GPU 0 given"), line


def test_cli_workers_per_gpu_on_the_cpu(workdir):
    line = run_refused(workdir, "--workers-per-gpu", "2", "--device", "cpu")
    assert line == "Error: --workers-per-gpu: no GPU here (device cpu); use --workers for CPU processes"


@no_gpu
def test_cli_workers_per_gpu_with_auto_device_and_no_gpu(workdir):
    line = run_refused(workdir, "--workers-per-gpu", "2")
    assert line == "Error: --workers-per-gpu: no GPU here (device cpu); use --workers for CPU processes"


@pytest.mark.parametrize("args", [["--workers", "2", "--gpus", "0"], ["--workers", "2", "--gpus"],
                                  ["--workers", "2", "--workers-per-gpu", "2", "--device", "cpu"]])
def test_cli_workers_with_gpu_options(args, workdir):
    line = run_refused(workdir, *args)
    assert line == ("Error: --workers cannot be combined with --gpus/--workers-per-gpu: "
                    "the worker count is GPUs x K")


def test_cli_help_lists_the_gpu_options():
    result = invoke("run", "--help")
    assert result.exit_code == 0
    assert "--gpus all|LIST" in result.output and "--workers-per-gpu" in result.output


# --- real GPU workers (skipped without a GPU) -----------------------------------------------------------

@pytest.mark.skipif(GPU_COUNT < 1, reason="needs a CUDA GPU")
def test_cli_gpus_runs_workers_on_every_gpu(micro_dataset, workdir):
    import optuna

    result = invoke("run", "--trials", "4", "--study", "g", "--gpus", "--workers-per-gpu", "2",
                    "--data", str(micro_dataset), "--budget", "8", "--no-warm-start")
    assert result.exit_code == 0, result.output
    devices = ([f"cuda:{i}" for i in range(GPU_COUNT)] * 2)[:4]  # no more workers than trials
    assert f"4 trials shared by {len(devices)} worker processes ({', '.join(devices)})" in result.output
    trials = optuna.load_study(study_name="g", storage="sqlite:///studies/studies.sqlite3").trials
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) <= len(devices)  # shared: a fast worker may take more
