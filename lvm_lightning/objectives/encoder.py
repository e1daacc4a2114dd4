"""Training signals for the amortized encoder q_φ(z|x), with θ held constant (the ELBO itself is in estimators.py).

Both divergences vanish exactly at q_φ(z|x) = p_θ(z|x). ``elbo`` is the seed's min_φ KL(q_φ || p_θ(z|x));
``wake`` is min_φ KL(p_θ(z|x) || q_φ), the wake-phase update of reweighted wake-sleep (Bornschein &
Bengio, 2015), here enumerated exactly. For categorical z the reverse KL's gradient with respect to
a logit is proportional to q_c, so a component the encoder has written off never comes back;
``wake`` has no such dead zone and is the default for enumerable latents (docs/maths.md, "Training signals").
"""

from typing import Literal, Optional

from torch import Tensor

from lvm_lightning.errors import UsageError
from lvm_lightning.models.lvm import LatentVariableModel

EncoderObjective = Literal["elbo", "wake"]


def wake_objective(model: LatentVariableModel, x: Tensor) -> Tensor:
    """Σ_z p_θ(z|x) log q_φ(z|x), shape [B] (= −KL(p_θ(z|x) || q_φ) − H[p_θ(z|x)]), enumerated over z."""
    support = model.support()
    log_joint = model.log_joint(x, support).detach()
    posterior = (log_joint - log_joint.logsumexp(0)).exp()
    return (posterior * model.posterior(x).log_prob(support)).sum(0)


def unsupported_encoder_objective(name: Optional[str], model: LatentVariableModel) -> Optional[str]:
    """Why ``name`` cannot train ``model``'s encoder; None when it can (None, the default, always can)."""
    if name not in (None, "elbo", "wake"):
        return f"unknown encoder_objective {name!r}: choose 'elbo' or 'wake'"
    if name == "wake" and not model.enumerable:
        return "encoder_objective 'wake' needs an enumerable latent (it sums over p(z|x)): use 'elbo'"
    return None


def resolve_encoder_objective(name: Optional[str], model: LatentVariableModel) -> EncoderObjective:
    """``name``, or the default when None: ``wake`` for an enumerable z, ``elbo`` otherwise."""
    reason = unsupported_encoder_objective(name, model)
    if reason is not None:
        raise UsageError(reason)
    if name is None:
        return "wake" if model.enumerable else "elbo"
    return name
