"""HW04-Bench's real searches beside their replay (bench/hw04bench/real.py): the strategies it runs are the
replay's and `search run`'s own, and its table counts what a study had found by the budget, not after it."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("sklearn", reason="the replay's surrogate needs scikit-learn (pip install -e '.[test]')")

from bench.hw04bench import real, replay, surrogate as bench_surrogate, table  # noqa: E402
from search.commands.run import run as run_command  # noqa: E402


def test_each_real_strategy_is_a_replay_strategy_and_search_run_takes_its_options():
    options = {opt for param in run_command.params for opt in param.opts + param.secondary_opts}
    for name, flags in real.STRATEGY_OPTIONS.items():
        assert name in replay.OPTUNA_STRATEGIES, f"{name}: the replay has no strategy of that name"
        assert set(flags) <= options, f"{name}: search run has no option {set(flags) - options}"


def _trial(number, state, value, start, end):
    return {"number": number, "state": state, "value": value, "params": {}, "start": start, "end": end,
            "steps_per_second": None, "ended": None}


def test_the_summary_counts_trials_complete_by_the_budget_beside_the_replays_prediction(tmp_path):
    lines = [{"strategy": "default", "seed": s, "budget": 100.0, "trials": [
        _trial(0, "COMPLETE", 0.30 + s / 10, 5, 60),
        _trial(1, "PRUNED", 0.90, 60, 70),  # a pruned trial's value is not a result
        _trial(2, "COMPLETE", 0.95, 70, 130),  # ended after the budget: the study had not found it yet
    ]} for s in (0, 1)]
    out = tmp_path / "real.jsonl"
    out.write_text("".join(json.dumps(line) + "\n" for line in lines))
    model = bench_surrogate.Surrogate(table.load(replay.FIXTURE), n_estimators=10)
    budget = replay.smoke_budgets(model)[1]
    prediction = real.replay_prediction(model, ["default"], budget, seeds=2)["default"]
    assert prediction["low"] <= prediction["mean"] <= prediction["high"] <= 1.0
    rows = real.summary(table.read_lines(out), {"default": prediction})
    assert rows[1].split()[:5] == ["default", "s0", "0.3000,", "s1", "0.4000"]
    assert "0.3500" in rows[1] and f"{prediction['mean']:.4f} ±" in rows[1]
