"""HW04-Bench's replay in its smoke mode (bench/hw04bench/replay.py) on the tiny fixture table: what a user of the
report would notice if it broke. Ours always run (scikit-learn is in the test extra); a peer is tested only where
its library is installed."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("sklearn", reason="the surrogate needs scikit-learn (pip install -e '.[test]')")

from bench.hw04bench import replay, surrogate as bench_surrogate  # noqa: E402
from search.running import space as search_space  # noqa: E402


def _check(result: replay.Evaluation, names: list[str]) -> None:
    horizon = max(result.budgets)
    for k in (1, 4):
        for name in names:
            traces = [t for t in result.traces if t.strategy == name and t.workers == k]
            assert traces, f"{name} K={k} made no replay"
            for trace in traces:
                # every strategy ends with a curve: a full training finished inside the largest budget
                assert trace.incumbent, f"{name} K={k} seed {trace.seed}: no full training in {horizon:.0f} s"
                times = [t for t, _ in trace.incumbent]
                scores = [s for _, s in trace.incumbent]
                assert times == sorted(times) and all(0 <= t <= horizon for t in times)
                assert scores == sorted(scores), f"{name}: the best-so-far went down"
                assert all(result.best - s >= -1e-9 for s in scores), f"{name}: regret < 0"
                assert all(tr["end"] >= tr["start"] for tr in trace.trials)
            for budget in result.budgets:
                row = result.summaries[budget][k][name]
                assert row["regret_mean"] >= -1e-9 and row["pick_regret_mean"] >= -1e-9
                assert math.isfinite(row["mean_rank"])
            assert math.isfinite(result.summaries[horizon][k][name]["final_mean"])


def test_smoke_ours(tmp_path):
    names = [*replay.OURS, *replay.EXTRA]
    result = replay.evaluate([replay.FIXTURE], [], seeds=1, workers=[1, 4], strategies=names, trees=10, smoke=True,
                             log=lambda line: None)
    _check(result, names)
    # the default strategy starts as `search run` does: the warm starts, in their order, before anything sampled
    warm = list(search_space.warm_start_configs(result.surrogate.space).values())
    for k in (1, 4):
        default = next(t for t in result.traces if t.strategy == "default" and t.workers == k)
        started = sorted(default.trials, key=lambda tr: tr["asked"])  # they end in any order with K=4
        assert [tr["params"] for tr in started[:len(warm)]] == warm
        no_warm = next(t for t in result.traces if t.strategy == "no-warm-start" and t.workers == k)
        assert no_warm.trials[0]["params"] not in warm
    # the report: one self-contained page with a curve per strategy
    out = tmp_path / "report.html"
    replay.write_html(result.summaries, out, "smoke")
    page = out.read_text(encoding="utf-8")
    assert page.count("<script") >= 1 and all(f'"name":"{n}"' in page for n in names)
    assert "default" in replay.format_table(result.summaries[result.budgets[0]], result.budgets[0], [])


@pytest.mark.parametrize("peer", list(replay.PEERS))
def test_smoke_peer(peer):
    module = replay.PEERS[peer][0]
    if module == "<venv-neps>":  # NePS runs in its own virtual environment (bench/hw04bench/neps_driver.py)
        why = replay.peer_status()[peer]
        if why:
            pytest.skip(f"NePS: {why}")
    else:
        pytest.importorskip(module)
    result = replay.evaluate([replay.FIXTURE], [], seeds=1, workers=[1, 4], strategies=[peer], trees=10,
                             smoke=True, log=lambda line: None)
    _check(result, [peer])


def test_replays_spread_over_processes_give_the_same_traces():
    # --jobs only spreads the replays over processes: each replay is fixed by its seed, so a user's table must not
    # change with the number of cores they lend it
    args = dict(seeds=2, workers=[1, 4], strategies=["default", "asha-rf3"], trees=10, smoke=True,
                log=lambda line: None)
    one = replay.evaluate([replay.FIXTURE], [], jobs=1, **args)
    two = replay.evaluate([replay.FIXTURE], [], jobs=2, **args)
    key = [(t.strategy, t.workers, t.seed) for t in one.traces]
    assert key == [(t.strategy, t.workers, t.seed) for t in two.traces] and len(key) == 8
    for a, b in zip(one.traces, two.traces):
        assert a.incumbent == b.incumbent and a.picked == b.picked
        assert [(tr["params"], tr["state"], tr["end"]) for tr in a.trials] == \
            [(tr["params"], tr["state"], tr["end"]) for tr in b.trials]


def test_configspace_round_trip():
    pytest.importorskip("ConfigSpace")
    for profile in search_space.PROFILES:
        space = search_space.build_space(profile)
        cs = replay.configspace(space, seed=0)
        for config in cs.sample_configuration(50):
            assert search_space.contains(space, replay.from_configspace(space, config))
        for params in search_space.warm_start_configs(space).values():
            assert replay.from_configspace(space, replay.to_configspace(space, params)) == params


def test_surrogate_check_on_fixture():
    from bench.hw04bench import table

    result = bench_surrogate.check(table.load(replay.FIXTURE), folds=3, n_estimators=10)
    assert -1 <= result["spearman_final_accuracy"] <= 1 and result["median_relative_time_error"] >= 0
    assert result["pairs"] >= 1
    # the early ranking, at every validation step before the last: recorded and drawn, each a rank correlation
    steps = table.load(replay.FIXTURE).sessions[0]["eval_steps"]
    assert [step for step, _, _ in result["early_ranking"]] == steps[:-1]
    assert all(-1 <= rec <= 1 and -1 <= drawn <= 1 for _, rec, drawn in result["early_ranking"])


def test_the_surrogate_asks_its_trees_as_the_forest_would():
    """surrogate.predict averages the failure classifier's trees itself (a forest's own predict dispatches 100
    trees through joblib for each single configuration a replay asks): the same failure chances, to the last bit."""
    import numpy as np

    from bench.hw04bench import table

    model = bench_surrogate.Surrogate(table.load(replay.FIXTURE), n_estimators=10)
    assert model.fail_model is not None  # the fixture holds a failed run
    x = np.asarray(model.encoder.encode_many([r["params"] for r in table.load(replay.FIXTURE).runs]), dtype=np.float32)
    assert np.array_equal(bench_surrogate._forest_mean(model.fail_model, x, proba=True),
                          model.fail_model.predict_proba(x))


def test_the_surrogate_promises_nothing_beyond_the_table():
    """A replay's regret is measured against the table's best configuration: no point of the space, recorded or
    sampled, may be predicted better than what the table recorded at any step, and the model size columns are
    found (the speaker count solved from the recorded parameter counts)."""
    import numpy as np

    from bench.hw04bench import table

    tbl = table.load(replay.FIXTURE)
    model = bench_surrogate.Surrogate(tbl, n_estimators=10)
    assert model.encoder.size is not None and model.encoder.columns[-2:] == ["log parameters",
                                                                            "log parameters x frames"]
    import optuna

    space = search_space.build_space(tbl.profile)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampled = [search_space.suggest(study.ask(), space) for _ in range(40)]
    curves, costs, _ = model.predict([r["params"] for r in tbl.runs] + sampled)
    assert (curves <= model.ceiling + 1e-12).all() and curves[:, -1].max() <= model.best
    assert (costs > 0).all()


def test_scores_less_than_one_validation_utterance_apart_rank_alike():
    """The surrogate's means of two strategies' finds can differ by 1e-5: no validation run could tell them apart
    (the fixture's validation split has 156 utterances, found from its recorded accuracies), so they tie."""
    from bench.hw04bench import table

    runs = table.load(replay.FIXTURE).results()
    assert bench_surrogate.validation_size(runs) == 156
    traces = [replay.Trace("a", 1, 0, 10.0, incumbent=[(1.0, 0.5)]),
              replay.Trace("b", 1, 0, 10.0, incumbent=[(1.0, 0.5 + 1e-5)])]
    strict = replay.summarize(traces, 10.0, 0.6, grid_points=5)[1]
    assert (strict["a"]["mean_rank"], strict["b"]["mean_rank"]) == (2.0, 1.0)
    alike = replay.summarize(traces, 10.0, 0.6, grid_points=5, validation_size=156)[1]
    assert alike["a"]["mean_rank"] == alike["b"]["mean_rank"] == 1.5
    assert alike["a"]["reach"]["b"] == 1.0  # a reaches b's final score: the same count of utterances


def test_an_unknown_strategy_is_named_before_any_work():
    with pytest.raises(SystemExit, match=r"--strategies: unknown strategy 'tpe-typo' \(known: default, "):
        replay.evaluate([replay.FIXTURE], [], seeds=1, workers=[1], strategies=["default", "tpe-typo"], smoke=True,
                        log=lambda line: None)


def test_sharing_counts_the_runs_on_the_card_over_a_runs_time():
    """Table.sharing: the time-weighted mean number of a session's runs in flight while a run trained, itself
    included; from ``handed_out`` where recorded, else from each worker's runs taken back to back in line order."""
    from bench.hw04bench import table

    def run(session, worker, wall, **extra):
        return {"kind": "run", "session": session, "worker": worker, "wall_seconds": wall, "failed": None, **extra}

    timed = [run("a", 0, 10.0, handed_out=0.0), run("a", 1, 10.0, handed_out=5.0)]  # overlapping for 5 s
    untimed = [run("b", 0, 10.0), run("b", 0, 10.0), run("b", 1, 20.0)]  # worker 0: [0, 10], [10, 20]; 1: [0, 20]
    tbl = table.Table(sessions=[{"session": "a"}, {"session": "b"}], runs=timed + untimed)
    assert [tbl.sharing(r) for r in timed] == [1.5, 1.5]
    assert [tbl.sharing(r) for r in untimed] == [2.0, 2.0, 2.0]


def test_the_cost_model_of_a_gpu_table_learns_how_sharing_the_card_slows_a_run():
    """On a GPU table the same configuration's seconds grow with the runs sharing the card (MPS): the surrogate's
    costs take the sharing, and a replay's clock reads them at the recording's median. Here the fixture's runs are
    recorded twice: alone (each in a session of its own) and three at a time with three times the seconds."""
    import copy

    import numpy as np

    from bench.hw04bench import table

    fixture = table.load(replay.FIXTURE)
    complete = [r for r in fixture.runs if not r["failed"]]
    sessions, runs = [], []
    for i, r in enumerate(complete):
        sessions.append({**fixture.sessions[0], "session": f"alone-{i}"})
        runs.append({**copy.deepcopy(r), "session": f"alone-{i}", "worker": 0, "handed_out": 0.0})
        sessions.append({**fixture.sessions[0], "session": f"shared-{i}"})
        for worker in range(3):
            slow = copy.deepcopy(r)
            slow["curve"] = [c[:3] + [c[3] * 3, c[4] * 3] for c in slow["curve"]]
            runs.append({**slow, "wall_seconds": r["wall_seconds"] * 3, "session": f"shared-{i}", "worker": worker,
                         "handed_out": 0.0, "repeat": r["repeat"] + 10 * (worker + 1)})
    model = bench_surrogate.Surrogate(table.Table(sessions=sessions, runs=runs), n_estimators=10)
    assert model.shared_card and model.reference_sharing == 3.0
    params = [r["params"] for r in complete]
    slow_to_fast = model.costs(params, 3.0)[:, 0] / model.costs(params, 1.0)[:, 0]  # seconds per training step
    assert np.median(slow_to_fast) == pytest.approx(3.0, rel=0.2)
    assert np.allclose(model.predict(params)[1], model.costs(params))  # the replay's clock: the median sharing
