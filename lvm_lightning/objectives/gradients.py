"""Gradient estimators: how an importance-sampled bound hands the encoder φ its gradient.

Every one draws K log-weights log w_k = log p_θ(x, z_k) − log q_φ(z_k|x), z_k ~ q_φ(z|x), reduced by the bound
(log (1/K) Σ_k w_k, or their mean for the ELBO), and builds a surrogate whose value is the bound and whose gradient is
the bound's for θ, Σ_k w̃_k ∇_θ log w_k with w̃_k = w_k / Σ_j w_j. They differ in φ's gradient, and each declares what
that needs: ``reparameterized`` (z_k = g_φ(ε_k) differentiated through, so a q with ``rsample``), ``log_mean_exp`` (made
for the bound log (1/K) Σ_k w_k, not for the ELBO's mean), ``unbiased`` (its expectation is the bound's gradient at
every K) and ``min_samples``; ``unsupported(model)`` says what else a model must have. An estimator composes one:
``ImportanceSampling(num_samples=10, gradient=DReG())``, or in YAML ``gradient: {class_path: lvm_lightning.objectives.DReG}``.
"""

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Optional

import torch
from torch import Tensor
from torch.distributions import Distribution

from lvm_lightning.errors import UsageError
from lvm_lightning.models.lvm import LatentVariableModel

if TYPE_CHECKING:
    from lvm_lightning.objectives.estimators import ImportanceSampling

NOT_REPARAMETERIZABLE = (
    "{q} cannot be reparameterized{also}: train with ImportanceSampling, gradient VIMCO and K >= 2 "
    "(--model.estimator lvm_lightning.objectives.ImportanceSampling --model.estimator.init_args.gradient VIMCO)"
)


@dataclass
class Objective:
    """What a training step maximizes: ``surrogate`` [B], whose gradient trains θ and φ, and ``log_px`` [B], the estimate's value."""

    surrogate: Tensor
    log_px: Tensor


class GradientEstimator:
    """Base class: ``objective`` builds the surrogate of a bound whose log-weights are drawn from a proposal q of batch shape [B]."""

    reparameterized = True  # z_k = g_φ(ε_k), differentiated through: q must have rsample (a continuous z)
    log_mean_exp = False  # made for the bound log (1/K) Σ_k w_k only, not for the ELBO's mean of log w_k
    unbiased = True  # E[its gradient] is the bound's gradient at every K
    min_samples = 1  # the fewest draws K it can work from

    def unsupported(self, model: LatentVariableModel) -> Optional[str]:
        """Why this gradient cannot serve ``model``; None when it can."""
        return None

    def objective(
        self, bound: "ImportanceSampling", model: LatentVariableModel, x: Tensor, q: Distribution, detached: Callable[[], Distribution], frozen: bool = False
    ) -> Objective:
        """The surrogate [B] and value [B] of ``bound`` with z_k ~ q; ``detached()`` is q with its parameters held constant, and ``frozen`` holds θ constant."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _require_rsample(q: Distribution, model: LatentVariableModel) -> None:
    """UsageError, with what to do instead, where q has no reparameterized sampler."""
    if not q.has_rsample:
        also = "" if model.enumerable else " and z has too many values to enumerate"
        raise UsageError(NOT_REPARAMETERIZABLE.format(q=f"q_φ(z|x) ({type(q).__name__})", also=also))


class Reparameterized(GradientEstimator):
    """The reparameterized bound's own gradient (IWAE; K = 1 is the VAE). A q that cannot be reparameterized over an
    enumerable z gives φ no gradient through the bound: φ then follows the estimator's ``encoder_objective``."""

    def objective(
        self, bound: "ImportanceSampling", model: LatentVariableModel, x: Tensor, q: Distribution, detached: Callable[[], Distribution], frozen: bool = False
    ) -> Objective:
        if not q.has_rsample:
            if not model.enumerable:
                _require_rsample(q, model)
            log_px = bound.estimate_with(model, x, q, frozen).log_px
            return Objective(log_px + bound.encoder_signal(model, x), log_px)
        log_px = bound.estimate_with(model, x, q, frozen).log_px
        return Objective(log_px, log_px)


class PathDerivative(GradientEstimator):
    """A gradient through the samples z_k ~ q_φ(z|x) alone (log q_φ held constant in φ): it needs a continuous z."""

    def unsupported(self, model: LatentVariableModel) -> Optional[str]:
        if not model.continuous:
            return f"gradient {type(self).__name__} differentiates through z ~ q_φ(z|x): it needs a continuous z; for a categorical one use VIMCO"
        return None


class STL(PathDerivative):
    """ "Sticking the landing" (Roeder et al., 2017): the path derivative alone, log q_φ held constant in φ, whose variance
    vanishes as q_φ reaches p_θ(z|x); biased for the K > 1 bound (Tucker et al., 2018)."""

    unbiased = False

    def objective(
        self, bound: "ImportanceSampling", model: LatentVariableModel, x: Tensor, q: Distribution, detached: Callable[[], Distribution], frozen: bool = False
    ) -> Objective:
        _require_rsample(q, model)
        log_px = bound.estimate_with(model, x, q, frozen, density=detached()).log_px
        return Objective(log_px, log_px)


class DReG(PathDerivative):
    """Doubly reparameterized (Tucker et al., 2018): Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ, unbiased, with an SNR that does not fall with K."""

    log_mean_exp = True

    def objective(
        self, bound: "ImportanceSampling", model: LatentVariableModel, x: Tensor, q: Distribution, detached: Callable[[], Distribution], frozen: bool = False
    ) -> Objective:
        """The bound [B] whose backward pass gives φ the DReG gradient: STL log-weights, with each z_k's gradient scaled by w̃_k."""
        _require_rsample(q, model)
        density = detached()
        normalized: list[Tensor] = []  # w̃ [K, B], known once every chunk is drawn and before the backward pass reads it
        drawn = [0]

        def draw(k: int) -> Tensor:
            rows = slice(drawn[0], drawn[0] + k)
            drawn[0] += k
            z = q.rsample((k,))
            if z.requires_grad:  # not with a frozen encoder: θ alone learns, by the IWAE gradient
                # ∂bound/∂z_k = w̃_k ∂log w_k/∂z_k; scaled once more by w̃_k it is DReG's, while θ keeps the IWAE gradient.
                z.register_hook(lambda grad: grad * normalized[0][rows].reshape(k, -1, *[1] * (grad.dim() - 2)))
            return model.log_joint(x, z, frozen) - density.log_prob(z)

        log_weights = bound.draw_all(draw, x.shape[0])
        normalized.append(torch.softmax(log_weights.detach(), 0))
        log_px = bound.reduce(log_weights)
        return Objective(log_px, log_px)


class VIMCO(GradientEstimator):
    """Variational inference for Monte Carlo objectives (Mnih & Rezende, 2016): the score function
    Σ_k (L̂ − L̂_{−k}) ∇_φ log q_φ(z_k|x) with leave-one-out baselines, for any q that can be sampled and scored
    (a categorical z, however many values it has); each baseline is made of the other K − 1 draws."""

    reparameterized = False
    log_mean_exp = True
    min_samples = 2

    def objective(
        self, bound: "ImportanceSampling", model: LatentVariableModel, x: Tensor, q: Distribution, detached: Callable[[], Distribution], frozen: bool = False
    ) -> Objective:
        """The bound [B] plus a zero-valued term whose gradient is VIMCO's score-function part."""

        def draw(k: int) -> Tensor:
            z = q.sample((k,))
            log_q = q.log_prob(z)
            return torch.stack([model.log_joint(x, z, frozen) - log_q, log_q], -1)

        log_weights, log_q = bound.draw_all(draw, x.shape[0]).unbind(-1)
        log_px = bound.reduce(log_weights)
        signal = ((log_px.detach() - leave_one_out_bounds(log_weights.detach())) * log_q).sum(0)
        return Objective(log_px + signal - signal.detach(), log_px)


def leave_one_out_bounds(log_weights: Tensor) -> Tensor:
    """L̂_{−k} = log (1/K) (Σ_{j≠k} w_j + exp(mean_{j≠k} log w_j)): the bound with w_k replaced by the others' geometric mean, [K, B]."""
    k = log_weights.shape[0]
    # A weight of 0 (log w = −inf) makes the others' geometric mean 0 for every other sample, and drops out of its own.
    zero = ~torch.isfinite(log_weights)
    finite = torch.where(zero, 0.0, log_weights)
    others_zero = zero.sum(0) - zero.long()
    others_mean = torch.where(others_zero > 0, -math.inf, (finite.sum(0) - finite) / (k - 1))
    total = log_weights.logsumexp(0)
    # log(Σ_j w_j − w_k) loses no precision while w_k ≤ Σ_j w_j / 2, true for all but the largest w_k: that one is summed without it.
    others = total + torch.log1p(-(log_weights - total).exp().clamp(max=0.5))
    largest = log_weights.argmax(0, keepdim=True)
    without_largest = log_weights.scatter(0, largest, -math.inf).logsumexp(0, keepdim=True)
    others = others.scatter(0, largest, without_largest)
    return torch.logaddexp(others, others_mean) - math.log(k)
