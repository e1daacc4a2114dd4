"""Annealed importance sampling (Neal, 2001) of log p_θ(x), and its reverse for the BDMC upper bound (Grosse et al., 2015).

The path runs through f_t(z) = q₀(z)^(1−β_t) p_θ(x, z)^β_t, 0 = β_0 < … < β_T = 1, from an initial
distribution q₀ (the amortized q_φ(z|x), the prior, or per point whichever of the two is nearer the posterior in
Fisher divergence) to the unnormalized posterior p_θ(x, z). A chain z_0 ~ q₀ moved by a transition T_t that leaves
f_t invariant collects

    log w = Σ_{t=1..T} (β_t − β_{t−1}) [log p_θ(x, z_{t−1}) − log q₀(z_{t−1})],  E[w] = p_θ(x),

so log (1/C) Σ_c w_c over C chains is a stochastic lower bound on log p(x). Run backwards from an exact
posterior sample (data simulated from the model: z ~ p(z), x ~ p_θ(x|z)), the same sum estimates 1/p(x),
and −log of its mean is a stochastic upper bound: the pair brackets log p(x) (bidirectional Monte Carlo).

The transitions are Hamiltonian Monte Carlo with ``leapfrog_steps`` steps in coordinates u = z / s, s a scale per point
and coordinate (a diagonal mass matrix): s starts at q₀'s standard deviation and is re-fitted to the chains' own states
and gradients over windows of at most ``adapt_every`` transitions, each fit coming into force one window later; one step
size per point adapts toward ``target_acceptance`` after every transition (as Wu et al., 2017). The weights are computed
in z, where no choice of s enters them. Chains and points are one batch; docs/maths.md gives the argument.
"""

import math
from typing import Any, Literal, NamedTuple, Optional

import torch
from torch import Tensor
from torch.distributions import Distribution

from lvm_lightning.errors import UsageError
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives.estimators import DEFAULT_CHUNK_SIZE, Estimate, Estimator, Objective, log_mean_exp_diagnostics, log_mean_exp_stderr

Schedule = Literal["sigmoid", "linear"]
Init = Literal["best", "encoder", "prior"]

SIGMOID_SHARPNESS = 4.0  # δ of Grosse et al. (2015)'s sigmoidal schedule: dense steps near β = 0 and β = 1
STEP_SIZE_FACTOR = 1.02  # per transition, up when the acceptance rate is above the target, down when below
SCALE_PSEUDO_COUNT = 1.0  # the scale in force weighs as this many states against a window's fit (log-space average)


def annealing_schedule(num_steps: int, kind: Schedule = "sigmoid") -> Tensor:
    """β_0 = 0 < β_1 < … < β_T = 1, float64 [T + 1]: linear, or σ(δ(2t/T − 1)) rescaled to [0, 1]."""
    t = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    s = torch.sigmoid(SIGMOID_SHARPNESS * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


def adaptation_points(num_transitions: int, every: int) -> set[int]:
    """The transitions (1 … num_transitions) before which a window of recorded states closes (the start, then the state after
    each transition): windows of 1, 2, 4, … states, doubling up to ``every``; none for ``every`` = 0."""
    points, t, window = set(), 1, 1
    while every and t <= num_transitions:
        points.add(t)
        t, window = t + window, min(2 * window, every)
    return points


class _Point(NamedTuple):
    """log q₀(z), log p_θ(x, z) [C, B] at a chain's state, and their gradients in z [C, B, d]."""

    log_q: Tensor
    log_joint: Tensor
    grad_q: Tensor
    grad_joint: Tensor

    def log_f(self, beta: float) -> Tensor:
        return (1 - beta) * self.log_q + beta * self.log_joint

    def grad_f(self, beta: float) -> Tensor:
        return (1 - beta) * self.grad_q + beta * self.grad_joint

    def where(self, keep: Tensor, other: "_Point") -> "_Point":
        """This state where ``keep`` [C, B] is true, ``other`` elsewhere."""
        return _Point(*(torch.where(keep if a.dim() == keep.dim() else keep[..., None], a, b) for a, b in zip(self, other)))


class _Path:
    """The densities of one batch's path: q₀ and p_θ(x, ·) at z, with their gradients in z."""

    def __init__(self, model: LatentVariableModel, x: Tensor, q0: Distribution) -> None:
        if q0.batch_shape not in (torch.Size(), x.shape[:1]):
            raise UsageError(f"AIS needs q0 of batch shape [] or [{len(x)}] (one row per point, e.g. Independent(Normal)), got {list(q0.batch_shape)}")
        if torch.is_inference_mode_enabled():
            raise UsageError("AIS differentiates in z, which torch.inference_mode forbids: run it under torch.no_grad, or Trainer(inference_mode=False)")
        self.model, self.x, self.q0 = model, x, q0

    def initial_scale(self, z: Tensor) -> Tensor:
        """s [B, d] to start from: q₀'s standard deviation where it is finite and positive, else 1 (the adaptation corrects either)."""
        ones = torch.ones_like(z[0])
        try:
            scale = self.q0.stddev.detach().to(z).expand_as(ones)
        except NotImplementedError:  # a q₀ without closed-form moments (a flow)
            return ones
        # Heavy tails (no variance) or a point mass in a coordinate: plain scale there.
        return torch.where(torch.isfinite(scale) & (scale > 0), scale, ones)

    def __call__(self, z: Tensor) -> _Point:
        with torch.enable_grad():
            # Two leaves with one value: one backward pass gives each density's gradient apart.
            z_q, z_joint = z.detach().requires_grad_(), z.detach().requires_grad_()
            log_q = self.q0.log_prob(z_q)
            log_joint = self.model.log_joint(self.x, z_joint, frozen=True)
            grad_q, grad_joint = torch.autograd.grad((log_q + log_joint).sum(), (z_q, z_joint))
        return _Point(log_q.detach(), log_joint.detach(), grad_q, grad_joint)


class _Window:
    """Sums over chains and recent states of the states z and the gradients g = ∇ log f, per point and coordinate [B, d],
    shifted by their means over the window's first states so that a spread far below the mean keeps its precision."""

    shift: tuple[Tensor, Tensor]  # the means of z and g over the window's first states, set by its first ``add``

    def __init__(self) -> None:
        self.count = 0
        self.sums: list[Tensor] = []

    def add(self, z: Tensor, g: Tensor) -> None:
        dtype = torch.promote_types(z.dtype, torch.float32)
        if not self.count:
            self.shift = (z.mean(0, dtype=dtype), g.mean(0, dtype=dtype))
            self.sums = [torch.zeros_like(self.shift[0]) for _ in range(4)]
        dz, dg = z.to(dtype) - self.shift[0], g.to(dtype) - self.shift[1]
        for total, value in zip(self.sums, (dz, dz.square(), dg, dg.square())):
            total.add_(value.sum(0))
        self.count += len(z)

    def scale(self, previous: Tensor) -> Tensor:
        """s = (Var z / Var g)^¼ per coordinate, the diagonal whitening whose coordinates are nearest a standard normal in Fisher
        divergence (docs/maths.md), averaged in log space with ``previous`` weighing n₀ states; ``previous`` where the window has no spread."""
        n = self.count
        sum_z, sum_z2, sum_g, sum_g2 = self.sums
        # n Var = Σ d² − (Σ d)²/n ≥ 0 in exact arithmetic; the clamp keeps a rounding below 0 from a log of a negative.
        log_ss_z = (sum_z2 - sum_z.square() / n).clamp(min=0).log()
        log_ss_g = (sum_g2 - sum_g.square() / n).clamp(min=0).log()
        log_previous = previous.to(log_ss_z).log()
        log_fit = 0.25 * (log_ss_z - log_ss_g)
        log_scale = (n * log_fit + SCALE_PSEUDO_COUNT * log_previous) / (n + SCALE_PSEUDO_COUNT)
        return torch.where(torch.isfinite(log_scale), log_scale, log_previous).exp().to(previous)


class _Rowwise(Distribution):
    """q₀ chosen point by point: ``second`` in the rows where ``use_second`` [B] is true, ``first`` elsewhere."""

    arg_constraints: dict[str, Any] = {}

    def __init__(self, first: Distribution, second: Distribution, use_second: Tensor) -> None:
        self.first, self.second, self.use_second = first, second.expand(first.batch_shape), use_second
        super().__init__(first.batch_shape, first.event_shape, validate_args=False)

    def _pick(self, first: Tensor, second: Tensor) -> Tensor:
        return torch.where(self.use_second.reshape(self.use_second.shape + (1,) * len(self.event_shape)), second, first)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self._pick(self.first.sample(sample_shape), self.second.sample(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return torch.where(self.use_second, self.second.log_prob(value), self.first.log_prob(value))

    @property
    def mean(self) -> Tensor:
        return self._pick(self.first.mean, self.second.mean)

    @property
    def stddev(self) -> Tensor:
        return self._pick(self.first.stddev, self.second.stddev)


def fisher_divergence(model: LatentVariableModel, x: Tensor, q: Distribution, num: int, chunk_size: int) -> Tensor:
    """E_q ‖∇_z log q(z) − ∇_z log p_θ(x, z)‖² per point [B] from ``num`` draws of q (batch shape [B]), in chunks of at most
    chunk_size (draw × point) pairs: the Fisher divergence of q from p_θ(z|x), 0 only at q = p_θ(z|x)."""
    path, per_chunk = _Path(model, x, q), max(1, chunk_size // len(x))
    total = torch.zeros(len(x), dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
    for start in range(0, num, per_chunk):
        point = path(q.sample((min(per_chunk, num - start),)))
        total = total + (point.grad_q - point.grad_joint).to(total.dtype).square().sum(-1).sum(0)
    return total / num


class AIS(Estimator):
    """log p̂(x) = log (1/C) Σ_c w_c of C annealed importance sampling chains from q₀ to p_θ(z|x) through T intermediate
    distributions (a lower bound in expectation, tight as T → ∞); ``upper_bound`` runs the path backwards (BDMC).

    ``init``: q₀ = the amortized q_φ(z|x) ('encoder'), p(z) ('prior', which reaches every mode of a multimodal posterior),
    or per point the one of the two with the smaller Fisher divergence from p_θ(z|x), each estimated from ``init_samples`` of
    its own draws ('best': an encoder far too wide, too narrow or off gives way to the prior). ``adapt_every``: the longest
    window of transitions between fits of the per-coordinate scales (0: q₀'s standard deviations throughout). Costs about
    T × ``leapfrog_steps`` decoder passes (forward and backward) per chain and point, and 2 × ``init_samples`` per point for
    'best'. T, C and the leapfrog steps were the narrowest BDMC sandwich per second among those tried on the Fashion-MNIST VAE
    (README). An evaluation estimator: it does not train.

    Args:
        num_steps: T, the intermediate distributions from q₀ to p_θ(z|x).
        num_chains: C, the chains per point.
        leapfrog_steps: leapfrog steps of each HMC transition.
        init: q₀: best (per point, encoder or prior by Fisher divergence), encoder (q_φ(z|x)) or prior (p(z)).
        schedule: the annealing schedule of the inverse temperatures: sigmoid or linear.
        step_size: HMC's initial step size, adapted towards ``target_acceptance``.
        target_acceptance: the acceptance rate the step size is adapted to.
        adapt_every: the longest window of transitions between fits of the per-coordinate scales (0: q₀'s standard deviations).
        init_samples: draws of each candidate q₀ that estimate its Fisher divergence (init best).
        chunk_size: at most this many (chain × point) pairs run at once; default: 2¹⁶.
    """

    name = "ais"
    trains = False
    advice = "it did not mix: raise --ais.num_steps (or --ais.num_chains), or start it from the prior (--ais.init prior)"

    def __init__(
        self,
        num_steps: int = 1000,
        num_chains: int = 4,
        leapfrog_steps: int = 2,
        init: Init = "best",
        schedule: Schedule = "sigmoid",
        step_size: float = 0.1,
        target_acceptance: float = 0.65,
        adapt_every: int = 20,
        init_samples: int = 16,
        chunk_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        if min(num_steps, num_chains, leapfrog_steps, init_samples) < 1 or adapt_every < 0:
            raise UsageError(
                f"AIS needs num_steps, num_chains, leapfrog_steps and init_samples >= 1 and adapt_every >= 0, "
                f"got {num_steps}, {num_chains}, {leapfrog_steps}, {init_samples} and {adapt_every}"
            )
        if init not in ("best", "encoder", "prior") or schedule not in ("sigmoid", "linear"):
            raise UsageError(f"AIS init must be 'best', 'encoder' or 'prior' and schedule 'sigmoid' or 'linear', got {init!r} and {schedule!r}")
        if not step_size > 0 or not 0 < target_acceptance < 1:
            raise UsageError(f"AIS needs step_size > 0 and 0 < target_acceptance < 1, got {step_size} and {target_acceptance}")
        if chunk_size is not None and chunk_size < 1:
            raise UsageError(f"chunk_size must be >= 1, got {chunk_size}")
        self.num_steps, self.num_chains, self.leapfrog_steps = num_steps, num_chains, leapfrog_steps
        self.init, self.schedule, self.init_samples = init, schedule, init_samples
        self.step_size, self.target_acceptance, self.adapt_every = step_size, target_acceptance, adapt_every
        self.chunk_size = chunk_size or DEFAULT_CHUNK_SIZE

    def settings(self) -> dict[str, Any]:
        """The schedule and the sampler's settings."""
        names = ("num_steps", "num_chains", "leapfrog_steps", "init", "schedule", "step_size", "target_acceptance", "adapt_every")
        settings = {name: getattr(self, name) for name in names}
        if self.init == "best":
            settings["init_samples"] = self.init_samples
        return settings

    def describe(self, start: str = "") -> str:
        """The schedule in words, from ``start`` (default: q₀ as ``init`` says)."""
        starts = {"encoder": "q_φ(z|x)", "prior": "p(z)", "best": f"q_φ(z|x) or p(z) by Fisher divergence (K={self.init_samples})"}
        return f"AIS from {start or starts[self.init]}, T={self.num_steps} ({self.schedule}), {self.num_chains} chains, {self.leapfrog_steps} leapfrog steps"

    def unsupported(self, model: LatentVariableModel) -> Optional[str]:
        if not model.continuous:
            return "AIS moves a continuous z by Hamiltonian Monte Carlo; an enumerable z has the 'exact' estimator, a categorical one importance sampling"
        return None

    def objective(self, model: LatentVariableModel, x: Tensor) -> Objective:
        raise UsageError("AIS evaluates but does not train: train with e.g. ImportanceSampling and add AIS to --model.validation_estimators")

    def initial(self, model: LatentVariableModel, x: Tensor) -> Distribution:
        """q₀ for the points ``x``, with no gradient to φ: the amortized posterior, the prior, or ('best') per point the one of the
        two with the smaller Fisher divergence from p_θ(z|x), each from ``init_samples`` of its own draws (the prior where the
        encoder's is not a number)."""
        with torch.no_grad():
            if self.init == "prior":
                return model.prior()
            encoder = model.posterior(x)
            if self.init == "encoder":
                return encoder
            prior = model.prior().expand(x.shape[:1])
            from_encoder, from_prior = (fisher_divergence(model, x, q, self.init_samples, self.chunk_size) for q in (encoder, prior))
            # Drawn apart from the chains, the choice is independent of them given x: each point's w stays unbiased.
            return _Rowwise(encoder, prior, ~(from_encoder <= from_prior))

    def estimate(self, model: LatentVariableModel, x: Tensor) -> Estimate:
        return self._chunked(model, x, None)

    def estimate_with(self, model: LatentVariableModel, x: Tensor, q0: Distribution) -> Estimate:
        """The forward estimate from any initial distribution ``q0`` of batch shape [B] or [] (e.g. q* of per-point inference), in one chunk."""
        self.check(model)
        return self._run(model, x, q0, None)

    def upper_bound(self, model: LatentVariableModel, x: Tensor, z: Tensor) -> Estimate:
        """−log (1/C) Σ_c w_c of C reverse chains started at ``z`` [B, d], an exact sample of p_θ(z|x) each: a stochastic upper bound on log p(x)."""
        if len(z) != len(x):
            raise UsageError(f"upper_bound needs one exact posterior sample per point: {len(z)} samples for {len(x)} points")
        return self._chunked(model, x, z)

    def _chunked(self, model: LatentVariableModel, x: Tensor, z: Optional[Tensor]) -> Estimate:
        """Forward (``z`` None) or reverse chains for points in chunks of at most chunk_size (chain × point) pairs."""
        self.check(model)
        per_chunk = max(1, self.chunk_size // self.num_chains)
        parts = []
        for start in range(0, len(x), per_chunk):
            rows = slice(start, start + per_chunk)
            q0 = self.initial(model, x[rows])
            part = self._run(model, x[rows], q0, None if z is None else z[rows])
            from_prior = q0.use_second if isinstance(q0, _Rowwise) else torch.full_like(part.log_px, self.init == "prior", dtype=torch.bool)
            part.statistics["prior_start"] = from_prior.to(part.log_px.dtype)
            parts.append(part)
        if len(parts) == 1:
            return parts[0]
        stats = {key: torch.cat([p.statistics[key] for p in parts]) for key in parts[0].statistics}
        return Estimate(torch.cat([p.log_px for p in parts]), torch.cat([p.log_weights for p in parts], 1), stats)

    def _run(self, model: LatentVariableModel, x: Tensor, q0: Distribution, z: Optional[Tensor]) -> Estimate:
        path = _Path(model, x, q0)
        betas = annealing_schedule(self.num_steps, self.schedule).tolist()
        if z is None:
            start = q0.sample((self.num_chains,) if q0.batch_shape else (self.num_chains, len(x)))
        else:  # every reverse chain starts at the point's exact posterior sample
            start, betas = z.expand(self.num_chains, *z.shape), betas[::-1]
        first_scale = path.initial_scale(start)
        log_w, acceptance, step, scale = self._anneal(path, start, betas, first_scale)
        log_mean = log_w.logsumexp(0) - math.log(self.num_chains)
        log_scale = scale.log()
        stats = {
            "acceptance_rate": acceptance,
            "step_size": step,
            "scale_spread": log_scale.amax(-1) - log_scale.amin(-1),
            "scale_change": (log_scale - first_scale.log()).abs().mean(-1),
        }
        # Backwards the mean of w estimates 1/p(x): −log of it bounds log p(x) from above; the weights stay as drawn.
        return Estimate(log_mean if z is None else -log_mean, log_w, stats)

    def _anneal(self, path: _Path, z: Tensor, betas: list[float], scale: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Σ_t (β_t − β_{t−1}) [log p(x, z) − log q₀(z)] along ``betas`` [C, B], the mean acceptance rate [B], and the final
        step sizes [B] and scales [B, d]."""
        point = path(z)
        step = torch.full(z.shape[1:2], self.step_size, dtype=z.dtype, device=z.device)
        log_w = torch.zeros_like(point.log_q)
        accepted = torch.zeros_like(step)
        transitions = len(betas) - 2
        adapt_at, window, fitted = adaptation_points(transitions, self.adapt_every), _Window(), None
        if adapt_at:  # the start against the first transition's target
            window.add(z, point.grad_f(betas[1]))
        for t in range(1, len(betas)):
            log_w = log_w + (betas[t] - betas[t - 1]) * (point.log_joint - point.log_q)
            if t < len(betas) - 1:  # the last transition would not change the weights
                if t in adapt_at:  # between transitions: the next one is again a fixed kernel leaving its f_t invariant
                    # The scale fitted to the window before last comes into force: its states are at least a window behind the chains'.
                    if fitted is not None:
                        # The same step in z on geometric average: the step size was adapted to the old coordinates' overall size.
                        step = step * (scale.log() - fitted.log()).mean(-1).exp()
                        scale = fitted
                    fitted, window = window.scale(scale), _Window()
                z, point, rate = self._hmc(path, z, point, betas[t], step, scale)
                step = torch.where(rate > self.target_acceptance, step * STEP_SIZE_FACTOR, step / STEP_SIZE_FACTOR)  # keeps step's dtype
                accepted = accepted + rate
                if adapt_at and t < transitions:
                    window.add(z, point.grad_f(betas[t + 1]))
        return log_w, accepted / transitions if transitions else torch.full_like(step, math.nan), step, scale

    def _hmc(self, path: _Path, z: Tensor, point: _Point, beta: float, step: Tensor, scale: Tensor) -> tuple[Tensor, _Point, Tensor]:
        """One HMC transition leaving f_β invariant, leapfrog in u = z / s: the new states and the mean acceptance probability over chains [B]."""
        eps = step[:, None] * scale  # [B, d] against [C, B, d]: a step ε in u is ε s in z, and a gradient in u is s times the one in z
        momentum = torch.randn_like(z)
        h0 = point.log_f(beta) - 0.5 * momentum.square().sum(-1)
        p = momentum + 0.5 * eps * point.grad_f(beta)
        new_z, new = z, point
        for leap in range(self.leapfrog_steps):
            new_z = new_z + eps * p
            new = path(new_z)
            p = p + (eps if leap < self.leapfrog_steps - 1 else 0.5 * eps) * new.grad_f(beta)
        log_accept = (new.log_f(beta) - 0.5 * p.square().sum(-1) - h0).clamp(max=0)
        # A NaN (a step into a region where a density is not finite) compares false: rejected, probability 0.
        accept = torch.rand_like(log_accept).log() < log_accept
        rate = log_accept.exp().nan_to_num(0.0).mean(0)
        return torch.where(accept[..., None], new_z, z), new.where(accept, point), rate

    def stderr(self, estimate: Estimate) -> Tensor:
        """Delta method over the chains' weights: √((C/ESS − 1)/C)."""
        return log_mean_exp_stderr(estimate)

    def diagnostics(self, estimate: Estimate) -> dict[str, Tensor]:
        """The chains' ESS/C and log-weight spread, the standard error, the Pareto k̂ (C >= 25), the HMC acceptance rate and final step
        size, the final scales' spread log(max s / min s) and mean |log(s / s_start)| over coordinates, and whether q₀ was the prior."""
        return {**log_mean_exp_diagnostics(estimate), **estimate.statistics}


def simulate(model: LatentVariableModel, num: int) -> tuple[Tensor, Tensor]:
    """(x [num, D], z [num, d]) from the model: z ~ p(z), x ~ p_θ(x|z); each z is an exact sample of p_θ(z|x)."""
    with torch.no_grad():
        z = model.prior().sample((num,))
        return model.likelihood(z).sample(), z
