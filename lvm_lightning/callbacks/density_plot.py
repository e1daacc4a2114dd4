"""For 2-D data: the data over the model's learned density, and over the true density where known."""

from typing import Optional

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure

from lvm_lightning.callbacks.data_callback import Picture
from lvm_lightning.data.protocol import SplitData, true_log_prob
from lvm_lightning.inference import log_marginal
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.rng import seeded_fork


class DensityPlot(Picture):
    """Every ``every_n_epochs`` epochs and after the last, logs the figure 'density' (2-D data only; 0 turns it off).

    The model's density on a ``grid_size``² grid is exact where tractable, else importance-sampled from
    the amortized q with ``num_samples`` per point: a picture, cheap, not a figure of merit.
    """

    def __init__(self, every_n_epochs: int = 10, grid_size: int = 80, max_points: int = 2000, num_samples: int = 16) -> None:
        self.every_n_epochs, self.grid_size, self.max_points, self.num_samples = every_n_epochs, grid_size, max_points, num_samples

    def unavailable(self, data: SplitData, model: LatentVariableModel) -> Optional[str]:
        if self.every_n_epochs <= 0:
            return None
        dim = data.splits["val"].shape[1]
        return None if dim == 2 else f"the data are {dim}-D, it draws 2-D data"

    @torch.no_grad()
    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        datamodule = trainer.datamodule
        points = datamodule.splits["val"][: self.max_points].cpu()
        lo, hi = points.min(0).values, points.max(0).values
        margin = 0.15 * (hi - lo)
        axes_values = [torch.linspace(float(lo[i] - margin[i]), float(hi[i] + margin[i]), self.grid_size) for i in range(2)]
        gx, gy = torch.meshgrid(*axes_values, indexing="xy")
        grid = torch.stack([gx.flatten(), gy.flatten()], dim=1)
        grid_on_device = grid.to(pl_module.device)
        model = pl_module.lvm
        with seeded_fork(pl_module.device, 0):  # the same draws every epoch; training's stream untouched
            panels = {"model": log_marginal(model, grid_on_device, model.posterior(grid_on_device), self.num_samples).cpu()}
        if datamodule.true_density is not None:
            panels["true"] = true_log_prob(datamodule.true_density, grid)
        # A bare Figure, not pyplot: the user's matplotlib backend is left alone.
        fig = Figure(figsize=(5 * len(panels), 4.5))
        for ax, (title, log_density) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels.items()):
            ax.contourf(gx, gy, log_density.exp().reshape(gx.shape), levels=20, cmap="viridis")
            ax.scatter(points[:, 0], points[:, 1], s=2, c="white", alpha=0.4)
            ax.set_title(f"{title} density p(x), epoch {epoch}")
            ax.set_aspect("equal")
        fig.tight_layout()
        trainer.logger.experiment.add_figure("density", fig, global_step=trainer.global_step)
