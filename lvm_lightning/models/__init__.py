"""Priors, encoders, decoders and the latent variable models they make."""

from lvm_lightning.models.builders import VAE, CategoricalVAE, LinearGaussian, MixtureModel
from lvm_lightning.models.families import BernoulliFamily, CategoricalFamily, ContinuousBernoulliFamily, DiagonalGaussian, IndependentCategoricalFamily
from lvm_lightning.models.flows import CouplingFlow, FullCovarianceGaussian, LocalFlow
from lvm_lightning.models.lvm import Conditional, LatentVariableModel
from lvm_lightning.models.priors import CategoricalPrior, IndependentCategoricalPrior, StandardNormalPrior

__all__ = [
    "BernoulliFamily",
    "CategoricalFamily",
    "CategoricalPrior",
    "CategoricalVAE",
    "Conditional",
    "ContinuousBernoulliFamily",
    "CouplingFlow",
    "DiagonalGaussian",
    "FullCovarianceGaussian",
    "IndependentCategoricalFamily",
    "IndependentCategoricalPrior",
    "LatentVariableModel",
    "LinearGaussian",
    "LocalFlow",
    "MixtureModel",
    "StandardNormalPrior",
    "VAE",
]
