"""Semi-amortized variational inference (SA-VAE, Kim et al., 2018): the encoder's q refined per point by gradient steps inside every training step."""

from typing import Any, Optional

import torch
from torch import Tensor
from torch.distributions import Distribution

from lvm_lightning.errors import UsageError
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives.estimators import ELBO, Estimate, Estimator, ImportanceSampling, Objective
from lvm_lightning.objectives.gradients import Reparameterized


class SemiAmortized(Estimator):
    """log p̂(x) = the ``base`` bound at q_{λ_K}(z|x), where λ_0 = the encoder's parameter rows for x and K = ``num_steps`` steps
    of gradient ascent on the ELBO refine them, v_{k+1} = γ v_k + ∇_λ ELBO(λ_k), λ_{k+1} = λ_k + η v_{k+1}
    (Kim et al., 2018, Algorithm 1; η = ``step_size``, γ = ``momentum``, 0: plain SGD).

    ``through`` (SA-VAE): the surrogate is the bound at λ_K as a function of θ and φ through the K steps (their Hessian-vector
    products by double backward, where Kim et al. use finite differences): θ gets its total derivative, φ the gradient
    dλ_0/dφ · dL/dλ_0. K = 0 or η = 0 is the base estimator exactly. Otherwise λ_K is a constant: θ learns from the bound
    at λ_K, φ from the amortized ELBO with θ held constant (Kim et al.'s ablation without end-to-end training), which at
    K = 0 is the base estimator in expectation, on draws of its own. Each step's ELBO averages the base's K samples;
    ``max_grad_norm`` clips each point's ∇_λ to that norm before the step, as Kim et al.'s code does. ``estimate`` (what
    validation logs) is the refined bound, refined without a graph. The encoder's rows are those of per-point inference
    (``model.posterior_params``, ``model.posterior_from``), so any model that LocalOptimizer fits takes it.
    """

    name = "semi_amortized"

    def __init__(
        self,
        base: ImportanceSampling,
        num_steps: int = 20,
        step_size: float = 1.0,
        through: bool = True,
        momentum: float = 0.0,
        max_grad_norm: Optional[float] = None,
    ) -> None:
        super().__init__()
        if num_steps < 0 or not step_size >= 0 or not 0 <= momentum < 1:
            raise UsageError(f"SemiAmortized needs num_steps >= 0, step_size >= 0 and 0 <= momentum < 1, got {num_steps}, {step_size} and {momentum}")
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise UsageError(f"max_grad_norm must be positive (none: no clipping), got {max_grad_norm}")
        if not isinstance(base.gradient, Reparameterized):
            raise UsageError(f"SemiAmortized differentiates its base bound at the refined q: give the base gradient Reparameterized(), not {base.gradient!r}")
        self.base, self.num_steps, self.step_size, self.through = base, num_steps, step_size, through
        self.momentum, self.max_grad_norm = momentum, max_grad_norm

    def unsupported(self, model: LatentVariableModel) -> Optional[str]:
        gradients = None if model.continuous else "SemiAmortized refines q by gradients in its parameters: it needs a continuous z"
        return self.base.unsupported(model) or gradients

    def settings(self) -> dict[str, Any]:
        """The refinement's settings and the base bound's K."""
        names = ("num_steps", "step_size", "through", "momentum", "max_grad_norm")
        return {"num_samples": self.base.num_samples, **{name: getattr(self, name) for name in names}}

    def refine(self, model: LatentVariableModel, x: Tensor, through: bool) -> Tensor:
        """λ_K [B, P] from λ_0 = ``model.posterior_params(x)``: a function of θ and φ when ``through``, else a constant."""
        if torch.is_inference_mode_enabled():
            raise UsageError(
                "SemiAmortized refines q by gradients, which torch.inference_mode forbids: run it under torch.no_grad, or Trainer(inference_mode=False)"
            )
        elbo = ELBO(self.base.num_samples, self.base.chunk_size)
        with torch.enable_grad():
            params = model.posterior_params(x)
            velocity = torch.zeros_like(params)
            for _ in range(self.num_steps):
                if not through or not params.requires_grad:
                    params = params.detach().requires_grad_()
                value = elbo.estimate_with(model, x, model.posterior_from(params), frozen=not through).log_px
                (grad,) = torch.autograd.grad(value.sum(), params, create_graph=through)
                velocity = self.momentum * velocity + self._clipped(grad)
                params = params + self.step_size * velocity
        return params if through else params.detach()

    def _clipped(self, grad: Tensor) -> Tensor:
        """Each point's gradient [B, P] scaled to norm at most max_grad_norm."""
        if self.max_grad_norm is None:
            return grad
        # min(1, c/‖g‖) without a division by a zero norm, whose double backward would be NaN
        return grad * (self.max_grad_norm / grad.norm(dim=-1, keepdim=True).clamp(min=self.max_grad_norm))

    def refined_posterior(self, model: LatentVariableModel, x: Tensor) -> Optional[Distribution]:
        """q_{λ_K}(z|x), refined without a graph."""
        return model.posterior_from(self.refine(model, x, through=False))

    def estimate(self, model: LatentVariableModel, x: Tensor) -> Estimate:
        return self.base.estimate_with(model, x, self.refined_posterior(model, x))

    def objective(self, model: LatentVariableModel, x: Tensor) -> Objective:
        q = model.posterior_from(self.refine(model, x, self.through))
        log_px = self.base.estimate_with(model, x, q).log_px
        if self.through:
            return Objective(log_px, log_px)
        return Objective(log_px + self.encoder_signal(model, x), log_px)

    def stderr(self, estimate: Estimate) -> Tensor:
        return self.base.stderr(estimate)

    def diagnostics(self, estimate: Estimate) -> dict[str, Tensor]:
        """The base bound's diagnostics, at the refined q."""
        return self.base.diagnostics(estimate)
