"""Priors, encoders, decoders and the latent variable models they make."""

from lvm_lightning.models.builders import VAE, LinearGaussian, MixtureModel
from lvm_lightning.models.families import BernoulliFamily, CategoricalFamily, ContinuousBernoulliFamily, DiagonalGaussian
from lvm_lightning.models.flows import CouplingFlow, FullCovarianceGaussian, LocalFlow
from lvm_lightning.models.lvm import Conditional, LatentVariableModel
from lvm_lightning.models.priors import CategoricalPrior, StandardNormalPrior

__all__ = [
    "BernoulliFamily",
    "CategoricalFamily",
    "CategoricalPrior",
    "Conditional",
    "ContinuousBernoulliFamily",
    "CouplingFlow",
    "DiagonalGaussian",
    "FullCovarianceGaussian",
    "LatentVariableModel",
    "LinearGaussian",
    "LocalFlow",
    "MixtureModel",
    "StandardNormalPrior",
    "VAE",
]
