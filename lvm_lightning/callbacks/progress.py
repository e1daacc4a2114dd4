"""The progress bar: Lightning's tqdm bar redrawn every few steps, or one line per epoch where the output is a file."""

import sys
import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar


class ProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, redrawn every ``refresh_rate`` steps (each redraw costs about a millisecond, a quarter of a small step).

    Where stdout is not a terminal (a log file, a pipe, a batch job) there is no bar: rank 0 prints one line
    per epoch instead, with the epoch's seconds and the metrics the bar would show, validation's included.
    """

    def __init__(self, refresh_rate: int = 20, process_position: int = 0, leave: bool = False) -> None:
        super().__init__(refresh_rate, process_position, leave)
        self.lines = False
        self._epoch_start = 0.0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.lines = not sys.stdout.isatty()
        if self.lines:
            self.disable()

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        super().on_train_epoch_start(trainer, *args)
        self._epoch_start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.lines and trainer.is_global_zero:
            # Lightning validates before on_train_epoch_end: the line carries this epoch's validation too.
            metrics = trainer.callback_metrics
            line = f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {trainer.global_step} steps, {time.perf_counter() - self._epoch_start:.1f} s"
            if "train/loss" in metrics:
                line += f", train/loss {float(metrics['train/loss']):.4g}"
            val = [f"{name[len('val/log_px/') :]} {float(value):.4g}" for name, value in sorted(metrics.items()) if name.startswith("val/log_px/")]
            print(line + (f"; val log p(x): {', '.join(val)}" if val else ""), flush=True)
