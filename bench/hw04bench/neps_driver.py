"""NePS PriorBand behind a JSON-lines pipe, for the replay (bench/hw04bench/replay.py ``NePSStrategy``).

NePS 0.17 pulls torchvision, whose wheels do not pair with the torch this project is developed with, so it lives in
its own virtual environment (``python -m venv venv-neps && venv-neps/bin/pip install torch==2.14.1
torchvision==0.29.1 neural-pipeline-search``) and runs there as this script: it imports nothing of the project.

Protocol, one JSON object a line. The first line from the replay sets up the optimizer:
    {"space": [{"name", "type": "categorical"|"int"|"float"|"constant", "choices"|"lower","upper","log"|"value"}],
     "prior": {name: value}, "fidelity": [low, high], "eta": 3, "seed": 0}
and is answered {"ok": true}. Then {"op": "ask"} is answered {"id", "config", "steps"} and
{"op": "tell", "id", "accuracy"} (null: the training failed) with {"ok": true}.
"""

from __future__ import annotations

import json
import sys


def build(setup: dict):
    import random

    import neps
    import numpy as np
    import torch

    random.seed(setup["seed"])
    np.random.seed(setup["seed"])
    torch.manual_seed(setup["seed"])
    prior = setup["prior"]
    elements: dict = {}
    for p in setup["space"]:
        name, kind = p["name"], p["type"]
        extra = {"prior": prior[name], "prior_confidence": "medium"} if name in prior else {}
        if kind == "constant":
            elements[name] = neps.HPOConstant(p["value"])
        elif kind == "categorical":
            elements[name] = neps.HPOCategorical(choices=p["choices"], **extra)
        elif kind == "int":
            elements[name] = neps.HPOInteger(lower=p["lower"], upper=p["upper"], log=p["log"], **extra)
        else:
            elements[name] = neps.HPOFloat(lower=p["lower"], upper=p["upper"], log=p["log"], **extra)
    low, high = setup["fidelity"]
    elements["steps"] = neps.HPOInteger(lower=low, upper=high, is_fidelity=True)
    optimizer = neps.algorithms.priorband(neps.SearchSpace(elements), eta=setup["eta"])
    return neps.AskAndTell(optimizer)


def main() -> int:
    import logging

    logging.disable(logging.WARNING)
    out = sys.stdout
    sys.stdout = sys.stderr  # whatever NePS prints must not break the protocol
    ask_tell = None
    for line in sys.stdin:
        message = json.loads(line)
        if ask_tell is None:
            ask_tell = build(message)
            reply: dict = {"ok": True}
        elif message["op"] == "ask":
            trial = ask_tell.ask()
            config = {k: (v.item() if hasattr(v, "item") else v) for k, v in trial.config.items()}
            reply = {"id": trial.id, "config": config, "steps": int(config.pop("steps"))}
        else:
            accuracy = message["accuracy"]
            result = {"objective_to_minimize": 1.0 - accuracy} if accuracy is not None else \
                RuntimeError("the training failed")
            ask_tell.tell(message["id"], result)
            reply = {"ok": True}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
