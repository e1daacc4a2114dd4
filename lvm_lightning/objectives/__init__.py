"""Estimators of log p_θ(x) and the training signals built from them."""

from lvm_lightning.objectives.encoder import EncoderObjective, resolve_encoder_objective, wake_objective
from lvm_lightning.objectives.estimators import (
    ELBO,
    Estimate,
    Estimator,
    Exact,
    ImportanceSampling,
    Objective,
    PriorSampling,
    SampledEstimator,
    amortized_elbo,
    elbo,
    evaluation_estimators,
    importance_log_weights,
    tractable,
)

__all__ = [
    "ELBO",
    "EncoderObjective",
    "Estimate",
    "Estimator",
    "Exact",
    "ImportanceSampling",
    "Objective",
    "PriorSampling",
    "SampledEstimator",
    "amortized_elbo",
    "elbo",
    "evaluation_estimators",
    "importance_log_weights",
    "resolve_encoder_objective",
    "tractable",
    "wake_objective",
]
