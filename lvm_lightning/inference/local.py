"""Per-point (local) variational inference: λ_i = argmax_λ L(q_λ; x_i) for every datapoint, θ frozen.

Each point owns an unconstrained parameter row λ_i (mean and log-std for a Gaussian q, logits for a
categorical q) that the encoder's family turns into q_λ. All rows are one [N, P] tensor moved by one
batched Adam, so the cost of a step is one decoder pass over K × N samples. Only λ receives
gradients: the decoder runs on detached parameters, and the model's optimizer is never touched.
"""

from dataclasses import dataclass, field
from typing import Literal, Optional, Sequence, get_args

import torch
from torch import Tensor
from torch.distributions import Distribution

from lvm_lightning.errors import UsageError
from lvm_lightning.inference.ais import Init, fisher_divergence
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import ELBO, STL, GradientEstimator, ImportanceSampling, elbo
from lvm_lightning.objectives.estimators import DEFAULT_CHUNK_SIZE

Bound = Literal["elbo", "iwae"]
Precision = Literal["32", "bf16"]
Stopping = Literal["point", "batch"]
BEST_SAMPLES = 16  # draws of each start for init 'best' (AIS's init_samples)


@dataclass
class LocalResult:
    """λ* [N, P]; Adam steps each point took [N]; whether it met the plateau rule before the cap [N]; λ after k steps for each recorded k."""

    params: Tensor
    steps: Tensor
    converged: Tensor
    snapshots: dict[int, Tensor] = field(default_factory=dict)


class _RowAdam:
    """Adam ascent on rows of λ that all took the same number of steps, so one bias correction serves them all; each row has its own step size."""

    def __init__(self, params: Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.betas, self.eps = betas, eps
        self.lr = torch.full((len(params), 1), lr, dtype=params.dtype, device=params.device)
        self.m, self.v = torch.zeros_like(params), torch.zeros_like(params)

    def ascend(self, params: Tensor, grad: Tensor, step: int) -> Tensor:
        """λ + lr · m̂ / (√v̂ + ε) after folding ``grad`` into the moments."""
        b1, b2 = self.betas
        self.m.lerp_(grad, 1 - b1)
        self.v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.v / (1 - b2**step)).sqrt_().add_(self.eps)
        return params + self.lr / (1 - b1**step) * self.m / denom

    def decay(self, rows: Tensor, factor: float) -> None:
        """Multiply the step size of the rows where ``rows`` [R] is true by ``factor``."""
        self.lr = torch.where(rows[:, None], self.lr * factor, self.lr)

    def keep(self, rows: Tensor) -> None:
        """Drop the moments and step sizes of every row not in ``rows`` (indices into the current rows)."""
        self.m, self.v, self.lr = self.m[rows], self.v[rows], self.lr[rows]


@dataclass
class LocalOptimizer:
    """Fits q_λᵢ(z) per point by Adam on L(λ) = ELBO (or the K-sample IWAE bound), θ frozen.

    A Gaussian q follows the reparameterized gradient, by default its "sticking the landing" form
    (Roeder et al., 2017), whose variance vanishes as q_λ reaches p_θ(z|x): Adam's jitter at the
    optimum then shrinks too, instead of leaving λ a step size away (STL is biased for the IWAE
    bound, which therefore needs another ``gradient``, e.g. ``Reparameterized()``). ``precision="bf16"`` autocasts the steps'
    matrix products to bfloat16 (about 1.5x faster on CPUs with AVX512-BF16; the bound's value moves
    by ~0.02 nats, far below its Monte Carlo noise); whatever evaluates q* afterwards runs in float32.

    Stops a point (``stopping="point"``) or the whole batch (``"batch"``) by the plateau rule of
    Cremer et al. (2018): every ``check_every`` steps the bound averaged over those steps is
    compared with its best so far; at each check without a rise of more than ``tolerance`` nats its
    step size is multiplied by ``decay`` (Adam's jitter at a fixed step size keeps λ a step away from
    the optimum), and after ``patience`` such checks it stops (a noise-free bound rises by ever
    smaller amounts and would never stop without a tolerance); ``max_steps`` is the budget of the points that do not, which then count as
    unconverged. Points stop one by one, so the budget costs only the slow points; the defaults,
    shared by the gap callback and ``evaluate``, stop most points of the shipped models in a few
    hundred steps; Cremer et al.'s are max_steps=5000, check_every=100, patience=10. A categorical
    q uses the exact enumerated ELBO (its optimum is the exact posterior, so the IWAE option does not apply).

    Args:
        num_samples: K, the samples of each step's bound.
        bound: the bound q* maximizes: elbo, or iwae (the K-sample bound).
        init: where q* starts: encoder (q_φ(z|x)) or prior (p(z)).
        lr: Adam's step size; default: the model's (``step_size``).
        max_steps: the budget of steps; a point still improving then counts as unconverged.
        check_every: steps between the plateau rule's checks.
        patience: checks without a rise of more than ``tolerance`` before a point stops.
        tolerance: nats of rise that count as improvement.
        decay: the factor of the step size at each check without improvement (1: constant).
        stopping: point (each point stops on its own) or batch (all at once).
        gradient: stl (sticking the landing) or reparam (needed by the IWAE bound).
        precision: 32, or bf16 (the steps' matrix products in bfloat16).
    """

    num_samples: int = 10
    bound: Bound = "elbo"
    init: Init = "encoder"
    lr: Optional[float] = None  # None: step_size(model)
    max_steps: int = 2000
    check_every: int = 50
    patience: int = 5
    tolerance: float = 1e-5
    decay: float = 0.5
    stopping: Stopping = "point"
    gradient: Optional[GradientEstimator] = None  # None: STL() (a default instance would not serialize into a run's config)
    precision: Precision = "32"

    def __post_init__(self) -> None:
        if min(self.num_samples, self.max_steps, self.check_every, self.patience) < 1 or not (self.lr is None or self.lr > 0) or not self.tolerance >= 0:
            raise UsageError("num_samples, max_steps, check_every and patience must be >= 1, lr > 0 and tolerance >= 0")
        if not 0 < self.decay <= 1:
            raise UsageError(f"decay must be in (0, 1] (1: a constant step size), got {self.decay}")
        choices = {"bound": Bound, "init": Init, "stopping": Stopping, "precision": Precision}
        for name, allowed in ((name, get_args(literal)) for name, literal in choices.items()):
            value = getattr(self, name)
            if value not in allowed:
                raise UsageError(f"unknown {name} {value!r}: choose one of {', '.join(allowed)}")
        if self.bound == "iwae" and not self.path_gradient().unbiased:
            raise UsageError(
                f"gradient {self.path_gradient()!r} is biased for the IWAE bound (Tucker et al., 2018): pass e.g. Reparameterized() with bound 'iwae'"
            )
        self.bounded()  # the bound refuses a gradient made for another one

    def step_size(self, model: LatentVariableModel) -> float:
        """Adam's learning rate: ``lr``, else 0.1 for logits (the enumerated ELBO is noise-free) and 1e-2 for a Gaussian's μ and log σ.

        Cremer et al. used 1e-3 for the Gaussian; with the STL gradient 1e-2 reaches the same ELBO(q*) in ~10x fewer steps (README).
        """
        if self.lr is not None:
            return self.lr
        return 0.1 if model.enumerable else 1e-2

    def posterior(self, model: LatentVariableModel, params: Tensor) -> Distribution:
        """q_λ for parameter rows ``params`` [N, P], through the encoder's family."""
        return model.posterior_from(params)

    @torch.no_grad()
    def initial_params(self, model: LatentVariableModel, x: Tensor) -> Tensor:
        """λ⁰ [N, P]: the encoder's output, the parameters that make q_λ the prior, or ('best') per point the one of the two whose q
        has the smaller Fisher divergence from p_θ(z|x), each from ``BEST_SAMPLES`` draws (as AIS chooses its start)."""
        if self.init == "encoder":
            return model.posterior_params(x).detach()
        prior = model.prior_params().detach().expand(len(x), -1).clone()
        if self.init == "prior":
            return prior
        encoder = model.posterior_params(x).detach()
        from_encoder, from_prior = (fisher_divergence(model, x, self.posterior(model, p), BEST_SAMPLES, DEFAULT_CHUNK_SIZE) for p in (encoder, prior))
        return torch.where(~(from_encoder <= from_prior)[:, None], prior, encoder)  # the prior where the encoder's is not a number

    def objective(self, model: LatentVariableModel, x: Tensor, params: Tensor) -> Tensor:
        """L(λ_i; x_i) per point [N], θ held constant."""
        q = self.posterior(model, params)
        if model.enumerable:
            return elbo(model, x, q)
        return self.bounded().objective_with(model, x, q, lambda: self.posterior(model, params.detach()), frozen=True).surrogate

    def bounded(self) -> ImportanceSampling:
        """The bound L(λ) at K = num_samples, its gradient in λ by ``gradient``."""
        return (ImportanceSampling if self.bound == "iwae" else ELBO)(self.num_samples, gradient=self.path_gradient())

    def path_gradient(self) -> GradientEstimator:
        """``gradient``, STL() where none is given."""
        return self.gradient if self.gradient is not None else STL()

    def unsupported(self, model: LatentVariableModel) -> Optional[str]:
        """Why per-point inference with these settings cannot fit ``model``'s posterior; None when it can."""
        if not model.enumerable and not model.continuous:
            return "per-point inference follows the ELBO's gradient, which needs a continuous z or an enumerable one: this z is neither (raise the model's max_enumerate)"
        if self.bound == "iwae" and model.enumerable:
            return "bound 'iwae' needs a Gaussian latent: a categorical q is fit by the exact enumerated ELBO"
        if not model.enumerable and self.path_gradient().unsupported(model):  # an enumerable z is fit by the exact ELBO, whatever the gradient
            return self.path_gradient().unsupported(model)
        if self.init == "best" and not model.continuous:
            return "init 'best' compares the two starts by Fisher divergence, in z: it needs a continuous z; choose 'encoder' or 'prior'"
        if self.init != "encoder":
            try:
                with torch.no_grad():
                    model.prior_params()
            except UsageError as error:  # the encoder's family cannot hold the prior
                return str(error)
        return None

    def check(self, model: LatentVariableModel) -> None:
        """UsageError with the reason ``unsupported`` gives, if it gives one."""
        reason = self.unsupported(model)
        if reason is not None:
            raise UsageError(reason)

    def fit(self, model: LatentVariableModel, x: Tensor, record_at: Sequence[int] = ()) -> LocalResult:
        """Optimizes every point's λ from ``initial_params``; ``record_at`` keeps a copy of λ after each listed step count."""
        self.check(model)
        # Gradients reach λ only; enable_grad lets callers run this inside no_grad or validation code.
        with torch.enable_grad():
            return self._fit(model, x, record_at)

    def _fit(self, model: LatentVariableModel, x: Tensor, record_at: Sequence[int]) -> LocalResult:
        params = self.initial_params(model, x)
        n = len(x)
        steps = torch.zeros(n, dtype=torch.long, device=x.device)
        best = torch.full((n,), -torch.inf, dtype=params.dtype, device=x.device)
        stale = torch.zeros(n, dtype=torch.long, device=x.device)
        snapshots = {0: params.clone()} if 0 in record_at else {}
        # The rows still being optimized, kept compact between checks so stopped points cost nothing.
        active = torch.arange(n, device=x.device)
        rows, x_rows, adam = params.clone(), x, _RowAdam(params, self.step_size(model))
        window = torch.zeros(n, dtype=params.dtype, device=x.device)
        for step in range(1, self.max_steps + 1):
            rows.requires_grad_(True)
            with torch.autocast(x.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
                value = self.objective(model, x_rows, rows)
            (grad,) = torch.autograd.grad(value.sum(), rows)
            with torch.no_grad():
                rows = adam.ascend(rows.detach(), grad, step)
                window += value.detach()
            if step in record_at:
                snapshots[step] = params.index_copy(0, active, rows)
            if step % self.check_every and step < self.max_steps:
                continue
            params.index_copy_(0, active, rows)
            steps[active] = step
            if step % self.check_every == 0:
                keep = self._plateau(window / self.check_every, best, stale, active, adam)
                active, rows, x_rows = active[keep], rows[keep], x_rows[keep]
                adam.keep(keep)
                window = torch.zeros(len(active), dtype=params.dtype, device=x.device)
            if len(active) == 0:  # host sync once per check, not per step
                break
        for k in record_at:
            snapshots.setdefault(k, params.clone())
        return LocalResult(params, steps, stale >= self.patience, snapshots)

    def _plateau(self, mean: Tensor, best: Tensor, stale: Tensor, active: Tensor, adam: _RowAdam) -> Tensor:
        """Updates best and stale for the active points from this window's mean bound, decays the step size of those that did not
        improve, and returns which of them go on."""
        if self.stopping == "batch":
            # One shared record: every active point carries the batch mean.
            mean = mean.mean().expand_as(mean)
        improved = mean > best[active] + self.tolerance
        best[active] = torch.where(improved, mean, best[active])
        stale[active] = torch.where(improved, 0, stale[active] + 1)
        adam.decay(~improved, self.decay)
        return (stale[active] < self.patience).nonzero().squeeze(-1)
