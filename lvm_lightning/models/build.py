"""Builds a LatentVariableModel from plain config values, so a checkpoint's hyperparameters rebuild it."""
import math
from typing import Literal, Optional, Sequence

from lvm_lightning.errors import UsageError
from lvm_lightning.models.conv import ConvDecoder, ConvEncoder
from lvm_lightning.models.families import CategoricalFamily, DiagonalGaussian, GaussianStd, likelihood_family
from lvm_lightning.models.lvm import Conditional, LatentVariableModel
from lvm_lightning.models.networks import mlp
from lvm_lightning.models.priors import CategoricalPrior, StandardNormalPrior

Latent = Literal["categorical", "gaussian"]
Network = Literal["mlp", "conv"]


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
    network: Network = "mlp",
    image_shape: Optional[Sequence[int]] = None,
) -> LatentVariableModel:
    """p(z) p_θ(x|z) with MLP encoder and decoder, or with network 'conv' convolutional ones over images of image_shape (C, H, W).

    Categorical z with no decoder hidden layers is a Gaussian mixture with latent_dim components;
    Gaussian z with no decoder hidden layers and a shared std is the linear-Gaussian model.
    For 'conv', encoder_hidden and decoder_hidden are the channels of the stride-2 (transposed) convolutions.
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
    categorical = latent == "categorical"
    if network == "mlp":
        decoder_net = mlp(latent_dim, observation.num_params, decoder_hidden, activation, categorical_input=categorical)
        encoder_net = mlp(data_dim, posterior_family.num_params, encoder_hidden, activation)
    elif network == "conv":
        _check_image(data_dim, image_shape, encoder_hidden, decoder_hidden)
        decoder_net = ConvDecoder(latent_dim, image_shape, observation.num_params, decoder_hidden, activation, categorical_input=categorical)
        encoder_net = ConvEncoder(image_shape, posterior_family.num_params, encoder_hidden, activation)
    else:
        raise UsageError(f"unknown network {network!r}: choose 'mlp' or 'conv'")
    return LatentVariableModel(prior, Conditional(decoder_net, observation), Conditional(encoder_net, posterior_family))


def _check_image(data_dim: int, image_shape: Optional[Sequence[int]], encoder_hidden: Sequence[int], decoder_hidden: Sequence[int]) -> None:
    """Raise UsageError unless the data are images of image_shape and both networks have at least one convolution."""
    if image_shape is None:
        raise UsageError("network 'conv' needs image data (a data module with image_shape, e.g. MNISTData): use network 'mlp'")
    if math.prod(image_shape) != data_dim:
        raise UsageError(f"image_shape {tuple(image_shape)} has {math.prod(image_shape)} pixels but data_dim is {data_dim}")
    if not encoder_hidden or not decoder_hidden:
        raise UsageError("network 'conv' needs at least one channel count in encoder_hidden and in decoder_hidden, e.g. [32, 64] and [64, 32]")
