"""For images: grids of inputs beside reconstructions and of prior samples, a scatter of 2-D encodings, and active latent units.

Each callback says once, at setup, when it does not apply (data without ``image_shape`` or
labels, an enumerable latent), so all of them can stay registered for every run.
"""

from typing import Optional

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from torch import Tensor
from torch.distributions import Distribution
from torchvision.utils import make_grid

from lvm_lightning.callbacks.data_callback import DataCallback, Picture
from lvm_lightning.data.protocol import SplitData
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.rng import seeded_fork

MEAN_SAMPLES = 64  # draws per point for E_q[z] where q has no closed-form mean (a flow)


def mean_and_error(q: Distribution, device: torch.device) -> tuple[Tensor, Tensor]:
    """E_q[z] [B, d] and the variance of its Monte Carlo error [B, d]: the closed form (error 0) where q has one, else the mean of
    MEAN_SAMPLES draws in a seeded fork of ``device``'s random stream (error Var_q(z)/MEAN_SAMPLES, estimated from the same draws)."""
    try:
        mean = q.mean
        return mean, torch.zeros_like(mean)
    except NotImplementedError:
        with seeded_fork(device, 0):
            draws = q.sample((MEAN_SAMPLES,))
        return draws.mean(0), draws.var(0) / MEAN_SAMPLES


def posterior_mean(q: Distribution, device: torch.device) -> Tensor:
    """E_q[z] [B, d] (``mean_and_error``)."""
    return mean_and_error(q, device)[0]


def _encoder_means(model: LatentVariableModel, x: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """E_q[z] for every row of ``x`` and the variance of its Monte Carlo error, each [N, d], in batches (a continuous latent)."""
    means, errors = zip(*(mean_and_error(model.posterior(batch), x.device) for batch in x.split(batch_size)))
    return torch.cat(means), torch.cat(errors)


def active_units(means: Tensor, threshold: float = 0.01, error: Optional[Tensor] = None) -> Tensor:
    """Number of units u with A_u = Cov_x(E_q[z_u]) > threshold (Burda et al., 2016), from means [N, d].

    ``error`` [N, d], the variance of each sampled mean's Monte Carlo error, is subtracted from the spread: uncorrected, a unit
    whose q is its N(0, 1) prior would read Var_q(z_u)/S = 1/64 from the draws alone, above the threshold.
    """
    spread = means.var(0) if error is None else means.var(0) - error.mean(0)
    return (spread > threshold).sum()


@torch.no_grad()
def reconstructions(model: LatentVariableModel, x: Tensor) -> Tensor:
    """E[x | z], z ~ q_φ(z|x): the decoder's means (probabilities for Bernoulli pixels), shape [B, D]."""
    return model.likelihood(model.posterior(x).sample()).mean


@torch.no_grad()
def prior_means(model: LatentVariableModel, num: int) -> Tensor:
    """E[x | z], z ~ p(z), shape [num, D]."""
    return model.likelihood(model.prior().sample((num,))).mean


DISPLAY_SIZE = 64  # pixels: a smaller image is enlarged by the whole factor that brings it closest to this, below or at it
PAIR_GAP = 2  # pixels between an input and its reconstruction
GRID_GAP = 8  # pixels between two pairs, or between two samples


def upscale(images: Tensor) -> Tensor:
    """Images [N, C, H, W] enlarged by the whole factor max(1, DISPLAY_SIZE // max(H, W)), each pixel a square block (no smoothing)."""
    factor = max(1, DISPLAY_SIZE // max(images.shape[-2:]))
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def image_grid(rows: Tensor, image_shape: tuple[int, ...], nrow: int) -> Tensor:
    """make_grid of flattened images [N, C·H·W], clipped to [0, 1] and ``upscale``d, GRID_GAP white pixels apart."""
    return make_grid(upscale(rows.reshape(-1, *image_shape).clamp(0, 1).cpu()), nrow=nrow, padding=GRID_GAP, pad_value=1.0)


def pair_grid(inputs: Tensor, outputs: Tensor, image_shape: tuple[int, ...], nrow: int) -> Tensor:
    """``image_grid`` of pairs, ``nrow`` to a row: each input [N, C·H·W] with its output right of it, PAIR_GAP pixels apart, the pairs GRID_GAP apart."""
    left, right = (upscale(images.reshape(-1, *image_shape).clamp(0, 1).cpu()) for images in (inputs, outputs))
    gap = torch.ones(*left.shape[:-1], PAIR_GAP)
    return make_grid(torch.cat([left, gap, right], dim=-1), nrow=nrow, padding=GRID_GAP, pad_value=1.0)


class ImageGrids(Picture):
    """Every ``every_n_epochs`` epochs and after the last, logs 'images/reconstructions' (each validation input as the split stores it,
    grey levels under dynamic binarization, left of its reconstruction) and 'images/prior_samples' (decoder means at z ~ p(z)); image data only, 0 turns it off."""

    def __init__(self, every_n_epochs: int = 1, num_images: int = 32) -> None:
        self.every_n_epochs, self.num_images = every_n_epochs, num_images

    def unavailable(self, data: SplitData, model: LatentVariableModel) -> Optional[str]:
        return None if self.every_n_epochs <= 0 or data.image_shape is not None else "the data are not images (no image_shape)"

    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        image_shape = trainer.datamodule.image_shape
        model = pl_module.lvm
        x = trainer.datamodule.splits["val"][: self.num_images].to(pl_module.device)
        with seeded_fork(pl_module.device, 0):  # the same draws every epoch, training's stream untouched
            outputs = reconstructions(model, x)
            samples = prior_means(model, self.num_images)
        experiment, step = trainer.logger.experiment, trainer.global_step
        experiment.add_image("images/reconstructions", pair_grid(x, outputs, image_shape, nrow=8), step)
        experiment.add_image("images/prior_samples", image_grid(samples, image_shape, nrow=8), step)


class LatentScatter(Picture):
    """Every ``every_n_epochs`` epochs and after the last, logs the figure 'latent/test_encodings': E_q[z] of up to
    ``max_points`` test points coloured by label; 2-D continuous latents and labelled data only, 0 turns it off."""

    def __init__(self, every_n_epochs: int = 1, max_points: int = 5000) -> None:
        self.every_n_epochs, self.max_points = every_n_epochs, max_points

    def unavailable(self, data: SplitData, model: LatentVariableModel) -> Optional[str]:
        if self.every_n_epochs <= 0:
            return None
        if "test" not in data.labels:
            return "the data have no labels"
        shape = tuple(model.prior().event_shape)
        return None if shape == (2,) and model.continuous else f"the latent's shape is {shape}, it draws 2-D continuous encodings"

    @torch.no_grad()
    def draw(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        x = trainer.datamodule.splits["test"][: self.max_points].to(pl_module.device)
        means = _encoder_means(pl_module.lvm, x, trainer.datamodule.eval_batch_size)[0].cpu()
        labels = trainer.datamodule.labels["test"][: len(means)]
        num_classes = int(labels.max()) + 1
        fig = Figure(figsize=(6, 5.5))
        ax = fig.add_subplot()
        points = ax.scatter(means[:, 0], means[:, 1], c=labels, cmap="tab10", s=3, vmin=-0.5, vmax=num_classes - 0.5)
        fig.colorbar(points, ax=ax, ticks=range(num_classes), label="label")
        ax.set_xlabel("E_q[z_1]")
        ax.set_ylabel("E_q[z_2]")
        ax.set_title(f"test encodings, epoch {epoch}")
        fig.tight_layout()
        trainer.logger.experiment.add_figure("latent/test_encodings", fig, global_step=trainer.global_step)


class ActiveUnits(DataCallback):
    """Logs 'val/active_units': how many latent units have Cov_x(E_q[z_u]) > ``threshold`` over the validation split (continuous latents),
    and for a hierarchical z each layer's count beside it, 'val/active_units/NAME' (``LatentVariableModel.latent_layers``)."""

    def __init__(self, threshold: float = 0.01) -> None:
        self.threshold = threshold

    def unavailable(self, data: SplitData, model: LatentVariableModel) -> Optional[str]:
        return None if model.continuous else "the latent is not continuous (active units count continuous coordinates)"

    @torch.no_grad()
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active or trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        means, error = _encoder_means(pl_module.lvm, datamodule.splits["val"].to(pl_module.device), datamodule.eval_batch_size)
        pl_module.log("val/active_units", active_units(means, self.threshold, error).float(), sync_dist=True)
        for name, layer in pl_module.lvm.latent_layers().items():
            pl_module.log(f"val/active_units/{name}", active_units(means[:, layer], self.threshold, error[:, layer]).float(), sync_dist=True)
