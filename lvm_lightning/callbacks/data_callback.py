"""What every picture and measurement callback shares: whether it applies to the run's data and model (said once), and when it is due."""

from typing import Optional

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
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


def epoch_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """On (every_n_epochs > 0), not the sanity check, and after the n-th, 2n-th, … epoch counted from 1; outside fit (validate, test), always."""
    if every_n_epochs <= 0 or trainer.sanity_checking:
        return False
    return trainer.state.fn != TrainerFn.FITTING or (trainer.current_epoch + 1) % every_n_epochs == 0


def drawn_here(trainer: pl.Trainer) -> bool:
    """Whether this process draws pictures: rank 0, with a TensorBoard logger."""
    return isinstance(trainer.logger, TensorBoardLogger) and trainer.is_global_zero


def picture_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """``epoch_due`` and ``drawn_here``."""
    return epoch_due(trainer, every_n_epochs) and drawn_here(trainer)


class Picture(DataCallback):
    """A picture drawn at validation every ``every_n_epochs`` epochs and once more at the end of training, of the final model, unless
    the last epoch drew it already: a run shorter than the period, or not a multiple of it, still shows its final model."""

    every_n_epochs = 0
    _drawn_at: Optional[int] = None  # the global step of the last picture

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        """Draws the picture of the model after ``epoch`` epochs into ``trainer.logger``."""
        raise NotImplementedError

    def _draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        self.draw(trainer, pl_module, epoch)
        self._drawn_at = trainer.global_step

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active and picture_due(trainer, self.every_n_epochs):
            self._draw(trainer, pl_module, trainer.current_epoch + 1)  # validation ends the epoch: it counts as trained

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active and self.every_n_epochs > 0 and drawn_here(trainer) and self._drawn_at != trainer.global_step:
            self._draw(trainer, pl_module, trainer.current_epoch)  # Lightning counts the completed epochs here
