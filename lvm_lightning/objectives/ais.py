"""Annealed importance sampling (Neal, 2001) of log p_θ(x), and its reverse for the BDMC upper bound (Grosse et al., 2015).

The path runs through f_t(z) = q₀(z)^(1−β_t) p_θ(x, z)^β_t, 0 = β_0 < … < β_T = 1, from an initial
distribution q₀ (the amortized q_φ(z|x), or the prior) to the unnormalized posterior p_θ(x, z).
A chain z_0 ~ q₀ moved by a transition T_t that leaves f_t invariant collects

    log w = Σ_{t=1..T} (β_t − β_{t−1}) [log p_θ(x, z_{t−1}) − log q₀(z_{t−1})],  E[w] = p_θ(x),

so log (1/C) Σ_c w_c over C chains is a stochastic lower bound on log p(x). Run backwards from an exact
posterior sample (data simulated from the model: z ~ p(z), x ~ p_θ(x|z)), the same sum estimates 1/p(x),
and −log of its mean is a stochastic upper bound: the pair brackets log p(x) (bidirectional Monte Carlo).

The transitions are Hamiltonian Monte Carlo with ``leapfrog_steps`` steps in coordinates whitened by q₀'s
mean and standard deviation (a diagonal mass matrix), with one step size per point adapted toward
``target_acceptance`` after every transition (as Wu et al., 2017). Chains and points are one batch.
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
Init = Literal["encoder", "prior"]

SIGMOID_SHARPNESS = 4.0  # δ of Grosse et al. (2015)'s sigmoidal schedule: dense steps near β = 0 and β = 1
STEP_SIZE_FACTOR = 1.02  # per transition, up when the acceptance rate is above the target, down when below


def annealing_schedule(num_steps: int, kind: Schedule = "sigmoid") -> Tensor:
    """β_0 = 0 < β_1 < … < β_T = 1, float64 [T + 1]: linear, or σ(δ(2t/T − 1)) rescaled to [0, 1]."""
    t = torch.linspace(0, 1, num_steps + 1, dtype=torch.float64)
    if kind == "linear":
        return t
    s = torch.sigmoid(SIGMOID_SHARPNESS * (2 * t - 1))
    return (s - s[0]) / (s[-1] - s[0])


class _Point(NamedTuple):
    """log q₀(z), log p_θ(x, z) [C, B] at a chain's state, and their gradients in the whitened coordinates u [C, B, d]."""

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
    """The densities of one batch's path: q₀ and p_θ(x, ·) at z = loc + scale · u, with gradients in u."""

    def __init__(self, model: LatentVariableModel, x: Tensor, q0: Distribution) -> None:
        if q0.batch_shape not in (torch.Size(), x.shape[:1]):
            raise UsageError(f"AIS needs q0 of batch shape [] or [{len(x)}] (one row per point, e.g. Independent(Normal)), got {list(q0.batch_shape)}")
        if torch.is_inference_mode_enabled():
            raise UsageError("AIS differentiates in z, which torch.inference_mode forbids: run it under torch.no_grad, or Trainer(inference_mode=False)")
        self.model, self.x, self.q0 = model, x, q0
        try:  # whitening by q₀'s moments makes the leapfrog step one scale for every coordinate
            self.loc, self.scale = q0.mean.detach(), q0.stddev.detach()
        except NotImplementedError:  # a q₀ without closed-form moments: plain coordinates (0-dim: any device, any dtype)
            self.loc, self.scale = torch.zeros(()), torch.ones(())
        if not (bool(torch.isfinite(self.loc).all()) and bool(torch.isfinite(self.scale).all()) and bool((self.scale > 0).all())):
            self.loc, self.scale = torch.zeros(()), torch.ones(())  # heavy tails (no mean or variance) or a point mass: plain coordinates too

    def whiten(self, z: Tensor) -> Tensor:
        return (z - self.loc) / self.scale

    def __call__(self, u: Tensor) -> _Point:
        with torch.enable_grad():
            # Two leaves with one value: one backward pass gives each density's gradient apart.
            u_q, u_joint = u.detach().requires_grad_(), u.detach().requires_grad_()
            log_q = self.q0.log_prob(self.loc + self.scale * u_q)
            log_joint = self.model.log_joint(self.x, self.loc + self.scale * u_joint, frozen=True)
            grad_q, grad_joint = torch.autograd.grad((log_q + log_joint).sum(), (u_q, u_joint))
        return _Point(log_q.detach(), log_joint.detach(), grad_q, grad_joint)


class AIS(Estimator):
    """log p̂(x) = log (1/C) Σ_c w_c of C annealed importance sampling chains from q₀ to p_θ(z|x) through T intermediate
    distributions (a lower bound in expectation, tight as T → ∞); ``upper_bound`` runs the path backwards (BDMC).

    ``init``: q₀ = the amortized q_φ(z|x) ('encoder') or p(z) ('prior', which reaches every mode of a multimodal
    posterior). Costs about T × ``leapfrog_steps`` decoder passes (forward and backward) per chain and point. The defaults
    were the narrowest BDMC sandwich per second among those tried on the Fashion-MNIST VAE (README).
    An evaluation estimator: it does not train.
    """

    name = "ais"
    trains = False

    def __init__(
        self,
        num_steps: int = 1000,
        num_chains: int = 4,
        leapfrog_steps: int = 2,
        init: Init = "encoder",
        schedule: Schedule = "sigmoid",
        step_size: float = 0.1,
        target_acceptance: float = 0.65,
        chunk_size: Optional[int] = None,
    ) -> None:
        super().__init__()
        if min(num_steps, num_chains, leapfrog_steps) < 1:
            raise UsageError(f"AIS needs num_steps, num_chains and leapfrog_steps >= 1, got {num_steps}, {num_chains} and {leapfrog_steps}")
        if init not in ("encoder", "prior") or schedule not in ("sigmoid", "linear"):
            raise UsageError(f"AIS init must be 'encoder' or 'prior' and schedule 'sigmoid' or 'linear', got {init!r} and {schedule!r}")
        if not step_size > 0 or not 0 < target_acceptance < 1:
            raise UsageError(f"AIS needs step_size > 0 and 0 < target_acceptance < 1, got {step_size} and {target_acceptance}")
        if chunk_size is not None and chunk_size < 1:
            raise UsageError(f"chunk_size must be >= 1, got {chunk_size}")
        self.num_steps, self.num_chains, self.leapfrog_steps = num_steps, num_chains, leapfrog_steps
        self.init, self.schedule = init, schedule
        self.step_size, self.target_acceptance = step_size, target_acceptance
        self.chunk_size = chunk_size or DEFAULT_CHUNK_SIZE

    def settings(self) -> dict[str, Any]:
        """The schedule and the sampler's settings."""
        names = ("num_steps", "num_chains", "leapfrog_steps", "init", "schedule", "step_size", "target_acceptance")
        return {name: getattr(self, name) for name in names}

    def describe(self, start: str = "") -> str:
        """The schedule in words, from ``start`` (default: q₀ as ``init`` says)."""
        start = start or ("q_φ(z|x)" if self.init == "encoder" else "p(z)")
        return f"AIS from {start}, T={self.num_steps} ({self.schedule}), {self.num_chains} chains, {self.leapfrog_steps} leapfrog steps"

    def check(self, model: LatentVariableModel) -> None:
        if not model.continuous:
            raise UsageError(
                "AIS moves a continuous z by Hamiltonian Monte Carlo; an enumerable z has the 'exact' estimator, a categorical one importance sampling"
            )

    def objective(self, model: LatentVariableModel, x: Tensor) -> Objective:
        raise UsageError("AIS evaluates but does not train: train with e.g. ImportanceSampling and add AIS to --model.validation_estimators")

    def initial(self, model: LatentVariableModel, x: Tensor) -> Distribution:
        """q₀ for the points ``x``: the amortized posterior or the prior, with no gradient to φ."""
        with torch.no_grad():
            return model.posterior(x) if self.init == "encoder" else model.prior()

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
        parts = [
            self._run(
                model, x[start : start + per_chunk], self.initial(model, x[start : start + per_chunk]), None if z is None else z[start : start + per_chunk]
            )
            for start in range(0, len(x), per_chunk)
        ]
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
        log_w, acceptance, step = self._anneal(path, path.whiten(start), betas)
        log_mean = log_w.logsumexp(0) - math.log(self.num_chains)
        stats = {"acceptance_rate": acceptance, "step_size": step}
        # Backwards the mean of w estimates 1/p(x): −log of it bounds log p(x) from above; the weights stay as drawn.
        return Estimate(log_mean if z is None else -log_mean, log_w, stats)

    def _anneal(self, path: _Path, u: Tensor, betas: list[float]) -> tuple[Tensor, Tensor, Tensor]:
        """Σ_t (β_t − β_{t−1}) [log p(x, z) − log q₀(z)] along ``betas`` [C, B], the mean acceptance rate [B] and the final step sizes [B]."""
        point = path(u)
        step = torch.full(u.shape[1:2], self.step_size, dtype=u.dtype, device=u.device)
        log_w = torch.zeros_like(point.log_q)
        accepted = torch.zeros_like(step)
        for t in range(1, len(betas)):
            log_w = log_w + (betas[t] - betas[t - 1]) * (point.log_joint - point.log_q)
            if t < len(betas) - 1:  # the last transition would not change the weights
                u, point, rate = self._hmc(path, u, point, betas[t], step)
                step = torch.where(rate > self.target_acceptance, step * STEP_SIZE_FACTOR, step / STEP_SIZE_FACTOR)  # keeps step's dtype
                accepted = accepted + rate
        transitions = len(betas) - 2
        return log_w, accepted / transitions if transitions else torch.full_like(step, math.nan), step

    def _hmc(self, path: _Path, u: Tensor, point: _Point, beta: float, step: Tensor) -> tuple[Tensor, _Point, Tensor]:
        """One HMC transition leaving f_β invariant: the new states and the mean acceptance probability over chains [B]."""
        eps = step[:, None]  # [B, 1] against [C, B, d]
        momentum = torch.randn_like(u)
        h0 = point.log_f(beta) - 0.5 * momentum.square().sum(-1)
        p = momentum + 0.5 * eps * point.grad_f(beta)
        new_u, new = u, point
        for leap in range(self.leapfrog_steps):
            new_u = new_u + eps * p
            new = path(new_u)
            p = p + (eps if leap < self.leapfrog_steps - 1 else 0.5 * eps) * new.grad_f(beta)
        log_accept = (new.log_f(beta) - 0.5 * p.square().sum(-1) - h0).clamp(max=0)
        # A NaN (a step into a region where a density is not finite) compares false: rejected, probability 0.
        accept = torch.rand_like(log_accept).log() < log_accept
        rate = log_accept.exp().nan_to_num(0.0).mean(0)
        return torch.where(accept[..., None], new_u, u), new.where(accept, point), rate

    def stderr(self, estimate: Estimate) -> Tensor:
        """Delta method over the chains' weights: √((C/ESS − 1)/C)."""
        return log_mean_exp_stderr(estimate)

    def diagnostics(self, estimate: Estimate) -> dict[str, Tensor]:
        """The chains' ESS/C and log-weight spread, the standard error, the Pareto k̂ (C >= 25), the HMC acceptance rate and the adapted step size."""
        return {**log_mean_exp_diagnostics(estimate), **estimate.statistics}


def simulate(model: LatentVariableModel, num: int) -> tuple[Tensor, Tensor]:
    """(x [num, D], z [num, d]) from the model: z ~ p(z), x ~ p_θ(x|z); each z is an exact sample of p_θ(z|x)."""
    with torch.no_grad():
        z = model.prior().sample((num,))
        return model.decoder(z).sample(), z
