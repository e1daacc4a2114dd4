"""The latent variable model p_θ(x, z) = p(z) p_θ(x|z) with its amortized posterior q_φ(z|x)."""

from typing import Optional

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.func import functional_call

from lvm_lightning.errors import UsageError


class Conditional(nn.Module):
    """A conditional distribution family(net(input)): encoders q_φ(z|x) and decoders p_θ(x|z) alike.

    As an encoder it is what per-point inference needs: ``params`` (unconstrained, [B, P]) for x,
    ``distribution`` for any such rows, and ``prior_params`` that make it a given prior.
    """

    def __init__(self, net: nn.Module, family: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.family = family

    def params(self, inputs: Tensor) -> Tensor:
        """The family's unconstrained parameters for ``inputs``, shape [..., P]."""
        return self.net(inputs)

    def distribution(self, params: Tensor) -> Distribution:
        """The distribution with parameter rows ``params`` [..., P]."""
        return self.family(params)

    def prior_params(self, prior: Distribution) -> Tensor:
        """Parameters [P] for which ``distribution`` is ``prior`` (the start of per-point inference from the prior)."""
        return self.family.params_of(prior)

    def forward(self, inputs: Tensor) -> Distribution:
        return self.distribution(self.params(inputs))


def _frozen(module: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in module.named_parameters()}


class LatentVariableModel(nn.Module):
    """p_θ(x, z) = p(z) p_θ(x|z), with the amortized encoder q_φ(z|x).

    ``prior()`` returns p(z), ``decoder(z)`` p_θ(x|z) and ``encoder(x)`` q_φ(z|x), all torch
    distributions; the encoder is a ``Conditional`` (or offers its three methods) for per-point
    inference. Latent samples are shaped [K, B] (categorical) or [K, B, d] (continuous); data [B, D].
    Build one from your own modules in YAML with ``class_path: lvm_lightning.models.LatentVariableModel``.
    ``data_dim`` (linked from the data by the command line) is checked against the decoder's rows.
    """

    def __init__(self, prior: nn.Module, decoder: nn.Module, encoder: nn.Module, data_dim: Optional[int] = None) -> None:
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.encoder = encoder
        # Whether log p(x) = log Σ_z p(z) p(x|z) can be enumerated: asked of the prior, once.
        self.discrete: bool = bool(prior().has_enumerate_support)
        # Whether z is continuous (what HMC, per-point inference by gradients and encodings need): asked of the prior's support.
        self.continuous: bool = not prior().support.is_discrete
        if data_dim is not None:
            with torch.no_grad():
                rows = tuple(decoder(prior().sample((1,))).event_shape)
            if rows != (data_dim,):
                raise UsageError(f"the decoder gives rows of shape {rows} but the data have {data_dim} columns: set its output size to {data_dim}")

    def initialize(self, x: Tensor) -> None:
        """Sets parameters from the training rows ``x`` [N, D] once, before training (a mixture's k-means start); by default the weights keep their random start."""

    def latent_layers(self) -> dict[str, slice]:
        """A hierarchical z's stochastic layers by name, as slices of its last dimension; empty for a one-layer z."""
        return {}

    def marginal(self) -> Optional[Distribution]:
        """p_θ(x) in closed form, for models that have one (the linear-Gaussian model); None otherwise."""
        return None

    def support(self) -> Tensor:
        """Every value of an enumerable z, shaped [C, 1, *event_shape] to broadcast against a batch."""
        prior = self.prior()
        values = prior.enumerate_support(expand=False)
        return values.reshape(len(values), 1, *prior.event_shape)

    def log_joint(self, x: Tensor, z: Tensor, frozen: bool = False) -> Tensor:
        """log p(z) + log p_θ(x|z), shape [K, B]; ``frozen`` treats θ as a constant (gradients reach z only)."""
        if frozen:
            prior = functional_call(self.prior, _frozen(self.prior), ())
            likelihood = functional_call(self.decoder, _frozen(self.decoder), (z,))
        else:
            prior, likelihood = self.prior(), self.decoder(z)
        return prior.log_prob(z) + likelihood.log_prob(x)

    def posterior(self, x: Tensor, frozen: bool = False) -> Distribution:
        """The amortized q_φ(z|x), batch shape [B]; ``frozen`` treats φ as a constant (the density of the STL and DReG gradients)."""
        if frozen:
            return functional_call(self.encoder, _frozen(self.encoder), (x,))
        return self.encoder(x)

    @torch.no_grad()
    def nonfinite_terms(self, x: Tensor) -> list[str]:
        """Which of the weights, log q_φ(z|x), log p(z) and log p_θ(x|z) are NaN or infinite on the batch ``x``, at every z (enumerable) or one z ~ q_φ(z|x)."""
        if not all(bool(torch.isfinite(p).all()) for p in self.parameters()):
            return ["the weights"]
        q = self.posterior(x)
        z = self.support() if self.discrete else q.sample()  # a categorical with NaN probabilities refuses to sample
        terms = {"log q(z|x)": q.log_prob(z), "log p(z)": self.prior().log_prob(z), "log p(x|z)": self.decoder(z).log_prob(x)}
        return [name for name, value in terms.items() if not bool(torch.isfinite(value).all())]

    @torch.no_grad()
    def sample(self, num: int) -> Tensor:
        """x ~ p_θ(x) by ancestral sampling: z ~ p(z), x ~ p_θ(x|z); shape [num, D]."""
        return self.decoder(self.prior().sample((num,))).sample()
