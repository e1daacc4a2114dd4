"""Priors p(z): modules whose call returns the distribution, so learned priors carry parameters (argument checks off, as in families.py)."""

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, Independent, Normal


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I) over R^latent_dim."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(latent_dim))

    def forward(self) -> Distribution:
        return Independent(Normal(self.loc, torch.ones_like(self.loc), validate_args=False), 1, validate_args=False)


class CategoricalPrior(nn.Module):
    """p(z = c) = softmax(logits)_c; uniform unless the logits are learned."""

    def __init__(self, num_categories: int, learn: bool = False) -> None:
        super().__init__()
        logits = torch.zeros(num_categories)
        if learn:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def forward(self) -> Distribution:
        return Categorical(logits=self.logits, validate_args=False)


class IndependentCategoricalPrior(nn.Module):
    """p(z) = Π_m softmax(logits_m)_{z_m} over z ∈ {0, …, C−1}^M, M independent categoricals; uniform unless the logits are learned."""

    def __init__(self, num_variables: int, num_categories: int, learn: bool = False) -> None:
        super().__init__()
        logits = torch.zeros(num_variables, num_categories)
        if learn:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def forward(self) -> Distribution:
        return Independent(Categorical(logits=self.logits, validate_args=False), 1, validate_args=False)
