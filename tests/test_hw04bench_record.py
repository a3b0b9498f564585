"""HW04-Bench's recorder (bench/hw04bench): what a table promises its replays and the device calls that fill it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.hw04bench import configs, table
from bench.hw04bench.record import MIN_COST_RUNS, cost_bound, eval_steps, final_eval_steps, train_seed
from search.running import space as search_space

ROOT = Path(__file__).resolve().parent.parent


def test_the_plan_is_the_warm_starts_then_points_of_the_space_fixed_by_the_seed():
    runs = configs.plan("full", 16, seed=0)
    space = search_space.build_space("full")
    warm = list(search_space.warm_start_configs(space))
    assert [r.config for r in runs[:len(warm)]] == [f"warm:{name}" for name in warm]
    sobol = [r for r in runs if r.config.startswith("sobol:")]
    assert all(search_space.contains(space, r.params) for r in sobol)  # conditions respected, values in range
    assert {r.params["encoder"] for r in sobol} == {"transformer", "conformer"}
    assert [r.key for r in sobol if r.repeat == 1] == [("sobol:0", 1), ("sobol:8", 1)]  # every 8th, twice
    assert [r.params for r in configs.plan("full", 16, seed=0)] == [r.params for r in runs]
    assert [r.params for r in configs.plan("full", 16, seed=1)] != [r.params for r in runs]


def test_runs_validate_where_any_compared_pruner_can_look():
    assert eval_steps(2000, "full") == list(range(125, 2001, 125))  # Hyperband's rungs 250 and 750 among them
    assert {62, 186, 500} <= set(eval_steps(500, "cpu"))  # the cpu profile's two looks and the end
    assert train_seed("sobol:3", 0) != train_seed("sobol:3", 1) and train_seed("sobol:3", 0) == train_seed("sobol:3", 0)


def test_a_recorder_stopped_part_way_goes_on_where_it_stopped(tiny_dataset, tmp_path):
    out = tmp_path / "table.jsonl"
    command = [sys.executable, "-m", "bench.hw04bench.record", "--profile", "cpu", "--budget", "8", "--configs", "4",
               "--data", str(tiny_dataset), "--out", str(out), "--workers", "1", "--threads", "1"]
    for _ in range(2):  # two calls of two runs each, as two device calls cut short by their limit
        done = subprocess.run([*command, "--limit", "2"], cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
    recorded = table.load(out)
    planned = [r.key for r in configs.plan("cpu", 4)]
    assert [(r["config"], r["repeat"]) for r in recorded.runs] == planned[:4]  # no run twice, none skipped
    assert len(recorded.sessions) == 2 and recorded.budget == 8
    for run in recorded.runs:
        steps = [point[0] for point in run["curve"]]
        assert steps == eval_steps(8, "cpu") and run["failed"] is None
        assert all(0.0 <= point[1] <= 1.0 and point[3] > 0 and point[4] >= 0 for point in run["curve"])
        assert run["parameters"] > 0 and run["card"] == "cpu"
    # a line cut off by a kill is skipped, and the runs before it stay done
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "run", "config": "sobol:9"})[:20])
    assert table.load(out).done() == recorded.done()


def test_a_run_that_ran_out_of_gpu_memory_is_retried_not_done(tmp_path):
    out = tmp_path / "t.jsonl"
    out.write_text(json.dumps({"kind": "run", "config": "sobol:1", "repeat": 0, "failed": "out of GPU memory"}) + "\n"
                   + json.dumps({"kind": "run", "config": "sobol:2", "repeat": 0, "failed": None}) + "\n")
    loaded = table.load(out)
    assert loaded.done() == {("sobol:2", 0)} and [r["config"] for r in loaded.results()] == ["sobol:2"]
    # out of memory alone on the card, but before validation bounded its batches' attention: retried again
    alone = {"kind": "run", "config": "sobol:1", "repeat": 0, "failed": "out of GPU memory", "alone": True}
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "session", "session": "old"}) + "\n")
        f.write(json.dumps({**alone, "session": "old"}) + "\n")
    assert table.load(out).done() == {("sobol:2", 0)}
    assert not table.load(out).retry_alone({**alone, "alone": False, "session": "old"})  # first beside the others
    # alone with bounded batches (a session line says so: record.py): the configuration does not fit, a failure
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": "session", "session": "new", "attention_length": 1024}) + "\n")
        f.write(json.dumps({**alone, "session": "new"}) + "\n")
    loaded = table.load(out)
    assert loaded.done() == {("sobol:1", 0), ("sobol:2", 0)}
    assert [(r["config"], r["session"], r["failed"]) for r in loaded.results() if r["failed"]] == [
        ("sobol:1", "new", "out of GPU memory")]
    merged = tmp_path / "t.jsonl.gz"
    assert table.merge(merged, out) == 6 and table.merge(merged, out) == 0  # merging a call twice adds nothing


@pytest.mark.parametrize("failed", [
    "RuntimeError: CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`",  # call 13
    "AcceleratorError: CUDA error: out of memory\nSearch for `cudaErrorMemoryAllocation' in ...",  # call 14
    "RuntimeError: Expected a 'cuda' device type for generator but found 'cpu'",  # call 14: the bank on the host
])
def test_allocation_failures_and_a_bank_left_on_the_host_are_out_of_memory_too(tmp_path, failed):
    # calls 13 and 14: runs failed at step 0 with cuBLAS's or CUDA's allocation error, or (before data/bank.py's
    # fix) because their worker's feature bank did not fit on the card, beside five other workers: the card's
    # memory, not their configurations, so they are retried as runs out of memory are, not taken as failures
    out = tmp_path / "t.jsonl"
    out.write_text(json.dumps({"kind": "run", "config": "sobol:76", "repeat": 0, "failed": failed}) + "\n")
    loaded = table.load(out)
    assert loaded.done() == set() and loaded.results() == []


def test_a_run_that_ran_out_of_memory_beside_others_is_retried_first_and_alone(tiny_dataset, tmp_path):
    planned = configs.plan("cpu", 4)
    earlier = tmp_path / "earlier.jsonl"  # an earlier call: the plan's third run ran out of GPU memory there
    earlier.write_text(json.dumps({"kind": "session", "session": "s", "attention_length": 1024}) + "\n"
                       + json.dumps({"kind": "run", "config": planned[2].config, "repeat": planned[2].repeat,
                                     "failed": "out of GPU memory", "curve": [], "session": "s"}) + "\n")
    out = tmp_path / "table.jsonl"
    done = subprocess.run([sys.executable, "-m", "bench.hw04bench.record", "--profile", "cpu", "--budget", "8",
                           "--configs", "4", "--data", str(tiny_dataset), "--out", str(out), "--done", str(earlier),
                           "--workers", "2", "--threads", "1", "--limit", "3"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = table.load(out).runs
    keys = [(r["config"], r["repeat"]) for r in runs]  # the two after it train side by side: either ends first
    assert keys[0] == planned[2].key and sorted(keys[1:]) == sorted([planned[0].key, planned[1].key])
    lone, *others = runs
    assert lone["alone"] is True and not any(r.get("alone") for r in others)
    # nothing else was on the card while it trained: the others were handed out after it ended
    assert all(r["handed_out"] >= lone["handed_out"] + lone["wall_seconds"] - 0.02 for r in others)
    assert "ran out of GPU memory first, each alone" in done.stdout and "(alone)" in done.stdout
    # its seconds are another clock than the shared card's (the surrogate's cost model leaves them out)
    recorded = table.load(out)
    assert recorded.machine(lone) != recorded.machine(others[0])


def test_the_long_horizon_plan_spans_the_tables_scores_not_only_its_many_near_chance_runs():
    finals = {"warm:a": 0.60, "warm:b": 0.01, **{f"sobol:{i}": 0.002 * i for i in range(20)}, "sobol:20": 0.80,
              "sobol:21": 0.45, "sobol:22": 0.30}  # most of a 2,000-step table ends near chance
    runs = [{"config": c, "failed": None, "params": {"name": c}, "curve": [[2000, score]]} for c, score in finals.items()]
    runs.append({"config": "sobol:23", "failed": "NaN", "params": {}, "curve": [[500, 0.9]]})  # failed: never planned
    long, longest = configs.long_plan(runs, n=8, n_longest=4)
    chosen = [r.config for r in long]
    assert len(chosen) == 8 == len(set(chosen)) and {"warm:a", "warm:b", "sobol:20", "sobol:0"} <= set(chosen)
    assert {"sobol:21", "sobol:22"} <= set(chosen)  # the middle of the score range, not a fifth near-chance run
    assert [finals[c] for c in chosen] == sorted((finals[c] for c in chosen), reverse=True)
    assert [r.config for r in longest][:2] == ["sobol:20", "warm:a"] and len(longest) == 4
    assert {r.config for r in longest} <= set(chosen)


def _history(planned: list, seconds) -> list[dict]:
    """Earlier runs of the plan's configurations under other names (so none of the plan is done), timed by
    ``seconds(params)``."""
    return [{"kind": "run", "config": f"earlier:{i}", "repeat": 0, "params": planned[i % len(planned)].params,
             "failed": None, "wall_seconds": seconds(planned[i % len(planned)].params), "curve": []}
            for i in range(MIN_COST_RUNS)]


def test_the_cost_bound_learns_what_makes_runs_slow_and_needs_enough_runs():
    planned = configs.plan("cpu", 4)[:7]
    slow = lambda params: 900.0 if params["encoder"] == "conformer" else 30.0  # noqa: E731
    bound = cost_bound(_history(planned, slow))
    for run in planned:
        assert slow(run.params) * 0.9 <= bound(run.params) <= slow(run.params) * 1.5
    assert cost_bound(_history(planned, slow)[:MIN_COST_RUNS - 1]) is None


def test_a_recorder_with_an_end_time_hands_out_only_runs_that_end_by_it(tiny_dataset, tmp_path):
    planned = configs.plan("cpu", 4)
    earlier = tmp_path / "earlier.jsonl"  # on this machine Conformers took hours, Transformers a second
    lines = _history(planned[:7], lambda params: 1e4 if params["encoder"] == "conformer" else 1.0)
    earlier.write_text("".join(json.dumps(line) + "\n" for line in lines))
    out = tmp_path / "table.jsonl"
    command = [sys.executable, "-m", "bench.hw04bench.record", "--profile", "cpu", "--budget", "8", "--configs", "4",
               "--data", str(tiny_dataset), "--out", str(out), "--done", str(earlier), "--workers", "1",
               "--threads", "1", "--limit", "6"]
    done = subprocess.run([*command, "--end-at", str(time.time() + 300)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    recorded = [(r["config"], r["repeat"]) for r in table.load(out).runs]
    # the Conformers (sobol:0, twice) wait for a call with hours to spare; the plan's order otherwise kept
    assert recorded == [r.key for r in planned[:7] if r.params["encoder"] == "transformer"]
    assert "2 planned runs left" in done.stdout


def test_a_run_still_in_flight_at_the_end_time_is_stopped_and_not_recorded(tiny_dataset, tmp_path):
    out = tmp_path / "table.jsonl"  # no timed runs yet: no cost model, the plan's first run is handed out
    started = time.time()
    done = subprocess.run([sys.executable, "-m", "bench.hw04bench.record", "--profile", "cpu", "--budget", "100000",
                           "--configs", "4", "--data", str(tiny_dataset), "--out", str(out), "--workers", "1",
                           "--threads", "1", "--limit", "1", "--end-at", str(started + 20)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 runs in flight stopped, not recorded" in done.stdout
    assert table.load(out).runs == [] and len(table.load(out).sessions) == 1
    assert time.time() - started < 20 + 60  # it ended at the end time, not with its 100,000-step run


def test_a_long_run_stopped_by_the_end_time_goes_on_from_its_checkpoint_in_the_next_call(tiny_dataset, tmp_path):
    plan = tmp_path / "plan.json"
    configs.save_plan(configs.plan("cpu", 4)[:1], plan)
    out, checkpoints = tmp_path / "long.jsonl", tmp_path / "checkpoints"
    command = [sys.executable, "-m", "bench.hw04bench.record", "--profile", "cpu", "--final", "--budget", "400",
               "--data", str(tiny_dataset), "--plan", str(plan), "--out", str(out), "--workers", "1",
               "--threads", "1", "--checkpoints", str(checkpoints)]
    first = subprocess.run([*command, "--end-at", str(time.time() + 25)], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "1 runs in flight stopped, not recorded" in first.stdout and table.load(out).runs == []
    kept = json.loads(next(checkpoints.glob("*.json")).read_text())["curve"]
    assert kept and kept[-1][0] < 400  # stopped part way, after some validations
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    [run] = table.load(out).runs
    assert [point[0] for point in run["curve"]] == final_eval_steps(400) == list(range(20, 401, 20))
    assert run["curve"][:len(kept)] == kept  # the first call's validations, then the second's
    seconds = [(point[3], point[4]) for point in run["curve"]]
    assert all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(seconds, seconds[1:]))  # they add up across the calls
    assert run["wall_seconds"] > run["curve"][-1][3] and run["rollbacks"] == 0 and run["failed"] is None
    assert list(checkpoints.iterdir()) == []  # a finished run's checkpoint is not kept
    assert table.load(out).sessions[-1]["final"] is True


def test_a_worker_whose_run_failed_with_an_error_is_replaced_and_the_next_runs_train(tiny_dataset, tmp_path):
    # An error that is not the configuration's divergence (out of GPU memory, here an optimizer that refuses its
    # learning rate) may leave the process unfit to train on: call 10 lost 105 runs in a row to one such worker.
    first, second, third = configs.plan("cpu", 3)[:3]  # the warm start, then Sobol points
    broken = configs.Run("sobol:broken", 0, {**second.params, "lr": -1.0})
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps([{"config": r.config, "repeat": r.repeat, "params": r.params}
                                for r in (first, broken, third)]))
    out = tmp_path / "table.jsonl"
    done = subprocess.run([sys.executable, "-m", "bench.hw04bench.record", "--profile", "cpu", "--budget", "8",
                           "--plan", str(plan), "--data", str(tiny_dataset), "--out", str(out),
                           "--workers", "1", "--threads", "1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = {r["config"]: r for r in table.load(out).runs}
    assert runs["sobol:broken"]["failed"].startswith("ValueError") and "learning rate" in runs["sobol:broken"]["failed"]
    assert runs[first.config]["failed"] is None and runs[third.config]["failed"] is None  # trained after it
    assert [point[0] for point in runs[third.config]["curve"]] == eval_steps(8, "cpu")
    assert "1 worker(s) replaced after a failed run" in done.stdout


def test_runs_failed_by_a_worker_after_its_first_out_of_memory_are_no_evidence_about_their_configurations(tmp_path):
    def lines(mark: dict) -> str:
        runs = [{"kind": "run", "config": f"sobol:{i}", "repeat": 0, "worker": 0, "session": "s",
                 "failed": "out of GPU memory"} for i in (1, 2)]
        return "\n".join(json.dumps(r) for r in [{"kind": "session", "session": "s", "attention_length": 1024,
                                                  **mark}, *runs]) + "\n"
    old = tmp_path / "old.jsonl"  # a recorder that kept such a worker: its second failure says nothing of sobol:2
    old.write_text(lines({}))
    loaded = table.load(old)
    assert [r["config"] for r in loaded.runs if loaded.retry_alone(r)] == ["sobol:1"]
    assert loaded.done() == set()  # both are retried, the second beside the other workers
    new = tmp_path / "new.jsonl"  # a recorder that replaces the worker: each failure is its configuration's
    new.write_text(lines({"replaces_workers": True}))
    loaded = table.load(new)
    assert [r["config"] for r in loaded.runs if loaded.retry_alone(r)] == ["sobol:1", "sobol:2"]
