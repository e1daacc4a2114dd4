"""The evaluation core shared by validation, testing and ``evaluate``: every estimator's per-point values on one batch."""

from dataclasses import dataclass

from torch import Tensor

from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import Estimator


@dataclass
class PerPoint:
    """One estimator on one batch: log p̂(x) [B], its own diagnostics [B] by name, and K, the log-weights it reduced."""

    log_px: Tensor
    diagnostics: dict[str, Tensor]
    num_samples: int


def estimate_all(model: LatentVariableModel, x: Tensor, estimators: list[Estimator]) -> dict[str, PerPoint]:
    """Each estimator's ``PerPoint`` result on the batch ``x``, by estimator name."""
    out = {}
    for estimator in estimators:
        estimate = estimator.estimate(model, x)
        out[estimator.name] = PerPoint(estimate.log_px, estimator.diagnostics(estimate), estimate.log_weights.shape[0])
    return out
