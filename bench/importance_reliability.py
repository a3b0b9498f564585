"""From how many complete trials do parameter importances name the right parameter? (search/reporting/report.py's
IMPORTANCE_RELIABLE.)

Studies of n random trials on the search space (``--profile``, default cpu), with a known objective: the
learning rate's position on its log range explains ~3/4 of the variance (0.3 x position), d_model's choice
~1/7 (0.1 x its index / 3), Gaussian noise (sd 0.03) the rest, and no other parameter matters. For each
n, ``--repeats`` studies (seeds 0..repeats-1); Optuna's default evaluator (PED-ANOVA in Optuna 5, as the
report's figure) over the parameters every trial has, as the report computes them. Prints, per n, how often lr ranks first
and how often {lr, d_model} are the first two. CPU only, ~1 minute.

    python bench/importance_reliability.py [--profile cpu] [--repeats 24]
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import optuna  # noqa: E402

from search.running import space as search_space  # noqa: E402


def one_study(space, n: int, seed: int) -> tuple[bool, bool, int]:
    rng = random.Random(seed)
    lr = next(p for p in space if p.name == "lr")
    d_models = next(p for p in space if p.name == "d_model").choices
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed))

    def objective(trial: optuna.Trial) -> float:
        p = search_space.suggest(trial, space)
        x = (math.log(p["lr"]) - math.log(lr.low)) / (math.log(lr.high) - math.log(lr.low))
        return 0.3 * x + 0.1 * d_models.index(p["d_model"]) / (len(d_models) - 1) + rng.gauss(0, 0.03)

    study.optimize(objective, n_trials=n)
    common = sorted(set.intersection(*(set(t.params) for t in study.trials)))
    ranked = list(optuna.importance.get_param_importances(study, params=common))
    return ranked[0] == "lr", set(ranked[:2]) == {"lr", "d_model"}, len(common)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--repeats", type=int, default=24)
    parser.add_argument("--trials", type=int, nargs="+", default=[10, 20, 25, 30, 40])
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = search_space.build_space(args.profile)
    for n in args.trials:
        results = [one_study(space, n, seed) for seed in range(args.repeats)]
        print(f"{n:3d} complete trials ({results[0][2]} parameters compared): lr first in "
              f"{sum(r[0] for r in results)}/{args.repeats}, lr and d_model first two in "
              f"{sum(r[1] for r in results)}/{args.repeats}")


if __name__ == "__main__":
    main()
