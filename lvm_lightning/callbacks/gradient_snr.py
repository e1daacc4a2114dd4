"""The gradient signal-to-noise ratio |E[g]| / std[g] of the training objective per parameter group (Rainforth et al., 2018).

For the IWAE bound with reparameterized gradients the encoder's SNR falls as O(1/√K) while the decoder's grows as
O(√K); DReG's encoder SNR does not fall (Tucker et al., 2018). This callback shows which regime a run is in.
"""

import pytorch_lightning as pl
import torch
from torch import Tensor

from lvm_lightning.callbacks.data_callback import DataCallback
from lvm_lightning.errors import UsageError
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import Estimator
from lvm_lightning.rng import seeded_fork

GROUPS = ("encoder", "decoder", "prior")


def gradient_snr(estimator: Estimator, model: LatentVariableModel, x: Tensor, num_estimates: int) -> dict[str, Tensor]:
    """Per group (encoder, decoder, prior with parameters): the median over its weights of |mean_m g_m| / std_m g_m, over
    ``num_estimates`` draws g_m = ∇ mean_x surrogate(x) of ``estimator``'s objective on the batch ``x``.

    The median, because a few weights with nearly deterministic gradients would dominate a mean. Weights whose gradient never
    varies (std 0) have no ratio and are left out. Running moments (Welford) keep memory at two copies of the weights.
    """
    if num_estimates < 2:
        raise UsageError(f"the gradient SNR needs num_estimates >= 2 (a standard deviation), got {num_estimates}")
    groups = {name: [p for p in getattr(model, name).parameters() if p.requires_grad] for name in GROUPS}
    groups = {name: params for name, params in groups.items() if params}
    params = [p for group in groups.values() for p in group]
    mean = [torch.zeros_like(p) for p in params]
    squares = [torch.zeros_like(p) for p in params]
    for m in range(1, num_estimates + 1):
        surrogate = estimator.objective(model, x).surrogate.mean()
        grads = torch.autograd.grad(surrogate, params, allow_unused=True)
        for g, mu, s2 in zip(grads, mean, squares):
            g = torch.zeros_like(mu) if g is None else g
            delta = g - mu
            mu += delta / m
            s2 += delta * (g - mu)
    ratios, start = {}, 0
    for name, group in groups.items():
        rows = range(start, start + len(group))
        start += len(group)
        mu = torch.cat([mean[i].flatten() for i in rows])
        std = torch.cat([(squares[i].flatten() / (num_estimates - 1)).sqrt() for i in rows])
        varies = std > 0
        ratios[name] = (mu[varies].abs() / std[varies]).median() if bool(varies.any()) else torch.tensor(float("nan"))
    return ratios


class GradientSNR(DataCallback):
    """Every ``every_n_epochs`` epochs, logs snr/encoder, snr/decoder (and snr/prior when it learns): ``gradient_snr`` of the
    run's estimator from ``num_estimates`` gradient draws on the first ``batch_size`` training points.

    The draws come from their own stream seeded by ``seed`` (the same points and noise every time, so the curve shows the
    model's change), through ``torch.autograd.grad``: the weights, their .grad, the optimizer and the training stream are
    untouched. It costs ``num_estimates`` training steps at each measurement, on rank 0 only.
    """

    def __init__(self, every_n_epochs: int = 1, num_estimates: int = 100, batch_size: int = 64, seed: int = 0) -> None:
        if num_estimates < 2 or batch_size < 1:
            raise UsageError(f"gradient_snr needs num_estimates >= 2 and batch_size >= 1, got {num_estimates} and {batch_size}")
        self.every_n_epochs, self.num_estimates, self.batch_size, self.seed = every_n_epochs, num_estimates, batch_size, seed

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.active or self.every_n_epochs <= 0 or (trainer.current_epoch + 1) % self.every_n_epochs or not trainer.is_global_zero:
            return
        data = trainer.datamodule
        with seeded_fork(pl_module.device, self.seed), torch.enable_grad():
            x = data.splits["train"][: self.batch_size].to(pl_module.device)
            transform = data.transform("train")
            x = transform(x) if transform is not None else x
            ratios = gradient_snr(pl_module.estimator, pl_module.lvm, x, self.num_estimates)
        metrics = {f"snr/{name}": float(value) for name, value in ratios.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
