"""The speed benchmark runs end to end (CPU smoke mode); its numbers are for BENCHMARKS.md, not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from search.running.space import KNOWN_CONFIGS
from search.training.train import TrainConfig

ROOT = Path(__file__).resolve().parent.parent


def in_tmp(tmp_path) -> dict:
    """The environment of a smoke run whose scratch folders (tempfile's) go to the test's tmp folder, not /tmp."""
    return {**os.environ, "TMPDIR": str(tmp_path)}


def test_bench_smoke_prints_every_measurement(tmp_path):
    done = subprocess.run([sys.executable, "bench/bench.py", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=in_tmp(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    kinds = {r["what"] for r in records}
    assert {"environment", "packing", "bank", "steps_per_second_batch32", "segments_per_second",
            "best_segments_per_second", "evaluation_cost", "evaluation", "trials_per_hour"} <= kinds
    cost = next(r for r in records if r["what"] == "evaluation_cost")
    assert cost["accuracy_before"] == cost["accuracy_after"]  # the bucketed evaluation: the same accuracy
    shares = {r["schedule"]: r for r in records if r["what"] == "evaluation"}
    assert [shares[s]["evaluations"] for s in ("grid", "rungs", "curve")] == [8, 3, 4]  # 8-step trials
    assert all(0 < r["share"] < 1 for r in shares.values())
    ratios = [r["ratio"] for r in records if r["what"] == "steps_per_second_batch32"]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    trials = [r for r in records if r["what"] == "trials_per_hour"]
    assert [(r["workers"], r["mps"]) for r in trials] == [(1, "off"), (2, "off")]
    assert all(r["mps_status"] == "MPS: off (not on a GPU)" and 0 < r["eval_share"] < 1 for r in trials)


def test_calibrate_smoke_prints_every_evaluation_and_a_summary_per_warm_start_config(tmp_path):
    done = subprocess.run([sys.executable, "bench/calibrate.py", "--smoke"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=in_tmp(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    configs = list(KNOWN_CONFIGS)  # every warm-start configuration, in order
    evals = [(r["config"], r["step"]) for r in records if r["what"] == "eval"]
    assert evals == [(c, s) for c in configs for s in (2, 4)]
    summaries = [r for r in records if r["what"] == "summary"]
    assert [s["config"] for s in summaries] == configs
    for s in summaries:
        assert 0.0 <= s["final_accuracy"] <= s["best_accuracy"] <= 1.0 and s["rollbacks"] == []
        assert s["recover_collapse"] and s["grad_clip"] == TrainConfig.grad_clip and s["steps_per_second"] > 0


def test_efficiency_smoke_runs_every_arm_finalizes_their_picks_and_draws_the_figure(tmp_path):
    """`bench/efficiency.py --smoke`: every arm runs on the same budget, each arm's pick is finalized and
    scored on the test answers, the table and the self-contained plotly page are written."""
    done = subprocess.run([sys.executable, "bench/efficiency.py", "--smoke", "--results", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    arms = {r["arm"]: r for r in records if r["what"] == "arm"}
    assert list(arms) == ["grid", "random", "tpe", "default", "asha", "default-v1"]
    assert all(a["seconds"] == 5.0 and a["trials"] >= 1 for a in arms.values()), arms
    # the grid is the hand grid (here: its variants inside the cpu profile), nothing else
    trials = [r for r in records if r["what"] == "trial" and r["arm"] == "grid"]
    assert trials and all(r["state"] in ("complete", "pruned") for r in trials)
    finals = [r for r in records if r["what"] == "final"]
    assert {f["arm"] for f in finals} == {name for name, a in arms.items() if a["best_params"]}
    assert all(0.0 <= f["test"] <= 1.0 and f["test_utterances"] > 0 for f in finals)
    summaries = [r for r in records if r["what"] == "summary"]
    assert [s["arm"] for s in summaries] == list(arms)
    assert "| arm | trials (complete) | s to the grid's final best |" in done.stdout
    page = (tmp_path / "efficiency.html").read_text()
    assert "plotly" in page and "grid seed 0" in page and "default seed 0" in page
    # a second call finds every arm and final done: it reruns nothing and prints the same table
    again = subprocess.run([sys.executable, "bench/efficiency.py", "--smoke", "--results", str(tmp_path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert '"what": "arm"' not in again.stdout and '"what": "final"' not in again.stdout
    assert done.stdout.split("| arm |")[1] == again.stdout.split("| arm |")[1]


def test_fused_trials_train_each_model_as_it_would_alone():
    """bench/fusion.py's measurement is of real training: two models stacked into one vmapped step end with the
    weights each reaches trained alone on its own batch (no dropout, so the runs are deterministic)."""
    import copy

    import torch

    sys.path.insert(0, str(ROOT / "bench"))
    try:
        from fusion import FusedStep, batches
    finally:
        sys.path.remove(str(ROOT / "bench"))
    from model import build_model
    from search.running.space import build_configs

    model_cfg, _ = build_configs(dict(KNOWN_CONFIGS["sample-code"], dropout=0.0), 40, 6, 100, seed=0)
    torch.manual_seed(0)
    models = [build_model(model_cfg) for _ in range(2)]
    alone = [copy.deepcopy(m) for m in models]
    x, mask, labels = batches(2, 8, 32, 40, 6, torch.device("cpu"))
    fused = FusedStep(models, torch.device("cpu"))
    for _ in range(3):
        fused(x, mask, labels)
    for i, model in enumerate(alone):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        for _ in range(3):
            optimizer.zero_grad()
            model.loss(x[i], mask[i], labels[i], 1.0)[0].backward()
            optimizer.step()
        for name, weight in model.named_parameters():
            assert torch.allclose(fused.params[f"model.{name}"][i], weight, atol=1e-5), (i, name)
        assert not torch.allclose(fused.params["model.prenet.weight"][i], models[i].prenet.weight)  # it trained


def test_fusion_smoke_prints_one_line_per_k(tmp_path):
    done = subprocess.run([sys.executable, "bench/fusion.py", "--device", "cpu", "--ks", "1,2", "--steps", "2",
                           "--speakers", "6"], cwd=ROOT, capture_output=True, text=True, timeout=600, env=in_tmp(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [r["what"] for r in records] == ["environment", "one_model", "fused", "fused"]
    assert [r["k"] for r in records[2:]] == [1, 2] and all(r["model_steps_per_second"] > 0 for r in records[2:])


def test_eval_memory_smoke_measures_each_model_with_and_without_the_attention_bound(tmp_path):
    """`bench/eval_memory.py --smoke`: every model is validated under the bound and without it, with the same
    accuracy; the bound splits the batches (on the smoke set's short utterances only at its smoke bound)."""
    done = subprocess.run([sys.executable, "bench/eval_memory.py", "--smoke"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=in_tmp(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")][1:]
    assert len(rows) == 10 and all("error" not in r and r["eval_ms"] > 0 for r in rows)
    for bounded, unbounded in zip(rows[::2], rows[1::2]):
        assert bounded["model"] == unbounded["model"] and bounded["accuracy"] == unbounded["accuracy"]
        assert bounded["batches"] > unbounded["batches"]
