"""Priors, encoders, decoders and the latent variable models they make."""

from lvm_lightning.models.builders import VAE, CategoricalVAE, LinearGaussian, MixtureModel
from lvm_lightning.models.families import BernoulliFamily, CategoricalFamily, ContinuousBernoulliFamily, DiagonalGaussian, IndependentCategoricalFamily
from lvm_lightning.models.flows import CouplingFlow, FullCovarianceGaussian, LocalFlow
from lvm_lightning.models.hierarchical import HierarchicalEncoder, HierarchicalPrior, HierarchicalVAE, MarkovChain
from lvm_lightning.models.lvm import Conditional, LatentVariableModel
from lvm_lightning.models.priors import CategoricalPrior, IndependentCategoricalPrior, StandardNormalPrior
from lvm_lightning.models.vamp import VampPrior

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
    "VAE",
    "VampPrior",
]
