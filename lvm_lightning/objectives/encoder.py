"""Training signals for the amortized encoder q_φ(z|x), with θ held constant.

Both divergences vanish exactly at q_φ(z|x) = p_θ(z|x). ``elbo`` is the seed's min_φ KL(q_φ || p_θ(z|x));
``wake`` is min_φ KL(p_θ(z|x) || q_φ), the wake-phase update of reweighted wake-sleep (Bornschein &
Bengio, 2015), here enumerated exactly. For categorical z the reverse KL's gradient with respect to
a logit is proportional to q_c, so a component the encoder has written off never comes back;
``wake`` has no such dead zone and is the default for categorical latents (docs/maths.md, "Training signals").
"""
from typing import Literal, Optional

from torch import Tensor
from torch.distributions import Distribution

from lvm_lightning.errors import UsageError
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives.estimators import ELBO

EncoderObjective = Literal["elbo", "wake"]


def elbo(model: LatentVariableModel, x: Tensor, q: Distribution, num_samples: int = 1) -> Tensor:
    """ELBO(q) = E_q[log p_θ(x, z) − log q(z)] with θ constant, shape [B] (= log p(x) − KL(q || p_θ(z|x))), for any q of batch shape [B].

    A categorical q is enumerated (exact, no score-function noise); a Gaussian q averages
    ``num_samples`` reparameterized log-weights.
    """
    if model.discrete:
        log_joint = model.log_joint(x, model.support(), frozen=True)  # [C, B]
        log_q = q.logits.T  # normalized log-probabilities, [C, B]
        return (log_q.exp() * (log_joint - log_q)).sum(0)
    return ELBO(num_samples).estimate_with(model, x, q, frozen=True).log_px


def amortized_elbo(model: LatentVariableModel, x: Tensor) -> Tensor:
    """ELBO(q_φ) with θ constant, shape [B]: ``elbo`` with the encoder's q_φ(z|x)."""
    return elbo(model, x, model.posterior(x))


def wake_objective(model: LatentVariableModel, x: Tensor) -> Tensor:
    """Σ_z p_θ(z|x) log q_φ(z|x), shape [B] (= −KL(p_θ(z|x) || q_φ) − H[p_θ(z|x)]), enumerated over a categorical z."""
    log_joint = model.log_joint(x, model.support()).detach()
    posterior = (log_joint - log_joint.logsumexp(0)).exp()
    return (posterior * model.posterior(x).logits.T).sum(0)


def resolve_encoder_objective(name: Optional[str], model: LatentVariableModel) -> EncoderObjective:
    """``name``, or the default when None: ``wake`` for a categorical z, ``elbo`` otherwise."""
    if name is None:
        return "wake" if model.discrete else "elbo"
    if name not in ("elbo", "wake"):
        raise UsageError(f"unknown encoder_objective {name!r}: choose 'elbo' or 'wake'")
    if name == "wake" and not model.discrete:
        raise UsageError("encoder_objective 'wake' needs a categorical latent (it enumerates p(z|x)): use 'elbo'")
    return name


def encoder_objective(name: EncoderObjective, model: LatentVariableModel, x: Tensor) -> Tensor:
    """The per-point quantity [B] whose maximization in φ trains the encoder."""
    return wake_objective(model, x) if name == "wake" else amortized_elbo(model, x)
