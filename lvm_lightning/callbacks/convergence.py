"""Whether training has converged: has validation log p(x) stopped improving? Logged at each validation, kept in the checkpoint,
said at the end of fit, by the amortization-gap callback and (``convergence_note``) by ``lvm-evaluate``.

A gap or a log-likelihood measured on a model still improving is not the model's: the linear-Gaussian model on a
user's file was 0.84 nats per point short of its maximum-likelihood solution after 1,500 steps at lr 0.01, with an
amortization gap of 0.34 nats that vanishes at the optimum.
"""

import sys
from dataclasses import dataclass
from typing import Any, Optional

import pytorch_lightning as pl

from lvm_lightning.errors import UsageError
from lvm_lightning.schedules import MONITOR

STATE_KEY = "Convergence"  # its entry in a checkpoint's "callbacks", one per run


@dataclass
class Verdict:
    """``improvement``: the rise of the best validation log p(x) over the last ``window`` validations (nats per point; None with too few)."""

    converged: bool
    improvement: Optional[float]
    validations: int
    window: int
    tolerance: float

    def reason(self) -> str:
        """Why it has not converged (or why that is unknown), as a clause."""
        if self.improvement is None:
            return f"only {self.validations} validations, too few to tell whether validation log p(x) stopped improving (it takes {self.window + 1})"
        return f"validation log p(x) still improved by {self.improvement:.3g} nats per point over the last {self.window} validations (tolerance {self.tolerance:g})"

    def note(self) -> Optional[str]:
        """One line saying that the model had not converged, why, and what to do; None when it had."""
        if self.converged:
            return None
        advice = (
            "train longer (--trainer.max_epochs)"
            if self.improvement is None
            else "train longer (--trainer.max_epochs) or raise the lr (--model.optimizer.init_args.lr)"
        )
        return f"training had not converged: {self.reason()}: {advice}"


def verdict(values: list[float], window: int, tolerance: float) -> Verdict:
    """Converged when max(last ``window`` values) − max(earlier values) ≤ ``tolerance``: the best has stopped rising.

    EarlyStopping(monitor, mode 'max', patience ≥ window, min_delta ≤ tolerance) stops only once this holds.
    """
    if len(values) <= window:
        return Verdict(False, None, len(values), window, tolerance)
    improvement = max(values[-window:]) - max(values[:-window])
    return Verdict(improvement <= tolerance, improvement, len(values), window, tolerance)


def convergence_note(checkpoint: dict[str, Any]) -> Optional[str]:
    """One line when ``checkpoint`` records a run whose validation log p(x) had not converged; None when it had, or when it records nothing."""
    state = checkpoint.get("callbacks", {}).get(STATE_KEY)
    if not isinstance(state, dict) or not state.get("values"):
        return None
    return verdict(list(state["values"]), state["window"], state["tolerance"]).note()


class Convergence(pl.Callback):
    """After each validation, whether ``monitor`` (the module's tightest validation log p(x)) rose by more than ``tolerance`` nats per point
    over the last ``window`` validations: logs val/converged (1 or 0) and val/improvement, and at the end of fit says so when it had not converged."""

    def __init__(self, window: int = 5, tolerance: float = 0.01, monitor: str = MONITOR) -> None:
        if window < 1 or not tolerance >= 0:
            raise UsageError(f"convergence.window must be >= 1 and convergence.tolerance >= 0, got {window} and {tolerance}")
        self.window, self.tolerance, self.monitor = window, tolerance, monitor
        self.values: list[float] = []

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def verdict(self) -> Verdict:
        return verdict(self.values, self.window, self.tolerance)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        self.values.append(float(value))  # one host sync a validation
        result = self.verdict()
        metrics = {"val/converged": float(result.converged)}
        if result.improvement is not None:
            metrics["val/improvement"] = result.improvement
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        note = self.verdict().note()
        # Not after fast_dev_run, a check of the code rather than training.
        if note is not None and self.values and not trainer.fast_dev_run and trainer.is_global_zero:
            print(f"warning: {note}", file=sys.stderr, flush=True)

    def state_dict(self) -> dict[str, Any]:
        return {"values": list(self.values), "window": self.window, "tolerance": self.tolerance, "monitor": self.monitor}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # The history carries over; window and tolerance are this run's (a resumed run may judge by others).
        self.values = list(state_dict["values"])


def convergence_of(trainer: pl.Trainer) -> Optional[Convergence]:
    """The trainer's Convergence callback, or None."""
    return next((callback for callback in trainer.callbacks if isinstance(callback, Convergence)), None)
