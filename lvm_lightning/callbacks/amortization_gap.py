"""Tracks the amortization and approximation gaps during training, in TensorBoard under ``gap/``."""
from contextlib import contextmanager
from typing import Iterator, Optional, Sequence

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from lvm_lightning.errors import UsageError
from lvm_lightning.inference import LocalOptimizer, gap_decomposition, summarize
from lvm_lightning.inference.local import Bound, Gradient, Init, Precision, Stopping


@contextmanager
def _evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode (no dropout, no batch-norm statistics updates), each restored to its own mode after."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


class AmortizationGap(pl.Callback):
    """After every ``every_n_epochs`` training epochs, logs on the first ``num_points`` points of ``split``:

    gap/elbo_amortized = ELBO(q_φ), gap/elbo_optimized = ELBO(q*), gap/log_px, gap/amortization_gap =
    ELBO(q*) − ELBO(q_φ), gap/approximation_gap = log p(x) − ELBO(q*), seconds per point of each
    inference, Adam steps and converged fraction of q*, and gap/refined_elbo/k=… after k steps from
    q_φ (0 turns it off). Under DDP each rank takes every world_size-th point and sums are
    all-reduced. The model's weights and modes, its optimizer and the training RNG stream are left
    as they were: the RNG is forked and seeded with ``seed``, so every evaluation sees the same draws.
    """

    def __init__(
        self,
        every_n_epochs: int = 5,
        num_points: int = 256,
        split: str = "val",
        max_steps: int = 500,
        num_samples: int = 10,
        lr: float = 1e-2,
        bound: Bound = "elbo",
        init: Init = "encoder",
        stopping: Stopping = "point",
        gradient: Gradient = "stl",
        precision: Precision = "32",
        check_every: int = 50,
        patience: int = 5,
        elbo_samples: int = 100,
        log_px_samples: int = 500,
        refine_steps: Sequence[int] = (0, 10, 100),
        chunk_size: Optional[int] = None,
        seed: int = 0,
    ) -> None:
        if num_points < 1 or elbo_samples < 1 or log_px_samples < 1:
            raise UsageError("num_points, elbo_samples and log_px_samples must be >= 1")
        self.every_n_epochs, self.num_points, self.split, self.seed = every_n_epochs, num_points, split, seed
        self.elbo_samples, self.log_px_samples, self.chunk_size = elbo_samples, log_px_samples, chunk_size
        self.refine_steps = [k for k in refine_steps if k <= max_steps]
        self.optimizer = LocalOptimizer(num_samples, bound, init, lr, max_steps, check_every, patience, stopping, gradient, precision)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.every_n_epochs > 0 and self.num_points < trainer.world_size:
            raise UsageError(f"gap.num_points={self.num_points} leaves a rank without points: use at least {trainer.world_size}")

    def _points(self, trainer: pl.Trainer, device: torch.device) -> Optional[Tensor]:
        """This rank's shard of the fixed subset, or None when the data module keeps no ``splits``."""
        splits = getattr(trainer.datamodule, "splits", None)
        if not splits or self.split not in splits:
            return None
        return splits[self.split][: self.num_points][trainer.global_rank :: trainer.world_size].to(device)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.every_n_epochs <= 0 or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        x = self._points(trainer, pl_module.device)
        if x is None:
            return
        device = pl_module.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _evaluation_mode(pl_module), torch.enable_grad():
            torch.default_generator.manual_seed(self.seed)
            if device.type == "cuda":
                with torch.cuda.device(device):
                    torch.cuda.manual_seed(self.seed)
            report = gap_decomposition(
                pl_module.model, x, self.optimizer, self.elbo_samples, self.log_px_samples, self.refine_steps, self.chunk_size
            )
        sums = report.sums()
        totals = trainer.strategy.reduce(torch.stack(list(sums.values())), reduce_op="sum")
        summary = summarize(dict(zip(sums, totals)))
        metrics = {f"gap/{name}": value for name, value in summary.items() if not name.endswith("_stderr") and name != "num_points"}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
