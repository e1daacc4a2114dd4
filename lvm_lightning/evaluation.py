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
    """Each estimator's ``PerPoint`` result on the batch ``x``, by estimator name.

    Estimators with the same ``draws`` (the IWAE bound and the ELBO, both from K samples of q_φ) reduce one set
    of log-weights: each sample is drawn and scored once, and their difference on a batch is Jensen's gap alone.
    """
    out, drawn = {}, {}
    for estimator in estimators:
        key = estimator.draws()
        if key is not None and key in drawn:
            estimate = estimator.from_log_weights(drawn[key])
        else:
            estimate = estimator.estimate(model, x)
            if key is not None:
                drawn[key] = estimate.log_weights
        out[estimator.name] = PerPoint(estimate.log_px, estimator.diagnostics(estimate), estimate.log_weights.shape[0])
    return out
