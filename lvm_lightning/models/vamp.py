"""The VampPrior (Tomczak & Welling, 2018): p(z) = (1/C) Σ_c q_φ(z|u_c), the encoder's posterior mixed over C learned pseudo-inputs."""

import math

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from lvm_lightning.errors import UsageError


class DiagonalGaussianMixture(MixtureSameFamily):
    """A ``MixtureSameFamily`` of C diagonal Gaussians N(μ_c, diag σ_c²) whose log density is computed by matrix products:
    log N_c(z) = −½ (z²·(1/σ_c²) − 2 z·(μ_c/σ_c²) + μ_c²·(1/σ_c²)) − Σ_d log σ_cd − (d/2) log 2π.

    torch's ``log_prob`` forms the [..., C, d] differences z − μ_c, a dozen elementwise passes over C·d values per z (forward and
    backward); the expanded square needs only [..., C]. The products run in float64: the expansion subtracts terms as large as
    z²/σ², whose float32 rounding would show in the difference.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        normal = self.component_distribution.base_dist
        loc, precision = normal.loc.double(), normal.scale.double().pow(-2)  # [*batch, C, d]
        batch, dim = loc.shape[:-2], loc.shape[-1]
        shape = torch.broadcast_shapes(value.shape[:-1], batch)
        z = value.double().expand(*shape, dim).reshape(-1, *batch, dim).movedim(0, -2)  # [*batch, S, d]: one product per batch entry
        quadratic = z.square() @ precision.mT - 2 * z @ (loc * precision).mT + (loc.square() * precision).sum(-1).unsqueeze(-2)  # [*batch, S, C]
        normalizer = normal.scale.double().log().sum(-1) + 0.5 * dim * math.log(2 * math.pi)  # [*batch, C]
        log_weights = torch.log_softmax(self.mixture_distribution.logits.double(), -1) - normalizer
        log_px = torch.logsumexp(log_weights.unsqueeze(-2) - 0.5 * quadratic, -1)  # [*batch, S]
        return log_px.movedim(-1, 0).reshape(shape).to(value.dtype)


class VampPrior(nn.Module):
    """p(z) = (1/C) Σ_c q_φ(z|u_c), a ``MixtureSameFamily`` of ``encoder``'s distributions at the pseudo-inputs u_c [C, input_dim].

    ``encoder`` is the model's own (shared, not copied) and registered here as well, so that the prior's parameters are φ and
    the u_c: a frozen prior (``functional_call`` with detached parameters, as ``LatentVariableModel.log_joint(frozen=True)``
    makes it) holds both constant. The u_c are free parameters, the paper's linear layer on one-hot vectors written as its
    matrix, without the hardtanh that keeps image pseudo-inputs within the pixel range; like the paper's, they start as small
    random values. Not at training rows: each component would then be some point's posterior already, a posterior that ignores
    x starts with KL(q_φ(z|x) || p(z)) near zero, and a Fashion-MNIST VAE started so collapsed onto it. log p(z) costs C
    component densities per z: memory grows as (z's per chunk) × C (× d for an encoder whose q is not a diagonal Gaussian,
    ``DiagonalGaussianMixture``), which the estimators' chunk_size bounds.
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
        diagonal = isinstance(components, Independent) and isinstance(components.base_dist, Normal) and components.reinterpreted_batch_ndims == 1
        return (DiagonalGaussianMixture if diagonal else MixtureSameFamily)(uniform, components, validate_args=False)
