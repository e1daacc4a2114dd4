"""Per-point inference in another posterior family than the encoder's, on the same decoder: the gap decomposition of
Cremer et al. (2018) with q* a full-covariance Gaussian or a local flow for a model trained with a diagonal Gaussian, for instance."""

from torch import Tensor, nn

from lvm_lightning.errors import UsageError
from lvm_lightning.models.families import POSTERIORS, ExpressesDistributions, PosteriorChoice, make_family
from lvm_lightning.models.lvm import Conditional, LatentVariableModel


class InFamily(nn.Module):
    """x ↦ family.params_of(q_φ(z|x)): the encoder's distribution as parameter rows of ``family``, so that q* starts from the very
    distribution the encoder gives (a diagonal Gaussian is a full-covariance one with zero correlations)."""

    def __init__(self, encoder: nn.Module, family: nn.Module) -> None:
        super().__init__()
        self.encoder, self.family = encoder, family

    def forward(self, inputs: Tensor) -> Tensor:
        return self.family.params_of(self.encoder(inputs))


def in_family(model: LatentVariableModel, family: PosteriorChoice) -> LatentVariableModel:
    """The same prior, decoder and encoder (shared, not copied), with q_φ and q* in the posterior ``family`` (a short name of
    models.families.POSTERIORS, or a family factory), made for the model's latent dimension."""
    if not model.continuous:
        raise UsageError("a second posterior family applies to a continuous z: a categorical z has categorical posteriors")
    if model.latent_layers():
        raise UsageError("q* in a second family starts from q_φ's moments, which a hierarchical q_φ(z|x) has no closed form for: leave the family unset")
    made = make_family(family, model.prior().event_shape[0], POSTERIORS, "posterior family")
    # A family with weights of its own (a coupling flow's) would need them trained with an encoder; made here, they are untrained.
    if next(made.parameters(), None) is not None:
        raise UsageError(
            f"a {type(made).__name__} as q* needs its own weights trained with an encoder: compare with --gap_family local_flow "
            "(a flow per point), or train with --model.lvm.posterior flow"
        )
    if not isinstance(made, ExpressesDistributions):
        raise UsageError(f"a {type(made).__name__} cannot start q* from q_φ: it has no params_of(distribution) to re-express q_φ in")
    made = made.to(next(model.parameters()).device)
    view = LatentVariableModel(model.prior, model.decoder, Conditional(InFamily(model.encoder, made), made))
    view.units = model.units  # the same data, in the same units
    return view


def family_name(view: LatentVariableModel, family: PosteriorChoice) -> str:
    """How reports and TensorBoard tags name the q* family of ``view`` (``in_family``'s): its short name, or its class's name."""
    return family if isinstance(family, str) else type(view.encoder.family).__name__
