"""Estimators that check each other: every estimate of log p(x) but the exact one is a stochastic lower bound, so the tightest
is the best, one that falls clearly below it is loose (or, for AIS, did not mix), and PSIS's k̂ says where a weighted estimate
cannot be trusted (Vehtari et al.)."""

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from lvm_lightning.objectives import Estimator
from lvm_lightning.objectives.psis import THRESHOLD
from lvm_lightning.reports import summarize

SIGNIFICANCE = 3.0  # standard errors of a paired difference before it is called real
TOLERANCE = 0.01  # nats per point below which a difference is not worth a warning
UNRELIABLE_FRACTION = 0.1  # of points with k̂ above the threshold before an estimator is called unreliable


@dataclass
class Verdict:
    """The tightest estimator with its mean and standard error over points (None for one point), and one ``warning:`` line for each
    estimator that fails a check."""

    tightest: str
    mean: float
    stderr: Optional[float]
    warnings: list[str]


def paired(a: Tensor, b: Tensor) -> tuple[float, float]:
    """Mean of a − b over points and its standard error, infinite for one point (the points paired: their own spread cancels)."""
    summary = summarize((a - b).double())
    return summary["mean"], math.inf if summary["stderr"] is None else summary["stderr"]


def cross_check(estimators: list[Estimator], log_px: dict[str, Tensor], diagnostics: dict[str, dict[str, Tensor]]) -> Verdict:
    """Judges ``estimators``' per-point log p̂(x) [N] (by name) against each other, and their k̂ (``diagnostics`` by name)."""
    candidates = [e for e in estimators if e.estimates_log_px and e.name in log_px]
    best = max(candidates, key=lambda e: (e.exact, float(log_px[e.name].double().mean())))
    warnings = []
    for estimator in candidates:
        if estimator is best:
            continue
        mean, stderr = paired(log_px[estimator.name], log_px[best.name])
        if mean < -max(SIGNIFICANCE * stderr, TOLERANCE):
            warnings.append(f"{estimator.name} is {-mean:.3f} ± {stderr:.3f} nats per point below {best.name}: its estimate is loose here; {estimator.advice}")
    for estimator in candidates:
        above = diagnostics.get(estimator.name, {}).get(f"pareto_k_above_{THRESHOLD}")
        fraction = float(torch.nan_to_num(above.double(), 0.0).mean()) if above is not None else 0.0
        if fraction > UNRELIABLE_FRACTION:
            warnings.append(
                f"{estimator.name}: Pareto k̂ > {THRESHOLD} on {100 * fraction:.0f}% of points, where its weights are too heavy-tailed to trust; {estimator.advice}"
            )
    summary = summarize(log_px[best.name].double())
    return Verdict(best.name, summary["mean"], summary["stderr"], [f"warning: {line}" for line in warnings])
