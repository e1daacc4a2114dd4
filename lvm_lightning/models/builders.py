"""Short forms for the common models, each a LatentVariableModel built from plain values (YAML ``class_path`` + ``init_args``).

``MixtureModel`` (categorical z), ``VAE`` (Gaussian z, MLP or convolutional networks) and
``LinearGaussian`` (x = Wz + b + ε, with its closed-form marginal). ``data_dim`` is linked from the data
module by the command line; a convolutional network needs ``image_shape`` (C, H, W) in its arguments.
"""

import math
from typing import Literal, Optional, Sequence, Union

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, MultivariateNormal

from lvm_lightning.errors import UsageError
from lvm_lightning.models.conv import ConvDecoder, ConvEncoder
from lvm_lightning.models.families import (
    POSTERIORS,
    CategoricalFamily,
    DiagonalGaussian,
    GaussianStd,
    IndependentCategoricalFamily,
    LikelihoodChoice,
    PosteriorChoice,
    likelihood_family,
    make_family,
)
from lvm_lightning.models.kmeans import KMeansStart
from lvm_lightning.models.lvm import Conditional, LatentVariableModel
from lvm_lightning.models.networks import mlp
from lvm_lightning.models.priors import CategoricalPrior, IndependentCategoricalPrior, StandardNormalPrior
from lvm_lightning.models.vamp import VampPrior

Network = Literal["mlp", "conv"]


MixtureInit = Literal["auto", "kmeans", "random"]


def conditionals(
    data_dim: int,
    latent_dim: int,
    posterior: nn.Module,
    likelihood: LikelihoodChoice,
    decoder_std: GaussianStd,
    encoder_hidden: Sequence[int],
    decoder_hidden: Sequence[int],
    activation: str,
    categorical: bool,
    network: Network = "mlp",
    image_shape: Optional[Sequence[int]] = None,
    num_variables: int = 0,
) -> tuple[Conditional, Conditional]:
    """(decoder p_θ(x|z) = likelihood(net(z)), encoder q_φ(z|x) = posterior(net(x))), with MLPs or stride-2 convolutions over images;
    a categorical z is one index, or ``num_variables`` of them."""
    if data_dim < 1 or latent_dim < 1:
        raise UsageError(f"data_dim and latent_dim must be >= 1, got {data_dim} and {latent_dim}")
    observation = likelihood_family(likelihood, data_dim, decoder_std)
    encoder_out, decoder_out = posterior.num_params, observation.num_params
    # The decoder first, then the encoder: the order in which they draw their initial weights from the seed.
    if network == "mlp":
        decoder_net = mlp(latent_dim, decoder_out, decoder_hidden, activation, categorical, num_variables)
        encoder_net: nn.Module = mlp(data_dim, encoder_out, encoder_hidden, activation)
    elif network == "conv":
        _check_images(data_dim, image_shape, encoder_hidden, decoder_hidden)
        decoder_net = ConvDecoder(latent_dim, image_shape, decoder_out, decoder_hidden, activation, categorical_input=categorical)
        encoder_net = ConvEncoder(image_shape, encoder_out, encoder_hidden, activation)
    else:
        raise UsageError(f"unknown network {network!r}: choose 'mlp' or 'conv'")
    return Conditional(decoder_net, observation), Conditional(encoder_net, posterior)


def _check_images(data_dim: int, image_shape: Optional[Sequence[int]], encoder_hidden: Sequence[int], decoder_hidden: Sequence[int]) -> None:
    """Raise UsageError unless the data are images of image_shape and both networks have at least one convolution."""
    if image_shape is None:
        raise UsageError("network 'conv' needs image data: pass image_shape (C, H, W), e.g. --model.lvm.image_shape [1,28,28], or use network 'mlp'")
    if math.prod(image_shape) != data_dim:
        raise UsageError(f"image_shape {tuple(image_shape)} has {math.prod(image_shape)} pixels but data_dim is {data_dim}")
    if not encoder_hidden or not decoder_hidden:
        raise UsageError("network 'conv' needs at least one channel count in encoder_hidden and in decoder_hidden, e.g. [32, 64] and [64, 32]")


class MixtureModel(LatentVariableModel):
    """z ∈ {0, …, C−1} with p(z) = softmax(logits), p_θ(x|z) = likelihood(net(z)); q_φ(z|x) categorical.

    With no decoder hidden layers the decoder is a table, one parameter row per component: with a
    Gaussian likelihood this is a Gaussian mixture with C components, whose log p(x) is enumerated exactly.
    ``init`` 'kmeans' starts such a table from the training data before training, as EM software does
    (``initialize``): means from k-means, variances and weights from its clusters, the best of ``n_init``
    k-means runs by log p(x). 'auto' (the default) is 'kmeans' for a Gaussian table, 'random' otherwise.
    """

    def __init__(
        self,
        data_dim: int = 2,
        num_components: int = 16,
        learn_prior: bool = True,
        encoder_hidden: Sequence[int] = (64, 64),
        decoder_hidden: Sequence[int] = (),
        activation: str = "relu",
        likelihood: LikelihoodChoice = "gaussian",
        decoder_std: GaussianStd = "learned",
        network: Network = "mlp",
        image_shape: Optional[Sequence[int]] = None,
        init: MixtureInit = "auto",
        n_init: int = 5,
    ) -> None:
        if init not in ("auto", "kmeans", "random"):
            raise UsageError(f"unknown init {init!r}: choose 'auto', 'kmeans' or 'random'")
        if n_init < 1:
            raise UsageError(f"n_init must be >= 1, got {n_init}")
        decoder, encoder = conditionals(
            data_dim,
            num_components,
            CategoricalFamily(num_components),
            likelihood,
            decoder_std,
            encoder_hidden,
            decoder_hidden,
            activation,
            True,
            network,
            image_shape,
        )
        super().__init__(CategoricalPrior(num_components, learn=learn_prior), decoder, encoder, data_dim)
        table = KMeansStart.applies(self)
        if init == "kmeans" and not table:
            raise UsageError(
                "init 'kmeans' sets a table of Gaussian components: it needs likelihood 'gaussian' and decoder_hidden [] (network 'mlp'); use init 'random'"
            )
        # One σ for every column stays one σ only under one scale.
        self.common_scale = isinstance(decoder.family, DiagonalGaussian) and decoder.family.isotropic
        self.init = "kmeans" if init == "auto" and table else "random" if init == "auto" else init
        self.num_components, self.n_init = num_components, n_init
        self.kmeans = KMeansStart(n_init) if self.init == "kmeans" else None


class CategoricalVAE(LatentVariableModel):
    """z ∈ {0, …, C−1}^M, M independent categoricals, p(z) uniform (or learned), p_θ(x|z) = likelihood(net(one-hot z)),
    q_φ(z|x) = Π_m Categorical(softmax(net(x))_m), a mean-field posterior.

    z takes C^M values. Up to ``max_enumerate`` of them the model is enumerable: the 'exact' estimator, the wake and ELBO
    encoder objectives and per-point inference sum over all of them. Beyond, q_φ can be trained only by a score-function
    gradient: ``ImportanceSampling(num_samples=K, gradient='vimco')``.
    """

    def __init__(
        self,
        data_dim: int = 2,
        num_variables: int = 3,
        num_categories: int = 10,
        learn_prior: bool = False,
        encoder_hidden: Sequence[int] = (64, 64),
        decoder_hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        likelihood: LikelihoodChoice = "gaussian",
        decoder_std: GaussianStd = "learned",
        max_enumerate: int = 4096,
    ) -> None:
        if num_variables < 1 or num_categories < 2:
            raise UsageError(f"a categorical latent needs num_variables >= 1 and num_categories >= 2, got {num_variables} and {num_categories}")
        family = IndependentCategoricalFamily(num_variables, num_categories)
        decoder, encoder = conditionals(
            data_dim, num_categories, family, likelihood, decoder_std, encoder_hidden, decoder_hidden, activation, True, num_variables=num_variables
        )
        super().__init__(IndependentCategoricalPrior(num_variables, num_categories, learn_prior), decoder, encoder, data_dim)
        self.num_variables, self.num_categories = num_variables, num_categories
        self.enumerable = num_categories**num_variables <= max_enumerate

    def support(self) -> Tensor:
        """Every z ∈ {0, …, C−1}^M, [C^M, 1, M] (the first variable slowest)."""
        values = torch.arange(self.num_categories, device=self.prior.logits.device)
        grid = torch.cartesian_prod(*[values] * self.num_variables).reshape(-1, self.num_variables)
        return grid[:, None]


class VAE(LatentVariableModel):
    """z ~ N(0, I_d), p_θ(x|z) = likelihood(decoder(z)), q_φ(z|x) = N(μ_φ(x), diag σ_φ²(x)) (Kingma & Welling, 2014).

    ``posterior`` 'full' makes q_φ a Gaussian with every correlation, 'flow' a coupling flow, 'local_flow' a sinh-arcsinh flow
    whose every parameter comes from the network (models/flows.py); a family class of one's own (``class_path``, a ``Family``) is
    made for ``latent_dim``, as a ``likelihood`` class is for ``data_dim``.
    ``network`` 'conv' uses stride-2 convolutions over images of ``image_shape`` (C, H, W); then
    ``encoder_hidden`` and ``decoder_hidden`` are their channels. ``num_pseudo_inputs`` C replaces N(0, I) by the VampPrior
    (1/C) Σ_c q_φ(z|u_c) with C learned pseudo-inputs u_c (models/vamp.py).
    """

    def __init__(
        self,
        data_dim: int = 2,
        latent_dim: int = 2,
        encoder_hidden: Sequence[int] = (64, 64),
        decoder_hidden: Sequence[int] = (64, 64),
        activation: str = "relu",
        likelihood: LikelihoodChoice = "gaussian",
        decoder_std: GaussianStd = "learned",
        network: Network = "mlp",
        image_shape: Optional[Sequence[int]] = None,
        posterior: PosteriorChoice = "diagonal",
        num_pseudo_inputs: Optional[int] = None,
    ) -> None:
        family = make_family(posterior, latent_dim, POSTERIORS, "posterior")
        decoder, encoder = conditionals(
            data_dim, latent_dim, family, likelihood, decoder_std, encoder_hidden, decoder_hidden, activation, False, network, image_shape
        )
        prior = StandardNormalPrior(latent_dim) if num_pseudo_inputs is None else VampPrior(encoder, num_pseudo_inputs, data_dim)
        super().__init__(prior, decoder, encoder, data_dim)


class LinearGaussian(LatentVariableModel):
    """x = Wz + b + ε, z ~ N(0, I_d), ε ~ N(0, σ²I) (probabilistic PCA), with a diagonal Gaussian q_φ(z|x) from an MLP (linear by default).

    σ is one learned scalar (``noise_std="shared"``) or a fixed positive number; log p(x) is closed-form. ``posterior``
    'full' gives q_φ every correlation: the true posterior N(Σ Wᵀ(x − b)/σ², Σ), Σ = (I + WᵀW/σ²)⁻¹, is then in the family.
    """

    common_scale = True  # isotropic noise in standard units is isotropic in the data's only under one scale for all columns

    def __init__(
        self,
        data_dim: int = 2,
        latent_dim: int = 1,
        noise_std: Union[float, Literal["shared"]] = "shared",
        encoder_hidden: Sequence[int] = (),
        activation: str = "relu",
        posterior: PosteriorChoice = "diagonal",
    ) -> None:
        if noise_std == "learned":
            raise UsageError("the linear-Gaussian model shares one σ: pass noise_std 'shared' or a positive number")
        family = make_family(posterior, latent_dim, POSTERIORS, "posterior")
        decoder, encoder = conditionals(data_dim, latent_dim, family, "gaussian", noise_std, encoder_hidden, (), activation, False)
        super().__init__(StandardNormalPrior(latent_dim), decoder, encoder, data_dim)

    @property
    def weight(self) -> torch.Tensor:
        """W, [D, d]."""
        return self.decoder.net[0].weight

    @property
    def bias(self) -> torch.Tensor:
        """b, [D]."""
        return self.decoder.net[0].bias

    @property
    def noise_std(self) -> torch.Tensor:
        """σ, a scalar tensor."""
        return self.decoder.family.common_std().to(self.weight)

    def marginal(self) -> Distribution:
        """p(x) = N(b, W Wᵀ + σ² I) in standard units, mapped to the data's."""
        W = self.weight
        eye = torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
        return self.units.to_data(MultivariateNormal(self.bias, covariance_matrix=W @ W.T + self.noise_std**2 * eye))
