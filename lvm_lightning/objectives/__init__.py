"""Estimators of log p_θ(x) and the training signals built from them."""

from lvm_lightning.objectives.ais import AIS, annealing_schedule, simulate
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
    "AIS",
    "DReG",
    "GradientEstimator",
    "Reparameterized",
    "STL",
    "VIMCO",
    "ELBO",
    "EncoderObjective",
    "Estimate",
    "Estimator",
    "Exact",
    "ImportanceSampling",
    "Objective",
    "PriorSampling",
    "SampledEstimator",
    "SemiAmortized",
    "amortized_elbo",
    "annealing_schedule",
    "applies",
    "elbo",
    "evaluation_estimators",
    "importance_log_weights",
    "leave_one_out_bounds",
    "log_mean_exp_stderr",
    "pareto_k",
    "resolve_encoder_objective",
    "simulate",
    "tractable",
    "wake_objective",
]
