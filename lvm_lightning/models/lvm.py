"""The latent variable model p_θ(x, z) = p(z) p_θ(x|z) with its amortized posterior q_φ(z|x)."""
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution
from torch.func import functional_call


class Conditional(nn.Module):
    """A conditional distribution family(net(input)): encoders q_φ(z|x) and decoders p_θ(x|z) alike."""

    def __init__(self, net: nn.Module, family: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.family = family

    def forward(self, inputs: Tensor) -> Distribution:
        return self.family(self.net(inputs))


def _frozen(module: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in module.named_parameters()}


class LatentVariableModel(nn.Module):
    """p_θ(x, z) = p(z) p_θ(x|z), with the amortized encoder q_φ(z|x).

    Latent samples are shaped [K, B] (categorical) or [K, B, d] (continuous); data [B, D].
    """

    def __init__(self, prior: nn.Module, decoder: Conditional, encoder: Conditional) -> None:
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.encoder = encoder
        # Whether z is categorical, so that log p(x) = log Σ_z p(z) p(x|z) can be enumerated.
        self.discrete: bool = isinstance(prior(), Categorical)

    def support(self) -> Tensor:
        """Every value of a categorical z, shaped [C, 1] to broadcast against a batch."""
        return self.prior().enumerate_support(expand=False).reshape(-1, 1)

    def log_joint(self, x: Tensor, z: Tensor, frozen: bool = False) -> Tensor:
        """log p(z) + log p_θ(x|z), shape [K, B]; ``frozen`` treats θ as a constant (gradients reach z only)."""
        if frozen:
            prior = functional_call(self.prior, _frozen(self.prior), ())
            likelihood = functional_call(self.decoder, _frozen(self.decoder), (z,))
        else:
            prior, likelihood = self.prior(), self.decoder(z)
        return prior.log_prob(z) + likelihood.log_prob(x)

    def posterior(self, x: Tensor) -> Distribution:
        """The amortized q_φ(z|x), batch shape [B]."""
        return self.encoder(x)

    @torch.no_grad()
    def sample(self, num: int) -> Tensor:
        """x ~ p_θ(x) by ancestral sampling: z ~ p(z), x ~ p_θ(x|z); shape [num, D]."""
        return self.decoder(self.prior().sample((num,))).sample()
