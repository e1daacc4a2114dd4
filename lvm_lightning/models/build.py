"""Builds a LatentVariableModel from plain config values, so a checkpoint's hyperparameters rebuild it."""
from typing import Literal, Sequence

from lvm_lightning.errors import UsageError
from lvm_lightning.models.families import CategoricalFamily, DiagonalGaussian, GaussianStd, likelihood_family
from lvm_lightning.models.lvm import Conditional, LatentVariableModel
from lvm_lightning.models.networks import mlp
from lvm_lightning.models.priors import CategoricalPrior, StandardNormalPrior

Latent = Literal["categorical", "gaussian"]


def build_model(
    data_dim: int,
    latent: Latent = "categorical",
    latent_dim: int = 16,
    learn_prior: bool = True,
    encoder_hidden: Sequence[int] = (64, 64),
    decoder_hidden: Sequence[int] = (),
    activation: str = "relu",
    likelihood: str = "gaussian",
    decoder_std: GaussianStd = "learned",
) -> LatentVariableModel:
    """p(z) p_θ(x|z) with MLP encoder and decoder.

    Categorical z with no decoder hidden layers is a Gaussian mixture with latent_dim components;
    Gaussian z with no decoder hidden layers and a shared std is the linear-Gaussian model.
    """
    if data_dim < 1 or latent_dim < 1:
        raise UsageError(f"data_dim and latent_dim must be >= 1, got {data_dim} and {latent_dim}")
    if latent == "categorical":
        prior = CategoricalPrior(latent_dim, learn=learn_prior)
        posterior_family = CategoricalFamily(latent_dim)
    elif latent == "gaussian":
        prior = StandardNormalPrior(latent_dim)
        posterior_family = DiagonalGaussian(latent_dim)
    else:
        raise UsageError(f"unknown latent {latent!r}: choose 'categorical' or 'gaussian'")
    observation = likelihood_family(likelihood, data_dim, decoder_std)
    decoder_net = mlp(latent_dim, observation.num_params, decoder_hidden, activation, categorical_input=latent == "categorical")
    encoder_net = mlp(data_dim, posterior_family.num_params, encoder_hidden, activation)
    return LatentVariableModel(prior, Conditional(decoder_net, observation), Conditional(encoder_net, posterior_family))
