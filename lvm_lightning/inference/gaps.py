"""The inference gaps of Cremer et al. (2018) on a fixed subset of points:

log p(x) = ELBO(q_φ) + [ELBO(q*) − ELBO(q_φ)] + [log p(x) − ELBO(q*)]
         = ELBO(q_φ) + amortization gap      + approximation gap,

with q* the per-point optimum of ``LocalOptimizer``, and the seconds each kind of inference took.
"""

import math
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any, Optional, Sequence

import torch
from torch import Tensor
from torch.distributions import Distribution

from lvm_lightning.inference.ais import AIS
from lvm_lightning.inference.local import LocalOptimizer, LocalResult
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import Estimator, Exact, ImportanceSampling, elbo, tractable
from lvm_lightning.reports import summarize_moments, table
from lvm_lightning.timing import timed

# k for the refinement curve: roughly log-spaced, cut at the optimizer's step cap.
REFINE_STEPS = (0, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000)
GAPS = ("elbo_amortized", "elbo_optimized", "log_px", "amortization_gap", "approximation_gap")


@dataclass
class GapReport:
    """Per point [N]: ELBO(q_φ), ELBO(q*), log p(x), ELBO after k steps of refinement from q_φ; q*'s fit; seconds of each inference;
    ELBO of the training estimator's refined q where it refines q_φ (semi-amortized)."""

    elbo_amortized: Tensor
    elbo_optimized: Tensor
    log_px: Tensor
    refined: dict[int, Tensor]
    optimized: LocalResult
    seconds_amortized: float
    seconds_optimized: float
    log_px_method: str
    elbo_semi_amortized: Optional[Tensor] = None

    def per_point(self) -> dict[str, Tensor]:
        """Every per-point quantity [N], the two gaps included, by name."""
        values = {
            "elbo_amortized": self.elbo_amortized,
            "elbo_optimized": self.elbo_optimized,
            "log_px": self.log_px,
            "amortization_gap": self.elbo_optimized - self.elbo_amortized,
            "approximation_gap": self.log_px - self.elbo_optimized,
            "steps": self.optimized.steps.to(self.log_px.dtype),
            "converged": self.optimized.converged.to(self.log_px.dtype),
        }
        values.update({f"refined_elbo/k={k}": v for k, v in sorted(self.refined.items())})
        if self.elbo_semi_amortized is not None:
            values["elbo_semi_amortized"] = self.elbo_semi_amortized
        return values

    def sums(self) -> dict[str, Tensor]:
        """Σ v and Σ v² over points for each quantity, the count and the seconds: additive, so ranks combine them by all_reduce(sum)."""
        sums = {}
        for name, value in self.per_point().items():
            value = value.double()  # Σv² − N·mean² in float32 loses the variance of values far from 0
            sums[name] = value.sum()
            sums[f"{name}/sq"] = value.square().sum()
        like = partial(torch.tensor, dtype=torch.float64, device=self.log_px.device)
        sums.update(count=like(float(len(self.log_px))), seconds_amortized=like(self.seconds_amortized), seconds_optimized=like(self.seconds_optimized))
        return sums


def summarize_sums(sums: dict[str, Tensor]) -> dict[str, Any]:
    """Means per point with their standard errors (``NAME_stderr``, None for one point), and seconds per point of each inference, from ``GapReport.sums`` (summed over ranks)."""
    n = float(sums["count"])
    out: dict[str, Any] = {}
    for name in (k for k in sums if f"{k}/sq" in sums):
        out[name], out[f"{name}_stderr"] = summarize_moments(float(sums[name]), float(sums[f"{name}/sq"]), n)
    out["seconds_per_point_amortized"] = float(sums["seconds_amortized"]) / n
    out["seconds_per_point_optimized"] = float(sums["seconds_optimized"]) / n
    out["num_points"] = n
    return out


@torch.no_grad()
def log_marginal(
    model: LatentVariableModel, x: Tensor, q: Distribution, num_samples: int, chunk_size: Optional[int] = None, ais: Optional[AIS] = None
) -> Tensor:
    """log p(x) [N]: exact where ``tractable``, else ``ais`` started from q where given, else log (1/K) Σ_k p(x, z_k)/q(z_k), z_k ~ q, chunked."""
    if tractable(model):
        return Exact().estimate(model, x).log_px
    if ais is not None:
        return ais.estimate_with(model, x, q).log_px
    return ImportanceSampling(num_samples, chunk_size).estimate_with(model, x, q).log_px


def log_px_method(model: LatentVariableModel, num_samples: int, ais: Optional[AIS] = None) -> str:
    """How ``log_marginal`` computes log p(x) for ``model``, in words."""
    if tractable(model):
        return "exact"
    return ais.describe("q*") if ais is not None else f"importance sampling from q*, K={num_samples}"


def gap_decomposition(
    model: LatentVariableModel,
    x: Tensor,
    optimizer: LocalOptimizer,
    elbo_samples: int = 100,
    log_px_samples: int = 1000,
    refine_steps: Sequence[int] = (),
    chunk_size: Optional[int] = None,
    ais: Optional[AIS] = None,
    estimator: Optional[Estimator] = None,
) -> GapReport:
    """ELBO(q_φ), ELBO(q*) and log p(x) on the points ``x``, with the ELBO after each k in ``refine_steps`` Adam steps from q_φ.

    ELBOs average ``elbo_samples`` log-weights (enumerated exactly for a categorical z); log p(x), where it has no closed form,
    is importance-sampled from q* with ``log_px_samples``, or annealed from q* by ``ais`` where given. Where the training
    ``estimator`` refines q_φ (``Estimator.refined_posterior``, SA-VAE), the ELBO of its refined q too, between the two. Put the
    model in eval mode first: a decoder with batch-norm would otherwise update its running statistics.
    """
    ks = sorted(set(refine_steps))
    from_encoder = optimizer.init == "encoder"
    q_semi_amortized = estimator.refined_posterior(model, x) if estimator is not None else None
    with torch.no_grad():
        q_amortized, seconds_amortized = timed(lambda: model.posterior(x), x.device)
        # First, so that two models' amortized ELBOs from one seed use the same draws, however long each q* takes.
        elbo_amortized = elbo(model, x, q_amortized, elbo_samples)
    # From the encoder, q*'s own run passes through every k; from the prior, refinement needs a run of its own.
    result, seconds_optimized = timed(lambda: optimizer.fit(model, x, record_at=ks if from_encoder else ()), x.device)
    refinement = result if from_encoder else replace(optimizer, init="encoder", max_steps=max(ks, default=1)).fit(model, x, record_at=ks)
    with torch.no_grad():
        q_star = optimizer.posterior(model, result.params)
        return GapReport(
            elbo_amortized=elbo_amortized,
            elbo_optimized=elbo(model, x, q_star, elbo_samples),
            log_px=log_marginal(model, x, q_star, log_px_samples, chunk_size, ais),
            refined={k: elbo(model, x, optimizer.posterior(model, refinement.snapshots[k]), elbo_samples) for k in ks},
            optimized=result,
            seconds_amortized=seconds_amortized,
            seconds_optimized=seconds_optimized,
            log_px_method=log_px_method(model, log_px_samples, ais),
            elbo_semi_amortized=None if q_semi_amortized is None else elbo(model, x, q_semi_amortized, elbo_samples),
        )


def gap_summary(
    model: LatentVariableModel,
    x: Tensor,
    optimizer: LocalOptimizer,
    elbo_samples: int = 100,
    log_px_samples: int = 1000,
    refine_steps: Sequence[int] = REFINE_STEPS,
    chunk_size: Optional[int] = None,
    ais: Optional[AIS] = None,
) -> dict[str, Any]:
    """``gap_decomposition`` as JSON-ready numbers: means over points with standard errors, seconds per point, q*'s fit, and the refinement curve."""
    ks = [k for k in refine_steps if k <= optimizer.max_steps]
    report = gap_decomposition(model, x, optimizer, elbo_samples, log_px_samples, ks, chunk_size, ais)
    summary = summarize_sums(report.sums())
    out: dict[str, Any] = {name: summary[name] for name in GAPS}
    out["stderr"] = {name: summary[f"{name}_stderr"] for name in GAPS}
    out.update(
        seconds_per_point_amortized=summary["seconds_per_point_amortized"],
        seconds_per_point_optimized=summary["seconds_per_point_optimized"],
        num_points=len(x),
        mean_steps=summary["steps"],
        converged_fraction=summary["converged"],
        log_px_method=report.log_px_method,
        elbo_samples=elbo_samples,
        local_optimizer={**asdict(optimizer), "lr": optimizer.step_size(model), "gradient": type(optimizer.path_gradient()).__name__},
        refinement={
            "k": ks,
            "elbo": [summary[f"refined_elbo/k={k}"] for k in ks],
            "stderr": [summary[f"refined_elbo/k={k}_stderr"] for k in ks],
        },
    )
    warning = unconverged_warning(summary["converged"], len(x), optimizer.max_steps)
    if warning is not None:
        out["warning"] = warning
    return out


def unconverged_warning(converged_fraction: float, num_points: int, max_steps: int) -> Optional[str]:
    """One line when q* met the plateau rule on fewer than half the points: their ELBO(q*) is short of its optimum."""
    if converged_fraction >= 0.5:
        return None
    return (
        f"q* stopped improving on only {100 * converged_fraction:.0f}% of the {num_points} points within {max_steps} steps: there ELBO(q*) is below "
        "its optimum, so the amortization gap is understated and the approximation gap overstated; raise --gap.max_steps (or the callback's optimizer.max_steps)"
    )


def format_gaps(gaps: dict[str, Any]) -> str:
    """The decomposition and the refinement curve as plain-text lines (nats per point)."""
    lines = [
        f"gaps over {gaps['num_points']} points (log p(x): {gaps['log_px_method']}; q*: {gaps['mean_steps']:.0f} steps on average, {100 * gaps['converged_fraction']:.0f}% converged)"
    ]
    stderr = {name: math.nan if value is None else value for name, value in gaps["stderr"].items()}
    lines += ["  " + line for line in table([(name, f"{gaps[name]:.4f}", f"± {stderr[name]:.4f}") for name in GAPS]).splitlines()]
    lines.append(f"  seconds per point: amortized {gaps['seconds_per_point_amortized']:.2e}, optimized {gaps['seconds_per_point_optimized']:.2e}")
    curve = gaps["refinement"]
    lines.append("  refined ELBO after k steps: " + ", ".join(f"k={k}: {e:.3f}" for k, e in zip(curve["k"], curve["elbo"])))
    return "\n".join(lines)


def format_gap_columns(columns: dict[str, dict[str, Any]]) -> str:
    """Decompositions side by side, one column per q* family (``gap_summary`` outputs by name), nats per point."""
    names = list(columns)
    rows = [("", *names)]
    rows += [(name, *(f"{columns[c][name]:.4f}" for c in names)) for name in GAPS]
    rows.append(("seconds per point, q*", *(f"{columns[c]['seconds_per_point_optimized']:.2e}" for c in names)))
    return table(rows)
