"""Estimators of log p_θ(x) and the training signals built from them."""
from lvm_lightning.objectives.estimators import (
    ELBO,
    ESTIMATORS,
    Estimate,
    Estimator,
    Exact,
    ImportanceSampling,
    PriorSampling,
    evaluation_estimators,
    importance_log_weights,
    make_estimator,
    tractable,
)
from lvm_lightning.objectives.encoder import amortized_elbo, elbo, encoder_objective, resolve_encoder_objective, wake_objective

__all__ = [
    "ELBO",
    "ESTIMATORS",
    "Estimate",
    "Estimator",
    "Exact",
    "ImportanceSampling",
    "PriorSampling",
    "amortized_elbo",
    "elbo",
    "encoder_objective",
    "evaluation_estimators",
    "importance_log_weights",
    "make_estimator",
    "resolve_encoder_objective",
    "tractable",
    "wake_objective",
]
