"""Priors, encoders, decoders and the latent variable models they make."""

from lvm_lightning.models.builders import VAE, CategoricalVAE, LinearGaussian, MixtureModel
from lvm_lightning.models.families import (
    LIKELIHOODS,
    POSTERIORS,
    BernoulliFamily,
    CategoricalFamily,
    ContinuousBernoulliFamily,
    DiagonalGaussian,
    ExpressesDistributions,
    Family,
    IndependentCategoricalFamily,
    StartsAtData,
    StartsNearStandard,
)
from lvm_lightning.models.flows import CouplingFlow, FullCovarianceGaussian, LocalFlow
from lvm_lightning.models.hierarchical import HierarchicalEncoder, HierarchicalPrior, HierarchicalVAE, MarkovChain
from lvm_lightning.models.lvm import Conditional, LatentVariableModel
from lvm_lightning.models.priors import CategoricalPrior, IndependentCategoricalPrior, StandardNormalPrior
from lvm_lightning.models.vamp import VampPrior

__all__ = [
    "LIKELIHOODS",
    "POSTERIORS",
    "BernoulliFamily",
    "CategoricalFamily",
    "CategoricalPrior",
    "CategoricalVAE",
    "Conditional",
    "ContinuousBernoulliFamily",
    "CouplingFlow",
    "DiagonalGaussian",
    "ExpressesDistributions",
    "Family",
    "FullCovarianceGaussian",
    "HierarchicalEncoder",
    "HierarchicalPrior",
    "HierarchicalVAE",
    "IndependentCategoricalFamily",
    "IndependentCategoricalPrior",
    "LatentVariableModel",
    "LinearGaussian",
    "LocalFlow",
    "MarkovChain",
    "MixtureModel",
    "StandardNormalPrior",
    "StartsAtData",
    "StartsNearStandard",
    "VAE",
    "VampPrior",
]
