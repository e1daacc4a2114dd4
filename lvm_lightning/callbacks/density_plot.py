"""For 2-D data: the data over the model's learned density, and over the true density where known."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from lvm_lightning.callbacks.due import picture_due  # noqa: E402
from lvm_lightning.inference import log_marginal  # noqa: E402


class DensityPlot(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, logs the figure 'density' (2-D data only; 0 turns it off)."""

    def __init__(self, every_n_epochs: int = 5, grid_size: int = 120, max_points: int = 2000) -> None:
        self.every_n_epochs, self.grid_size, self.max_points = every_n_epochs, grid_size, max_points

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if getattr(datamodule, "data_dim", None) != 2 or not picture_due(trainer, self.every_n_epochs):
            return
        points = datamodule.splits["val"][: self.max_points].cpu()
        lo, hi = points.min(0).values, points.max(0).values
        margin = 0.15 * (hi - lo)
        axes_values = [torch.linspace(float(lo[i] - margin[i]), float(hi[i] + margin[i]), self.grid_size) for i in range(2)]
        gx, gy = torch.meshgrid(*axes_values, indexing="xy")
        grid = torch.stack([gx.flatten(), gy.flatten()], dim=1)
        grid_on_device = grid.to(pl_module.device)
        model = pl_module.model
        # Exact where tractable, else importance-sampled from the amortized q with K = 64.
        panels = {"model": log_marginal(model, grid_on_device, model.posterior(grid_on_device), 64).cpu()}
        if hasattr(datamodule, "true_log_prob"):
            panels["true"] = datamodule.true_log_prob(grid)
        fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4.5), squeeze=False)
        for ax, (title, log_density) in zip(axes[0], panels.items()):
            ax.contourf(gx, gy, log_density.exp().reshape(gx.shape), levels=30, cmap="viridis")
            ax.scatter(points[:, 0], points[:, 1], s=2, c="white", alpha=0.4)
            ax.set_title(f"{title} density p(x), epoch {trainer.current_epoch}")
            ax.set_aspect("equal")
        fig.tight_layout()
        trainer.logger.experiment.add_figure("density", fig, global_step=trainer.global_step)
        plt.close(fig)
