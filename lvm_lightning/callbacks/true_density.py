"""Logs the data's true log-density beside the model's estimates, where the data module knows it."""
from typing import Any

import pytorch_lightning as pl
from torch import Tensor


class TrueLogDensity(pl.Callback):
    """Logs {val,test}/log_px/true = mean log p_data(x) over the split, the ceiling for every estimate."""

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Tensor, stage: str) -> None:
        true_log_prob = getattr(trainer.datamodule, "true_log_prob", None)
        if true_log_prob is not None:
            pl_module.log(f"{stage}/log_px/true", true_log_prob(batch).mean(), batch_size=len(batch), sync_dist=True)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Tensor, *args: Any) -> None:
        self._log(trainer, pl_module, batch, "val")

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Tensor, *args: Any) -> None:
        self._log(trainer, pl_module, batch, "test")
