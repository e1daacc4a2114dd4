"""The LightningModule: trains θ and φ on one estimator's objective, and reports every estimator side by side."""

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

from lvm_lightning.callbacks.batch_hooks import skip_unused_batch_hooks
from lvm_lightning.callbacks.nonfinite import NonFiniteStop
from lvm_lightning.callbacks.random_state import RandomState
from lvm_lightning.checkpoints import check_training_state, load_module, read_file
from lvm_lightning.data.protocol import SplitData
from lvm_lightning.data_checks import check_data
from lvm_lightning.dealing import dealt_index
from lvm_lightning.distributed import destroy_process_group_at_exit
from lvm_lightning.errors import UsageError
from lvm_lightning.estimates import Evaluators, SplitMeans, estimate_batch
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import Estimator
from lvm_lightning.precision import BF16Choice, resolve_bf16
from lvm_lightning.rng import seeded_fork
from lvm_lightning.schedules import Adam, lightning_config


class LVMModule(pl.LightningModule):
    """Maximizes Σ_i of ``estimator``'s training objective for the model ``lvm`` (θ and φ, by ``optimizer`` and ``lr_scheduler``).

    Both are objects: in YAML a ``class_path`` with ``init_args`` (LightningCLI), in Python instances.
    Validation and test log every estimate of log p(x) that applies, at K = ``eval_num_samples``, and those of
    ``validation_estimators`` (e.g. AIS: costly, so pair it with few validation batches), each the mean over the whole split (under DDP the
    ranks' sums and counts, reduced once an epoch); validation the tightest as val/log_px. Before the first step of a fresh fit the model
    takes its data-dependent start, if it has one (``lvm.initialize``).
    ``networks_bf16`` (true, false or "auto": true where every device multiplies bf16 natively) runs the networks' matrix
    products of training steps in bfloat16, every density, log-weight and parameter in float32; everything else, validation,
    test and ``losses`` called directly, runs float32 (the module resets the networks' precision at setup).
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
        optimizer: OptimizerCallable = Adam,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        compile: bool = False,
        validation_estimators: Sequence[Estimator] = (),
        networks_bf16: BF16Choice = False,
    ) -> None:
        super().__init__()
        if eval_num_samples < 1:
            raise UsageError(f"eval_num_samples must be >= 1, got {eval_num_samples}: pass e.g. --model.eval_num_samples 10")
        # LightningCLI hands save_hyperparameters each object's class_path and init_args; built in Python they are objects, kept out.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Attribute '\w+' is an instance of `nn.Module`")
            self.save_hyperparameters()
        objects = [name for name, value in self.hparams.items() if not is_config(value)]
        if objects:
            self.save_hyperparameters(ignore=objects)
        # Tried once on a stand-in parameter: a bad setting (a negative lr) stops the run here, before any run folder.
        stand_in = optimizer([torch.nn.Parameter(torch.zeros(1))])
        if lr_scheduler is not None:
            lr_scheduler(stand_in)
        estimator.check(lvm)
        estimator.check_training(lvm)
        if not estimator.trains:
            raise UsageError(
                f"{type(estimator).__name__} evaluates but does not train: train with e.g. ImportanceSampling and add it to --model.validation_estimators"
            )
        self.lvm = lvm
        self.estimator = estimator
        # Exactly these three: 1 or a numpy bool would pass an equality test, then be refused (or dropped) by the checkpoint's checks.
        if not (type(networks_bf16) is bool or (type(networks_bf16) is str and networks_bf16 == "auto")):
            raise UsageError(f"networks_bf16 must be true, false or auto, got {networks_bf16!r}")
        # Training steps only: the networks' products in bfloat16, every density and log-weight in float32; validation and
        # test stay float32, whose per-point estimates bf16 would move by more than the tolerance (docs/results.md: bf16).
        # Decided at the start of a fit, where the device is known ("auto").
        self._networks_bf16 = networks_bf16
        self._train_bf16 = False
        self.make_optimizer, self.make_scheduler = optimizer, lr_scheduler
        self.evaluation = Evaluators(eval_num_samples, chunk_size, tuple(validation_estimators))
        self.evaluators = self.evaluation.for_model(lvm)
        # torch.compile fuses a step's log-density work for a one-off compilation at the first step: for long runs at large K.
        self._losses = torch.compile(self.losses) if compile else self.losses
        self._split = SplitMeans()  # this evaluation epoch's sums over points so far
        self._checked_data: Optional[SplitData] = None
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

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets this plain string around every hook it calls, dozens of times a step; nn.Module's __setattr__ would
        # check it against the parameters, buffers and submodules each time.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def losses(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The training loss −mean_x surrogate(x), and mean_x log p̂(x), of the estimator's objective on the batch ``x``."""
        objective = self.estimator.objective(self.lvm, x)
        return -objective.surrogate.mean(), objective.log_px.mean()

    def training_step(self, x: Tensor, batch_idx: int) -> Tensor:
        with self.lvm.bf16_networks(self._train_bf16):
            loss, log_px = self._losses(x)
        # Only on the steps Lightning writes (every log_every_n_steps, and the last before a stop): values logged otherwise are dropped.
        every = self.trainer.log_every_n_steps
        if every and ((self.global_step + 1) % every == 0 or self.trainer.should_stop):
            self.log("train/loss", loss, prog_bar=True, batch_size=len(x))
            self.log(f"train/log_px/{self.estimator.name}", log_px, batch_size=len(x))
        return loss

    @torch.no_grad()
    def _evaluate(self, x: Tensor, batch_idx: int) -> None:
        """Adds the batch's sums over points of every estimate and diagnostic, and its number of points, to the epoch's totals."""
        # Own seeded stream: the training stream is the same whether or how often we validate, and every epoch's estimates
        # use the same random numbers, so their curves show the model's change, not noise. Seeded by the batch's index in
        # the one-process sequence of batches, so that under DDP each batch draws what it draws on one device.
        per_point = estimate_batch(self.lvm, x, self.evaluators, dealt_index(batch_idx, self.global_rank, self.trainer.world_size))
        values = {f"log_px/{name}": result.log_px for name, result in per_point.items()}
        values.update({f"{quantity}/{name}": value for name, result in per_point.items() for quantity, value in result.diagnostics.items()})
        self._split.add(values)

    def _log_evaluation(self, stage: str) -> None:
        """Logs each estimate and diagnostic as its mean over the whole split: the ranks' sums and counts reduced in one collective."""
        means = self._split.means(lambda sums: self.trainer.strategy.reduce(sums, reduce_op="sum"))
        log = {f"{stage}/{key}": value for key, value in means.items()}
        if stage == "val":
            # The tightest estimate of log p(x) (each is a lower bound, or exact): what early stopping, the plateau schedule and
            # the convergence callback monitor (all read it after this hook: at on_validation_end, on_train_epoch_end or the
            # epoch's scheduler step), and a result column of TensorBoard's HPARAMS (callbacks.ScalarLayout).
            log["val/log_px"] = torch.stack([means[f"log_px/{estimator.name}"] for estimator in self.evaluators]).max()
        self.log_dict(log, sync_dist=True)  # the same on every rank already: the reduction keeps them

    def on_validation_epoch_start(self) -> None:
        self._split = SplitMeans()

    def on_test_epoch_start(self) -> None:
        self._split = SplitMeans()

    def validation_step(self, x: Tensor, batch_idx: int) -> None:
        self._evaluate(x, batch_idx)

    def test_step(self, x: Tensor, batch_idx: int) -> None:
        self._evaluate(x, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._log_evaluation("val")

    def on_test_epoch_end(self) -> None:
        self._log_evaluation("test")

    def check_data(self, data: SplitData) -> None:
        """The data's splits checked against the model (``data_checks.check_data``), once for each data module."""
        if data is not self._checked_data:
            check_data(self.lvm, data)
            self._checked_data = data

    def setup(self, stage: str) -> None:
        destroy_process_group_at_exit()  # under DDP on gloo; a no-op otherwise
        # The module owns its networks' precision: float32 outside its training steps, whatever was set on the model before.
        self.lvm.networks_in_bf16(False)
        # Importance weights far below the largest, exp(log w_k − max), and the gradients they carry become denormal floats
        # within a hundred IWAE steps, on which CPU arithmetic takes a slow path; flushed to 0 they change nothing visible.
        torch.set_flush_denormal(True)
        skip_unused_batch_hooks(self.trainer)
        # Checked where model and data meet (distributions do not check their arguments), unless the CLI checked them already.
        if isinstance(self.trainer.datamodule, SplitData):
            self.check_data(self.trainer.datamodule)

    def teardown(self, stage: str) -> None:
        torch.set_flush_denormal(False)  # torch's default, for whatever the process runs next

    def configure_callbacks(self) -> list[pl.Callback]:
        # Part of every fit, however the Trainer was built: resumed runs draw what uninterrupted ones do; NaN stops with advice.
        return [RandomState(), NonFiniteStop()]

    def configure_optimizers(self) -> Union[torch.optim.Optimizer, dict[str, Any]]:
        optimizer = self.make_optimizer(self.parameters())
        if self.make_scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": lightning_config(self.make_scheduler(optimizer), self._trainer)}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None:  # a resumed run: what Lightning restores next must fit this module
            check_training_state(checkpoint, self, str(self._trainer.ckpt_path))
        self._initialize_from_data = False

    def on_fit_start(self) -> None:
        # After Lightning has restored a resumed run's checkpoint (on_load_checkpoint), before the first step and the sanity check.
        # Every rank the same precision (all must have the hardware), and said once, since "auto" alone does not tell.
        self._train_bf16 = self.trainer.strategy.reduce_boolean_decision(resolve_bf16(self._networks_bf16, self.device), all=True)
        if self._networks_bf16 == "auto":
            rank_zero_info(f"networks_bf16: auto: the training steps' matrix products in {'bfloat16' if self._train_bf16 else 'float32'} on {self.device.type}")
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


def is_config(value: Any) -> bool:
    """Whether ``value`` is plain configuration (numbers, strings, lists and mappings of them), not an object built in Python."""
    if isinstance(value, Mapping):
        return all(is_config(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(is_config(item) for item in value)
    return value is None or isinstance(value, (bool, int, float, str))
