"""The LightningModule: trains θ and φ with one estimator, and reports every estimator side by side."""
from typing import Any, Optional, Sequence, Union, get_args

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR

from lvm_lightning.distributed import destroy_process_group_at_exit
from lvm_lightning.errors import UsageError
from lvm_lightning.models import build_model
from lvm_lightning.models.build import Latent, Network
from lvm_lightning.models.families import GaussianStd, check_support
from lvm_lightning.objectives import encoder_objective, evaluation_estimators, make_estimator, resolve_encoder_objective
from lvm_lightning.objectives.encoder import EncoderObjective
from lvm_lightning.rng import seeded_fork
from lvm_lightning.schedules import LRSchedule, burda_lr_factor


class LVMModule(pl.LightningModule):
    """Maximizes Σ_i log p̂_θ(x_i) for the chosen estimator in θ, and ELBO(q_φ) in φ.

    With a reparameterized q and ``importance_sampling``, φ follows the same bound (IWAE; K = 1 is
    the VAE). Otherwise φ follows ``encoder_objective`` with θ held constant: ``elbo``, the
    reverse KL(q_φ || p_θ(z|x)), or ``wake``, the forward KL enumerated over a categorical z
    (the default there, see objectives/encoder.py).
    """

    def __init__(
        self,
        data_dim: int = 2,
        latent: Latent = "categorical",
        latent_dim: int = 16,
        learn_prior: bool = True,
        encoder_hidden: Sequence[int] = (64, 64),
        decoder_hidden: Sequence[int] = (),
        activation: str = "relu",
        likelihood: str = "gaussian",
        decoder_std: GaussianStd = "learned",
        objective: str = "exact",
        encoder_objective: Optional[EncoderObjective] = None,
        num_samples: int = 1,
        eval_num_samples: int = 10,
        chunk_size: Optional[int] = None,
        lr: float = 1e-2,
        lr_schedule: LRSchedule = "constant",
        adam_eps: float = 1e-8,
        network: Network = "mlp",
        image_shape: Optional[Sequence[int]] = None,
    ) -> None:
        super().__init__()
        if not lr >= 0:
            raise UsageError(f"lr must be >= 0, got {lr}: pass e.g. --model.lr 0.001")
        if lr_schedule not in get_args(LRSchedule):
            raise UsageError(f"unknown lr_schedule {lr_schedule!r}: choose one of {', '.join(get_args(LRSchedule))}")
        if not adam_eps > 0:
            raise UsageError(f"adam_eps must be positive, got {adam_eps}")
        self.save_hyperparameters()
        self.model = build_model(
            data_dim, latent, latent_dim, learn_prior, encoder_hidden, decoder_hidden, activation, likelihood, decoder_std, network, image_shape
        )
        self.objective = make_estimator(objective, num_samples, chunk_size)
        self.objective.check(self.model)
        self.encoder_objective = resolve_encoder_objective(encoder_objective, self.model)
        self.evaluators = evaluation_estimators(self.model, eval_num_samples, chunk_size)
        self._resume_rng_state: Optional[dict[str, Tensor]] = None

    def training_step(self, x: Tensor, batch_idx: int) -> Tensor:
        estimate = self.objective.estimate(self.model, x)
        loss = -estimate.log_px.mean()
        if not self.objective.trains_encoder(self.model):
            loss = loss - encoder_objective(self.encoder_objective, self.model, x).mean()
        # Only on the steps Lightning writes (its rule: every log_every_n_steps, and the last before a stop):
        # each self.log call costs ~0.3 ms, 6% of a K = 1 MNIST step on the CPU, for values dropped otherwise.
        every = self.trainer.log_every_n_steps
        if every and ((self.global_step + 1) % every == 0 or self.trainer.should_stop):
            self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
            self.log(f"train/log_px/{self.objective.name}", estimate.log_px.mean(), batch_size=len(x))
        return loss

    @torch.no_grad()
    def _evaluate(self, x: Tensor, stage: str, batch_idx: int) -> None:
        # Own seeded stream: the training stream is the same whether or how often we validate, and every
        # epoch's estimates use the same random numbers, so their curves show the model's change, not noise.
        with seeded_fork(self.device, batch_idx):
            self._log_estimates(x, stage)

    def _log_estimates(self, x: Tensor, stage: str) -> None:
        for estimator in self.evaluators:
            estimate = estimator.estimate(self.model, x)
            log = {f"{stage}/log_px/{estimator.name}": estimate.log_px.mean()}
            if estimator.name in ("prior_sampling", "importance_sampling"):
                log[f"{stage}/ess_fraction/{estimator.name}"] = estimate.effective_sample_size().mean() / estimator.num_samples
                log[f"{stage}/log_weight_std/{estimator.name}"] = estimate.log_weight_std().mean()
                log[f"{stage}/log_px_stderr/{estimator.name}"] = estimate.log_px_stderr().mean()
            if estimator.name == "importance_sampling" and stage == "val":
                log["hp_metric"] = estimate.log_px.mean()
            self.log_dict(log, batch_size=len(x), sync_dist=True)

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        self._evaluate(x, "val", batch_idx)

    def test_step(self, x: Tensor, batch_idx: int) -> None:
        self._evaluate(x, "test", batch_idx)

    def check_data(self, datamodule: Any) -> None:
        """Raises UsageError unless the data's values lie in the likelihood's support (splits held as tensors only).

        A split with a per-batch transform (dynamic binarization) is skipped: its batches, not its stored values, meet the model.
        """
        splits = getattr(datamodule, "splits", {})
        for name, data in splits.items():
            if datamodule.transform(name) is None:
                check_support(self.hparams.likelihood, data, f"the {name} split")

    def setup(self, stage: str) -> None:
        destroy_process_group_at_exit()  # under DDP on gloo; a no-op otherwise
        # Checked where model and data meet: distributions do not check their arguments (models/families.py).
        if self.trainer.datamodule is not None:
            self.check_data(self.trainer.datamodule)

    def configure_optimizers(self) -> Union[torch.optim.Optimizer, dict[str, Any]]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, eps=self.hparams.adam_eps)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        if self.hparams.lr_schedule == "cosine":
            # lr·½(1 + cos(π t/T)) at step t of the run's T steps: ends at 0 whatever max_epochs is.
            total = self.trainer.estimated_stepping_batches
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": CosineAnnealingLR(optimizer, T_max=total), "interval": "step"}}
        # Burda et al. (2016): 3^i epochs at lr·10^(−i/7), i = 0..7; LambdaLR steps once per epoch.
        return {"optimizer": optimizer, "lr_scheduler": LambdaLR(optimizer, burda_lr_factor)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._resume_rng_state = checkpoint.get("rng_state")

    def on_train_start(self) -> None:
        # Lightning restores weights, optimizer and loops but not torch's RNG: without it a resumed run
        # would draw other samples than the uninterrupted one.
        state = self._resume_rng_state
        if state is not None:
            torch.set_rng_state(state["cpu"])
            if "cuda" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["cuda"], self.device)
            self._resume_rng_state = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_state"] = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            checkpoint["rng_state"]["cuda"] = torch.cuda.get_rng_state(self.device)
        # Lightning stores the datamodule's hyperparameters but not its class; evaluation needs both.
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is not None:
            checkpoint["datamodule_class"] = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"
