"""Estimators of log p_θ(x): exact enumeration, prior sampling and importance sampling.

Each draws log-weights shaped [K, B] and reduces them over K; K is drawn in chunks so that
memory stays bounded however large K is.
"""
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.distributions import Distribution

from lvm_lightning.errors import UsageError
from lvm_lightning.models.closed_form import linear_gaussian_marginal, linear_gaussian_parameters
from lvm_lightning.models.lvm import LatentVariableModel

DEFAULT_CHUNK_SIZE = 2**16


@dataclass
class Estimate:
    """log p̂(x) per point, shape [B], and the log-weights [K, B] it was reduced from."""

    log_px: Tensor
    log_weights: Tensor

    def effective_sample_size(self) -> Tensor:
        """ESS = (Σ_k w_k)² / Σ_k w_k² per point, between 1 and K."""
        lw = self.log_weights
        return torch.exp(2 * lw.logsumexp(0) - (2 * lw).logsumexp(0))

    def log_px_stderr(self) -> Tensor:
        """Delta-method standard error of log p̂(x) per point: √((K/ESS − 1)/K), the spread of a repeat of the estimate."""
        k = self.log_weights.shape[0]
        return ((k / self.effective_sample_size() - 1).clamp(min=0) / k).sqrt()

    def log_weight_std(self) -> Tensor:
        """Standard deviation over k of log w_k per point: 0 when the proposal is the true posterior."""
        if self.log_weights.shape[0] < 2:
            return torch.zeros_like(self.log_px)
        return self.log_weights.std(0)


class Estimator:
    """Base class: log p̂(x) = reduce_k(log w_k) over K log-weights drawn ``chunk_size`` (sample × point) pairs at a time."""

    name = ""

    def __init__(self, num_samples: int = 1, chunk_size: Optional[int] = None) -> None:
        if num_samples < 1:
            raise UsageError(f"{self.name} needs num_samples >= 1, got {num_samples}: pass K >= 1")
        self.num_samples = num_samples
        self.chunk_size = chunk_size or DEFAULT_CHUNK_SIZE

    def check(self, model: LatentVariableModel) -> None:
        """Raise UsageError if this estimator cannot be used with ``model``."""

    def sampler(self, model: LatentVariableModel, x: Tensor) -> Callable[[int], Tensor]:
        """A function k -> k fresh log-weights for every point, shape [k, B]."""
        raise NotImplementedError

    def reduce(self, log_weights: Tensor) -> Tensor:
        """log (1/K) Σ_k w_k."""
        return log_weights.logsumexp(0) - math.log(log_weights.shape[0])

    def trains_encoder(self, model: LatentVariableModel) -> bool:
        """Whether the gradient of this estimate also trains q_φ (reparameterized samples from q_φ)."""
        return False

    def estimate(self, model: LatentVariableModel, x: Tensor) -> Estimate:
        return self.collect(self.sampler(model, x), x.shape[0])

    def collect(self, draw: Callable[[int], Tensor], batch_size: int) -> Estimate:
        """The estimate from K log-weights that ``draw`` makes in chunks of at most chunk_size (sample × point) pairs."""
        per_chunk = max(1, self.chunk_size // max(1, batch_size))
        sizes = [min(per_chunk, self.num_samples - start) for start in range(0, self.num_samples, per_chunk)]
        log_weights = torch.cat([draw(k) for k in sizes])
        return Estimate(self.reduce(log_weights), log_weights)


class Exact(Estimator):
    """log p(x) = log Σ_z p(z) p_θ(x|z) by enumerating a categorical z; the closed form N(b, WWᵀ + σ²I) for the linear-Gaussian model."""

    name = "exact"

    def check(self, model: LatentVariableModel) -> None:
        if not (model.discrete or linear_gaussian_parameters(model) is not None):
            raise UsageError(
                "the 'exact' objective needs a categorical latent (or the linear-Gaussian model): "
                "set --model.latent categorical or choose prior_sampling / importance_sampling"
            )

    def estimate(self, model: LatentVariableModel, x: Tensor) -> Estimate:
        self.check(model)
        log_weights = model.log_joint(x, model.support()) if model.discrete else linear_gaussian_marginal(model).log_prob(x)[None]
        return Estimate(log_weights.logsumexp(0), log_weights)


def tractable(model: LatentVariableModel) -> bool:
    """Whether log p(x) has an exact form here (categorical z, or the linear-Gaussian model)."""
    try:
        Exact().check(model)
    except UsageError:
        return False
    return True


class PriorSampling(Estimator):
    """log (1/K) Σ_k p_θ(x|z_k), z_k ~ p(z)."""

    name = "prior_sampling"

    def sampler(self, model: LatentVariableModel, x: Tensor) -> Callable[[int], Tensor]:
        prior = model.prior()

        def draw(k: int) -> Tensor:
            z = prior.sample((k, x.shape[0]))
            # p(x, z) / p(z) with p(z) held constant: the value is p(x|z), and a learned prior still gets its gradient.
            return model.log_joint(x, z) - prior.log_prob(z).detach()

        return draw


def importance_log_weights(
    model: LatentVariableModel, x: Tensor, q: Distribution, num: int, frozen: bool = False, density: Optional[Distribution] = None
) -> Tensor:
    """log w_k = log p_θ(x, z_k) − log q(z_k), z_k ~ q, shape [num, B]; reparameterized where q allows.

    ``density`` evaluates log q(z_k) instead of q: q with detached parameters there leaves only the
    path gradient, the "sticking the landing" estimator (Roeder et al., 2017).
    """
    z = q.rsample((num,)) if q.has_rsample else q.sample((num,))
    log_q = (q if density is None else density).log_prob(z)
    # Without reparameterization log q carries no valid gradient for φ; φ then learns from amortized_elbo.
    return model.log_joint(x, z, frozen) - (log_q if q.has_rsample else log_q.detach())


class ImportanceSampling(Estimator):
    """log (1/K) Σ_k p_θ(x, z_k) / q_φ(z_k|x), z_k ~ q_φ(z|x); K = 1 is the ELBO, and it is exact when q = p_θ(z|x)."""

    name = "importance_sampling"

    def sampler(self, model: LatentVariableModel, x: Tensor) -> Callable[[int], Tensor]:
        q = model.posterior(x)
        return lambda k: importance_log_weights(model, x, q, k)

    def estimate_with(
        self, model: LatentVariableModel, x: Tensor, q: Distribution, frozen: bool = False, density: Optional[Distribution] = None
    ) -> Estimate:
        """The same estimate with z_k ~ q for any proposal q of batch shape [B] (amortized or per-point); see importance_log_weights."""
        return self.collect(lambda k: importance_log_weights(model, x, q, k, frozen, density), x.shape[0])

    def trains_encoder(self, model: LatentVariableModel) -> bool:
        return not model.discrete


class ELBO(ImportanceSampling):
    """ELBO(q_φ) = E_q[log p_θ(x, z) − log q_φ(z|x)], the mean of K log-weights (not their log-mean-exp)."""

    name = "elbo"

    def reduce(self, log_weights: Tensor) -> Tensor:
        return log_weights.mean(0)


ESTIMATORS = {cls.name: cls for cls in (Exact, PriorSampling, ImportanceSampling, ELBO)}


def make_estimator(name: str, num_samples: int = 1, chunk_size: Optional[int] = None) -> Estimator:
    """The estimator called ``name`` with K = ``num_samples``."""
    if name not in ESTIMATORS:
        raise UsageError(f"unknown estimator {name!r}: choose one of {', '.join(ESTIMATORS)}")
    return ESTIMATORS[name](num_samples, chunk_size)


def evaluation_estimators(model: LatentVariableModel, num_samples: int, chunk_size: Optional[int] = None) -> list[Estimator]:
    """Every estimate that applies to ``model``: exact when tractable, prior- and importance-sampled at K, and the ELBO."""
    candidates = [Exact(), PriorSampling(num_samples, chunk_size), ImportanceSampling(num_samples, chunk_size), ELBO(num_samples, chunk_size)]
    usable = []
    for estimator in candidates:
        try:
            estimator.check(model)
        except UsageError:
            continue
        usable.append(estimator)
    return usable
