"""Posterior families beyond the fully factorized Gaussian: every correlation (``FullCovarianceGaussian``), a normalizing flow
(``CouplingFlow``, zuko's affine-coupling RealNVP), and a flow whose every parameter is per point (``LocalFlow``). Like the families of families.py: unconstrained params rows [..., P] in, a
torch.distributions object with ``rsample`` and ``log_prob`` out, so they serve the amortized encoder and per-point q* alike.

zuko, not Pyro's transforms or nflows: its flows are torch.distributions objects conditioned on a context tensor (Pyro's
conditional transforms need ``condition`` calls and pull in Pyro; nflows has its own distribution classes and has not had
a release since 2023), it is MIT-licensed, small, pure PyTorch, and runs wherever torch does (docs/architecture.md).
"""

import math

import torch
import zuko
from torch import Tensor, nn
from torch.distributions import AffineTransform, Distribution, Independent, MultivariateNormal, Normal, TransformedDistribution, constraints
from torch.distributions.transforms import IndependentTransform, Transform

from lvm_lightning.errors import UsageError
from lvm_lightning.memory import check_fits


class FullCovarianceGaussian(nn.Module):
    """N(μ, L Lᵀ) over R^dim from params [μ, the lower triangle of L row by row], with log L_ii in place of L_ii."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise UsageError(f"a Gaussian needs dim >= 1, got {dim}")
        self.dim = dim
        self.num_params = dim + dim * (dim + 1) // 2
        # Index lists written out on the host, not boolean masks: a mask's positions are data (nonzero), which the meta
        # device of the checkpoint loader's size check cannot compute.
        pairs = [(i, j) for i in range(dim) for j in range(i + 1)]
        off = [k for k, (i, j) in enumerate(pairs) if i != j]
        for name, values in {
            "rows": [i for i, _ in pairs],
            "cols": [j for _, j in pairs],
            "off_entries": off,
            "off_rows": [pairs[k][0] for k in off],
            "off_cols": [pairs[k][1] for k in off],
            "diagonal_entries": [k for k, (i, j) in enumerate(pairs) if i == j],
            "diagonal": list(range(dim)),
        }.items():
            self.register_buffer(name, torch.tensor(values, dtype=torch.long), persistent=False)
        self.register_buffer("on_diagonal", self.rows == self.cols, persistent=False)

    def loc_and_scale(self, params: Tensor) -> tuple[Tensor, Tensor]:
        """μ [..., dim] and the lower-triangular L [..., dim, dim] of params rows [..., num_params]."""
        loc, entries = params.split([self.dim, self.num_params - self.dim], -1)
        scale = entries.new_zeros(*entries.shape[:-1], self.dim, self.dim)
        # Written into a fresh tensor, off-diagonal and diagonal apart: exp never meets an off-diagonal entry (no inf·0 gradients).
        scale[..., self.off_rows, self.off_cols] = entries[..., self.off_entries]
        scale[..., self.diagonal, self.diagonal] = entries[..., self.diagonal_entries].exp()
        return loc, scale

    def forward(self, params: Tensor) -> Distribution:
        loc, scale = self.loc_and_scale(params)
        return MultivariateNormal(loc, scale_tril=scale, validate_args=False)

    def standard_rows(self) -> Tensor:
        """Which params are zero at q = N(μ, I): all but μ (L = I, and for a local flow the identity maps)."""
        rows = torch.zeros(self.num_params, dtype=torch.bool)
        rows[self.dim :] = True
        return rows

    def params_of(self, distribution: Distribution) -> Tensor:
        """The params of a Gaussian ``distribution`` (full or diagonal covariance) over R^dim."""
        scale = distribution.scale_tril if isinstance(distribution, MultivariateNormal) else torch.diag_embed(distribution.stddev)
        entries = scale[..., self.rows, self.cols]
        entries = torch.where(self.on_diagonal, entries.clamp(min=torch.finfo(entries.dtype).tiny).log(), entries)
        return torch.cat([distribution.mean, entries], -1)


class SinhArcsinhTransform(Transform):
    """y = sinh(b · asinh(x) − a) elementwise, b = exp(log_tail): skew a and tail weight b, the identity at a = 0, b = 1 (Jones & Pewsey, 2009)."""

    domain = constraints.real
    codomain = constraints.real
    bijective = True
    sign = +1

    def __init__(self, skew: Tensor, log_tail: Tensor, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.skew, self.log_tail = skew, log_tail

    def with_cache(self, cache_size: int = 1) -> "SinhArcsinhTransform":
        return self if self._cache_size == cache_size else SinhArcsinhTransform(self.skew, self.log_tail, cache_size)

    def _call(self, x: Tensor) -> Tensor:
        return torch.sinh(self.log_tail.exp() * torch.asinh(x) - self.skew)

    def _inverse(self, y: Tensor) -> Tensor:
        return torch.sinh((torch.asinh(y) + self.skew) / self.log_tail.exp())

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        """log b + log cosh(b asinh(x) − a) − ½ log(1 + x²), with log cosh t = |t| + log(1 + e^(−2|t|)) − log 2 (no overflow)."""
        t = (self.log_tail.exp() * torch.asinh(x) - self.skew).abs()
        return self.log_tail + t + torch.log1p(torch.exp(-2 * t)) - math.log(2) - 0.5 * torch.log1p(x.square())


class LowerTriangularAffine(Transform):
    """y = μ + L x over R^dim for a lower-triangular L with positive diagonal; inverse by a triangular solve."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True
    sign = +1

    def __init__(self, loc: Tensor, scale_tril: Tensor, cache_size: int = 0) -> None:
        super().__init__(cache_size=cache_size)
        self.loc, self.scale_tril = loc, scale_tril

    def with_cache(self, cache_size: int = 1) -> "LowerTriangularAffine":
        return self if self._cache_size == cache_size else LowerTriangularAffine(self.loc, self.scale_tril, cache_size)

    def _call(self, x: Tensor) -> Tensor:
        return self.loc + (self.scale_tril @ x[..., None])[..., 0]

    def _inverse(self, y: Tensor) -> Tensor:
        scale = self.scale_tril.expand(*y.shape[:-1], *self.scale_tril.shape[-2:])
        return torch.linalg.solve_triangular(scale, (y - self.loc)[..., None], upper=False)[..., 0]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return self.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1).expand(x.shape[:-1])


class LocalFlow(nn.Module):
    """z = μ + L g(ε), ε ~ N(0, I), g ``layers`` elementwise sinh-arcsinh maps (skew and tail weight per coordinate): a normalizing flow
    every parameter of which sits in one params row [μ, L as FullCovarianceGaussian's, (a, log b) per layer], so that per-point
    inference fits a flow per point (Cremer et al.'s local flow), batched as any q*. It holds every Gaussian (a = 0, log b = 0), so
    q* starts from a Gaussian encoder's q_φ exactly; its density has a closed-form inverse, so AIS and the STL gradient apply."""

    def __init__(self, dim: int, layers: int = 2) -> None:
        super().__init__()
        if layers < 1:
            raise UsageError(f"a local flow needs layers >= 1, got {layers}")
        self.gaussian = FullCovarianceGaussian(dim)
        self.dim, self.layers = dim, layers
        self.num_params = self.gaussian.num_params + 2 * layers * dim

    def forward(self, params: Tensor) -> Distribution:
        gaussian, shapes = params.split([self.gaussian.num_params, 2 * self.layers * self.dim], -1)
        loc, scale = self.gaussian.loc_and_scale(gaussian)
        layers = shapes.unflatten(-1, (self.layers, 2, self.dim))
        base = Independent(Normal(torch.zeros_like(loc), torch.ones_like(loc), validate_args=False), 1, validate_args=False)
        maps = [IndependentTransform(SinhArcsinhTransform(layers[..., k, 0, :], layers[..., k, 1, :]), 1) for k in range(self.layers)]
        return TransformedDistribution(base, [*maps, LowerTriangularAffine(loc, scale)], validate_args=False)

    def standard_rows(self) -> Tensor:
        """Which params are zero at q = N(μ, I): all but μ (L = I, and for a local flow the identity maps)."""
        rows = torch.zeros(self.num_params, dtype=torch.bool)
        rows[self.dim :] = True
        return rows

    def params_of(self, distribution: Distribution) -> Tensor:
        """The params that make the flow the Gaussian ``distribution``: identity maps after its μ and L."""
        gaussian = self.gaussian.params_of(distribution)
        return torch.cat([gaussian, gaussian.new_zeros(*gaussian.shape[:-1], 2 * self.layers * self.dim)], -1)


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
        # zuko reads its coupling masks' sizes (``.item()``), which the meta device (the checkpoint loader's size check) cannot
        # give: the flow is built on the CPU even there, once its weights, at most (dim + context + 1) → hidden → 2 dim per
        # transform, are known to fit.
        widths = [dim + context, *hidden, 2 * dim]
        check_fits(4 * transforms * sum((a + 1) * b for a, b in zip(widths, widths[1:])), f"a coupling flow over {dim} latents", "lower its sizes")
        with torch.device("cpu"):
            self.flow = zuko.flows.RealNVP(features=dim, context=context, transforms=transforms, hidden_features=tuple(hidden))

    def forward(self, params: Tensor) -> Distribution:
        loc, log_scale, context = params.split([self.dim, self.dim, self.context], -1)
        affine = AffineTransform(loc, log_scale.exp(), event_dim=1)
        return TransformedDistribution(self.flow(context), [affine], validate_args=False)

    def standard_rows(self) -> Tensor:
        """Which params are zero at σ = 1: the log σ block (the context h keeps its start)."""
        rows = torch.zeros(self.num_params, dtype=torch.bool)
        rows[self.dim : 2 * self.dim] = True
        return rows

    def params_of(self, distribution: Distribution) -> Tensor:
        raise UsageError("a flow has no parameters that make it a given distribution: start per-point inference from the encoder (init 'encoder')")
