"""A surrogate of a HW04-Bench table: for any point of the search space, its learning curve, its costs and its
chance to fail, learned from the table's recorded runs, so that a replay can put a strategy's configurations
that the table never trained (a sampler proposes new points) on the same footing as the ones it did.

- Curve: a Gaussian process (scikit-learn; Matern 5/2 with one length scale per column, plus a noise term) from
  the encoded parameters to the logit of the validation accuracy at every step the table validated at
  (``Surrogate.steps``; why the logit: ``_logit``), capped at each step by the best predicted accuracy of any
  recorded configuration there (``Surrogate.ceiling``), so a replay never finds a point better than the table's
  best (``Surrogate.best``): regret against it is >= 0 by construction.
- Cost: a second Gaussian process to log(seconds per training step), log(seconds per validation) and log(seconds
  of a run's fixed overhead: model build, CUDA-graph capture, what ``wall_seconds`` holds beyond training and
  validation), on the card the table was recorded on (the machine with most runs, ``Surrogate.machine``: a CPU
  table's curves may also come from runs on other machines, their seconds do not). Logs: costs span orders of
  magnitude and a relative error is what matters for a simulated clock. On a GPU table it also takes how many runs
  shared the card (``Table.sharing``; the replay reads it at the recording's median): on the 98-configuration
  table the held-out time error went from 36.8 / 28.4 / 34.1% to 28.3 / 23.5 / 30.8% (fold draws 0 / 1 / 2).
- Why processes, not the random forests the issue suggested: on the CPU table (52 configurations, 5-fold over
  configurations, fold draws of seeds 0, 1, 2) the forest's Spearman was 0.640, 0.723, 0.710 and its time error
  24.7%, 24.1%, 22.3%; the process's 0.688, 0.780, 0.798 and 8.7%, 9.8%, 9.6% (at 69 configurations: forest
  0.735, 0.703, 0.716; process 0.899, 0.913, 0.886 and 9.0-10.5%). A forest's prediction is a step
  function of single columns; accuracy and cost are smooth in d_model, lr and the size columns.
- Failure: a random-forest classifier on ``failed`` (0 where the table holds no failure); a failing run fails at a
  share of its budget drawn from the recorded failures (half-way where there are none).
- Seed noise: what a second training seed changes. The table trains every 8th Sobol point twice (``repeat``
  0 and 1); one run's deviation from the mean is drawn as a recorded pair's difference curve divided by sqrt(2),
  with a random sign: the measured spread, with its shape over the steps (a seed that is ahead early tends to
  stay ahead), rather than an assumed distribution.

Parameters are encoded as a forest (and a nearest-neighbour check) can compare them: categorical one-hot, numbers
scaled to [0, 1] (on a log scale where the space samples on one), and a conditional parameter that does not apply
(the conformer kernel of a Transformer) as the middle of its range with its one-hot all zero: neutral, while the
parent's one-hot already tells the forest which branch it is in. Two derived columns follow: log(parameter count)
and log(parameters x frames a step), the model's size and a step's work. A forest splits one column at a time,
and a step's cost is a product of d_model, layers, ffn, batch and segment that no single column shows (on the CPU
table they took the forest's median time error from 24.7% to 23.0%, and the process's below 10%).

    python -m bench.hw04bench.surrogate --table bench/results/hw04bench-cpu.jsonl.gz --folds 5

prints the held-out check (k-fold over configurations, both repeats of a configuration in the same fold):
Spearman between predicted and recorded final accuracy (target >= 0.8) and the median relative error of the
predicted run time (training + validations + overhead, against the recorded ``wall_seconds``; target <= 20%).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bench.hw04bench import table as bench_table
from search.running import space as search_space

NUMERIC_ABSENT = 0.5  # the middle of a [0, 1] range: a conditional number that does not apply
HW04_MELS = 40  # the task's log-mel features (../shared/HW04.md): every table so far


class ModelSize:
    """The parameter count of a configuration's model, built on the meta device (no memory, milliseconds), for
    ``n_mels`` features and ``n_classes`` speakers."""

    def __init__(self, n_mels: int, n_classes: int) -> None:
        self.n_mels, self.n_classes = n_mels, n_classes
        self._counts: dict[str, int] = {}

    def count(self, params: dict, n_classes: int | None = None) -> int:
        import torch

        from model import build_model, count_parameters

        model_cfg, _ = search_space.build_configs(params, self.n_mels, n_classes or self.n_classes, 1, 0)
        with torch.device("meta"):
            return count_parameters(build_model(model_cfg))

    def __call__(self, params: dict) -> int:
        key = params_key(params)
        if key not in self._counts:
            self._counts[key] = self.count(params)
        return self._counts[key]

    @classmethod
    def of_runs(cls, runs: list[dict], n_mels: int = HW04_MELS) -> ModelSize | None:
        """The sizes of the table's models: the speaker count solved from one recorded run (its parameter count is
        affine in the number of classes: the head's weights), then checked against every recorded run; None if the
        recorded counts do not fit (a table of another model code), and the surrogate goes without size columns."""
        recorded = [r for r in runs if r.get("parameters")]
        if not recorded:
            return None
        probe = cls(n_mels, 1)
        first = recorded[0]
        low, high = probe.count(first["params"], 100), probe.count(first["params"], 200)
        n_classes = 100 + (first["parameters"] - low) * 100 / (high - low)
        if n_classes < 1 or abs(n_classes - round(n_classes)) > 1e-6:
            return None
        size = cls(n_mels, round(n_classes))
        return size if all(size(r["params"]) == r["parameters"] for r in recorded) else None


class Encoder:
    """Parameters (a dict of one configuration) to a fixed-length vector of floats, for one space."""

    def __init__(self, space: list[search_space.Param], size: ModelSize | None = None) -> None:
        self.space = space
        self.size = size
        self.columns: list[str] = []
        for p in space:
            if p.kind == "categorical":
                self.columns += [f"{p.name}={c}" for c in p.choices]
            else:
                self.columns.append(p.name)
        if size is not None:
            self.columns += ["log parameters", "log parameters x frames"]

    def _unit(self, p: search_space.Param, value) -> float:
        low, high = float(p.low), float(p.high)
        if high == low:
            return NUMERIC_ABSENT
        if p.log:
            return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
        return (float(value) - low) / (high - low)

    def encode(self, params: dict) -> np.ndarray:
        row: list[float] = []
        for p in self.space:
            if p.kind == "categorical":
                # ``==`` on the choices, not ``in``: True == 1 in Python, and norm_first (a bool) is a choice list
                row += [1.0 if p.name in params and params[p.name] == c and type(params[p.name]) is type(c) else 0.0
                        for c in p.choices]
            else:
                row.append(self._unit(p, params[p.name]) if p.name in params else NUMERIC_ABSENT)
        if self.size is not None:
            parameters = self.size(params)
            row += [math.log(parameters), math.log(parameters * params["batch_size"] * params["segment"])]
        return np.asarray(row, dtype=float)

    def encode_many(self, params_list: list[dict]) -> np.ndarray:
        return np.stack([self.encode(p) for p in params_list]) if params_list else np.zeros((0, len(self.columns)))


def params_key(params: dict) -> str:
    """A hashable key of a configuration (for caches): sorted, floats rounded far below any effect."""
    return repr(sorted((k, round(v, 12) if isinstance(v, float) else v) for k, v in params.items()))


@dataclass
class Outcome:
    """One simulated training of one configuration: what the replay's clock and the strategy see."""

    curve: np.ndarray  # observed validation accuracy at ``Surrogate.steps`` (mean + one seed's deviation)
    mean_curve: np.ndarray  # the noise-free curve (a score that seed luck does not move)
    seconds_per_step: float
    seconds_per_eval: float
    overhead: float  # seconds before the first training step (model build, graph capture)
    fail_step: int | None  # the training fails at this step (NaN loss, out of memory), or never

    def accuracy(self, steps: np.ndarray, step: int) -> float:
        return float(np.interp(step, steps, self.curve))


def _forest_mean(forest, x: np.ndarray, proba: bool = False) -> np.ndarray:
    """The forest's prediction (``predict``, or ``predict_proba`` with ``proba``): the mean of its trees', each
    asked directly without input checks. A replay asks one configuration at a time, where the forest's own
    predict spends most of its time dispatching its trees through joblib (tests/test_hw04bench.py checks that
    both give the same numbers)."""
    total = None
    for tree in forest.estimators_:
        out = tree.predict_proba(x, check_input=False) if proba else tree.predict(x, check_input=False)
        total = out if total is None else total + out
    return total / len(forest.estimators_)


LOGIT_FLOOR = 1e-3  # accuracies are kept in [floor, 1 - floor] for the logit: below chance on 600 speakers (1/600)


def _logit(accuracy: np.ndarray) -> np.ndarray:
    """The curve model's target. On the GPU table 58 of 100 complete runs end between 0.001 and 0.06 and the rest
    up to 0.82: on the accuracy's own scale a process fits the few learners and flattens the many near chance,
    whose order is real (second seeds repeat it: 0.002 / 0.002, 0.009 / 0.009, 0.008 / 0.011). Held-out Spearman
    with the logit, fold draws 0 / 1 / 2: GPU table (98 configurations) 0.455 / 0.351 / 0.619 -> 0.562 / 0.538 /
    0.751; CPU table (340): see BENCHMARKS.md."""
    p = np.clip(accuracy, LOGIT_FLOOR, 1.0 - LOGIT_FLOOR)
    return np.log(p / (1.0 - p))


def _process(x: np.ndarray, y: np.ndarray, seed: int):
    """A Gaussian process from ``x`` [n, columns] to ``y`` [n, outputs] (one kernel for every output, each output
    normalized): Matern 5/2 with a length scale per column, times a scale, plus white noise (seed luck)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    kernel = ConstantKernel(1.0, (1e-2, 1e2)) * Matern(np.ones(x.shape[1]), (1e-2, 1e3), nu=2.5) \
        + WhiteKernel(0.1, (1e-6, 1.0))
    with warnings.catch_warnings():
        # a length scale at its upper bound is a column that does not matter (most do not, for one table), and
        # the lower bound is a scale finer than [0, 1]'s spacing of a categorical: both are answers, not failures
        warnings.simplefilter("ignore", ConvergenceWarning)
        return GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=seed).fit(x, y)


class Surrogate:
    """Curve, cost and failure model of one table (see the module docstring)."""

    def __init__(self, tbl: bench_table.Table, n_estimators: int = 100, seed: int = 0,
                 runs: list[dict] | None = None) -> None:
        from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor

        self.budget = tbl.budget
        self.profile = tbl.profile
        self.space = search_space.build_space(self.profile)
        self.encoder = Encoder(self.space, ModelSize.of_runs(tbl.runs))
        self.steps = np.asarray(tbl.sessions[0]["eval_steps"], dtype=int)
        self.card = next((r["card"] for r in tbl.runs if r.get("card")), "unknown")
        runs = tbl.results() if runs is None else runs  # out-of-memory runs say more about the card's sharing
        complete = [r for r in runs if not r["failed"] and len(r["curve"]) == len(self.steps)]
        if not complete:
            raise ValueError("the table holds no complete run to learn curves from")
        x = self.encoder.encode_many([r["params"] for r in complete])
        curves = np.asarray([[c[1] for c in r["curve"]] for r in complete])
        self.curve_model = _process(x, _logit(curves), seed)
        # The best the table shows, as the surrogate sees it: at each step, the highest predicted accuracy of any
        # recorded configuration [steps]. The process smooths a configuration's recorded seeds toward its
        # neighbours (a recorded 0.705 may be predicted 0.69): regret's zero is the prediction, not the record.
        recorded = list({params_key(r["params"]): r["params"] for r in complete}.values())
        self.ceiling = self._accuracy(self.encoder.encode_many(recorded)).max(axis=0)
        self.best = float(self.ceiling[-1])
        # Costs from one machine's runs: the table's own recording machine (the one with most complete runs); a
        # CPU table may hold runs recorded elsewhere as well, whose curves count but whose seconds are another clock.
        machines = [tbl.machine(r) for r in complete]
        self.machine = max(set(machines), key=machines.count)
        timed = [i for i, m in enumerate(machines) if m == self.machine]
        # On a GPU table the workers shared the card under MPS, and how many did (Table.sharing) moves a run's
        # seconds as much as its configuration does: the cost model takes log(sharing) as one more column, and a
        # replay's clock reads it at the recorded median (a card shared as the recording usually shared it). A
        # CPU table's workers each had a core of their own.
        self.shared_card = tbl.sessions[0].get("device") == "cuda"
        sharing = [tbl.sharing(complete[i]) for i in timed]
        self.reference_sharing = float(np.median(sharing)) if self.shared_card else 1.0
        self.cost_model = _process(self._cost_input(x[timed], sharing),
                                   np.log(np.asarray([self._costs(complete[i]) for i in timed])), seed)
        failed = np.asarray([bool(r["failed"]) for r in runs])
        self.fail_model = None
        if failed.any() and not failed.all():
            self.fail_model = RandomForestClassifier(n_estimators=n_estimators, min_samples_leaf=2, random_state=seed,
                                                     n_jobs=1).fit(self.encoder.encode_many([r["params"] for r in runs]),
                                                                   failed)
        self.base_fail = float(failed.mean()) if failed.all() else 0.0
        # where recorded failures happened, as a share of the budget (the step after the last validation)
        self.fail_shares = [((r["curve"][-1][0] if r["curve"] else 0) + 1) / self.budget for r in runs if r["failed"]]
        self.noise = self._pair_differences(runs)
        self.validation_size = validation_size(complete)
        self._cache: dict[str, tuple] = {}

    def _accuracy(self, x: np.ndarray) -> np.ndarray:
        """The curve model's validation accuracies [n, steps] for encoded parameters [n, columns]."""
        return 1.0 / (1.0 + np.exp(-self.curve_model.predict(x)))

    @staticmethod
    def _costs(run: dict) -> tuple[float, float, float]:
        """(seconds per training step, seconds per validation, overhead seconds) of a recorded run."""
        step, _, _, train_s, eval_s = run["curve"][-1]
        per_step = max(train_s / step, 1e-6)
        per_eval = max(eval_s / len(run["curve"]), 1e-6)
        overhead = max(run["wall_seconds"] - train_s - eval_s, 1e-3)
        return per_step, per_eval, overhead

    def _pair_differences(self, runs: list[dict]) -> np.ndarray:
        """Curve differences (repeat 0 minus repeat 1) of the configurations recorded twice, both complete."""
        by_config: dict[str, dict[int, list]] = {}
        for r in runs:
            if not r["failed"] and len(r["curve"]) == len(self.steps):
                by_config.setdefault(r["config"], {})[r["repeat"]] = [c[1] for c in r["curve"]]
        diffs = [np.subtract(c[0], c[1]) for c in by_config.values() if 0 in c and 1 in c]
        return np.asarray(diffs) if diffs else np.zeros((0, len(self.steps)))

    def seed_spread(self) -> float:
        """One run's standard deviation at the last step, from the pairs (0 without pairs)."""
        return float(np.std(self.noise[:, -1]) / math.sqrt(2)) if len(self.noise) > 1 else \
            float(np.abs(self.noise[:, -1]).mean() / math.sqrt(2)) if len(self.noise) else 0.0

    def _cost_input(self, x: np.ndarray, sharing) -> np.ndarray:
        """The cost model's input: the encoded parameters [n, columns], plus log(sharing) on a GPU table."""
        if not self.shared_card:
            return x
        return np.hstack([x, np.log(np.broadcast_to(np.asarray(sharing, dtype=float), (len(x),)))[:, None]])

    def costs(self, params_list: list[dict], sharing: float | list[float] | None = None) -> np.ndarray:
        """Costs [n, 3] in seconds (per step, per validation, overhead) on the recorded card, shared by ``sharing``
        runs on average (default: the recording's median; ignored on a CPU table)."""
        return self._costs_of(self.encoder.encode_many(params_list),
                              self.reference_sharing if sharing is None else sharing)

    def _costs_of(self, x: np.ndarray, sharing) -> np.ndarray:
        """Costs [n, 3] in seconds for encoded parameters [n, columns] on a card shared by ``sharing`` runs."""
        return np.exp(self.cost_model.predict(self._cost_input(x, sharing)).reshape(len(x), 3))

    def predict(self, params_list: list[dict]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(mean curves [n, steps], costs [n, 3] in seconds: per step, per validation, overhead; failure chance [n])."""
        x = self.encoder.encode_many(params_list)
        curves = np.clip(self._accuracy(x).reshape(len(x), len(self.steps)), 0.0, self.ceiling)
        costs = self._costs_of(x, self.reference_sharing)
        if self.fail_model is not None:
            classes = list(self.fail_model.classes_)
            # the trees' own input type
            fail = _forest_mean(self.fail_model, x.astype(np.float32), proba=True)[:, classes.index(True)]
        else:
            fail = np.full(len(x), self.base_fail)
        return curves, costs, fail

    def _predict_one(self, params: dict) -> tuple:
        key = params_key(params)
        if key not in self._cache:  # a forest's predict costs milliseconds; strategies ask points again
            curves, costs, fail = self.predict([params])
            self._cache[key] = (curves[0], costs[0], float(fail[0]))
        return self._cache[key]

    def sample(self, params: dict, rng: np.random.Generator) -> Outcome:
        """One training of ``params`` with a fresh seed: the mean curve plus one recorded seed deviation."""
        mean, costs, fail = self._predict_one(params)
        curve = mean
        if len(self.noise):
            curve = np.clip(mean + rng.choice([-1.0, 1.0]) * self.noise[rng.integers(len(self.noise))] / math.sqrt(2),
                            0.0, 1.0)
        fail_step = None
        if rng.random() < fail:
            share = rng.choice(self.fail_shares) if self.fail_shares else 0.5
            fail_step = max(1, min(self.budget, int(round(share * self.budget))))
        return Outcome(curve, mean, float(costs[0]), float(costs[1]), float(costs[2]), fail_step)


def validation_size(runs: list[dict], largest: int = 20_000) -> int | None:
    """The number of validation utterances behind the table's accuracies (each is k/n, recorded to 5 decimals):
    the smallest n that makes every recorded accuracy a whole count; None if none up to ``largest`` does. Two
    scores less than half an utterance apart are one score: nothing a validation run could tell apart."""
    values = np.unique([c[1] for r in runs for c in r["curve"]])
    values = values[(values > 0) & (values < 1)]
    if len(values) < 3:
        return None
    for n in range(2, largest + 1):
        if np.abs(values * n - np.round(values * n)).max() <= n * 5.1e-6:  # the 5-decimal rounding, scaled
            return n
    return None


def table_best(runs: list[dict]) -> float:
    """The best final validation accuracy of the table's configurations (the mean of a configuration's complete
    repeats): what a strategy that found the table's best configuration would score, without seed luck."""
    return max(bench_table.final_scores(runs).values())


def load(path, n_estimators: int = 100, seed: int = 0) -> tuple[Surrogate, bench_table.Table]:
    tbl = bench_table.load(path)
    return Surrogate(tbl, n_estimators=n_estimators, seed=seed), tbl


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def early_ranking(steps: np.ndarray, recorded: np.ndarray, sampled: np.ndarray) -> list[tuple[int, float, float]]:
    """(step, recorded, sampled): how well the accuracy at each validation step ranks the final accuracy, over
    configurations, in the recorded curves [configs, steps] and in the curves the surrogate draws for the same
    held-out configurations [configs, steps]. A pruner decides on these early ranks: where the surrogate's early
    accuracies rank the finals better than the recorded ones do, a replay rewards early pruning more than real
    runs would."""
    return [(int(step), _spearman(recorded[:, i], recorded[:, -1]), _spearman(sampled[:, i], sampled[:, -1]))
            for i, step in enumerate(steps[:-1])]


def check(tbl: bench_table.Table, folds: int = 5, n_estimators: int = 100, seed: int = 0) -> dict:
    """The held-out check: k-fold over configurations (a configuration's repeats stay together), each fold's runs
    predicted by a surrogate trained on the other folds. Final accuracy: the recorded mean of a configuration's
    complete repeats against the noise-free prediction; time: the predicted time of the recorded run (its
    training steps, its validations, the overhead) against its ``wall_seconds``. A nearest-neighbour predictor
    (the closest other configuration's final accuracy) is the baseline a forest must beat."""
    usable = tbl.results()  # not the runs out of GPU memory for reasons outside their configuration (table.py retry)
    configs = sorted({r["config"] for r in usable})
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(configs))
    fold_of = {configs[i]: k % folds for k, i in enumerate(order)}
    predicted, recorded, rel_errors, nn_predicted = [], [], [], []
    recorded_curves, sampled_curves = [], []  # a held-out configuration's recorded curve, and one the replay would draw
    for k in range(folds):
        train = [r for r in usable if fold_of[r["config"]] != k]
        test = [r for r in usable if fold_of[r["config"]] == k]
        if not test or not train:
            continue
        model = Surrogate(tbl, n_estimators=n_estimators, seed=seed, runs=train)
        complete_train = [r for r in train if not r["failed"] and r["curve"]]
        train_x = model.encoder.encode_many([r["params"] for r in complete_train])
        by_config: dict[str, list[dict]] = {}
        for r in test:
            by_config.setdefault(r["config"], []).append(r)
        for config, runs in by_config.items():
            curves, _, _ = model.predict([runs[0]["params"]])
            complete = [r for r in runs if not r["failed"] and len(r["curve"]) == len(model.steps)]
            if complete:
                predicted.append(curves[0, -1])
                recorded.append(float(np.mean([r["curve"][-1][1] for r in complete])))
                distance = np.abs(train_x - model.encoder.encode(runs[0]["params"])).sum(axis=1)
                nn_predicted.append(complete_train[int(np.argmin(distance))]["curve"][-1][1])
                recorded_curves.append([c[1] for c in complete[0]["curve"]])
                sampled_curves.append(model.sample(runs[0]["params"], rng).curve)
            for r in (r for r in complete if tbl.machine(r) == model.machine):  # the clock it predicts
                # on a GPU table, at the sharing of the card the run met (Surrogate.costs)
                cost = model.costs([r["params"]], tbl.sharing(r))[0]
                step = r["curve"][-1][0]
                time = step * cost[0] + len(r["curve"]) * cost[1] + cost[2]
                rel_errors.append(abs(time - r["wall_seconds"]) / r["wall_seconds"])
    whole = Surrogate(tbl, n_estimators=10, seed=seed)  # the seed pairs of the whole table (fitted once)
    return {
        "configurations": len(configs), "runs": len(usable), "folds": folds,
        "spearman_final_accuracy": _spearman(predicted, recorded),
        "spearman_nearest_neighbour": _spearman(nn_predicted, recorded),
        "early_ranking": early_ranking(whole.steps, np.asarray(recorded_curves), np.asarray(sampled_curves)),
        "median_relative_time_error": float(np.median(rel_errors)),
        "seed_spread_final": whole.seed_spread(),
        "pairs": int(len(whole.noise)),
        "failed_runs": sum(bool(r["failed"]) for r in usable),
        "out_of_memory_runs": len(tbl.runs) - len(usable),
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.hw04bench.surrogate",
                                     description="the surrogate's held-out check on a HW04-Bench table")
    parser.add_argument("--table", required=True, nargs="+", help="the table's .jsonl or .jsonl.gz files")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    tbl = bench_table.load(*args.table)
    result = check(tbl, args.folds, args.trees, args.seed)
    card = next((r["card"] for r in tbl.runs if r.get("card")), "?")
    print(f"table {' '.join(args.table)}: {result['runs']} runs of {result['configurations']} configurations, "
          f"profile {tbl.profile}, {tbl.budget} steps, card {card}; {result['failed_runs']} failed "
          f"({result['out_of_memory_runs']} more ran out of GPU memory beside other workers or before validation "
          f"bounded its attention: left out, to retry); "
          f"{result['pairs']} second-seed pairs (one run's spread at the end: {result['seed_spread_final']:.4f})")
    ok = lambda good: "ok" if good else "BELOW TARGET"  # noqa: E731
    print(f"{result['folds']}-fold over configurations: Spearman(predicted, recorded final accuracy) "
          f"{result['spearman_final_accuracy']:.3f} [target >= 0.8: {ok(result['spearman_final_accuracy'] >= 0.8)}] "
          f"(nearest neighbour: {result['spearman_nearest_neighbour']:.3f})")
    print(f"median relative error of the predicted run time: {result['median_relative_time_error']:.1%} "
          f"[target <= 20%: {ok(result['median_relative_time_error'] <= 0.2)}]")
    print("how well the accuracy at a step ranks the final (Spearman over held-out configurations), recorded / "
          "drawn by the surrogate: " + ", ".join(f"{step} {rec:.2f} / {drawn:.2f}"
                                                  for step, rec, drawn in result["early_ranking"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
