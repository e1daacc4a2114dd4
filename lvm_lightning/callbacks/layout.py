"""What TensorBoard shows of a run: each estimator in a TensorBoard run of its own (so each has its own colour), the CUSTOM SCALARS
charts over them and the gaps, and the HPARAMS entry. docs/tensorboard.md lists every tag."""

import os
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.trainer.states import TrainerFn
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from lvm_lightning.callbacks.amortization_gap import GAP_NAMES, AmortizationGap
from lvm_lightning.objectives import PriorSampling

CATEGORY = "lvm_lightning"
ESTIMATORS = "estimators"  # RUN_FOLDER/estimators/NAME: one TensorBoard run per estimator, and one for the true density
TRUE = "true"  # the data's true log-density, logged as {split}/log_px/true beside the estimators
LOG_PX = "log_px"
# Prior sampling's proposal ignores x: its estimate sits nats below the others, and on their axis it would squash them into one line.
FROM_PRIOR = "log_px_from_prior"
GAP_TITLES = {
    "amortization_gap": "amortization gap ELBO(q*) − ELBO(q_φ)",
    "approximation_gap": "approximation gap log p(x) − ELBO(q*)",
}
# The HPARAMS columns of results: the tightest validation estimate and the two gaps, each read from its scalar as the run logs it.
HEADLINE = ("val/log_px", *(f"gap/{name}" for name in GAP_NAMES))


def estimator_run(log_dir: str, name: str) -> str:
    """The folder of estimator ``name``'s TensorBoard run inside the run folder ``log_dir``."""
    return os.path.join(log_dir, ESTIMATORS, name)


def shared_tag(split: str, quantity: str) -> str:
    """The tag every estimator's run writes ``quantity`` under, for ``split``: estimators/SPLIT/QUANTITY."""
    return f"{ESTIMATORS}/{split}/{quantity}"


def scalar_layout(split: str, tags: set[str], gap_prefixes: list[str]) -> dict[str, dict[str, list[Any]]]:
    """{category: {chart title: [kind, tags]}} for SummaryWriter.add_custom_scalars: the charts of the shared ``tags`` the
    estimator runs wrote for ``split``, and, for each prefix in ``gap_prefixes`` (gap, gap/FAMILY), a margin chart per gap
    (the gap ± one paired standard error). A chart the run cannot fill is left out. TensorBoard matches each tag as a regex from the start."""
    charts: dict[str, list[Any]] = {}
    wanted = {
        LOG_PX: f"log p(x) ({split}), nats per point: each estimator and the true density",
        FROM_PRIOR: f"log p(x) by prior sampling ({split}), nats per point: far below the others, on an axis of its own",
        "ess_fraction": f"ESS / K ({split}): the fraction of useful samples",
    }
    for quantity, title in wanted.items():
        if shared_tag(split, quantity) in tags:
            charts[title] = ["Multiline", [rf"{shared_tag(split, quantity)}$"]]
    for prefix in gap_prefixes:
        family = prefix.split("/", 1)[1] if "/" in prefix else ""
        for name, title in GAP_TITLES.items():
            where = f", q* {family}" if family else ""
            charts[f"{title}{where}, nats per point (± one paired standard error)"] = [
                "Margin",
                [f"{prefix}/{name}", f"{prefix}/{name}/lower", f"{prefix}/{name}/upper"],
            ]
    return {CATEGORY: charts} if charts else {}


def hparams_entry(trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
    """The HPARAMS columns of settings: the training estimator, the model class, the training K, the validation K and estimators,
    the optimizer's settings, the data class and its batch size (those the run has)."""
    estimator, lvm = getattr(pl_module, "estimator", None), getattr(pl_module, "lvm", None)
    entry: dict[str, Any] = {}
    if estimator is not None:
        entry["estimator"] = type(estimator).__name__
        if getattr(estimator, "num_samples", None) is not None:
            entry["K"] = estimator.num_samples
    if lvm is not None:
        entry["model"] = type(lvm).__name__
    settings = pl_module.hparams
    if "eval_num_samples" in settings:
        entry["validation K"] = settings["eval_num_samples"]
    if trainer.optimizers:  # configured by now: the optimizer's class and starting rate, the schedule's class
        entry["optimizer"] = type(trainer.optimizers[0]).__name__
        entry["lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        entry["lr_scheduler"] = type(trainer.lr_scheduler_configs[0].scheduler).__name__ if trainer.lr_scheduler_configs else "none"
    evaluators = getattr(pl_module, "evaluators", None)
    if evaluators:
        entry["validation estimators"] = ", ".join(e.name for e in evaluators)
    data = trainer.datamodule
    if data is not None:
        entry["data"] = type(data).__name__
        if isinstance(getattr(data, "batch_size", None), int):
            entry["batch_size"] = data.batch_size
    entry["max_epochs"] = trainer.max_epochs if trainer.max_epochs is not None else -1
    return entry


class ScalarLayout(pl.Callback):
    """What TensorBoard shows, on rank 0, for each TensorBoard logger (other loggers have no such views: skipped quietly):

    - each estimator's values in a run of its own, RUN_FOLDER/estimators/NAME (and .../true for the true density), under tags
      all of them share (``shared_tag``: estimators/val/log_px, estimators/val/ess_fraction, …), so the Scalars and Time Series
      views overlay the estimators in one chart each, one colour per estimator; prior sampling's log p(x) under
      estimators/val/log_px_from_prior, on an axis of its own;
    - the CUSTOM SCALARS layout (``scalar_layout``), written once, after the first validation (or test, or the end of a run
      without either), with only the charts the run fills;
    - at the start of a fresh fit, the HPARAMS entry (``hparams_entry``) with the headline metrics as its result columns,
      read from the scalars the run logs (no placeholder value: a run without validation shows none), for each logger built
      with ``default_hp_metric=False`` (as lvm-train's are); one left at True keeps Lightning's entry and its hp_metric = −1.

    ``enabled`` false turns all three off.
    """

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._writers: dict[str, SummaryWriter] = {}
        self._tags: set[str] = set()
        self._layout_written = False

    def _loggers(self, trainer: pl.Trainer) -> list[TensorBoardLogger]:
        if not self.enabled or not trainer.is_global_zero:
            return []
        return [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._writers, self._tags, self._layout_written = {}, set(), False

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.ckpt_path is not None:
            return  # a resumed run: its entry is in the run folder already
        metrics = {name: 0.0 for name in HEADLINE}  # only the names count: the values are the scalars the run logs
        for logger in self._loggers(trainer):
            if logger._default_hp_metric:
                continue  # a logger left at default_hp_metric=True writes Lightning's own entry: one entry a run
            writer = logger.experiment._get_file_writer()  # as Lightning's own log_hyperparams writes it
            for summary in hparams(hparams_entry(trainer, pl_module), metrics):
                writer.add_summary(summary)

    def _writer(self, logger: TensorBoardLogger, name: str) -> SummaryWriter:
        folder = estimator_run(logger.log_dir, name)
        if folder not in self._writers:
            # A resumed run hides the points after its checkpoint as its main run does: with the purge step the logger was given
            # (the writer's own attribute is cleared once it has written the purge).
            self._writers[folder] = SummaryWriter(folder, purge_step=logger._kwargs.get("purge_step"))
        return self._writers[folder]

    def _write_estimators(self, trainer: pl.Trainer, pl_module: pl.LightningModule, split: str) -> None:
        """Each ``split``/QUANTITY/NAME the module (or TrueLogDensity) logged, into NAME's run under the shared tag."""
        evaluators = getattr(pl_module, "evaluators", [])
        names = {estimator.name for estimator in evaluators} | {TRUE}
        from_prior = {estimator.name for estimator in evaluators if isinstance(estimator, PriorSampling)}
        for logger in self._loggers(trainer):
            for key, value in trainer.callback_metrics.items():
                head, _, name = key.rpartition("/")
                if name not in names or not head.startswith(f"{split}/"):
                    continue
                quantity = head[len(split) + 1 :]
                if quantity == LOG_PX and name in from_prior:
                    quantity = FROM_PRIOR
                tag = shared_tag(split, quantity)
                self._writer(logger, name).add_scalar(tag, float(value), trainer.global_step)
                self._tags.add(tag)
        for writer in self._writers.values():
            writer.flush()  # TensorBoard shows them as soon as the main run's points

    def _write_layout(self, trainer: pl.Trainer, split: str) -> None:
        if self._layout_written:
            return
        self._layout_written = True
        gap_prefixes = []
        if trainer.state.fn == TrainerFn.FITTING:
            for callback in trainer.callbacks:
                if isinstance(callback, AmortizationGap) and callback.active and callback.every_n_epochs > 0:
                    gap_prefixes += ["gap"] + ([f"gap/{callback.family}"] if callback.family is not None else [])
        layout = scalar_layout(split, self._tags, gap_prefixes)
        for logger in self._loggers(trainer) if layout else []:
            logger.experiment.add_custom_scalars(layout)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._write_estimators(trainer, pl_module, "val")
            self._write_layout(trainer, "val")

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_estimators(trainer, pl_module, "test")
        self._write_layout(trainer, "test")

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._write_layout(trainer, "val")  # a run that never validated: the gaps' charts alone

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers = {}
