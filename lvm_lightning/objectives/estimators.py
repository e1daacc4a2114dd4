"""Estimators of log p_θ(x): exact enumeration (or a closed form), prior sampling, importance sampling and the ELBO.

An estimator is an object with one interface: ``estimate`` (the value log p̂(x) per point, with the
log-weights it was reduced from), ``objective`` (the training surrogate for θ and φ beside that
value, kept apart as Pyro keeps ``loss`` and ``differentiable_loss``), ``diagnostics`` (its own
standard error and weight statistics) and ``check`` (whether it applies to a model). Sampled
estimators draw log-weights shaped [K, B] in chunks, so memory stays bounded however large K is.
"""

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Literal, Optional, Sequence, get_args

import torch
from torch import Tensor
from torch.distributions import Distribution
from torch.utils.checkpoint import checkpoint

from lvm_lightning.errors import UsageError
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import psis
from lvm_lightning.objectives.encoder import EncoderObjective, resolve_encoder_objective, wake_objective

DEFAULT_CHUNK_SIZE = 2**16
NOT_REPARAMETERIZABLE = (
    "{q} cannot be reparameterized{also}: train with ImportanceSampling, gradient 'vimco' and K >= 2 "
    "(--model.estimator lvm_lightning.objectives.ImportanceSampling --model.estimator.init_args.gradient vimco)"
)


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


@dataclass
class Objective:
    """What a training step maximizes: ``surrogate`` [B], whose gradient trains θ and φ, and ``log_px`` [B], the estimate's value."""

    surrogate: Tensor
    log_px: Tensor


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

    def check(self, model: LatentVariableModel) -> None:
        """Raise UsageError if this estimator cannot be used with ``model``."""
        resolve_encoder_objective(self.encoder_objective, model)

    def check_training(self, model: LatentVariableModel) -> None:
        """Raise UsageError if ``objective`` cannot train ``model`` (``check`` having passed).

        Its encoder signal (the ELBO's path or the enumerated sums) needs a continuous z or an enumerable one.
        """
        if not model.continuous and not model.enumerable:
            raise UsageError(NOT_REPARAMETERIZABLE.format(q="q_φ(z|x)", also=" and z has too many values to enumerate"))

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

    def check(self, model: LatentVariableModel) -> None:
        super().check(model)
        if model.marginal() is None and not model.enumerable:
            raise UsageError(
                "the 'exact' estimator needs an enumerable latent (e.g. MixtureModel) or a model with a closed-form marginal "
                "(e.g. LinearGaussian): choose PriorSampling or ImportanceSampling"
            )

    def estimate(self, model: LatentVariableModel, x: Tensor) -> Estimate:
        marginal = model.marginal()
        if marginal is None and not model.enumerable:
            self.check(model)  # raises: nothing here is exact
        log_weights = marginal.log_prob(x)[None] if marginal is not None else model.log_joint(x, model.support())
        return Estimate(log_weights.logsumexp(0), log_weights)


def tractable(model: LatentVariableModel) -> bool:
    """Whether log p(x) has an exact form here (an enumerable z, or a closed-form marginal)."""
    return applies(Exact(), model)


class SampledEstimator(Estimator):
    """log p̂(x) = log (1/K) Σ_k w_k over K log-weights drawn ``chunk_size`` (sample × point) pairs at a time from ``proposal``.

    Under autograd every chunk's graph would live until the backward pass, so training memory would grow
    with K × batch. ``recompute`` keeps only each chunk's log-weights and recomputes its graph, with the
    same random draws, during the backward pass (``torch.utils.checkpoint``): memory of one chunk, the
    same gradient, about one more forward pass of time.
    """

    proposal = ""  # the distribution z_k is drawn from, as a name: estimators with one proposal and K share draws

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
        return (self.proposal, self.num_samples)

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
    proposal = "p(z)"
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


Gradient = Literal["reparam", "stl", "dreg", "vimco"]


class ImportanceSampling(SampledEstimator):
    """log (1/K) Σ_k p_θ(x, z_k) / q_φ(z_k|x), z_k ~ q_φ(z|x); K = 1 is the ELBO, and it is exact when q = p_θ(z|x).

    θ always follows the bound's gradient, Σ_k w̃_k ∇_θ log w_k with w̃_k = w_k / Σ_j w_j. ``gradient`` chooses φ's:
    'reparam' the reparameterized bound's (IWAE; K = 1 is the VAE); 'stl' its path derivative alone, log q_φ held
    constant in φ (Roeder et al., 2017; biased for K > 1); 'dreg' Σ_k w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ, unbiased with an
    SNR that does not fall with K (Tucker et al., 2018); 'vimco' the score function Σ_k (L̂ − L̂_{−k}) ∇_φ log q_φ(z_k|x)
    with leave-one-out baselines, for a q that cannot be reparameterized (Mnih & Rezende, 2016). Under 'reparam', a q
    that cannot be reparameterized over an enumerable z follows ``encoder_objective``.
    """

    name = "importance_sampling"
    proposal = "q_φ(z|x)"
    advice = "raise its K (--num_samples), or compare with AIS (--estimators importance_sampling ais)"
    gradients: tuple[str, ...] = get_args(Gradient)

    def __init__(
        self,
        num_samples: int = 1,
        chunk_size: Optional[int] = None,
        encoder_objective: Optional[EncoderObjective] = None,
        recompute: bool = False,
        gradient: Gradient = "reparam",
    ) -> None:
        super().__init__(num_samples, chunk_size, encoder_objective, recompute)
        if gradient not in self.gradients:
            raise UsageError(f"{self.name} takes gradient {', '.join(map(repr, self.gradients))}, got {gradient!r}")
        if gradient == "vimco" and num_samples < 2:
            raise UsageError("gradient 'vimco' needs num_samples >= 2: each sample's baseline is made of the other K - 1")
        self.gradient = gradient

    def check(self, model: LatentVariableModel) -> None:
        super().check(model)
        if self.gradient in ("stl", "dreg") and not model.continuous:
            raise UsageError(f"gradient {self.gradient!r} differentiates through z ~ q_φ(z|x): it needs a continuous z; for a categorical one use 'vimco'")

    def check_training(self, model: LatentVariableModel) -> None:
        if self.gradient != "vimco":  # VIMCO's score function needs only samples of q and their log-densities
            super().check_training(model)

    def sampler(self, model: LatentVariableModel, x: Tensor) -> Callable[[int], Tensor]:
        q = model.posterior(x)
        return lambda k: importance_log_weights(model, x, q, k)

    def estimate_with(self, model: LatentVariableModel, x: Tensor, q: Distribution, frozen: bool = False, density: Optional[Distribution] = None) -> Estimate:
        """The same estimate with z_k ~ q for any proposal q of batch shape [B] (amortized or per-point); see importance_log_weights."""
        return self.collect(lambda k: importance_log_weights(model, x, q, k, frozen, density), x.shape[0])

    def objective(self, model: LatentVariableModel, x: Tensor) -> Objective:
        q = model.posterior(x)
        if self.gradient == "vimco":
            return self._vimco(model, x, q)
        if not q.has_rsample:
            if self.gradient != "reparam" or not model.enumerable:
                also = "" if model.enumerable else " and z has too many values to enumerate"
                raise UsageError(NOT_REPARAMETERIZABLE.format(q=f"q_φ(z|x) ({type(q).__name__})", also=also))
            log_px = self.estimate_with(model, x, q).log_px
            return Objective(log_px + self.encoder_signal(model, x), log_px)
        if self.gradient == "reparam":
            log_px = self.estimate_with(model, x, q).log_px
        elif self.gradient == "stl":
            log_px = self.estimate_with(model, x, q, density=model.posterior(x, frozen=True)).log_px
        else:
            log_px = self._dreg(model, x, q)
        return Objective(log_px, log_px)

    def _dreg(self, model: LatentVariableModel, x: Tensor, q: Distribution) -> Tensor:
        """The bound [B] whose backward pass gives φ the DReG gradient: STL log-weights, with each z_k's gradient scaled by w̃_k."""
        density = model.posterior(x, frozen=True)
        normalized: list[Tensor] = []  # w̃ [K, B], known once every chunk is drawn and before the backward pass reads it
        drawn = [0]

        def draw(k: int) -> Tensor:
            rows = slice(drawn[0], drawn[0] + k)
            drawn[0] += k
            z = q.rsample((k,))
            if z.requires_grad:  # not with a frozen encoder: θ alone learns, by the IWAE gradient
                # ∂bound/∂z_k = w̃_k ∂log w_k/∂z_k; scaled once more by w̃_k it is DReG's, while θ keeps the IWAE gradient.
                z.register_hook(lambda grad: grad * normalized[0][rows].reshape(k, -1, *[1] * (grad.dim() - 2)))
            return model.log_joint(x, z) - density.log_prob(z)

        log_weights = self.draw_all(draw, x.shape[0])
        normalized.append(torch.softmax(log_weights.detach(), 0))
        return self.reduce(log_weights)

    def _vimco(self, model: LatentVariableModel, x: Tensor, q: Distribution) -> Objective:
        """The bound [B] plus a zero-valued term whose gradient is VIMCO's score-function part, Σ_k (L̂ − L̂_{−k}) ∇_φ log q_φ(z_k|x)."""

        def draw(k: int) -> Tensor:
            z = q.sample((k,))
            log_q = q.log_prob(z)
            return torch.stack([model.log_joint(x, z) - log_q, log_q], -1)

        log_weights, log_q = self.draw_all(draw, x.shape[0]).unbind(-1)
        log_px = self.reduce(log_weights)
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


class ELBO(ImportanceSampling):
    """ELBO(q_φ) = E_q[log p_θ(x, z) − log q_φ(z|x)], the mean of K log-weights (not their log-mean-exp); φ's gradient 'reparam' or 'stl'."""

    name = "elbo"
    gradients = ("reparam", "stl")
    estimates_log_px = False

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


def evaluation_estimators(
    model: LatentVariableModel,
    num_samples: int,
    chunk_size: Optional[int] = None,
    names: Optional[Sequence[str]] = None,
    optional: Sequence[Estimator] = (),
) -> list[Estimator]:
    """Every estimate that applies to ``model`` (exact when tractable, prior- and importance-sampled at K, the ELBO), or those in ``names``,
    which may also name the ``optional`` ones that apply (costlier estimators, such as AIS, run only when asked for)."""
    sampled = [PriorSampling(num_samples, chunk_size), ImportanceSampling(num_samples, chunk_size), ELBO(num_samples, chunk_size)]
    applicable = {estimator.name: estimator for estimator in ([Exact()] if tractable(model) else []) + sampled}
    if names is None:
        return list(applicable.values())
    choices = {**applicable, **{estimator.name: estimator for estimator in optional if applies(estimator, model)}}
    unknown = [name for name in names if name not in choices]
    if unknown or not names:
        raise UsageError(f"unknown or inapplicable estimators {unknown or '(none given)'}: choose among {', '.join(choices)}")
    return [choices[name] for name in names]


def applies(estimator: Estimator, model: LatentVariableModel) -> bool:
    """Whether ``estimator.check(model)`` passes."""
    try:
        estimator.check(model)
    except UsageError:
        return False
    return True
