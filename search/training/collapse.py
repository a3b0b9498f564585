"""A collapse during a long training run: told from noise at each evaluation, and rolled back."""

from __future__ import annotations

import math

from model import Classifier, TrainConfig
from search.training.train_step import TrainStep


class CollapseGuard:
    """Tells a collapse from training noise at each evaluation, and keeps what a rollback needs.

    ``check`` gives "ok", "suspect" (a first low validation accuracy) or, for a collapse, why:
    - the training loss (the mean over the ``eval_every`` steps since the last evaluation) is above LOSS_JUMP x
      the lowest of the last RECENT good evaluations' losses (a reference of at least LOSS_FLOOR nats, so that
      a memorised training set's tiny loss doubling is no collapse). A collapse sends the loss towards chance
      (ln of the number of speakers), far above its level in training, while the window means of a healthy run
      move little. A margin loss's own warm-up raises its loss several-fold (the margin grows from 0), so for
      margin losses only windows after the ramp count, as loss and as reference;
    - validation accuracy below ACCURACY_DROP x the best for the second evaluation in a row, and by more than
      3 standard errors of the validation split (a 6-utterance split never fires on one utterance);
    - a non-finite training loss.
    At an "ok" evaluation it keeps the model, AdamW's state and the reference losses (the last good state);
    ``roll_back`` copies them back in place and halves the peak learning rate for the rest of the run.
    Its state goes into the checkpoint, so a resumed run rolls back (or not) like an uninterrupted one.
    """

    LOSS_JUMP = 3.0
    LOSS_FLOOR = 0.1
    RECENT = 3
    ACCURACY_DROP = 0.5
    LR_FACTOR = 0.5
    MAX_ROLLBACKS = 3  # then the peak lr is 1/8 of the configured one; a further collapse is only recorded

    def __init__(self, cfg: TrainConfig, margin_loss: bool, n_valid: int) -> None:
        self.margin_ramp_end = cfg.margin_warmup * cfg.steps if margin_loss else 0.0
        self.n_valid = max(1, n_valid)
        self.lr_scale = 1.0
        self.rollbacks: list[dict] = []
        self.recent: list[float] = []  # training losses of the last RECENT good evaluations
        self.suspect = 0  # consecutive evaluations below the accuracy threshold (0 or 1)
        self.good: dict | None = None  # step, model (a state dict), optimizer (snapshot), recent

    def _comparable(self, window_start: int) -> bool:
        return window_start >= self.margin_ramp_end

    def check(self, window_start: int, train_loss: float, accuracy: float, best_accuracy: float) -> str:
        if not math.isfinite(train_loss):
            return f"training loss {train_loss}"
        if self.recent and self._comparable(window_start):
            reference = max(min(self.recent), self.LOSS_FLOOR)
            if train_loss > self.LOSS_JUMP * reference:
                return f"training loss {train_loss:.4f} > {self.LOSS_JUMP:g} x recent {min(self.recent):.4f}"
        standard_error = math.sqrt(max(best_accuracy * (1 - best_accuracy), 0.0) / self.n_valid)
        if accuracy < self.ACCURACY_DROP * best_accuracy and best_accuracy - accuracy > 3 * standard_error:
            self.suspect += 1
            if self.suspect >= 2:
                return (f"valid accuracy {accuracy:.4f} < {self.ACCURACY_DROP:g} x best {best_accuracy:.4f}"
                        " twice in a row")
            return "suspect"
        self.suspect = 0
        return "ok"

    def keep(self, step: int, window_start: int, train_loss: float, model_state: dict,
             optimizer_snapshot: list) -> None:
        """Remember the state after a good evaluation (``model_state``: a copy, never the live tensors)."""
        if self._comparable(window_start):
            self.recent = (self.recent + [train_loss])[-self.RECENT:]
        self.good = {"step": step, "model": model_state, "optimizer": optimizer_snapshot, "recent": list(self.recent)}

    def can_roll_back(self) -> bool:
        return self.good is not None and len(self.rollbacks) < self.MAX_ROLLBACKS

    def roll_back(self, step: int, reason: str, model: Classifier, train_step: TrainStep, peak_lr: float) -> dict:
        # load_state_dict copies into the parameters and buffers in place (param.copy_), and restore_optimizer
        # copies into AdamW's state tensors in place: a captured CUDA graph, which reads exactly those tensors
        # (and the lr tensor, refilled before every step), replays on from the restored state, no recapture.
        model.load_state_dict(self.good["model"])
        train_step.restore_optimizer(self.good["optimizer"])
        self.lr_scale *= self.LR_FACTOR
        self.recent, self.suspect = list(self.good["recent"]), 0
        record = {"step": step, "to_step": self.good["step"], "lr": peak_lr * self.lr_scale, "reason": reason}
        self.rollbacks.append(record)
        return record

    def state_dict(self) -> dict:
        return {"lr_scale": self.lr_scale, "rollbacks": self.rollbacks, "recent": self.recent,
                "suspect": self.suspect, "good": self.good}

    def load_state_dict(self, state: dict) -> None:
        self.lr_scale, self.rollbacks, self.recent = state["lr_scale"], state["rollbacks"], state["recent"]
        self.suspect, self.good = state["suspect"], state["good"]


def describe_rollback(record: dict) -> str:
    """The line `search finalize` prints for a rollback record (``TrainResult.rollbacks``)."""
    return (f"collapse at step {record['step']} ({record['reason']}): rolled back to step {record['to_step']}, "
            f"peak lr now {record['lr']:.3g}")
