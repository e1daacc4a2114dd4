"""Per-point inference in another posterior family than the encoder's, on the same decoder: the gap decomposition of
Cremer et al. (2018) with q* a full-covariance Gaussian or a local flow for a model trained with a diagonal Gaussian, for instance."""

from torch import Tensor, nn

from lvm_lightning.errors import UsageError
from lvm_lightning.models.builders import posterior_family
from lvm_lightning.models.lvm import Conditional, LatentVariableModel


class InFamily(nn.Module):
    """x ↦ family.params_of(q_φ(z|x)): the encoder's distribution as parameter rows of ``family``, so that q* starts from the very
    distribution the encoder gives (a diagonal Gaussian is a full-covariance one with zero correlations)."""

    def __init__(self, encoder: nn.Module, family: nn.Module) -> None:
        super().__init__()
        self.encoder, self.family = encoder, family

    def forward(self, inputs: Tensor) -> Tensor:
        return self.family.params_of(self.encoder(inputs))


def in_family(model: LatentVariableModel, name: str) -> LatentVariableModel:
    """The same prior, decoder and encoder (shared, not copied), with q_φ and q* in the posterior family ``name`` (models.builders.posterior_family)."""
    if not model.continuous:
        raise UsageError("a second posterior family applies to a continuous z: a categorical z has categorical posteriors")
    if model.latent_layers():
        raise UsageError("q* in a second family starts from q_φ's moments, which a hierarchical q_φ(z|x) has no closed form for: leave the family unset")
    if name == "flow":
        raise UsageError(
            "a coupling flow's q* needs its amortized flow: compare with --gap_family local_flow (a flow per point), or train with --model.lvm.posterior flow"
        )
    family = posterior_family(name, model.prior().event_shape[0]).to(next(model.parameters()).device)
    view = LatentVariableModel(model.prior, model.decoder, Conditional(InFamily(model.encoder, family), family))
    view.units = model.units  # the same data, in the same units
    return view
