"""The VampPrior (Tomczak & Welling, 2018): p(z) = (1/C) Σ_c q_φ(z|u_c), the encoder's posterior mixed over C learned pseudo-inputs."""

import torch
from torch import nn
from torch.distributions import Categorical, Distribution, MixtureSameFamily

from lvm_lightning.errors import UsageError


class VampPrior(nn.Module):
    """p(z) = (1/C) Σ_c q_φ(z|u_c), a ``MixtureSameFamily`` of ``encoder``'s distributions at the pseudo-inputs u_c [C, input_dim].

    ``encoder`` is the model's own (shared, not copied) and registered here as well, so that the prior's parameters are φ and
    the u_c: a frozen prior (``functional_call`` with detached parameters, as ``LatentVariableModel.log_joint(frozen=True)``
    makes it) holds both constant. The u_c are free parameters, the paper's linear layer on one-hot vectors written as its
    matrix, without the hardtanh that keeps image pseudo-inputs within the pixel range; like the paper's, they start as small
    random values. Not at training rows: each component would then be some point's posterior already, a posterior that ignores
    x starts with KL(q_φ(z|x) || p(z)) near zero, and a Fashion-MNIST VAE started so collapsed onto it. log p(z) costs C
    component densities per z: memory grows as (z's per chunk) × C × d, which the estimators' chunk_size bounds.
    """

    def __init__(self, encoder: nn.Module, num_pseudo_inputs: int, input_dim: int) -> None:
        super().__init__()
        if num_pseudo_inputs < 1:
            raise UsageError(f"a VampPrior needs num_pseudo_inputs >= 1, got {num_pseudo_inputs} (none: the N(0, I) prior)")
        self.encoder = encoder
        self.pseudo_inputs = nn.Parameter(0.01 * torch.randn(num_pseudo_inputs, input_dim))

    def forward(self) -> Distribution:
        components = self.encoder(self.pseudo_inputs)
        uniform = Categorical(logits=self.pseudo_inputs.new_zeros(len(self.pseudo_inputs)), validate_args=False)
        return MixtureSameFamily(uniform, components, validate_args=False)
