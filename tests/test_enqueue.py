"""``search enqueue`` carries work forward: a trial's configuration (a pruned one too) or a study's K best, from this
study, another or another storage, queued into a study (created as ``search run`` creates it where it is new), each
checked against that study's space; ``search run`` then runs them first. ``--full-budget`` trials are never pruned,
and ``search finalize`` on a pruned trial says how to get there."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.running.space import KNOWN_CONFIGS, build_space
from search.running.study import load_study
from tests.helpers import SAMPLE, SHARED, invoke, new_study, one_error_line

BUDGET = 8  # new_study's budget: rungs at steps 1 and 3 (the cpu profile's decision and second look)


@pytest.fixture(autouse=True)
def _quiet_optuna():
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _add(study: optuna.Study, params: dict, state: TrialState, curve: dict, ended: str) -> None:
    """A finished trial with ``params``, its validation ``curve`` and why it ended, as a run records them."""
    space = build_space("cpu")
    distributions = {p.name: p.distribution() for p in space if p.name in params}
    study.add_trial(create_trial(params=params, distributions=distributions, state=state, user_attrs={"ended": ended},
                                 intermediate_values=curve, value=max(curve.values()) if state == TrialState.COMPLETE
                                 else None))


def _strong_study(data, name: str) -> optuna.Study:
    """A study whose two complete trials were perfect at every rung (a new trial is pruned at a rung unless left
    alone) and one pruned trial: the sample code, stopped at step 1."""
    study = new_study(data, f"sqlite:///studies/{name}.db", name, budget=BUDGET)
    cpu_config = {**SAMPLE, "pooling": "asp", "head": "linear", "lr": 3e-3}
    cpu_config.pop("head_hidden")
    for params in (cpu_config, {**cpu_config, "lr": 2e-3}):
        _add(study, params, TrialState.COMPLETE, {1: 1.0, 3: 1.0, BUDGET: 1.0}, f"complete after {BUDGET} steps")
    _add(study, dict(SAMPLE), TrialState.PRUNED, {1: 0.1}, "pruned at step 1")
    return study


def test_a_pruned_trial_runs_its_whole_budget_with_full_budget_and_is_pruned_again_without(micro_dataset, workdir):
    (workdir / "studies").mkdir()
    _strong_study(micro_dataset, "s")
    finalize = one_error_line(invoke("finalize", "2", "--study", "s", "--data", str(micro_dataset), "--device", "cpu"))
    assert finalize == ("Error: TRIAL 2: trial #2 of study 's' did not complete (pruned at step 1, valid accuracy "
                        "0.1000 there); finalize retrains complete trials. To train its configuration to the study's "
                        "full budget first: search enqueue --study s --from-trial 2 --full-budget && search run --study "
                        "s --trials 1, then finalize the new trial")
    for flags in (["--full-budget"], []):
        queued = invoke("enqueue", "--study", "s", "--from-trial", "2", *flags)
        assert queued.exit_code == 0, queued.output
        assert queued.output.splitlines()[1].startswith("trial #2 of study 's': queued (encoder transformer, ")
        assert queued.output.splitlines()[-1] == ("1 of 1 configurations queued; next: search run --study s --trials "
                                                  "1 runs them first")
        again = invoke("enqueue", "--study", "s", "--from-trial", "2", *flags)
        assert "trial #2 of study 's': skipped, queued already" in again.output
        ran = invoke("run", "--study", "s", "--trials", "1", "--device", "cpu")
        assert ran.exit_code == 0, ran.output
    study = load_study("s", None)
    full, plain = study.trials[3], study.trials[4]
    assert full.params == plain.params == SAMPLE
    assert full.user_attrs["enqueued_from"] == plain.user_attrs["enqueued_from"] == "s#2"
    assert (full.state, full.user_attrs["ended"], full.user_attrs["full_budget"]) == (
        TrialState.COMPLETE, f"complete after {BUDGET} steps", True)
    assert plain.state == TrialState.PRUNED and plain.user_attrs["ended"].startswith("pruned at step")


def test_the_top_k_of_another_storage_go_into_a_new_study_before_its_warm_starts(micro_dataset, workdir, tmp_path):
    (workdir / "studies").mkdir()
    (tmp_path / "elsewhere").mkdir()
    source_url = f"sqlite:///{tmp_path / 'elsewhere' / 'cpu.db'}"
    source = new_study(micro_dataset, source_url, "cpu", budget=BUDGET)
    for lr, value in ((1e-3, 0.5), (2e-3, 0.9), (3e-3, 0.7)):
        _add(source, {**SAMPLE, "lr": lr}, TrialState.COMPLETE, {BUDGET: value}, "complete")
    _add(source, {**SAMPLE, "lr": 2e-3}, TrialState.COMPLETE, {BUDGET: 0.8}, "complete")  # the best one again
    result = invoke("enqueue", "--study", "gpu", "--from-study", "cpu", "--from-storage", source_url, "--top", "3",
                    "--device", "cpu", "--range", "lr=1.5e-3:3e-3", "--data", str(micro_dataset), "--budget", "8")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == ("created study 'gpu' in sqlite:///studies/studies.sqlite3 (space cpu, lr 0.0015 .. 0.003; 8 steps a "
                        "trial)")
    assert [line.split(":")[0] for line in lines[1:3]] == ["trial #1 of study 'cpu'", "trial #2 of study 'cpu'"]
    assert ("trial #0 of study 'cpu': skipped, it does not fit the study's space: lr 0.001 is not in the space "
            "(0.0015 .. 0.003)") in lines
    # the warm starts come after, those the space leaves out named: the sample code's lr is 1e-3
    assert "warm start 'sample-code': skipped, it does not fit the study's space: lr 0.001 is not in the space " \
           "(0.0015 .. 0.003)" in lines
    waiting = load_study("gpu", None).get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs.get("enqueued_from") or t.user_attrs.get("warm_start") for t in waiting] == [
        "cpu#1", "cpu#2", "cpu-sample-code-stats-pooling"]
    assert load_study("gpu", None).user_attrs["space"] == {"lr": {"low": 0.0015, "high": 0.003}}


def test_a_new_study_none_of_whose_configurations_fits_is_not_created(micro_dataset, workdir):
    (workdir / "studies").mkdir()
    _strong_study(micro_dataset, "cpu")
    line = one_error_line(invoke("enqueue", "--study", "conf", "--from-study", "cpu", "--top", "2", "--set",
                                 "encoder=conformer"), alone=True)
    assert line == ("Error: --study conf: no configuration fits the new study's space (cpu profile): trial #0 of study "
                    "'cpu': encoder transformer is not in the space (conformer); nothing created")
    shared = workdir / "studies" / "studies.sqlite3"  # the cpu study is in it: conf must not be
    assert not shared.exists() or "conf" not in optuna.get_all_study_names(SHARED)
    assert not (workdir / "studies" / "conf.db").exists() and not (workdir / "studies" / "conf").exists()


@pytest.mark.parametrize("args, expected", [
    ([], "Error: --from-trial: give --from-trial N (one trial) or --top K (a study's K best), one of them"),
    (["--from-trial", "0", "--top", "2"], "Error: --from-trial: give --from-trial N"),
    (["--from-trial", "9"], "Error: --from-trial 9: no such trial in study 's' (it has trials #0 to #2)"),
    (["--from-trial", "0", "--from-study", "nope"], "Error: --from-study: no study 'nope' in "),
    (["--from-trial", "0", "--set", "encoder=conformer"], "Error: --space/--set/--range: study 's' was created with "
                                                          "its own space (cpu profile, as the profile)"),
])
def test_wrong_enqueues_are_one_line(args, expected, micro_dataset, workdir):
    (workdir / "studies").mkdir()
    _strong_study(micro_dataset, "s")
    line = one_error_line(invoke("enqueue", "--study", "s", *args), alone=True)
    assert line.startswith(expected), line
    assert not load_study("s", None).get_trials(states=(TrialState.WAITING,))


def test_a_running_trial_is_not_queued(micro_dataset, workdir):
    (workdir / "studies").mkdir()
    study = _strong_study(micro_dataset, "s")
    with pytest.warns(UserWarning, match="Heartbeat"):  # a trial asked for outside study.optimize: Optuna says so
        study.ask()
    line = one_error_line(invoke("enqueue", "--study", "s", "--from-trial", "3"), alone=True)
    assert line == ("Error: --from-trial 3: trial #3 of study 's' is running: its configuration is not recorded in "
                    "full until it ends")


def test_known_configurations_outside_the_cpu_profile_are_named_when_queued(micro_dataset, workdir, tmp_path):
    """The misfit line names the parameter: a GPU configuration queued into a cpu study."""
    (workdir / "studies").mkdir()
    big = new_study(micro_dataset, "sqlite:///studies/big.db", "big", budget=BUDGET)
    full = build_space("full")
    params = KNOWN_CONFIGS["medium-d512-h16"]
    big.add_trial(create_trial(params=params, distributions={p.name: p.distribution() for p in full if p.name in params},
                               state=TrialState.COMPLETE, value=0.5))
    _strong_study(micro_dataset, "s")
    result = invoke("enqueue", "--study", "s", "--from-study", "big", "--from-trial", "0")
    assert result.exit_code == 0, result.output
    assert ("trial #0 of study 'big': skipped, it does not fit the study's space: d_model 512 is not in the space "
            "(32, 48, 64, 80)") in result.output.splitlines()
    assert result.output.splitlines()[-1] == "0 of 1 configurations queued"
