"""A training loss or weights gone NaN or infinite stop the run with one line: where, what to blame and what to do."""

from typing import Any, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from lvm_lightning.data.protocol import SplitData
from lvm_lightning.errors import UsageError

PARTS_OF_TERMS = {
    "log q(z|x)": "the encoder q_φ(z|x)",
    "log p(z)": "the prior p(z)",
    "log p(x|z)": "the decoder p_θ(x|z)",
    "the weights": "the initial weights",
}


class NonFiniteStop(pl.Callback):
    """Raises UsageError when the loss is not finite (before its backward pass) or the weights are not finite at an epoch's end.

    At the first step, before any update, the model's parts are blamed by which of their terms are not finite
    (``LatentVariableModel.nonfinite_terms``); later the step size or the data's scale, with the last good checkpoint.
    On a GPU the loss is read back only on the steps Lightning logs, so as not to stall the queue every step.
    """

    def __init__(self) -> None:
        self._batch: Optional[Tensor] = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        self._batch = batch

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        every = trainer.log_every_n_steps
        logs = every and (trainer.global_step + 1) % every == 0
        if not (logs or pl_module.device.type == "cpu") or bool(torch.isfinite(loss)):
            return
        terms = pl_module.lvm.nonfinite_terms(self._batch)
        if trainer.global_step == 0:
            raise UsageError(first_step_fault(terms, type(pl_module.lvm).__name__, type(pl_module.estimator).__name__))
        which = f"{' and '.join(terms)} non-finite" if terms else "each term finite at a fresh draw, the estimate's reduction not"
        raise stop(trainer, pl_module, f"the training loss became NaN or infinite ({which})")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # One host sync an epoch: a NaN between the checked steps stops the run here, not after epochs of NaN curves.
        if not bool(torch.stack([torch.isfinite(p).all() for p in pl_module.parameters()]).all()):
            raise stop(trainer, pl_module, "the weights became NaN or infinite")


def stop(trainer: pl.Trainer, pl_module: pl.LightningModule, what: str) -> UsageError:
    """The one-line stop for ``what``: the step, the data's scale, the last good checkpoint and what to do."""
    callback = trainer.checkpoint_callback
    last = (callback.last_model_path or callback.best_model_path) if isinstance(callback, pl.callbacks.ModelCheckpoint) else ""
    data = trainer.datamodule
    largest = float(data.splits["train"].abs().max()) if isinstance(data, SplitData) else None
    scale = f"; largest |x| in the training split {largest:.3g}" if largest is not None else ""
    # Data of moderate scale (or in standard units) point at the step size; large or unknown scale at the data first.
    scaled = largest is not None and (largest < 1e3 or pl_module.lvm.units.active)
    lower = "lower the learning rate (--model.optimizer.init_args.lr)"
    advice = lower.capitalize() if scaled else f"Standardize the data (--data.standardize true), or {lower}"
    return UsageError(f"{what} at step {trainer.global_step} (epoch {trainer.current_epoch}){scale}; last good checkpoint: {last or 'none yet'}. {advice}")


def first_step_fault(terms: list[str], model: str, estimator: str) -> str:
    """What to blame when the loss is NaN or infinite before the first update: the parts whose terms are not finite."""
    if not terms:
        return (
            f"the training loss is NaN or infinite at the first step, before any update, though every term of {model} is finite on the batch: "
            f"{estimator}'s reduction of them is at fault (e.g. all weights zero), not the learning rate"
        )
    parts = " and ".join(f"{term} from {PARTS_OF_TERMS.get(term, term)}" for term in terms)
    return (
        f"the training loss is NaN or infinite at the first step, before any update: {parts} of {model} is not finite on the first batch, "
        "so that part (or the data it reads) is at fault, not the learning rate: check what it returns for these data"
    )
