"""What every picture and measurement callback shares: whether it applies to the run's data and model (said once), and when it is due."""

from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_info

from lvm_lightning.data.protocol import SplitData
from lvm_lightning.models.lvm import LatentVariableModel


class DataCallback(pl.Callback):
    """A callback reading a ``SplitData`` data module. At setup it decides once whether it applies, and says why not in one line."""

    active = False

    def unavailable(self, data: SplitData, model: LatentVariableModel) -> Optional[str]:
        """Why this callback cannot run on ``data`` and ``model``, or None when it can."""
        return None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        data = trainer.datamodule
        if not isinstance(data, SplitData):
            reason: Optional[str] = f"{type(data).__name__} is not a lvm_lightning.data.SplitData (tensors per split)"
        else:
            reason = self.unavailable(data, pl_module.lvm)
        self.active = reason is None
        if reason is not None:
            rank_zero_info(f"{type(self).__name__} is off for this run: {reason}")


def picture_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """On (every_n_epochs > 0), every every_n_epochs-th epoch, TensorBoard, rank 0, not the sanity check."""
    return (
        every_n_epochs > 0
        and not trainer.sanity_checking
        and trainer.current_epoch % every_n_epochs == 0
        and isinstance(trainer.logger, TensorBoardLogger)
        and trainer.is_global_zero
    )
