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
    applies,
    elbo,
    evaluation_estimators,
    importance_log_weights,
    log_mean_exp_stderr,
    tractable,
)
from lvm_lightning.objectives.gradients import STL, VIMCO, DReG, GradientEstimator, Reparameterized, leave_one_out_bounds
from lvm_lightning.objectives.psis import pareto_k
from lvm_lightning.objectives.semi_amortized import SemiAmortized

__all__ = [
    "DReG",
    "ELBO",
    "EncoderObjective",
    "Estimate",
    "Estimator",
    "Exact",
    "GradientEstimator",
    "ImportanceSampling",
    "Objective",
    "PriorSampling",
    "Reparameterized",
    "STL",
    "SampledEstimator",
    "SemiAmortized",
    "VIMCO",
    "amortized_elbo",
    "applies",
    "elbo",
    "evaluation_estimators",
    "importance_log_weights",
    "leave_one_out_bounds",
    "log_mean_exp_stderr",
    "pareto_k",
    "resolve_encoder_objective",
    "tractable",
    "wake_objective",
]


def __getattr__(name: str) -> object:
    """AIS, which evaluates but never trains, lives in lvm_lightning.inference; runs stored before name it here."""
    if name == "AIS":
        from lvm_lightning.inference.ais import AIS

        return AIS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
