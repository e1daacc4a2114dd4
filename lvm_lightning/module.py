"""The LightningModule: trains θ and φ on one estimator's objective, and reports every estimator side by side."""

import re
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence, Union, get_args

import pytorch_lightning as pl
import torch
from pytorch_lightning.core.mixins.hparams_mixin import _given_hyperparameters
from torch import Tensor
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, ReduceLROnPlateau

from lvm_lightning.checkpoints import check_training_state, load_module, read_file
from lvm_lightning.data.protocol import SplitData
from lvm_lightning.dealing import dealt_index
from lvm_lightning.distributed import destroy_process_group_at_exit
from lvm_lightning.errors import UsageError
from lvm_lightning.evaluation import Evaluators, estimate_batch
from lvm_lightning.models.families import check_support
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import Estimator
from lvm_lightning.rng import seeded_fork
from lvm_lightning.schedules import PLATEAU, PLATEAU_MONITOR, LRSchedule, burda_lr_factor

PARTS = ("lvm", "estimator")
POINTS = "points"  # the key of an evaluation epoch's number of points, beside its sums
TRAINING_HINT = (
    "choose a likelihood that holds the data (gaussian: any real values; continuous_bernoulli: [0, 1]), or binarize them (images: --data.binarization dynamic)"
)


class LVMModule(pl.LightningModule):
    """Maximizes Σ_i of ``estimator``'s training objective for the model ``lvm`` (θ and φ, by Adam).

    Both are objects: in YAML a ``class_path`` with ``init_args`` (LightningCLI), in Python instances.
    Validation and test log every estimate of log p(x) that applies, at K = ``eval_num_samples``, and those of
    ``validation_estimators`` (e.g. AIS: costly, so pair it with few validation batches), each the mean over the whole split (under DDP the
    ranks' sums and counts, reduced once an epoch); validation the tightest as val/log_px. Before the first step of a fresh fit the model takes its data-dependent start, if it has one (``lvm.initialize``).
    A run started by LightningCLI stores each part's class path and arguments in its checkpoint, so
    ``load_from_checkpoint(path)`` rebuilds it; a module built in Python keeps its parts out of the
    checkpoint (they are objects): pass them again, ``load_from_checkpoint(path, lvm=…, estimator=…)``.
    """

    def __init__(
        self,
        lvm: LatentVariableModel,
        estimator: Estimator,
        eval_num_samples: int = 10,
        chunk_size: Optional[int] = None,
        lr: float = 1e-2,
        lr_schedule: LRSchedule = "constant",
        adam_eps: float = 1e-8,
        compile: bool = False,
        validation_estimators: Sequence[Estimator] = (),
    ) -> None:
        super().__init__()
        if not lr >= 0:
            raise UsageError(f"lr must be >= 0, got {lr}: pass e.g. --model.lr 0.001")
        if lr_schedule not in get_args(LRSchedule):
            raise UsageError(f"unknown lr_schedule {lr_schedule!r}: choose one of {', '.join(get_args(LRSchedule))}")
        if not adam_eps > 0:
            raise UsageError(f"adam_eps must be positive, got {adam_eps}")
        if eval_num_samples < 1:
            raise UsageError(f"eval_num_samples must be >= 1, got {eval_num_samples}: pass e.g. --model.eval_num_samples 10")
        # LightningCLI hands save_hyperparameters each part's class_path and init_args; built in Python they are objects.
        self.save_hyperparameters(ignore=[] if _given_hyperparameters.get() is not None else [*PARTS, "validation_estimators"])
        estimator.check(lvm)
        estimator.check_training(lvm)
        if not estimator.trains:
            raise UsageError(
                f"{type(estimator).__name__} evaluates but does not train: train with e.g. ImportanceSampling and add it to --model.validation_estimators"
            )
        self.lvm = lvm
        self.estimator = estimator
        self.evaluation = Evaluators(eval_num_samples, chunk_size, tuple(validation_estimators))
        self.evaluators = self.evaluation.for_model(lvm)
        # torch.compile fuses the log-density work of a step (12–16 % faster on the CPU) for a one-off compilation
        # of 7–20 s at the first step: worth it for long runs at large K, not for a few epochs at K = 1 (README).
        self._losses = torch.compile(self.losses) if compile else self.losses
        self._resume_rng_state: Optional[dict[str, Any]] = None
        self._eval_sums: dict[str, Tensor] = {}  # this evaluation epoch's sums over points so far, by metric (and POINTS)
        # Cleared once the model has started from the data, or has weights from a checkpoint (a resumed run's must win).
        self._initialize_from_data = True

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: Union[str, Path], map_location: Any = None, strict: bool = True, trusted: Sequence[str] = (), **kwargs: Any
    ) -> "LVMModule":
        """The module a checkpoint holds, rebuilt safely (``checkpoints.load_module``): nothing but tensors and plain values is
        unpickled, and each part is built from its stored class path only if that class is lvm_lightning's, torch.nn's or under a
        module in ``trusted``, and of the kind its slot expects; else UsageError. ``kwargs`` replace stored arguments (parts included, as objects)."""
        return load_module(cls, read_file(checkpoint_path), str(checkpoint_path), map_location, strict, trusted, **kwargs)

    def losses(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The training loss −mean_x surrogate(x), and mean_x log p̂(x), of the estimator's objective on the batch ``x``."""
        objective = self.estimator.objective(self.lvm, x)
        return -objective.surrogate.mean(), objective.log_px.mean()

    def training_step(self, x: Tensor, batch_idx: int) -> Tensor:
        loss, log_px = self._losses(x)
        # Only on the steps Lightning writes (its rule: every log_every_n_steps, and the last before a stop):
        # each self.log call costs ~0.3 ms, 6% of a K = 1 MNIST step on the CPU, for values dropped otherwise.
        every = self.trainer.log_every_n_steps
        logs = every and ((self.global_step + 1) % every == 0 or self.trainer.should_stop)
        # The check reads the loss back to the host: free on the CPU, a stall of the queue on a GPU, where it
        # waits for the steps that log (a NaN in between reaches the weights; on_train_epoch_end stops it there).
        if (logs or self.device.type == "cpu") and not bool(torch.isfinite(loss)):
            terms = self.lvm.nonfinite_terms(x)
            if self.global_step == 0:  # no update has happened: the model, not the step size, gives it
                raise UsageError(first_step_fault(terms, type(self.lvm).__name__, type(self.estimator).__name__))
            which = f"{' and '.join(terms)} non-finite" if terms else "each term finite at a fresh draw, the estimate's reduction not"
            raise self._nonfinite_stop(f"the training loss became NaN or infinite ({which})")
        if logs:
            self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
            self.log(f"train/log_px/{self.estimator.name}", log_px, batch_size=len(x))
        return loss

    def _nonfinite_stop(self, what: str) -> UsageError:
        """The one-line stop for ``what`` went NaN or infinite: where, the data's scale, the last good checkpoint and what to do."""
        callback = self.trainer.checkpoint_callback
        last = getattr(callback, "last_model_path", "") or getattr(callback, "best_model_path", "")
        data = self.trainer.datamodule
        largest = float(data.splits["train"].abs().max()) if isinstance(data, SplitData) else None
        scale = f"; largest |x| in the training split {largest:.3g}" if largest is not None else ""
        # Data of moderate scale (or in standard units) point at the step size; large or unknown scale at the data first.
        scaled = largest is not None and (largest < 1e3 or self.lvm.units.active)
        advice = "Lower --model.lr" if scaled else "Standardize the data (--data.standardize true), or lower --model.lr"
        return UsageError(f"{what} at step {self.global_step} (epoch {self.current_epoch}){scale}; last good checkpoint: {last or 'none yet'}. {advice}")

    @torch.no_grad()
    def _evaluate(self, x: Tensor, batch_idx: int) -> None:
        """Adds the batch's sums over points of every estimate and diagnostic, and its number of points, to the epoch's totals."""
        # Own seeded stream: the training stream is the same whether or how often we validate, and every epoch's estimates
        # use the same random numbers, so their curves show the model's change, not noise. Seeded by the batch's index in
        # the one-process sequence of batches, so that under DDP each batch draws what it draws on one device.
        per_point = estimate_batch(self.lvm, x, self.evaluators, dealt_index(batch_idx, self.global_rank, self.trainer.world_size))
        values = {f"log_px/{name}": result.log_px for name, result in per_point.items()}
        values.update({f"{quantity}/{name}": value for name, result in per_point.items() for quantity, value in result.diagnostics.items()})
        values[POINTS] = torch.ones(len(x), device=self.device)
        dtype = self._sum_dtype()
        for key, value in values.items():
            total = value.sum(dtype=dtype)
            self._eval_sums[key] = self._eval_sums[key] + total if key in self._eval_sums else total

    def _sum_dtype(self) -> torch.dtype:
        # float64 (MPS has none): a split's sum of log p̂(x) reaches 1e6 and more, where float32 resolves only 0.1 nats.
        return torch.float32 if self.device.type == "mps" else torch.float64

    def _log_evaluation(self, stage: str) -> None:
        """Logs each estimate and diagnostic as its mean over the whole split: the ranks' sums and counts reduced in one collective."""
        sums, self._eval_sums = self._eval_sums, {}
        keys = sorted(key for key in sums if key != POINTS)
        totals = self.trainer.strategy.reduce(torch.stack([*(sums[key] for key in keys), sums[POINTS]]), reduce_op="sum")
        means = dict(zip(keys, (totals[:-1] / totals[-1]).float()))
        log = {f"{stage}/{key}": value for key, value in means.items()}
        if stage == "val":
            # The tightest estimate of log p(x) (each is a lower bound, or exact): what early stopping, the plateau schedule and
            # the convergence callback monitor (all read it after this hook: at on_validation_end, on_train_epoch_end or the
            # epoch's scheduler step), and TensorBoard's HPARAMS metric.
            log["val/log_px"] = log["hp_metric"] = torch.stack([means[f"log_px/{estimator.name}"] for estimator in self.evaluators]).max()
        # The same on every rank already: Lightning's sync_dist would add a collective per key, and its advice to sync is moot.
        warnings.filterwarnings("ignore", message=rf"It is recommended to use `self.log\('({'|'.join(map(re.escape, log))})'")
        self.log_dict(log, sync_dist=False)

    def on_validation_epoch_start(self) -> None:
        self._eval_sums = {}

    def on_test_epoch_start(self) -> None:
        self._eval_sums = {}

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        self._evaluate(x, batch_idx)

    def test_step(self, x: Tensor, batch_idx: int) -> None:
        self._evaluate(x, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def check_values(self, x: Tensor, where: str, hint: str = TRAINING_HINT, standardized: bool = False) -> None:
        """Raises UsageError, ending with ``hint``, unless the rows of ``x`` have the decoder's event shape and lie in the support its
        likelihood declares; their magnitude matters only where the model sees them as they are (not ``standardized``, units off)."""
        with torch.no_grad():
            likelihood = self.lvm.likelihood(self.lvm.prior().sample((1,)).to(self.device))
        if tuple(x.shape[1:]) != tuple(likelihood.event_shape):
            raise UsageError(f"{where} has rows of shape {tuple(x.shape[1:])} but the model's decoder gives {tuple(likelihood.event_shape)}: {hint}")
        scaled = standardized or self.lvm.units.active
        check_support(likelihood, x, where, hint, scaled)  # the support's check reads x alone: no copy to the model's device

    def check_data(self, data: SplitData) -> None:
        """``check_values`` on every stored split; one with a per-batch transform (dynamic binarization) is skipped: its batches, not its stored values, meet the model."""
        for name, split in data.splits.items():
            if data.transform(name) is None:
                self.check_values(split, f"the {name} split", standardized=getattr(data, "standardize", False))

    def setup(self, stage: str) -> None:
        destroy_process_group_at_exit()  # under DDP on gloo; a no-op otherwise
        # Importance weights far below the largest, exp(log w_k − max), and the gradients they carry become
        # denormal floats (< 1.2e-38) within a hundred IWAE steps, and CPU arithmetic on those takes a slow
        # path: a K = 50 Fashion-MNIST step slows from 47 to 187 ms. Flushed to 0 they change nothing visible.
        torch.set_flush_denormal(True)
        # Checked where model and data meet: distributions do not check their arguments (models/families.py).
        if isinstance(self.trainer.datamodule, SplitData):
            self.check_data(self.trainer.datamodule)

    def teardown(self, stage: str) -> None:
        torch.set_flush_denormal(False)  # torch's default, for whatever the process runs next

    def configure_optimizers(self) -> Union[torch.optim.Optimizer, dict[str, Any]]:
        # Adam's fused kernel (CPU and CUDA): the same update in one pass over all parameters; on the CPU torch's default
        # is a Python loop over them, 1.1 ms against 0.4 ms a step for the image configs' MLP, 15 % of a K = 1 step.
        fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in self.parameters())
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, eps=self.hparams.adam_eps, fused=fused)
        if self.hparams.lr_schedule == "constant":
            return optimizer
        if self.hparams.lr_schedule == "cosine":
            # lr·½(1 + cos(π t/T)) at step t of the run's T steps: ends at 0 whatever max_epochs is.
            total = self.trainer.estimated_stepping_batches
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": CosineAnnealingLR(optimizer, T_max=total), "interval": "step"}}
        if self.hparams.lr_schedule == "plateau":
            # Stepped after each validation with its value of the monitored estimate (Lightning reads it from the logged metrics);
            # with validation off (limit_val_batches 0) Lightning warns and the lr stays, rather than stopping the run.
            scheduler = ReduceLROnPlateau(optimizer, **PLATEAU)
            # Stepped at each validation: every check_val_every_n_epoch epochs, or every val_check_interval steps where validation
            # runs by steps across epochs (check_val_every_n_epoch null: the same cadence whatever the data's size).
            every_epochs = self.trainer.check_val_every_n_epoch
            interval, every = ("epoch", every_epochs) if every_epochs is not None else ("step", int(self.trainer.val_check_interval))
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": PLATEAU_MONITOR, "interval": interval, "frequency": every, "strict": False},
            }
        # Burda et al. (2016): 3^i epochs at lr·10^(−i/7), i = 0..7; LambdaLR steps once per epoch.
        return {"optimizer": optimizer, "lr_scheduler": LambdaLR(optimizer, burda_lr_factor)}

    def on_train_epoch_end(self) -> None:
        # One host sync an epoch: weights gone NaN or infinite stop the run with what to do, not with epochs of NaN curves.
        if not bool(torch.stack([torch.isfinite(p).all() for p in self.parameters()]).all()):
            raise self._nonfinite_stop("the weights became NaN or infinite")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None:  # a resumed run: what Lightning restores next must fit this module
            check_training_state(checkpoint, self, str(self._trainer.ckpt_path))
        self._resume_rng_state = checkpoint.get("rng_state")
        self._initialize_from_data = False

    def on_fit_start(self) -> None:
        # After Lightning has restored a resumed run's checkpoint (on_load_checkpoint), before the first step and the sanity check.
        data = self.trainer.datamodule
        if not self._initialize_from_data or not isinstance(data, SplitData):
            return
        self._initialize_from_data = False
        # Seeded by the run's seed, in a fork: the same start every time (and on every DDP rank, from the same rows), and the
        # training stream as without it.
        with seeded_fork(self.device, torch.initial_seed()):
            x, transform = data.splits["train"].to(self.device), data.transform("train")
            x = transform(x) if transform is not None else x
            if getattr(data, "standardize", False):
                self.lvm.standardize(x)
            self.lvm.initialize(x)

    def on_train_start(self) -> None:
        # Lightning restores weights, optimizer and loops but not torch's RNG: without it a resumed run would draw other
        # samples than the uninterrupted one. Each DDP rank takes back its own stream (on_save_checkpoint keeps one per rank).
        state, self._resume_rng_state = self._resume_rng_state, None
        rank = self.global_rank
        if state is not None and (state["cpu"].dim() == 1 or rank < len(state["cpu"])):
            torch.set_rng_state(own_state(state["cpu"], rank))
            if "cuda" in state and self.device.type == "cuda":
                torch.cuda.set_rng_state(own_state(state["cuda"], rank), self.device)
        elif rank > 0:
            # A fresh start (or a rank a resumed run has more of than the checkpoint): the run's seed made every rank's stream
            # the same, so each rank would draw the same samples and binarization noise as rank 0 on its other points.
            torch.manual_seed((torch.initial_seed() + rank) % 2**64)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Every rank's streams, one row per rank: the hook runs on every rank (the file is rank 0's), and the gather is
        # on the device because NCCL gathers nothing else.
        states = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            states["cuda"] = torch.cuda.get_rng_state(self.device)
        # [W, n] under DDP; [1, n] in one process, or where no process group is up (a ddp_spawn trainer's main process).
        gather = self.trainer.strategy.all_gather
        checkpoint["rng_state"] = {name: gather(state.to(self.device)).reshape(-1, state.numel()).cpu() for name, state in states.items()}


PARTS_OF_TERMS = {
    "log q(z|x)": "the encoder q_φ(z|x)",
    "log p(z)": "the prior p(z)",
    "log p(x|z)": "the decoder p_θ(x|z)",
    "the weights": "the initial weights",
}


def first_step_fault(terms: list[str], model: str, estimator: str) -> str:
    """What to blame when the loss is NaN or infinite before the first update: the parts whose terms are not finite (``nonfinite_terms``)."""
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


def own_state(states: Tensor, rank: int) -> Tensor:
    """Rank ``rank``'s row of a checkpoint's per-rank RNG states [W, n]; a single state [n] (older checkpoints) is every rank's."""
    # A copy: torch.set_rng_state reads a row that is a view at an offset into the [W, n] tensor wrongly (a crash, torch 2.14).
    return states if states.dim() == 1 else states[rank].clone()
