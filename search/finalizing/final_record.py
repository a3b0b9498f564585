"""What ``search finalize`` records in the study, typed, and the one place it is put into words.

The study's user attributes: ``final`` (the last finalized trial and its current artifact set),
``final_ensemble`` (the last ensemble or ``--all-data`` run), ``final_results`` (every finalized result by
name: its CSV and accuracies) and ``predictions`` (which of those ``predictions.csv`` holds). Their keys are
those of studies written before this module: ``FinalRecord.read`` takes any of them, missing keys included.
``search show``, the report and the dashboard's study note describe them with ``finalized_rows``,
``show_lines`` and ``predictions_text``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import optuna

FINAL, ENSEMBLE, RESULTS, PREDICTIONS = "final", "final_ensemble", "final_results", "predictions"


def accuracy(value) -> str:
    """An accuracy as every finalize line prints it; ``-`` where none was recorded."""
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def result_text(name: str, result: dict) -> str:
    """``trial4-steps2000 (valid accuracy 0.8123, test accuracy 0.8011)``: a finalized result by name."""
    text = f"{name} (valid accuracy {accuracy(result.get('valid_accuracy'))}"
    if result.get("test_accuracy") is not None:
        text += f", test accuracy {accuracy(result['test_accuracy'])}"
    return text + ")"


@dataclass
class MemberRecord:
    """One member of a recorded ensemble (the keys of ``final_ensemble``'s ``members``)."""

    trial: int | None = None
    seed: int | None = None
    weight: int | None = None  # picks by ensemble selection (0: left out); None in records older than weights
    valid_accuracy: float | None = None
    best_step: int | None = None
    test_accuracy: float | None = None
    all_data_steps: int | None = None


@dataclass
class FinalRecord:
    """A finalized result: an ensemble (``final_ensemble``: with a ``label``), or one trial (``final``), which is
    an ensemble of one member stored the way it was before ensembles existed (its ``trial``, ``best_step``)."""

    label: str | None = None  # None: one trial
    steps: int | None = None
    all_data: bool = False
    valid_accuracy: float | None = None
    test_accuracy: float | None = None
    combine: str | None = None
    members: list[MemberRecord] = field(default_factory=list)
    date: str | None = None  # a trial's: when its artifact set was uploaded
    artifacts: dict[str, str] = field(default_factory=dict)
    artifact_dir: str | None = None

    @classmethod
    def of_trial(cls, trial: int, steps: int | None = None, valid_accuracy: float | None = None,
                 best_step: int | None = None, test_accuracy: float | None = None) -> FinalRecord:
        return cls(steps=steps, valid_accuracy=valid_accuracy, test_accuracy=test_accuracy,
                   members=[MemberRecord(trial, valid_accuracy=valid_accuracy, best_step=best_step,
                                         test_accuracy=test_accuracy)])

    @property
    def key(self) -> str:
        return FINAL if self.label is None else ENSEMBLE

    @property
    def trial(self) -> int | None:
        """A trial's number (an ensemble's first member's)."""
        return self.members[0].trial if self.members else None

    @property
    def best_step(self) -> int | None:
        """A trial's best validation step (an ensemble's first member's)."""
        return self.members[0].best_step if self.members else None

    @classmethod
    def read(cls, study: optuna.Study, key: str) -> FinalRecord | None:
        """The record under ``key`` (``FINAL`` or ``ENSEMBLE``), None without one; missing keys are None."""
        stored = study.user_attrs.get(key)
        if not isinstance(stored, dict):
            return None
        artifacts = stored["artifacts"] if isinstance(stored.get("artifacts"), dict) else {}
        if key == FINAL:
            record = cls.of_trial(stored.get("trial"), stored.get("steps"), stored.get("valid_accuracy"),
                                  stored.get("best_step"), stored.get("test_accuracy"))
            record.date, record.artifacts, record.artifact_dir = stored.get("date"), artifacts, stored.get("artifact_dir")
            return record
        members = [MemberRecord(**{k: v for k, v in m.items() if k in MemberRecord.__dataclass_fields__})
                   for m in stored.get("members") or [] if isinstance(m, dict)]
        return cls(str(stored.get("label")), stored.get("steps"), bool(stored.get("all_data")),  # "None": as shown
                   stored.get("valid_accuracy"), stored.get("test_accuracy"), stored.get("combine"), members,
                   artifacts=artifacts, artifact_dir=stored.get("artifact_dir"))

    def stored(self) -> dict:
        """The attribute's value, keys in the order finalize always wrote them. A trial's record leaves out
        what it was not given (no answer key: no ``test_accuracy``)."""
        if self.key == FINAL:
            values = {"steps": self.steps, "valid_accuracy": self.valid_accuracy,
                      "best_step": self.best_step,
                      "test_accuracy": self.test_accuracy}
            return {**{k: v for k, v in values.items() if v is not None}, "trial": self.trial, "date": self.date,
                    "artifacts": self.artifacts, "artifact_dir": self.artifact_dir}
        return {"label": self.label, "steps": self.steps, "all_data": self.all_data,
                "valid_accuracy": self.valid_accuracy, "test_accuracy": self.test_accuracy, "combine": self.combine,
                "members": [asdict(m) for m in self.members], "artifacts": self.artifacts,
                "artifact_dir": self.artifact_dir}

    def store(self, study: optuna.Study) -> None:
        study.set_user_attr(self.key, self.stored())

    def has(self, trial: int) -> bool:
        """Whether ``trial`` is one of this result's members (a trial's record: the trial itself)."""
        return any(m.trial == trial for m in self.members)

    def summary(self) -> str:
        """One line: what was finalized and how it scored (the note's and the report's row)."""
        if self.key == FINAL:
            text = f"trial #{self.trial} retrained for {self.steps} steps: validation accuracy " \
                   f"{accuracy(self.valid_accuracy)}"
            text += f" (best at step {self.best_step})" if self.best_step is not None else ""
            text += f", test accuracy {accuracy(self.test_accuracy)}" if self.test_accuracy is not None else ""
            return text + (f", date {self.date}" if self.date else "")
        picks = sum(m.weight or 0 for m in self.members)

        def member(m: MemberRecord) -> str:  # "#3 seed 3 weight 1/2": ensemble selection's share
            text = f"#{m.trial} seed {m.seed}"
            if len(self.members) > 1 and isinstance(m.weight, int) and picks:
                text += f" weight {m.weight}/{picks}" if m.weight else " left out (weight 0)"
            return text

        text = (f"{self.label}: {len(self.members)} member(s) ({', '.join(member(m) for m in self.members)}), "
                f"{self.steps} steps each: validation accuracy {accuracy(self.valid_accuracy)}")
        text += f", test accuracy {accuracy(self.test_accuracy)}" if self.test_accuracy is not None else ""
        return text + (" (then trained on train + validation)" if self.all_data else "")

    def show_lines(self, trial: int) -> list[str]:
        """``search show``'s lines of this result, for ``trial`` (its trial or a member)."""
        artifacts = [f"  {name}  (id {artifact_id})" for name, artifact_id in self.artifacts.items()]
        if self.key == FINAL:
            return [f"finalized: {self.steps} steps, valid accuracy {accuracy(self.valid_accuracy)}; "
                    f"artifacts in {self.artifact_dir}:", *artifacts]
        has_test = self.test_accuracy is not None
        lines = [f"ensemble {self.label}: {len(self.members)} member(s), {self.steps} steps each"
                 + (", then trained on train + validation (the validation split no longer scores it)"
                    if self.all_data else "")
                 + f"; valid accuracy {accuracy(self.valid_accuracy)}"
                 + (f", test accuracy {accuracy(self.test_accuracy)}" if has_test else "") + ":"]
        for i, m in enumerate(self.members, 1):
            lines.append(f"  member {i}: trial #{m.trial} seed {m.seed}  valid {accuracy(m.valid_accuracy)}"
                         + (f"  test {accuracy(m.test_accuracy)}" if has_test else "")
                         + (f"  weight {m.weight}" + ("" if m.weight else " (left out)") if m.weight is not None
                            else "")
                         + (f"  all-data steps {m.all_data_steps}" if m.all_data_steps else "")
                         + ("  (this trial)" if m.trial == trial else ""))
        if self.combine:
            lines.append(f"  {self.combine}")
        return lines + [f"  artifacts in {self.artifact_dir}:", *artifacts]


def predictions_text(study: optuna.Study) -> str | None:
    """Which finalized result ``studies/<study>/predictions.csv`` holds (the study attribute ``predictions``,
    search/finalizing/finalize.py ``publish``), or None before a finalize recorded one."""
    held = study.user_attrs.get(PREDICTIONS)
    if not isinstance(held, dict) or not held.get("name"):
        return None
    return (f"{result_text(held['name'], held)}, a copy of {held.get('file')}: the best finalized result by "
            "validation accuracy")


def finalized_rows(study: optuna.Study) -> list[tuple[str, str]]:
    """What ``search finalize`` recorded (which result predictions.csv holds, the last trial and ensemble
    finalized), as (what, text) rows for the note and the report; none before a finalize."""
    rows = []
    held = predictions_text(study)
    if held is not None:
        rows.append(("predictions.csv holds", held))
    for key, what in ((FINAL, "finalized"), (ENSEMBLE, "ensemble")):
        record = FinalRecord.read(study, key)
        if record is not None:
            rows.append((what, record.summary()))
            if record.artifacts:
                rows.append(("artifacts" if key == FINAL else "ensemble artifacts", ", ".join(record.artifacts)))
    return rows


def show_lines(study: optuna.Study, trial: int) -> list[str]:
    """``search show``'s lines of what was finalized with ``trial`` in it, and what predictions.csv holds."""
    lines = []
    for key in (FINAL, ENSEMBLE):
        record = FinalRecord.read(study, key)
        if record is not None and record.has(trial):
            lines += record.show_lines(trial)
    held = predictions_text(study)
    return lines + ([f"predictions.csv holds {held}"] if held is not None else [])
