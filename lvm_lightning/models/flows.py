"""Posterior families beyond the fully factorized Gaussian: every correlation (``FullCovarianceGaussian``) and a normalizing flow
(``CouplingFlow``, zuko's affine-coupling RealNVP). Like the families of families.py: unconstrained params rows [..., P] in, a
torch.distributions object with ``rsample`` and ``log_prob`` out, so they serve the amortized encoder and per-point q* alike.

zuko, not Pyro's transforms or nflows: its flows are torch.distributions objects conditioned on a context tensor (Pyro's
conditional transforms need ``condition`` calls and pull in Pyro; nflows has its own distribution classes and has not had
a release since 2023), it is MIT-licensed, small, pure PyTorch, and runs wherever torch does (docs/architecture.md).
"""

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import AffineTransform, Distribution, MultivariateNormal, TransformedDistribution

from lvm_lightning.errors import UsageError


class FullCovarianceGaussian(nn.Module):
    """N(μ, L Lᵀ) over R^dim from params [μ, the lower triangle of L row by row], with log L_ii in place of L_ii."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise UsageError(f"a Gaussian needs dim >= 1, got {dim}")
        self.dim = dim
        self.num_params = dim + dim * (dim + 1) // 2
        rows, cols = torch.tril_indices(dim, dim)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)
        self.register_buffer("on_diagonal", rows == cols, persistent=False)

    def forward(self, params: Tensor) -> Distribution:
        loc, entries = params.split([self.dim, self.num_params - self.dim], -1)
        scale = entries.new_zeros(*entries.shape[:-1], self.dim, self.dim)
        off = ~self.on_diagonal
        # Written into a fresh tensor, off-diagonal and diagonal apart: exp never meets an off-diagonal entry (no inf·0 gradients).
        scale[..., self.rows[off], self.cols[off]] = entries[..., off]
        scale[..., self.rows[self.on_diagonal], self.cols[self.on_diagonal]] = entries[..., self.on_diagonal].exp()
        return MultivariateNormal(loc, scale_tril=scale, validate_args=False)

    def params_of(self, distribution: Distribution) -> Tensor:
        """The params of a Gaussian ``distribution`` (full or diagonal covariance) over R^dim."""
        scale = distribution.scale_tril if isinstance(distribution, MultivariateNormal) else torch.diag_embed(distribution.stddev)
        entries = scale[..., self.rows, self.cols]
        entries = torch.where(self.on_diagonal, entries.clamp(min=torch.finfo(entries.dtype).tiny).log(), entries)
        return torch.cat([distribution.mean, entries], -1)


class CouplingFlow(nn.Module):
    """z = μ + σ ⊙ f_h(ε), ε ~ N(0, I): zuko's affine-coupling flow f (RealNVP, ``transforms`` layers of ``hidden`` units)
    conditioned on a context h, after which a diagonal affine map; params [μ, log σ, h] with h of ``context`` values.

    Amortized, the encoder's network gives every row; per point (q*), each point's row is optimized and the flow's own
    weights stay shared (a per-point context into the amortized flow, not a flow per point).
    """

    def __init__(self, dim: int, context: int = 16, transforms: int = 4, hidden: tuple[int, ...] = (64, 64)) -> None:
        super().__init__()
        if min(dim, context, transforms) < 1 or any(width < 1 for width in hidden):
            raise UsageError(f"a coupling flow needs dim, context, transforms and hidden widths >= 1, got {dim}, {context}, {transforms} and {list(hidden)}")
        if dim < 2:
            raise UsageError("a coupling flow splits z in two: it needs latent_dim >= 2 (use 'diagonal' or 'full' for one latent)")
        self.dim, self.context = dim, context
        self.num_params = 2 * dim + context
        self.flow = zuko.flows.RealNVP(features=dim, context=context, transforms=transforms, hidden_features=tuple(hidden))

    def forward(self, params: Tensor) -> Distribution:
        loc, log_scale, context = params.split([self.dim, self.dim, self.context], -1)
        affine = AffineTransform(loc, log_scale.exp(), event_dim=1)
        return TransformedDistribution(self.flow(context), [affine], validate_args=False)

    def params_of(self, distribution: Distribution) -> Tensor:
        raise UsageError("a flow has no parameters that make it a given distribution: start per-point inference from the encoder (init 'encoder')")
