"""The settings a study keeps, and how a run's request is merged with them.

A study remembers (in its user attributes) the settings its trials must share to be comparable: the
step budget, the evaluation interval the pruner's resource counts in, the data, the seed and the space
profile. Running it again adds trials with those settings; asking for different ones is an error
rather than a silently mixed study.

No torch here: the command line's help reads the defaults below.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass

from search.running import schedule
from search.errors import UserError

# The smallest budget (search/running/schedule.py GRID): a trial's first rung is budget/8 steps. Where a trial validates:
# schedule.trial_steps, from this study's pruner.
EVALUATIONS_PER_TRIAL = schedule.GRID
CPU_BUDGET = 500  # a new study's steps per trial on a CPU (see search/running/sampler.py make_pruner)
GPU_BUDGET = 2000  # a new study's steps per trial on a GPU
# `search finalize --steps` by default (search/finalizing/finalize.py default_steps)
GPU_FINALIZE_STEPS = 70_000  # the sample code's total_steps
# A CPU finalize of the sample code's length would take hours; this one takes minutes (BENCHMARKS.md, "Figures
# from code comments"). --steps says otherwise.
CPU_FINALIZE_STEPS = 2_000


@dataclass
class StudySettings:
    budget: int  # training steps of a full trial
    eval_every: int  # the pruner's first rung (min_resource), budget/8; trials validate at its rungs and the end
    data: str  # the data folder, or "embedded"
    seed: int
    profile: str  # search-space profile: full or cpu
    pruning: bool = True  # Hyperband stops bad trials early; off: every trial runs its whole budget
    # the user's changes to the profile's space (search/running/user_space.py, canonical form); None: the profile as it is
    space: dict | None = None

    @classmethod
    def from_attrs(cls, attrs: dict) -> "StudySettings | None":
        """The settings a study was created with (None for a study this tool did not create). Settings
        added later (pruning) take their default in studies made before them."""
        fields = cls.__dataclass_fields__.values()
        required = [f.name for f in fields if f.default is MISSING]
        if not all(k in attrs for k in required):
            return None
        return cls(**{f.name: attrs[f.name] for f in fields if f.name in attrs})

    @classmethod
    def optional_fields(cls) -> list[str]:
        """The fields with a default: a study written before them has none stored."""
        return [f.name for f in cls.__dataclass_fields__.values() if f.default is not MISSING]


@dataclass
class RequestedSettings:
    """The settings ``search run`` was given, None where the user gave none. ``resolve`` merges them with
    the stored study's: an existing study keeps its own values (its data, budget, seed, space and pruning
    choice) and refuses a different one given explicitly; a new study takes the defaults of the device.
    """

    budget: int | None = None
    data: str | None = None  # a data folder (absolute), or "embedded"
    seed: int | None = None
    profile: str | None = None  # full or cpu
    pruning: bool | None = None
    space: dict | None = None  # the changes of a space file, --set and --range, resolved on the profile

    def resolve(self, name: str, stored: StudySettings | None, device_type: str) -> StudySettings:
        """The settings a run uses; a one-line UserError naming the option that contradicts the study."""
        if stored is not None:
            check_same(name, stored, self)
            return stored
        budget = self.budget or (GPU_BUDGET if device_type == "cuda" else CPU_BUDGET)
        requested = StudySettings(
            budget=budget, eval_every=0, data=self.data or "embedded", seed=self.seed or 0,
            profile=self.profile or default_profile(device_type), pruning=self.pruning is not False, space=self.space or None)
        requested.eval_every = schedule.min_resource(requested.budget)
        return requested


def default_profile(device_type: str) -> str:
    """A new study's space profile when none is asked for: the device's."""
    return "full" if device_type == "cuda" else "cpu"


def check_same(name: str, stored: StudySettings, given: StudySettings | RequestedSettings) -> None:
    """Refuse a setting given for an existing study that differs from the one it was created with: its
    trials must stay comparable. Settings not given (None) are not compared."""
    for field, option, created, advice in (
            ("budget", f"--budget {given.budget}", f"with --budget {stored.budget}",
             "trials of one study must share a budget (use another --study)"),
            ("pruning", f"--{'' if given.pruning else 'no-'}pruning", f"with pruning {'on' if stored.pruning else 'off'}",
             "use another --study"),
            ("data", f"--data {given.data}", f"on {stored.data}", "use the same data or another --study"),
            ("seed", f"--seed {given.seed}", f"with --seed {stored.seed}",
             "its trials share that seed's train/valid split and sampler (use another --study)"),
            ("profile", f"--space {given.profile}", f"with --space {stored.profile}", "use another --study"),
            ("space", "--space/--set/--range", f"with its own space ({stored.profile} profile, {_space_text(stored)})",
             "a study keeps the space it was created with (leave these options out, or use another --study)")):
        wanted, kept = getattr(given, field), getattr(stored, field)
        if field == "space":  # {}: a space file that changes nothing, the profile as it is
            wanted, kept = (None if wanted is None else wanted or {}), kept or {}
        if wanted is not None and wanted != kept:
            raise UserError(f"{option}: study {name!r} was created {created}; {advice}")


def _space_text(settings: StudySettings) -> str:
    from search.running.user_space import describe

    return describe(settings.space)
