"""The closed-form marginal of the linear-Gaussian model x = Wz + b + ε, z ~ N(0, I), ε ~ N(0, σ²I)."""
from typing import Optional

import torch
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from lvm_lightning.models.families import DiagonalGaussian
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.models.priors import StandardNormalPrior


def linear_gaussian_parameters(model: LatentVariableModel) -> Optional[tuple[Tensor, Tensor, Tensor]]:
    """(W, b, σ) when the model is x = Wz + b + ε with z ~ N(0, I) and one shared σ, else None."""
    net, family = model.decoder.net, model.decoder.family
    layers = list(net) if isinstance(net, nn.Sequential) else [net]
    if not (
        isinstance(model.prior, StandardNormalPrior)
        and len(layers) == 1
        and isinstance(layers[0], nn.Linear)
        and isinstance(family, DiagonalGaussian)
        and family.std != "learned"
    ):
        return None
    linear = layers[0]
    sigma = family.log_std.exp() if family.std == "shared" else torch.tensor(float(family.std))
    return linear.weight, linear.bias, sigma.to(linear.weight)


def _require_linear_gaussian(model: LatentVariableModel) -> tuple[Tensor, Tensor, Tensor]:
    params = linear_gaussian_parameters(model)
    if params is None:
        raise ValueError("not a linear-Gaussian model: needs a Gaussian latent, no decoder hidden layers and a shared or fixed std")
    return params


def linear_gaussian_marginal(model: LatentVariableModel) -> MultivariateNormal:
    """p(x) = N(b, W Wᵀ + σ² I)."""
    W, b, sigma = _require_linear_gaussian(model)
    eye = torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
    return MultivariateNormal(b, covariance_matrix=W @ W.T + sigma**2 * eye)
