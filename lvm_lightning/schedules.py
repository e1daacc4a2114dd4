"""The optimizer and learning-rate schedules, as classes for LVMModule's ``optimizer`` and ``lr_scheduler`` (LightningCLI's
``OptimizerCallable`` / ``LRSchedulerCallable``: each is called with the parameters, or the optimizer, when fit starts).

``Adam`` is torch's, fused where it can be; ``Plateau`` halves lr whenever validation log p(x) stops rising; ``Cosine`` takes lr to 0
over the run's steps; ``Burda`` is the IWAE paper's 3^i epochs at lr·10^(−i/7). A schedule of one's own is any torch scheduler class.
"""

import math
from typing import Any, Iterable, Optional, Union

import pytorch_lightning as pl
import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, ReduceLROnPlateau

from lvm_lightning.errors import UsageError

MONITOR = "val/log_px"  # the module's tightest validation estimate of log p(x), nats per point

BURDA_STAGES = 8  # stages i = 0..7 of Burda et al. (2016), 3^i epochs each: 3280 epochs in all
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))


class Adam(torch.optim.Adam):
    """torch's Adam (lr 1e-2 unless given), with its fused kernel wherever every parameter allows it (CPU and CUDA floats)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-2,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        if not lr >= 0:
            raise UsageError(f"lr must be >= 0, got {lr}: pass e.g. --model.optimizer.init_args.lr 0.001")
        if not eps > 0:
            raise UsageError(f"eps must be positive, got {eps}: pass e.g. --model.optimizer.init_args.eps 1e-8")
        params = list(params)
        tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
        # The fused kernel does the same update in one pass over all parameters; torch's CPU default loops over them in Python.
        fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, fused=fused or None)

    def _accelerator_graph_capture_health_check(self) -> None:
        # torch checks for CUDA graph capture at every step, and where CUDA is not initialized (a CPU run with a CUDA build of
        # torch) that check loads the NVIDIA driver's library again each time; parameters on the CPU are never captured.
        if any(p.device.type != "cpu" for group in self.param_groups for p in group["params"]):
            super()._accelerator_graph_capture_health_check()


class Schedule:
    """A schedule that tells Lightning how to step it: ``lightning_config(trainer)`` is its ``lr_scheduler`` entry."""

    interval = "epoch"

    def lightning_config(self, trainer: pl.Trainer) -> dict[str, Any]:
        """The ``lr_scheduler`` dictionary of ``configure_optimizers`` for this schedule in ``trainer``'s run."""
        return {"scheduler": self, "interval": self.interval}


class Plateau(Schedule, ReduceLROnPlateau):
    """lr·``factor`` after ``patience`` validations in a row without a rise of ``threshold`` nats per point in val/log_px."""

    # Adam's noise at a fixed lr is of the order of 0.001 nats per point on the shipped models: a smaller threshold would
    # wait on noise, a larger one halve too early.
    def __init__(self, optimizer: torch.optim.Optimizer, factor: float = 0.5, patience: int = 2, threshold: float = 1e-3) -> None:
        super().__init__(optimizer, mode="max", factor=factor, patience=patience, threshold=threshold, threshold_mode="abs")

    def lightning_config(self, trainer: pl.Trainer) -> dict[str, Any]:
        # Stepped at each validation with the monitored value: every check_val_every_n_epoch epochs, or every val_check_interval
        # steps where validation runs by steps. With validation off Lightning warns and lr stays (strict False), not a crash.
        every_epochs = trainer.check_val_every_n_epoch
        interval, every = ("epoch", every_epochs) if every_epochs is not None else ("step", int(trainer.val_check_interval))
        return {"scheduler": self, "monitor": MONITOR, "interval": interval, "frequency": every, "strict": False}


class Cosine(Schedule, LambdaLR):
    """lr·½(1 + cos(π t/T)) at step t of the run's T steps (``total_steps``, or the trainer's estimate): 0 at the last step."""

    interval = "step"

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: Optional[int] = None) -> None:
        self.total_steps = total_steps
        super().__init__(optimizer, lambda step: self.factor(step))

    def factor(self, step: int) -> float:
        """½(1 + cos(π min(t, T)/T)); 1 before T is known."""
        total = self.total_steps
        return 1.0 if not total else 0.5 * (1 + math.cos(math.pi * min(step, total) / total))

    def lightning_config(self, trainer: pl.Trainer) -> dict[str, Any]:
        if self.total_steps is None:
            total = trainer.estimated_stepping_batches
            if not math.isfinite(total):
                raise UsageError(
                    "the Cosine schedule ends at the run's last step, but this run has none: "
                    "set --trainer.max_epochs or --trainer.max_steps, or --model.lr_scheduler.init_args.total_steps"
                )
            self.total_steps = int(total)
        return super().lightning_config(trainer)


class Burda(Schedule, LambdaLR):
    """Burda et al. (2016): stage i = 0..7 lasts 3^i epochs at lr·10^(−i/7)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        super().__init__(optimizer, burda_lr_factor)


def burda_lr_factor(epoch: int) -> float:
    """10^(−i/7) during stage i, which spans epochs (3^i − 1)/2 … (3^(i+1) − 3)/2; the last stage's factor after that."""
    stage = sum((3**i - 1) // 2 <= epoch for i in range(1, BURDA_STAGES))
    return 10 ** (-stage / 7)


def lightning_config(scheduler: Union[LRScheduler, ReduceLROnPlateau], trainer: pl.Trainer) -> dict[str, Any]:
    """The ``lr_scheduler`` entry of ``configure_optimizers``: the schedule's own, or Lightning's default (stepped each epoch)."""
    return scheduler.lightning_config(trainer) if isinstance(scheduler, Schedule) else {"scheduler": scheduler}
