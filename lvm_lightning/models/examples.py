"""Small models whose posterior is known in closed form, for gradient-estimator studies in the tests and benchmarks."""

import math

import torch
from torch import Tensor

from lvm_lightning.models.builders import LinearGaussian


def rainforth_model(seed: int, dim: int = 2, num_points: int = 8) -> tuple[LinearGaussian, Tensor]:
    """Rainforth et al.'s (2018) example: z ~ N(0, I), x|z ~ N(z, I), so p(z|x) = N(x/2, I/2); q_φ = N(Ax + c, 2/3 I) with A and c
    perturbed from the optimum, as in their section 4; with ``num_points`` rows x drawn from the model."""
    torch.manual_seed(seed)
    model = LinearGaussian(dim, dim, noise_std=1.0)
    with torch.no_grad():
        model.decoder.net[0].weight.copy_(torch.eye(dim))
        model.decoder.net[0].bias.zero_()
        layer = model.encoder.net[0]
        layer.weight.zero_()
        layer.weight[:dim].copy_(0.5 * torch.eye(dim) + 0.1 * torch.randn(dim, dim))
        layer.bias.zero_()
        layer.bias[:dim].copy_(0.1 * torch.randn(dim))
        layer.bias[dim:].fill_(0.5 * math.log(2 / 3))
    return model, model.sample(num_points)
