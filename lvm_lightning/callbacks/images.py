"""For images: grids of inputs beside reconstructions and of prior samples, a scatter of 2-D encodings, and active latent units.

Each callback does nothing where it does not apply (data without ``image_shape`` or labels,
categorical latents, other loggers), so all of them can stay registered for every run.
"""
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from lvm_lightning.callbacks.due import picture_due  # noqa: E402
from lvm_lightning.models.lvm import LatentVariableModel  # noqa: E402
from lvm_lightning.rng import seeded_fork  # noqa: E402


def _encoder_means(model: LatentVariableModel, x: Tensor, batch_size: int) -> Optional[Tensor]:
    """E_q[z] for every row of ``x``, shape [N, d], in batches; None when q is not continuous."""
    if model.discrete:
        return None
    return torch.cat([model.posterior(batch).mean for batch in x.split(batch_size)])


def active_units(means: Tensor, threshold: float = 0.01) -> Tensor:
    """Number of units u with A_u = Cov_x(E_q[z_u]) > threshold (Burda et al., 2016), from means [N, d]."""
    return (means.var(0) > threshold).sum()


@torch.no_grad()
def reconstructions(model: LatentVariableModel, x: Tensor) -> Tensor:
    """E[x | z], z ~ q_φ(z|x): the decoder's means (probabilities for Bernoulli pixels), shape [B, D]."""
    return model.decoder(model.posterior(x).sample()).mean


@torch.no_grad()
def prior_means(model: LatentVariableModel, num: int) -> Tensor:
    """E[x | z], z ~ p(z), shape [num, D]."""
    return model.decoder(model.prior().sample((num,))).mean


def image_grid(rows: Tensor, image_shape: tuple[int, ...], nrow: int) -> Tensor:
    """make_grid of flattened images [N, C·H·W], clipped to [0, 1]."""
    return make_grid(rows.reshape(-1, *image_shape).clamp(0, 1).cpu(), nrow=nrow, pad_value=1.0)


class ImageGrids(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, logs 'images/reconstructions' (each validation input
    left of its reconstruction) and 'images/prior_samples' (decoder means at z ~ p(z)); image data only, 0 turns it off."""

    def __init__(self, every_n_epochs: int = 1, num_images: int = 32) -> None:
        self.every_n_epochs, self.num_images = every_n_epochs, num_images

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        image_shape = getattr(trainer.datamodule, "image_shape", None)
        if image_shape is None or not picture_due(trainer, self.every_n_epochs):
            return
        model = pl_module.model
        x = trainer.datamodule.splits["val"][: self.num_images].to(pl_module.device)
        with seeded_fork(pl_module.device, 0):  # the same draws every epoch, training's stream untouched
            pairs = torch.stack([x, reconstructions(model, x)], dim=1).flatten(0, 1)
            samples = prior_means(model, self.num_images)
        experiment, step = trainer.logger.experiment, trainer.global_step
        experiment.add_image("images/reconstructions", image_grid(pairs, image_shape, nrow=16), step)
        experiment.add_image("images/prior_samples", image_grid(samples, image_shape, nrow=8), step)


class LatentScatter(pl.Callback):
    """Every ``every_n_epochs`` validation epochs, logs the figure 'latent/test_encodings': E_q[z] of up to
    ``max_points`` test points coloured by label; 2-D continuous latents and labelled data only, 0 turns it off."""

    def __init__(self, every_n_epochs: int = 1, max_points: int = 5000) -> None:
        self.every_n_epochs, self.max_points = every_n_epochs, max_points

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        labels = getattr(trainer.datamodule, "labels", {}).get("test")
        if labels is None or not picture_due(trainer, self.every_n_epochs):
            return
        x = trainer.datamodule.splits["test"][: self.max_points].to(pl_module.device)
        means = _encoder_means(pl_module.model, x, trainer.datamodule.eval_batch_size)
        if means is None or means.shape[1] != 2:
            return
        means, labels = means.cpu(), labels[: len(means)]
        num_classes = int(labels.max()) + 1
        fig, ax = plt.subplots(figsize=(6, 5.5))
        points = ax.scatter(means[:, 0], means[:, 1], c=labels, cmap="tab10", s=3, vmin=-0.5, vmax=num_classes - 0.5)
        fig.colorbar(points, ax=ax, ticks=range(num_classes), label="label")
        ax.set_xlabel("E_q[z_1]")
        ax.set_ylabel("E_q[z_2]")
        ax.set_title(f"test encodings, epoch {trainer.current_epoch}")
        fig.tight_layout()
        trainer.logger.experiment.add_figure("latent/test_encodings", fig, global_step=trainer.global_step)
        plt.close(fig)


class ActiveUnits(pl.Callback):
    """Logs 'val/active_units': how many latent units have Cov_x(E_q[z_u]) > ``threshold`` over the validation split (continuous latents)."""

    def __init__(self, threshold: float = 0.01) -> None:
        self.threshold = threshold

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if trainer.sanity_checking or not hasattr(datamodule, "splits"):
            return
        x = datamodule.splits["val"].to(pl_module.device)
        means = _encoder_means(pl_module.model, x, datamodule.eval_batch_size)
        if means is not None:
            pl_module.log("val/active_units", active_units(means, self.threshold).float(), sync_dist=True)
