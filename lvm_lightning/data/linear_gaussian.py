"""Synthetic data from a linear-Gaussian model x = Wz + b + ε, whose density N(b, WWᵀ + σ²I) is known."""

from typing import Optional

import torch
from torch.distributions import MultivariateNormal

from lvm_lightning.data.synthetic import SyntheticData
from lvm_lightning.errors import UsageError


class LinearGaussianData(SyntheticData):
    """x = Wz + b + ε, z ~ N(0, I_latent_dim), ε ~ N(0, noise_std² I_dim), with W and b drawn once from ``seed``."""

    def __init__(
        self,
        dim: int = 10,
        latent_dim: int = 3,
        noise_std: float = 0.5,
        num_train: int = 10_000,
        num_val: int = 2_000,
        num_test: int = 2_000,
        batch_size: int = 256,
        eval_batch_size: int = 2048,
        seed: int = 0,
        standardize: Optional[bool] = None,
    ) -> None:
        super().__init__(num_train, num_val, num_test, batch_size, eval_batch_size, seed, standardize)
        if dim < 1 or latent_dim < 1 or noise_std <= 0:
            raise UsageError("dim, latent_dim and noise_std must be positive")
        self.save_hyperparameters()
        self.check_size(dim, 2 * dim * dim + dim * latent_dim)
        generator = torch.Generator().manual_seed(seed)
        self.weight = torch.randn(dim, latent_dim, generator=generator)
        self.bias = torch.randn(dim, generator=generator)
        covariance = self.weight @ self.weight.T + noise_std**2 * torch.eye(dim)
        self.distribution = MultivariateNormal(self.bias, covariance_matrix=covariance)
