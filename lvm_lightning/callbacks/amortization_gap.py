"""Tracks the amortization and approximation gaps during training, in TensorBoard under ``gap/``."""

import sys
from contextlib import contextmanager
from typing import Any, Iterator, Literal, Optional, Sequence

import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from pytorch_lightning.loggers import TensorBoardLogger
from torch import Tensor, nn

from lvm_lightning.callbacks.convergence import convergence_of
from lvm_lightning.callbacks.data_callback import DataCallback, epoch_due
from lvm_lightning.data.protocol import SplitData
from lvm_lightning.dealing import deal
from lvm_lightning.errors import UsageError
from lvm_lightning.inference import AIS, REFINE_STEPS, GapReport, LocalOptimizer, family_name, gap_decomposition, in_family, summarize_sums, unconverged_warning
from lvm_lightning.models.families import PosteriorChoice
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import Estimator
from lvm_lightning.rng import seeded_fork


@contextmanager
def _evaluation_mode(module: nn.Module) -> Iterator[None]:
    """Every submodule in eval mode (no dropout, no batch-norm statistics updates), each restored to its own mode after."""
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training


GAP_NAMES = ("amortization_gap", "approximation_gap")
Q_STAR = {"steps": "q_star/mean_steps", "converged": "q_star/converged_fraction"}  # q*'s fit, under names that say whose


def paired_sums(report: GapReport) -> dict[str, Tensor]:
    """Σ and Σ² over points of each gain over ELBO(q_φ), point by point: ELBO after k refinement steps (``gain/k=K``) and, where
    the estimator refines q_φ, ELBO of its refined q (``gain/semi_amortized``); the points' own spread cancels in these differences."""
    gains = {f"gain/k={k}": elbo - report.elbo_amortized for k, elbo in report.refined.items()}
    if report.elbo_semi_amortized is not None:
        gains["gain/semi_amortized"] = report.elbo_semi_amortized - report.elbo_amortized
    sums = {}
    for name, value in gains.items():
        sums[name] = value.double().sum()
        sums[f"{name}/sq"] = value.double().square().sum()
    return sums


def tensorboard_metrics(summary: dict[str, Any], prefix: str) -> dict[str, float]:
    """The scalars of one decomposition under ``prefix``: the three bounds, each gap with its paired standard error and the band
    gap ± one standard error (``lower``, ``upper``, CUSTOM SCALARS' margin chart), the semi-amortized ELBO, seconds per point and q*'s fit."""
    names = ["elbo_amortized", "elbo_optimized", "log_px", *GAP_NAMES, "elbo_semi_amortized", "seconds_per_point_amortized", "seconds_per_point_optimized"]
    metrics = {f"{prefix}/{name}": summary[name] for name in names if name in summary}
    metrics.update({f"{prefix}/{tag}": summary[name] for name, tag in Q_STAR.items()})
    for name in GAP_NAMES:
        stderr = summary[f"{name}_stderr"]
        if stderr is not None:  # None for one point
            value = summary[name]
            metrics.update({f"{prefix}/{name}/stderr": stderr, f"{prefix}/{name}/lower": value - stderr, f"{prefix}/{name}/upper": value + stderr})
    return metrics


def refinement_figure(summary: dict[str, Any], ks: Sequence[int], epoch: int) -> Figure:
    """ELBO after k Adam steps from q_φ, less ELBO(q_φ), against k ≥ 1 on a log axis (± one paired standard error), with the
    amortization gap ELBO(q*) − ELBO(q_φ) it closes (a band of ± one paired standard error) and the semi-amortized gain as lines."""
    shown = [k for k in ks if k >= 1]  # k = 0 is q_φ itself: gain 0 by definition, and no place on a log axis
    gain = [summary[f"gain/k={k}"] for k in shown]
    err = [summary[f"gain/k={k}_stderr"] or 0.0 for k in shown]
    gap, gap_err = summary["amortization_gap"], summary["amortization_gap_stderr"] or 0.0
    # A bare Figure, not pyplot: importing the callback leaves matplotlib's backend alone.
    fig = Figure(figsize=(7.5, 4))
    ax = fig.add_subplot()
    ax.errorbar(shown, gain, yerr=err, marker="o", capsize=3, label="ELBO after k steps from q_φ")
    ax.axhline(gap, color="tab:green", linestyle="--", label="ELBO(q*): the amortization gap")
    ax.axhspan(gap - gap_err, gap + gap_err, color="tab:green", alpha=0.15)
    if "gain/semi_amortized" in summary:
        ax.axhline(summary["gain/semi_amortized"], color="tab:orange", linestyle="-.", label="the training refinement (semi-amortized)")
    ax.axhline(0.0, color="black", linewidth=0.8, label="ELBO(q_φ), amortized (k = 0)")
    if shown:
        ax.set_xscale("log")
    ax.set_xlabel("k, Adam steps of per-point refinement")
    ax.set_ylabel("ELBO − ELBO(q_φ), nats per point")
    ax.set_title(f"refinement of q_φ toward q*, epoch {epoch} (± one paired standard error)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)  # beside the axes, never over the curve
    fig.tight_layout()
    return fig


class AmortizationGap(DataCallback):
    """After every ``every_n_epochs`` training epochs, and once more after the last unless it fell on the period, logs on the
    first ``num_points`` points of ``split`` (nats per point; docs/tensorboard.md lists the tags):

    gap/elbo_amortized = ELBO(q_φ), gap/elbo_optimized = ELBO(q*), gap/log_px, gap/amortization_gap = ELBO(q*) − ELBO(q_φ)
    and gap/approximation_gap = log p(x) − ELBO(q*), each gap with its paired standard error (…/stderr, over the points'
    differences) and the band gap ± stderr (…/lower, …/upper); seconds per point of each inference, and q*'s fit (fit by
    ``optimizer``): gap/q_star/mean_steps and gap/q_star/converged_fraction. The figure gap/refinement draws the ELBO after k
    Adam steps from q_φ against k (``refine_steps``; empty: no figure; 0 turns it all off); where the training estimator refines
    q_φ (SemiAmortized), gap/elbo_semi_amortized, the ELBO of its refined q, between ELBO(q_φ) and ELBO(q*). Under DDP each
    rank takes every world_size-th point and sums are all-reduced. The model's weights and modes, its optimizer and the
    training RNG stream are left as they were: the RNG is forked and seeded with ``seed``, so every evaluation sees the same
    draws. With a ``Convergence`` callback in the run, gap/model_converged (1 or 0) says whether validation log p(x) had
    stopped improving, and the first measurement of a model that had not converged says so on stderr. log p(x) is
    importance-sampled from q* with ``log_px_samples``, or annealed from q* by ``ais`` where given (exact where the model has
    an exact form). ``family`` ('full', 'local_flow', 'diagonal', or a family class) repeats it with q* in that family on the same decoder, under gap/FAMILY/….
    """

    def __init__(
        self,
        every_n_epochs: int = 10,
        num_points: int = 256,
        split: Literal["val", "test"] = "val",
        optimizer: LocalOptimizer = LocalOptimizer(),
        elbo_samples: int = 100,
        log_px_samples: int = 500,
        refine_steps: Sequence[int] = REFINE_STEPS,
        chunk_size: Optional[int] = None,
        seed: int = 0,
        ais: Optional[AIS] = None,
        family: Optional[PosteriorChoice] = None,
    ) -> None:
        if num_points < 1 or elbo_samples < 1 or log_px_samples < 1:
            raise UsageError("num_points, elbo_samples and log_px_samples must be >= 1")
        if split not in ("val", "test"):
            raise UsageError(f"amortization_gap.split must be 'val' or 'test', got {split!r}")
        self.every_n_epochs, self.num_points, self.split, self.seed = every_n_epochs, num_points, split, seed
        self.elbo_samples, self.log_px_samples, self.chunk_size = elbo_samples, log_px_samples, chunk_size
        self.refine_steps = [k for k in refine_steps if k <= optimizer.max_steps]
        self.optimizer, self.ais, self.family = optimizer, ais, family
        self._said_unconverged = self._said_q_star = False  # once a run
        self._measured_at: Optional[int] = None  # the global step of the last measurement

    def unavailable(self, data: SplitData, model: LatentVariableModel) -> Optional[str]:
        if self.every_n_epochs <= 0:
            return None
        if self.split not in data.splits:
            return f"the data module has no {self.split!r} split"
        return self.optimizer.unsupported(model)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.every_n_epochs > 0 and self.num_points < trainer.world_size:
            raise UsageError(f"amortization_gap.num_points={self.num_points} leaves a rank without points: use at least {trainer.world_size}")
        if self.every_n_epochs > 0 and self.family is not None:
            in_family(pl_module.lvm, self.family)  # raises here, before training, where the family does not apply

    def _measure(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        model: LatentVariableModel,
        x: torch.Tensor,
        prefix: str,
        estimator: Optional[Estimator] = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The decomposition of ``model`` on this rank's points ``x`` (with ``estimator``'s refined q, if any), summed over ranks: (summary, metrics named PREFIX/NAME)."""
        with seeded_fork(pl_module.device, self.seed), _evaluation_mode(pl_module), torch.enable_grad():
            report = gap_decomposition(
                model, x, self.optimizer, self.elbo_samples, self.log_px_samples, self.refine_steps, self.chunk_size, self.ais, estimator
            )
        sums = {**report.sums(), **paired_sums(report)}
        totals = trainer.strategy.reduce(torch.stack(list(sums.values())), reduce_op="sum")
        summary = summarize_sums(dict(zip(sums, totals)))
        return summary, tensorboard_metrics(summary, prefix)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.active and epoch_due(trainer, self.every_n_epochs):
            self._measure_all(trainer, pl_module, trainer.current_epoch + 1)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The final model, unless the last epoch measured it: every rank takes part (the sums are reduced).
        if self.active and self.every_n_epochs > 0 and self._measured_at != trainer.global_step:
            self._measure_all(trainer, pl_module, trainer.current_epoch)  # Lightning counts the completed epochs here

    def _measure_all(self, trainer: pl.Trainer, pl_module: pl.LightningModule, epoch: int) -> None:
        """Measures and logs the decomposition (and the family's) of the model after ``epoch`` epochs, with the refinement figure."""
        self._measured_at = trainer.global_step
        device = pl_module.device
        x = deal(trainer.datamodule.splits[self.split][: self.num_points], trainer.global_rank, trainer.world_size).to(device)
        summary, metrics = self._measure(trainer, pl_module, pl_module.lvm, x, "gap", pl_module.estimator)
        if self.family is not None:  # the same decoder with q* in another family, beside the encoder's (gap/FAMILY/…)
            view = in_family(pl_module.lvm, self.family)
            metrics.update(self._measure(trainer, pl_module, view, x, f"gap/{family_name(view, self.family)}")[1])
        warning = unconverged_warning(float(summary["converged"]), self.num_points, self.optimizer.max_steps)
        if warning is not None and not self._said_q_star and trainer.is_global_zero:
            print(f"warning: epoch {epoch}: {warning}", file=sys.stderr, flush=True)
            self._said_q_star = True
        convergence = convergence_of(trainer)
        if convergence is not None:
            # The gap of a model still improving is not the converged model's (the linear-Gaussian model's shrinks to 0): said with it.
            verdict = convergence.verdict()
            metrics["gap/model_converged"] = float(verdict.converged)
            if not verdict.converged and not self._said_unconverged and trainer.is_global_zero:
                print(
                    f"note: the amortization gap at epoch {epoch} is measured on a model that has not converged ({verdict.reason()})",
                    file=sys.stderr,
                    flush=True,
                )
                self._said_unconverged = True
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        if self.refine_steps and trainer.is_global_zero and isinstance(trainer.logger, TensorBoardLogger):
            fig = refinement_figure(summary, self.refine_steps, epoch)
            trainer.logger.experiment.add_figure("gap/refinement", fig, global_step=trainer.global_step)
