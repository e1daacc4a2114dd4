"""Logs the data's true log-density beside the model's estimates, where the data module knows it."""

from typing import Any, Optional

import pytorch_lightning as pl
from torch import Tensor

from lvm_lightning.callbacks.data_callback import DataCallback
from lvm_lightning.data.protocol import SplitData, true_log_prob
from lvm_lightning.models.lvm import LatentVariableModel


class TrueLogDensity(DataCallback):
    """Logs {val,test}/log_px/true = mean log p_data(x) over the split, the ceiling for every estimate."""

    def unavailable(self, data: SplitData, model: LatentVariableModel) -> Optional[str]:
        return None if data.true_density is not None else "the data's true density is unknown (synthetic data know it)"

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Tensor, stage: str) -> None:
        if self.active:
            value = true_log_prob(trainer.datamodule.true_density, batch).mean()
            pl_module.log(f"{stage}/log_px/true", value, batch_size=len(batch), sync_dist=True)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Tensor, *args: Any) -> None:
        self._log(trainer, pl_module, batch, "val")

    def on_test_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Tensor, *args: Any) -> None:
        self._log(trainer, pl_module, batch, "test")
