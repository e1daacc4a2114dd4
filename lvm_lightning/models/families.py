"""Parametric families: an unconstrained tensor [..., num_params] in, a torch.distributions object out.

Encoders, decoders and per-point variational parameters all go through these, so a family is
written once whatever produces its parameters. torch.distributions' argument checks are off
(``validate_args=False``): each check reads a tensor back to the host, about ten syncs a training
step on a GPU. The data are checked against the likelihood's support once, when a run starts
(``check_support``); the parameters come from unconstrained tensors and are valid by construction.

A family is any ``nn.Module`` that is a ``Family`` (the Protocol below); what more it offers, it declares by the optional
Protocols ``StartsAtData``, ``StartsNearStandard`` and ``ExpressesDistributions``, which the model asks for by ``isinstance``.
A model takes its families as classes (``class_path`` and ``init_args`` in YAML), made for the dimension the model supplies.
"""

from collections.abc import Mapping
from typing import Callable, Literal, Protocol, Union, runtime_checkable

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, ContinuousBernoulli, Distribution, Independent, Normal, constraints

from lvm_lightning.errors import UsageError
from lvm_lightning.models.bernoulli import IndependentBernoulli
from lvm_lightning.models.flows import CouplingFlow, FullCovarianceGaussian, LocalFlow

GaussianStd = Union[float, Literal["learned", "shared"]]


@runtime_checkable
class Family(Protocol):
    """A parametric family: unconstrained parameter rows [..., num_params] in, a torch Distribution out (an nn.Module's forward)."""

    num_params: int

    def forward(self, params: Tensor) -> Distribution: ...


@runtime_checkable
class StartsAtData(Protocol):
    """A family whose parameters can be read off data: a decoder's output starts at the data's own fit of it."""

    def data_params(self, x: Tensor) -> Tensor:
        """The params [P] of the family fitted to the rows ``x`` [N, D] by their column statistics."""
        ...


@runtime_checkable
class StartsNearStandard(Protocol):
    """A family with parameters that are zero at a unit scale: an encoder starts at q(z|x) = N(μ(x), I)."""

    def standard_rows(self) -> Tensor:
        """Which params [P] (a bool mask) are zero at unit scale."""
        ...


@runtime_checkable
class ExpressesDistributions(Protocol):
    """A family that can give the params of a distribution it holds: per-point inference starts from the prior or another encoder."""

    def params_of(self, distribution: Distribution) -> Tensor:
        """The params [..., P] for which the family is ``distribution`` (UsageError where it has none)."""
        ...


class DiagonalGaussian(nn.Module):
    """N(μ, diag σ²) over R^dim from params [μ, log σ]; σ is the params' second half, a shared
    learned scalar (``std="shared"``) or a fixed float."""

    def __init__(self, dim: int, std: GaussianStd = "learned") -> None:
        super().__init__()
        if isinstance(std, str) and std not in ("learned", "shared"):
            raise UsageError(f"std must be 'learned', 'shared' or a positive number, got {std!r}")
        if not isinstance(std, str) and not std > 0:
            raise UsageError(f"a fixed std must be positive, got {std}")
        self.dim = dim
        self.std = std
        if std == "shared":
            self.log_std = nn.Parameter(torch.zeros(()))

    @property
    def num_params(self) -> int:
        return 2 * self.dim if self.std == "learned" else self.dim

    def forward(self, params: Tensor) -> Distribution:
        if self.std == "learned":
            loc, log_std = params.chunk(2, dim=-1)
            scale = log_std.exp()
        elif self.std == "shared":
            loc, scale = params, self.log_std.exp().expand_as(params)
        else:
            loc, scale = params, torch.full_like(params, float(self.std))
        return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)

    def data_params(self, x: Tensor) -> Tensor:
        """The params [P] of the columns' own Gaussian: their means and, where learned, the log of their spread."""
        loc = x.mean(0)
        if self.std == "learned":
            return torch.cat([loc, _log_spread(x)])
        if self.std == "shared":
            self.log_std.copy_(_log_spread(x).exp().square().mean().sqrt().log())
        return loc

    def standard_rows(self) -> Tensor:
        """Which params are zero at σ = 1: the log σ half (none for a shared or fixed σ)."""
        rows = torch.zeros(self.num_params, dtype=torch.bool)
        if self.std == "learned":
            rows[self.dim :] = True
        return rows

    def params_of(self, distribution: Distribution) -> Tensor:
        """The params [μ, log σ] (or μ) of a diagonal Gaussian ``distribution``."""
        if self.std != "learned":
            return distribution.mean
        return torch.cat([distribution.mean, distribution.stddev.log()], -1)

    @property
    def isotropic(self) -> bool:
        """Whether one σ serves every coordinate and point (shared or fixed), so that the noise is isotropic."""
        return self.std != "learned"

    def common_std(self) -> Tensor:
        """The σ that every coordinate and point shares, a scalar tensor (the learned one, or the fixed number); UsageError where the params give σ."""
        if self.std == "learned":
            raise UsageError("this Gaussian's σ comes with each point's params: it has no common σ")
        return self.log_std.exp() if self.std == "shared" else torch.tensor(float(self.std))

    def component_variances(self, variances: Tensor, weights: Tensor) -> Tensor:
        """The variances [C, D] nearest ``variances`` that C components (weights [C]) in this family can have: their own where σ
        is learned, one pooled Σ_c w_c mean_d σ²_cd where σ is shared, the fixed σ² where it is fixed."""
        if self.std == "learned":
            return variances
        if self.std == "shared":
            return torch.full_like(variances, float(weights @ variances.mean(1)))
        return torch.full_like(variances, float(self.std) ** 2)

    def component_params(self, means: Tensor, variances: Tensor) -> Tensor:
        """The params rows [C, P] of components N(means_c, diag variances_c) that the family holds (``component_variances``);
        a shared σ is set to theirs."""
        if self.std == "learned":
            return torch.cat([means, 0.5 * variances.log()], 1)
        if self.std == "shared":
            self.log_std.copy_(0.5 * variances[0, 0].log())
        return means


class CategoricalFamily(nn.Module):
    """Categorical over {0, …, num_categories−1} with probabilities softmax(params)."""

    def __init__(self, num_categories: int) -> None:
        super().__init__()
        self.num_params = num_categories

    def forward(self, params: Tensor) -> Distribution:
        return Categorical(logits=params, validate_args=False)

    def params_of(self, distribution: Distribution) -> Tensor:
        """The normalized logits of a categorical ``distribution``."""
        return distribution.logits


class IndependentCategoricalFamily(nn.Module):
    """M independent categoricals over {0, …, C−1}^M, z_m with probabilities softmax(params_m), params [..., M·C]."""

    def __init__(self, num_variables: int, num_categories: int) -> None:
        super().__init__()
        self.shape = (num_variables, num_categories)
        self.num_params = num_variables * num_categories

    def forward(self, params: Tensor) -> Distribution:
        return Independent(Categorical(logits=params.unflatten(-1, self.shape), validate_args=False), 1, validate_args=False)

    def params_of(self, distribution: Distribution) -> Tensor:
        """The normalized logits, flattened, of independent categoricals ``distribution``."""
        return distribution.base_dist.logits.flatten(-2)


def _log_spread(x: Tensor) -> Tensor:
    """log of each column's standard deviation [D], with a floor for constant columns."""
    return x.std(0).clamp(min=1e-3).log() if len(x) > 1 else torch.zeros_like(x[0])


def _logit_of_mean(x: Tensor) -> Tensor:
    """logit of each column's mean [D], the mean kept a little away from 0 and 1 (pixels that are always off or on)."""
    return torch.logit(x.mean(0).clamp(1e-3, 1 - 1e-3))


class BernoulliFamily(nn.Module):
    """Independent Bernoulli(sigmoid(params)) over {0, 1}^dim: for binary data only."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_params = dim

    def data_params(self, x: Tensor) -> Tensor:
        """Each pixel's logit of its frequency: the decoder starts as the data's independent-pixel model."""
        return _logit_of_mean(x)

    def forward(self, params: Tensor) -> Distribution:
        return IndependentBernoulli(params)


class ContinuousBernoulliFamily(nn.Module):
    """Independent continuous Bernoulli(sigmoid(params)) over [0, 1]^dim (Loaiza-Ganem & Cunningham, 2019)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_params = dim

    def data_params(self, x: Tensor) -> Tensor:
        """Each column's logit of its mean (the continuous Bernoulli's mean is near it away from ½)."""
        return _logit_of_mean(x)

    def forward(self, params: Tensor) -> Distribution:
        return Independent(ContinuousBernoulli(logits=params, validate_args=False), 1, validate_args=False)


SUPPORTS = {constraints.boolean: "binary values {0, 1}", constraints.unit_interval: "values in [0, 1]"}
# Networks start with outputs of order 1 and Adam moves them by about lr a step: real data beyond this take
# millions of steps to reach, and their squared errors leave float32's range (3e38) from |x| ~ 1e19 on.
LARGEST_REAL = 1e6


def check_support(likelihood: Distribution, x: Tensor, where: str, hint: str, standardized: bool = False) -> None:
    """Raises UsageError, ending with ``hint``, unless every row of ``x`` lies in the support that ``likelihood`` declares (real values:
    within ±LARGEST_REAL, unless the model sees them ``standardized``)."""
    support = likelihood.support
    base = getattr(support, "base_constraint", support)
    if bool(support.check(x).all()):
        largest = float(x.abs().max()) if base is constraints.real and not standardized else 0.0
        if largest > LARGEST_REAL:
            raise UsageError(
                f"{where} holds values up to |x| = {largest:.3g}, beyond the {LARGEST_REAL:.0e} that a model starting at scale 1 fits in float32: "
                "standardize the data (--data.standardize true, or (x - mean) / std per column)"
            )
        return
    needs = SUPPORTS.get(base, f"values in {base}")
    raise UsageError(f"the decoder's likelihood needs {needs} but {where} has others: {hint}")


# A family factory: a family class (YAML ``class_path`` and ``init_args``) that the model calls with the dimension it supplies, as
# LightningCLI's OptimizerCallable is called with the parameters. Its objects are ``Family`` (checked by ``make_family``); the slot
# names nn.Module, the class each of them is, because the command line and the checkpoint loader admit a class by inheritance.
FamilyFactory = Callable[[int], nn.Module]
# The short names of the shipped families: what a config or checkpoint may give instead of a class path.
POSTERIORS: dict[str, FamilyFactory] = {"diagonal": DiagonalGaussian, "full": FullCovarianceGaussian, "flow": CouplingFlow, "local_flow": LocalFlow}
LIKELIHOODS: dict[str, FamilyFactory] = {"gaussian": DiagonalGaussian, "bernoulli": BernoulliFamily, "continuous_bernoulli": ContinuousBernoulliFamily}
# The names as the annotations that the command line and the checkpoint loader read, made from the mappings above.
PosteriorChoice = Union[Literal[tuple(POSTERIORS)], FamilyFactory]  # type: ignore[valid-type]
LikelihoodChoice = Union[Literal[tuple(LIKELIHOODS)], FamilyFactory]  # type: ignore[valid-type]


def make_family(choice: Union[str, FamilyFactory], dim: int, names: Mapping[str, FamilyFactory], part: str) -> nn.Module:
    """The family ``choice`` for ``dim``: a short name in ``names`` or a family factory, called with ``dim`` and checked to be a Family."""
    if isinstance(choice, str):
        if choice not in names:
            raise UsageError(f"unknown {part} {choice!r}: choose one of {', '.join(names)} or a family class (class_path)")
        choice = names[choice]
    family = choice(dim)
    if not isinstance(family, nn.Module) or not isinstance(family, Family):
        raise UsageError(f"the {part} {type(family).__name__} is not a family: it must be an nn.Module with num_params and forward(params) -> Distribution")
    return family


def likelihood_family(choice: LikelihoodChoice, dim: int, std: GaussianStd = "learned") -> nn.Module:
    """The observation family p(x|·) over ``dim`` columns: a short name (LIKELIHOODS; the Gaussian's σ is ``std``) or a family factory."""
    if isinstance(choice, str) and LIKELIHOODS.get(choice) is DiagonalGaussian:
        return DiagonalGaussian(dim, std)
    if std != "learned":
        raise UsageError(
            "decoder_std sets the σ of likelihood 'gaussian': leave it 'learned' for other likelihoods, and give a family class its σ in its init_args"
        )
    return make_family(choice, dim, LIKELIHOODS, "likelihood")
