"""The configurations a HW04-Bench table holds, in the order they are recorded.

First the warm-start configurations of the profile (what a new study runs first: search/running/space.py), then points of
a scrambled Sobol sequence mapped onto the space's parameters in their sampling order. A parameter whose condition
does not hold (conformer settings in a Transformer) ignores its coordinate, so conditions hold by construction
and every point is a point of the space (``space.contains``). Sobol rather than random: a prefix of 2^k points
covers every parameter's range evenly, so a table stopped early by device time is still spread over the space.

A share of the configurations is recorded a second time with another training seed (``repeat`` 1), for the seed
noise the replay draws from: every ``SECOND_SEED_EVERY``-th Sobol point, right after its first run, so that a
table cut short holds pairs in proportion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from search.running import space as search_space

SECOND_SEED_EVERY = 8  # 50 pairs in a 400-point table


@dataclass(frozen=True)
class Run:
    config: str  # "warm:<name>" or "sobol:<index>"
    repeat: int  # 0: the first training seed; 1: the second
    params: dict

    @property
    def key(self) -> tuple[str, int]:
        return self.config, self.repeat


def _value(p: search_space.Param, u: float):
    """The parameter value at quantile ``u`` in [0, 1) of its range (log-uniform where the space says log)."""
    u = min(max(u, 0.0), math.nextafter(1.0, 0.0))
    if p.kind == "categorical":
        return list(p.choices)[int(u * len(p.choices))]
    if p.kind == "int":
        step = p.step or 1
        count = (int(p.high) - int(p.low)) // step + 1
        return int(p.low) + step * int(u * count)
    if p.log:
        return math.exp(math.log(p.low) + u * (math.log(p.high) - math.log(p.low)))
    return p.low + u * (p.high - p.low)


def point(space: list[search_space.Param], unit: list[float]) -> dict:
    """The configuration at ``unit`` (one coordinate per parameter of ``space``, in order)."""
    params: dict = {}
    for p, u in zip(space, unit):
        if p.applies(params):
            params[p.name] = _value(p, float(u))
    return params


def sobol_points(space: list[search_space.Param], n: int, seed: int) -> list[dict]:
    """The first ``n`` points of a scrambled Sobol sequence (scipy) over ``space``, fixed by ``seed``."""
    from scipy.stats import qmc

    m = max(1, math.ceil(math.log2(max(n, 2))))
    unit = qmc.Sobol(d=len(space), scramble=True, seed=seed).random_base2(m)[:n]
    return [point(space, row) for row in unit]


def plan(profile: str, n_sobol: int, seed: int = 0, second_seed_every: int = SECOND_SEED_EVERY) -> list[Run]:
    """Every run of a table of ``profile``: the warm starts, then ``n_sobol`` Sobol points (each
    ``second_seed_every``-th followed by its second-seed run)."""
    space = search_space.build_space(profile)
    runs = [Run(f"warm:{name}", 0, dict(params)) for name, params in search_space.warm_start_configs(space).items()]
    for i, params in enumerate(sobol_points(space, n_sobol, seed)):
        assert search_space.contains(space, params), params
        runs.append(Run(f"sobol:{i}", 0, params))
        if second_seed_every and i % second_seed_every == 0:
            runs.append(Run(f"sobol:{i}", 1, params))
    return runs


def long_plan(runs: list[dict], n: int = 24, n_longest: int = 6) -> tuple[list[Run], list[Run]]:
    """The long-horizon runs (issue 20): ``n`` configurations of a recorded table, to train with finalize's
    settings, and ``n_longest`` of them for the longest horizon. Every warm start the table trained through its
    budget, then configurations spread over the table's score range (the complete configuration nearest each of
    evenly spaced final accuracies, a configuration's repeats averaged): most of a table ends near chance, and a
    spread by rank would be mostly those. The longest: the best-scoring warm start and Sobol point, then the rest
    spread over the score range the same way."""
    from bench.hw04bench.table import final_scores

    score = final_scores(runs)
    params = {r["config"]: r["params"] for r in runs}
    warm = sorted((c for c in score if c.startswith("warm:")), key=score.get, reverse=True)
    chosen = warm[:n] + _spread([c for c in score if c not in warm], score, n - len(warm[:n]))
    sobol = sorted((c for c in chosen if not c.startswith("warm:")), key=score.get, reverse=True)
    longest = (warm[:1] + sobol[:1])[:n_longest]
    longest += _spread([c for c in chosen if c not in longest], score, n_longest - len(longest))
    by_score = lambda configs: sorted(configs, key=score.get, reverse=True)  # noqa: E731
    return ([Run(c, 0, params[c]) for c in by_score(chosen)], [Run(c, 0, params[c]) for c in by_score(longest)])


def _spread(configs: list[str], score: dict[str, float], k: int) -> list[str]:
    """``k`` of ``configs``: for each of ``k`` evenly spaced scores from the lowest to the highest, the nearest
    configuration not yet taken."""
    left, taken = sorted(configs, key=score.get), []
    if k <= 0 or not left:
        return taken
    low, high = score[left[0]], score[left[-1]]
    for i in range(min(k, len(left))):
        target = high if k == 1 else low + (high - low) * i / (k - 1)
        nearest = min(left, key=lambda c: abs(score[c] - target))
        taken.append(nearest)
        left.remove(nearest)
    return taken


def save_plan(runs: list[Run], path) -> None:
    import json

    with open(path, "w", encoding="utf-8") as f:
        json.dump([{"config": r.config, "repeat": r.repeat, "params": r.params} for r in runs], f)


def load_plan(path) -> list[Run]:
    import json

    with open(path, encoding="utf-8") as f:
        return [Run(r["config"], r["repeat"], r["params"]) for r in json.load(f)]


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="write a table's planned runs as JSON (for a machine without scipy)")
    parser.add_argument("--profile", choices=search_space.PROFILES, default="full")
    parser.add_argument("--configs", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True, help="the plan's .json (with --long-from: two, PREFIX-long.json and "
                        "PREFIX-longest.json, for PREFIX = --out less .json)")
    parser.add_argument("--long-from", nargs="+", help="a recorded table's files: plan the long-horizon runs from it")
    parser.add_argument("--long", type=int, default=24, help="with --long-from: configurations")
    parser.add_argument("--longest", type=int, default=6, help="with --long-from: of them, for the longest horizon")
    args = parser.parse_args()
    if args.long_from:
        from bench.hw04bench import table

        long, longest = long_plan(table.load(*args.long_from).results(), args.long, args.longest)
        stem = args.out.removesuffix(".json")
        save_plan(long, f"{stem}-long.json")
        save_plan(longest, f"{stem}-longest.json")
    else:
        save_plan(plan(args.profile, args.configs, args.seed), args.out)
