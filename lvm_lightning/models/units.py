"""The data's units and the standard units a model's networks work in: x = loc + scale ⊙ u, per column.

A model trains in standard units (its encoder reads u, its decoder gives a distribution over u) and reports in the
data's: the decoder's distribution is mapped to x, so every log p(x), ELBO and sample carries the map's
log-Jacobian −Σ_d log scale_d and the data's units, whoever computes it. The map is fitted once, to the training
split, when the data module asks for it (real-valued data), and kept in the checkpoint as two buffers.
"""

from typing import Any

import torch
from torch import Tensor, nn
from torch.distributions import AffineTransform, Distribution, TransformedDistribution


class AffineDistribution(TransformedDistribution):
    """x = loc + scale ⊙ u, u ~ ``base`` over R^D: log p(x) = log p_u((x − loc)/scale) − Σ_d log scale_d, with its mean and spread."""

    def __init__(self, base: Distribution, loc: Tensor, scale: Tensor) -> None:
        super().__init__(base, [AffineTransform(loc, scale, event_dim=1)], validate_args=False)
        self.loc, self.scale = loc, scale

    @property
    def mean(self) -> Tensor:
        return self.loc + self.scale * self.base_dist.mean

    @property
    def stddev(self) -> Tensor:
        return self.scale * self.base_dist.stddev

    @property
    def variance(self) -> Tensor:
        return self.stddev.square()


class Units(nn.Module):
    """The affine map x = loc + scale ⊙ u between the data's units and the standard units u; the identity until ``fit``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("loc", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.active = False  # a Python flag, not a tensor test: the identity costs nothing, and no step waits for the device

    @torch.no_grad()
    def fit(self, x: Tensor, common_scale: bool = False) -> None:
        """loc = the columns' means, scale = their standard deviations (one for all columns, their root mean square, where
        ``common_scale``: a model whose noise is isotropic stays in its family); a constant column keeps scale 1."""
        rows = x.double()
        loc, std = rows.mean(0), rows.std(0) if len(rows) > 1 else torch.ones_like(rows[0])
        if common_scale:
            std = std.square().mean().sqrt().expand_as(std)
        scale = torch.where(std > 0, std, torch.ones_like(std))
        self.loc.copy_(loc)
        self.scale.copy_(scale)
        self.active = True

    def standardize(self, x: Tensor) -> Tensor:
        """u = (x − loc) / scale."""
        return (x - self.loc) / self.scale if self.active else x

    def to_data(self, distribution: Distribution) -> Distribution:
        """A distribution over u as one over x (``AffineDistribution``)."""
        return AffineDistribution(distribution, self.loc, self.scale) if self.active else distribution

    def log_abs_det(self) -> Tensor:
        """Σ_d log scale_d: how much lower log p(x) is than log p(u) at the same point."""
        return self.scale.log().sum()

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        if f"{prefix}loc" not in state_dict and f"{prefix}scale" not in state_dict:
            # A checkpoint from before the map existed: its model worked in the data's own units, the identity.
            self.active = False
            return
        super()._load_from_state_dict(state_dict, prefix, *args)
        self.active = not (bool((self.loc == 0).all()) and bool((self.scale == 1).all()))
