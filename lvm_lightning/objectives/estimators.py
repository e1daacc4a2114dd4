"""Estimators of log p_θ(x): exact enumeration (or a closed form), prior sampling, importance sampling and the ELBO.

An estimator is an object with one interface: ``estimate`` (the value log p̂(x) per point, with the
log-weights it was reduced from), ``objective`` (the training surrogate for θ and φ beside that
value, kept apart as Pyro keeps ``loss`` and ``differentiable_loss``), ``diagnostics`` (its own
standard error and weight statistics) and ``unsupported`` (why it does not apply to a model, if it does not). Sampled
estimators draw log-weights shaped [K, B] in chunks, so memory stays bounded however large K is.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional

import torch
from torch import Tensor
from torch.distributions import Distribution
from torch.utils.checkpoint import checkpoint

from lvm_lightning.errors import UsageError
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import psis
from lvm_lightning.objectives.encoder import EncoderObjective, resolve_encoder_objective, unsupported_encoder_objective, wake_objective
from lvm_lightning.objectives.gradients import NOT_REPARAMETERIZABLE, GradientEstimator, Objective, Reparameterized

DEFAULT_CHUNK_SIZE = 2**16


@dataclass
class Estimate:
    """log p̂(x) per point, shape [B], the log-weights [K, B] it was reduced from, and any per-point statistics [B] of how they were drawn."""

    log_px: Tensor
    log_weights: Tensor
    statistics: dict[str, Tensor] = field(default_factory=dict)

    def effective_sample_size(self) -> Tensor:
        """ESS = (Σ_k w_k)² / Σ_k w_k² per point, between 1 and K."""
        lw = self.log_weights
        return torch.exp(2 * lw.logsumexp(0) - (2 * lw).logsumexp(0))

    def log_weight_std(self) -> Tensor:
        """Standard deviation over k of log w_k per point: 0 when the proposal is the true posterior."""
        if self.log_weights.shape[0] < 2:
            return torch.zeros_like(self.log_px)
        return self.log_weights.std(0)


def log_mean_exp_stderr(estimate: Estimate) -> Tensor:
    """The standard error of log (1/K) Σ_k w_k by the delta method: √((K/ESS − 1)/K), per point."""
    k = estimate.log_weights.shape[0]
    return ((k / estimate.effective_sample_size() - 1).clamp(min=0) / k).sqrt()


def log_mean_exp_diagnostics(estimate: Estimate) -> dict[str, Tensor]:
    """ESS/K, the spread of the log-weights, ``log_mean_exp_stderr`` and, for K >= 25, PSIS's k̂ (``psis.diagnostics``), per point, for an estimate log (1/K) Σ_k w_k."""
    diagnostics = {
        "ess_fraction": estimate.effective_sample_size() / estimate.log_weights.shape[0],
        "log_weight_std": estimate.log_weight_std(),
        "log_px_stderr": log_mean_exp_stderr(estimate),
    }
    if psis.fits(estimate.log_weights.shape[0]):  # fewer draws leave no tail to fit: no key rather than a NaN logged
        diagnostics.update(psis.diagnostics(psis.pareto_k(estimate.log_weights)))
    return diagnostics


class Estimator:
    """Base class. θ follows the estimate's gradient; φ follows it too where the estimate is reparameterized
    in q_φ, and otherwise ``encoder_objective`` with θ held constant: ``elbo`` (reverse KL) or ``wake``
    (forward KL, enumerated; the default for an enumerable z, see objectives/encoder.py)."""

    name = ""
    trains = True  # whether ``objective`` can train θ and φ
    exact = False  # whether ``estimate`` is log p(x) itself, not a stochastic lower bound on it
    estimates_log_px = True  # whether the estimate is meant as log p(x) (the ELBO is a bound of its own kind)
    advice = "raise its K (--num_samples)"  # what makes a loose estimate tighter, for the cross-checks' warnings

    def __init__(self, encoder_objective: Optional[EncoderObjective] = None) -> None:
        self.encoder_objective = encoder_objective

    def unsupported(self, model: LatentVariableModel) -> Optional[str]:
        """Why this estimator cannot estimate log p(x) for ``model``; None when it can."""
        return unsupported_encoder_objective(self.encoder_objective, model)

    def unsupported_training(self, model: LatentVariableModel) -> Optional[str]:
        """Why ``objective`` cannot train ``model`` (``unsupported`` having found nothing); None when it can.

        Its encoder signal (the ELBO's path or the enumerated sums) needs a continuous z or an enumerable one.
        """
        if not model.continuous and not model.enumerable:
            return NOT_REPARAMETERIZABLE.format(q="q_φ(z|x)", also=" and z has too many values to enumerate")
        return None

    def check(self, model: LatentVariableModel) -> None:
        """UsageError with the reason ``unsupported`` gives, if it gives one."""
        reason = self.unsupported(model)
        if reason is not None:
            raise UsageError(reason)

    def check_training(self, model: LatentVariableModel) -> None:
        """UsageError with the reason ``unsupported_training`` gives, if it gives one."""
        reason = self.unsupported_training(model)
        if reason is not None:
            raise UsageError(reason)

    def estimate(self, model: LatentVariableModel, x: Tensor) -> Estimate:
        """log p̂_θ(x) per point, with its log-weights."""
        raise NotImplementedError

    def objective(self, model: LatentVariableModel, x: Tensor) -> Objective:
        """The estimate, plus the encoder's own signal (θ constant) since this estimate's gradient does not reach φ."""
        log_px = self.estimate(model, x).log_px
        return Objective(log_px + self.encoder_signal(model, x), log_px)

    def encoder_signal(self, model: LatentVariableModel, x: Tensor) -> Tensor:
        """The per-point quantity [B] whose maximization in φ trains the encoder when the estimate's gradient does not."""
        if resolve_encoder_objective(self.encoder_objective, model) == "wake":
            return wake_objective(model, x)
        return amortized_elbo(model, x)

    def refined_posterior(self, model: LatentVariableModel, x: Tensor) -> Optional[Distribution]:
        """The q(z|x) this estimator refines q_φ(z|x) into for the points ``x`` (semi-amortized inference); None when it trains on q_φ itself."""
        return None

    def stderr(self, estimate: Estimate) -> Tensor:
        """The standard error of log p̂(x) per point: how far a repeat of the estimate would move."""
        return torch.zeros_like(estimate.log_px)

    def draws(self) -> Optional[Hashable]:
        """What this estimator's random draws are: estimators with equal (not None) draws can reduce one set of log-weights."""
        return None

    def from_log_weights(self, log_weights: Tensor) -> Estimate:
        """The estimate from log-weights [K, B] that another estimator with the same ``draws`` made."""
        raise NotImplementedError

    def diagnostics(self, estimate: Estimate) -> dict[str, Tensor]:
        """Per-point diagnostics [B] by name, logged as ``STAGE/NAME/ESTIMATOR``."""
        return {}

    def settings(self) -> dict[str, Any]:
        """Settings a report should state beside the value (an AIS schedule); K is reported for every estimator."""
        return {}


class Exact(Estimator):
    """log p(x) = log Σ_z p(z) p_θ(x|z) by enumerating z, or the model's closed-form marginal (``model.marginal()``) where it has one."""

    name = "exact"
    exact = True

    def unsupported(self, model: LatentVariableModel) -> Optional[str]:
        if model.marginal() is None and not model.enumerable:
            return (
                "the 'exact' estimator needs an enumerable latent (e.g. MixtureModel) or a model with a closed-form marginal "
                "(e.g. LinearGaussian): choose PriorSampling or ImportanceSampling"
            )
        return super().unsupported(model)

    def estimate(self, model: LatentVariableModel, x: Tensor) -> Estimate:
        marginal = model.marginal()
        if marginal is None and not model.enumerable:
            self.check(model)  # raises: nothing here is exact
        log_weights = marginal.log_prob(x)[None] if marginal is not None else model.log_joint(x, model.support())
        return Estimate(log_weights.logsumexp(0), log_weights)


def tractable(model: LatentVariableModel) -> bool:
    """Whether log p(x) has an exact form here (an enumerable z, or a closed-form marginal)."""
    return Exact().unsupported(model) is None


class SampledEstimator(Estimator):
    """log p̂(x) = log (1/K) Σ_k w_k over K log-weights drawn ``chunk_size`` (sample × point) pairs at a time by ``sampler``.

    Under autograd every chunk's graph would live until the backward pass, so training memory would grow
    with K × batch. ``recompute`` keeps only each chunk's log-weights and recomputes its graph, with the
    same random draws, during the backward pass (``torch.utils.checkpoint``): memory of one chunk, the
    same gradient, about one more forward pass of time.
    """

    def __init__(
        self, num_samples: int = 1, chunk_size: Optional[int] = None, encoder_objective: Optional[EncoderObjective] = None, recompute: bool = False
    ) -> None:
        super().__init__(encoder_objective)
        if num_samples < 1:
            raise UsageError(f"{self.name} needs num_samples >= 1, got {num_samples}: pass K >= 1")
        if chunk_size is not None and chunk_size < 1:
            raise UsageError(f"chunk_size must be >= 1, got {chunk_size}")
        self.num_samples = num_samples
        self.chunk_size = chunk_size or DEFAULT_CHUNK_SIZE
        self.recompute = recompute

    def sampler(self, model: LatentVariableModel, x: Tensor) -> Callable[[int], Tensor]:
        """A function k -> k fresh log-weights for every point, shape [k, B]."""
        raise NotImplementedError

    def reduce(self, log_weights: Tensor) -> Tensor:
        """log (1/K) Σ_k w_k."""
        return log_weights.logsumexp(0) - math.log(log_weights.shape[0])

    def estimate(self, model: LatentVariableModel, x: Tensor) -> Estimate:
        return self.collect(self.sampler(model, x), x.shape[0])

    def draws(self) -> Optional[Hashable]:
        """The ``sampler`` function itself and K: a subclass that draws otherwise (its own ``sampler`` or ``estimate``) shares no draws."""
        return (type(self).sampler, type(self).estimate, self.num_samples)

    def from_log_weights(self, log_weights: Tensor) -> Estimate:
        return Estimate(self.reduce(log_weights), log_weights)

    def collect(self, draw: Callable[[int], Tensor], batch_size: int) -> Estimate:
        """The estimate from K log-weights that ``draw`` makes in chunks of at most chunk_size (sample × point) pairs."""
        return self.from_log_weights(self.draw_all(draw, batch_size))

    def draw_all(self, draw: Callable[[int], Tensor], batch_size: int) -> Tensor:
        """``draw(k)`` [k, B, …] for chunks of k samples that sum to K, each of at most chunk_size (sample × point) pairs, concatenated: [K, B, …]."""
        per_chunk = max(1, self.chunk_size // max(1, batch_size))
        sizes = [min(per_chunk, self.num_samples - start) for start in range(0, self.num_samples, per_chunk)]
        if self.recompute and torch.is_grad_enabled():
            # preserve_rng_state (the default): the recomputation draws the very samples of the forward pass.
            chunks = [checkpoint(draw, k, use_reentrant=False) for k in sizes]
        else:
            chunks = [draw(k) for k in sizes]
        return chunks[0] if len(chunks) == 1 else torch.cat(chunks)

    def stderr(self, estimate: Estimate) -> Tensor:
        return log_mean_exp_stderr(estimate)

    def diagnostics(self, estimate: Estimate) -> dict[str, Tensor]:
        """ESS/K, the spread of the log-weights, the standard error and, for K >= 25, the Pareto k̂."""
        return log_mean_exp_diagnostics(estimate)


class PriorSampling(SampledEstimator):
    """log (1/K) Σ_k p_θ(x|z_k), z_k ~ p(z)."""

    name = "prior_sampling"
    advice = "raise its K (--num_samples), or read importance sampling, whose q_φ(z|x) needs far fewer draws"

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
    # Without reparameterization log q carries no valid gradient for φ; φ then learns from the encoder objective.
    return model.log_joint(x, z, frozen) - (log_q if q.has_rsample else log_q.detach())


class ImportanceSampling(SampledEstimator):
    """log (1/K) Σ_k p_θ(x, z_k) / q_φ(z_k|x), z_k ~ q_φ(z|x); K = 1 is the ELBO, and it is exact when q = p_θ(z|x).

    θ always follows the bound's gradient, Σ_k w̃_k ∇_θ log w_k with w̃_k = w_k / Σ_j w_j. ``gradient`` chooses φ's
    (objectives/gradients.py): ``Reparameterized()`` the reparameterized bound's (IWAE; K = 1 is the VAE), ``STL()`` its
    path derivative alone, ``DReG()`` the doubly reparameterized one, ``VIMCO()`` a score function for a q that cannot be
    reparameterized. Under ``Reparameterized()``, a q that cannot be reparameterized over an enumerable z follows ``encoder_objective``.
    """

    name = "importance_sampling"
    advice = "raise its K (--num_samples), or compare with AIS (--estimators importance_sampling ais)"

    def __init__(
        self,
        num_samples: int = 1,
        chunk_size: Optional[int] = None,
        encoder_objective: Optional[EncoderObjective] = None,
        recompute: bool = False,
        gradient: GradientEstimator = Reparameterized(),
    ) -> None:
        super().__init__(num_samples, chunk_size, encoder_objective, recompute)
        if not isinstance(gradient, GradientEstimator):
            raise UsageError(f"{self.name} takes gradient a GradientEstimator (Reparameterized(), STL(), DReG() or VIMCO()), got {gradient!r}")
        if self.refuses(gradient):
            raise UsageError(f"{self.name} takes gradient Reparameterized() or STL() (made for its mean of log-weights), got {gradient!r}")
        if num_samples < gradient.min_samples:
            raise UsageError(f"gradient {gradient!r} needs num_samples >= {gradient.min_samples}, got {num_samples}")
        self.gradient = gradient

    def refuses(self, gradient: GradientEstimator) -> bool:
        """Whether ``gradient`` is made for another bound than this one (the log-mean-exp takes every one)."""
        return False

    def unsupported(self, model: LatentVariableModel) -> Optional[str]:
        return super().unsupported(model) or self.gradient.unsupported(model)

    def unsupported_training(self, model: LatentVariableModel) -> Optional[str]:
        if not self.gradient.reparameterized:  # a score function needs only samples of q and their log-densities
            return None
        return super().unsupported_training(model)

    def sampler(self, model: LatentVariableModel, x: Tensor) -> Callable[[int], Tensor]:
        q = model.posterior(x)
        return lambda k: importance_log_weights(model, x, q, k)

    def estimate_with(self, model: LatentVariableModel, x: Tensor, q: Distribution, frozen: bool = False, density: Optional[Distribution] = None) -> Estimate:
        """The same estimate with z_k ~ q for any proposal q of batch shape [B] (amortized or per-point); see importance_log_weights."""
        return self.collect(lambda k: importance_log_weights(model, x, q, k, frozen, density), x.shape[0])

    def objective(self, model: LatentVariableModel, x: Tensor) -> Objective:
        q = model.posterior(x)
        return self.objective_with(model, x, q, lambda: model.posterior(x, frozen=True))

    def objective_with(self, model: LatentVariableModel, x: Tensor, q: Distribution, detached: Callable[[], Distribution], frozen: bool = False) -> Objective:
        """The training surrogate with z_k ~ q for any q of batch shape [B], by ``gradient``; ``detached()`` is q with its parameters held constant."""
        return self.gradient.objective(self, model, x, q, detached, frozen)


class ELBO(ImportanceSampling):
    """ELBO(q_φ) = E_q[log p_θ(x, z) − log q_φ(z|x)], the mean of K log-weights (not their log-mean-exp); φ's gradient Reparameterized or STL."""

    name = "elbo"
    estimates_log_px = False

    def refuses(self, gradient: GradientEstimator) -> bool:
        return gradient.log_mean_exp

    def reduce(self, log_weights: Tensor) -> Tensor:
        return log_weights.mean(0)

    def stderr(self, estimate: Estimate) -> Tensor:
        """The standard error of a mean: std_k(log w_k) / √K."""
        return estimate.log_weight_std() / math.sqrt(estimate.log_weights.shape[0])

    def diagnostics(self, estimate: Estimate) -> dict[str, Tensor]:
        """The spread of the log-weights and the standard error (an ESS says nothing about a mean of log-weights)."""
        return {"log_weight_std": estimate.log_weight_std(), "log_px_stderr": self.stderr(estimate)}


def elbo(model: LatentVariableModel, x: Tensor, q: Distribution, num_samples: int = 1) -> Tensor:
    """ELBO(q) = E_q[log p_θ(x, z) − log q(z)] with θ constant, shape [B] (= log p(x) − KL(q || p_θ(z|x))), for any q of batch shape [B].

    An enumerable z is summed over exactly (no score-function noise); otherwise ``num_samples``
    reparameterized log-weights are averaged.
    """
    if model.enumerable:
        support = model.support()
        log_joint = model.log_joint(x, support, frozen=True)  # [C, B]
        log_q = q.log_prob(support)  # [C, B]
        return (log_q.exp() * (log_joint - log_q)).sum(0)
    return ELBO(num_samples).estimate_with(model, x, q, frozen=True).log_px


def amortized_elbo(model: LatentVariableModel, x: Tensor) -> Tensor:
    """ELBO(q_φ) with θ constant, shape [B]: ``elbo`` with the encoder's q_φ(z|x)."""
    return elbo(model, x, model.posterior(x))


def evaluation_estimators(model: LatentVariableModel, num_samples: int, chunk_size: Optional[int] = None) -> list[Estimator]:
    """Every estimate that applies to ``model``, the built-ins of every evaluation (``estimates.Evaluators``): exact when tractable,
    prior- and importance-sampled at K = ``num_samples``, and the ELBO."""
    sampled = [PriorSampling(num_samples, chunk_size), ImportanceSampling(num_samples, chunk_size), ELBO(num_samples, chunk_size)]
    return ([Exact()] if tractable(model) else []) + sampled


def applies(estimator: Estimator, model: LatentVariableModel) -> bool:
    """Whether ``estimator`` can be used with ``model`` (``unsupported`` finds nothing)."""
    return estimator.unsupported(model) is None
