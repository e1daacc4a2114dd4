"""When an epoch-end picture is due."""
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger


def picture_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """On (every_n_epochs > 0), every every_n_epochs-th epoch, TensorBoard, rank 0, not the sanity check."""
    return (
        every_n_epochs > 0
        and not trainer.sanity_checking
        and trainer.current_epoch % every_n_epochs == 0
        and isinstance(trainer.logger, TensorBoardLogger)
        and trainer.is_global_zero
    )
