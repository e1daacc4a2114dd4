"""Hierarchical latent variable models: z = (z_1, …, z_L), Gaussian layers linked by networks, held as one concatenated tensor.

The prior runs top-down, p(z) = p(z_L) Π_{l<L} p(z_l | z_{l+1}); the encoder bottom-up, q(z|x) = q(z_1|x) Π_{l>1} q(z_l | z_{l−1});
the decoder reads z_1 (Burda et al., 2016). z is stored as [z_1, …, z_L] along its last dimension, so a sample is one tensor
[K, B, Σ_l d_l] and the importance weight p(z_L) Π p(z_l | z_{l+1}) p(x|z_1) / q(z_1|x) Π q(z_l | z_{l−1}) is the model's
``log_joint`` minus the encoder's ``log_prob``: every estimator, AIS and per-point inference take it as they take a one-layer model.
"""

from itertools import accumulate
from typing import Any, Callable, Optional, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from torch.func import functional_call

from lvm_lightning.errors import UsageError
from lvm_lightning.models.families import DiagonalGaussian, GaussianStd, LikelihoodChoice, likelihood_family
from lvm_lightning.models.lvm import Conditional, LatentVariableModel
from lvm_lightning.models.networks import mlp
from lvm_lightning.models.priors import StandardNormalPrior
from lvm_lightning.models.vamp import VampPrior

Step = Callable[[Tensor], Distribution]


def bound(module: nn.Module) -> Callable[..., Any]:
    """``module``'s call with the parameters and buffers it holds now.

    A chain's steps run after the call that built the chain has returned; under ``functional_call`` (the model's frozen
    log-densities) the module holds the substituted tensors only during that call, so each step keeps them itself.
    """
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    return lambda *inputs: functional_call(module, state, inputs)


def conditional_step(conditional: Conditional, offset: Optional[Tensor] = None) -> Step:
    """z ↦ family(net(z) + offset): the conditional's distribution, its parameter rows shifted by ``offset`` (per point) where given."""
    net, family = bound(conditional.net), bound(conditional.family)
    if offset is None:
        return lambda z: family(net(z))
    return lambda z: family(net(z) + offset)


class MarkovChain(Distribution):
    """z = [z_1, …, z_L] with density first(z_a) Π_steps step(z_next | z_previous), sampled ancestrally along the chain.

    ``sizes`` are d_1, …, d_L as stored; the chain runs from z_L down to z_1 when ``top_down`` (a prior), from z_1 up otherwise
    (an encoder). The steps are Gaussian, so it is reparameterizable where ``first`` is. Its moments have no closed form:
    ``mean`` and ``stddev`` raise NotImplementedError, and AIS moves z in plain coordinates.
    """

    arg_constraints: dict[str, constraints.Constraint] = {}
    support = constraints.real_vector

    def __init__(self, first: Distribution, steps: Sequence[Step], sizes: Sequence[int], top_down: bool) -> None:
        if len(steps) != len(sizes) - 1:
            raise ValueError(f"a chain of {len(sizes)} layers takes {len(sizes) - 1} steps, got {len(steps)}")
        self.first, self.steps, self.sizes, self.top_down = first, list(steps), list(sizes), top_down
        super().__init__(first.batch_shape, torch.Size([sum(sizes)]), validate_args=False)

    @property
    def has_rsample(self) -> bool:
        return self.first.has_rsample

    def expand(self, batch_shape: torch.Size, _instance: Any = None) -> "MarkovChain":
        """The chain with its first layer expanded to ``batch_shape``; the later layers follow from each draw's shape."""
        return MarkovChain(self.first.expand(batch_shape), self.steps, self.sizes, self.top_down)

    def _chain_order(self, blocks: list[Tensor]) -> list[Tensor]:
        return blocks[::-1] if self.top_down else blocks

    def _ancestral(self, sample_shape: torch.Size, reparameterized: bool) -> Tensor:
        blocks = [self.first.rsample(sample_shape) if reparameterized else self.first.sample(sample_shape)]
        for step in self.steps:
            layer = step(blocks[-1])
            blocks.append(layer.rsample() if reparameterized else layer.sample())
        return torch.cat(self._chain_order(blocks), -1)

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        return self._ancestral(torch.Size(sample_shape), True)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self._ancestral(torch.Size(sample_shape), False)

    def log_prob(self, value: Tensor) -> Tensor:
        blocks = self._chain_order(list(value.split(self.sizes, -1)))
        log_prob = self.first.log_prob(blocks[0])
        for step, previous, block in zip(self.steps, blocks, blocks[1:]):
            log_prob = log_prob + step(previous).log_prob(block)
        return log_prob


class HierarchicalPrior(nn.Module):
    """p(z) = p(z_L) Π_{l<L} p(z_l | z_{l+1}): ``top`` a prior module for z_L, ``conditionals`` p(z_l | z_{l+1}) for l = 1, …, L−1."""

    def __init__(self, top: nn.Module, conditionals: Sequence[Conditional], sizes: Sequence[int]) -> None:
        super().__init__()
        self.top, self.conditionals, self.sizes = top, nn.ModuleList(conditionals), list(sizes)

    def forward(self) -> Distribution:
        return MarkovChain(self.top(), [conditional_step(c) for c in reversed(self.conditionals)], self.sizes, top_down=True)


class HierarchicalEncoder(nn.Module):
    """q(z|x) = q(z_1|x) Π_{l>1} q(z_l | z_{l−1}), each a ``Conditional``; ``conditionals`` are q(z_l | z_{l−1}) for l = 2, …, L.

    Its parameter rows λ (per-point inference, semi-amortized refinement) hold q(z_1|x)'s parameters and, for each layer above,
    an offset added to that layer's network output (μ + a, log σ + b): zero in the amortized q, so refinement starts at q_φ
    exactly, and per point the upper layers keep the amortized networks, shifted.
    """

    def __init__(self, first: Conditional, conditionals: Sequence[Conditional], sizes: Sequence[int]) -> None:
        super().__init__()
        self.first, self.conditionals, self.sizes = first, nn.ModuleList(conditionals), list(sizes)
        self.widths = [first.family.num_params, *(c.family.num_params for c in conditionals)]

    def params(self, inputs: Tensor) -> Tensor:
        """[q(z_1|x)'s parameters, zero offsets], shape [B, Σ_l P_l]."""
        first = self.first.params(inputs)
        return torch.cat([first, first.new_zeros(*first.shape[:-1], sum(self.widths[1:]))], -1)

    def distribution(self, params: Tensor) -> Distribution:
        """The chain whose first layer has the rows' parameters and whose upper layers are shifted by the rows' offsets."""
        first, *offsets = params.split(self.widths, -1)
        steps = [conditional_step(c, offset) for c, offset in zip(self.conditionals, offsets)]
        return MarkovChain(self.first.distribution(first), steps, self.sizes, top_down=False)

    def prior_params(self, prior: Distribution) -> Tensor:
        """None exist: a bottom-up chain does not hold the top-down prior."""
        raise UsageError("a hierarchical q(z|x) runs bottom-up and cannot be the top-down prior: start per-point inference from the encoder (init 'encoder')")

    def forward(self, inputs: Tensor) -> Distribution:
        return self.distribution(self.params(inputs))

    def start_near_standard(self) -> None:
        """Every layer's q(z_l | ·) starts with σ = 1 (``Conditional.start_near_standard``)."""
        for conditional in (self.first, *self.conditionals):
            conditional.start_near_standard()


class Coordinates(nn.Module):
    """z ↦ z[..., start:stop]: one layer of a concatenated hierarchical z."""

    def __init__(self, start: int, stop: int) -> None:
        super().__init__()
        self.start, self.stop = start, stop

    def forward(self, z: Tensor) -> Tensor:
        return z[..., self.start : self.stop]


class HierarchicalVAE(LatentVariableModel):
    """z_L ~ N(0, I), z_l | z_{l+1} ~ N(μ_θ(z_{l+1}), diag σ_θ²(z_{l+1})), x | z_1 ~ likelihood(net(z_1)); q_φ(z|x) = q(z_1|x) Π_{l>1} q(z_l|z_{l−1}),
    Gaussian with exp-parameterized σ (Burda et al., 2016's stochastic layers).

    ``latent_dims`` [d_1, …, d_L]; ``hidden[l]`` the deterministic widths between layer l−1 and layer l (layer 0 is x), the
    encoder's upward and the decoder's downward: the IWAE paper's two layers are latent_dims [100, 50], hidden [[200, 200], [100, 100]].
    ``num_pseudo_inputs`` C makes p(z_L) a VampPrior: the mixture of the top encoder layer's q(z_L | z_{L−1} = u_c) over C learned
    inputs u_c of that layer (x itself for L = 1). The encoder's q(z_L|x) is an integral over the layers below, with no closed
    form, so the pseudo-inputs live where the top layer's own input does.
    """

    def __init__(
        self,
        data_dim: int = 2,
        latent_dims: Sequence[int] = (4, 2),
        hidden: Sequence[Sequence[int]] = ((64, 64), (32, 32)),
        activation: str = "tanh",
        likelihood: LikelihoodChoice = "gaussian",
        decoder_std: GaussianStd = "learned",
        num_pseudo_inputs: Optional[int] = None,
    ) -> None:
        if not latent_dims or len(hidden) != len(latent_dims) or min(latent_dims) < 1:
            raise UsageError(
                f"give latent_dims (each >= 1) and one hidden list per layer, e.g. latent_dims [100, 50], hidden [[200, 200], [100, 100]]; got {list(latent_dims)} and {[list(h) for h in hidden]}"
            )
        sizes, below = list(latent_dims), [data_dim, *latent_dims[:-1]]
        observation = likelihood_family(likelihood, data_dim, decoder_std)

        def gaussian(inputs: int, layer: int, widths: Sequence[int]) -> Conditional:
            family = DiagonalGaussian(sizes[layer])
            return Conditional(mlp(inputs, family.num_params, widths, activation), family)

        # The generative side first, then the encoder: the order in which they draw their initial weights from the seed.
        decoder = Conditional(nn.Sequential(Coordinates(0, sizes[0]), mlp(sizes[0], observation.num_params, hidden[0][::-1], activation)), observation)
        prior_layers = [gaussian(sizes[layer + 1], layer, hidden[layer + 1][::-1]) for layer in range(len(sizes) - 1)]
        first, *upper = [gaussian(below[layer], layer, hidden[layer]) for layer in range(len(sizes))]
        encoder = HierarchicalEncoder(first, upper, sizes)
        top = StandardNormalPrior(sizes[-1]) if num_pseudo_inputs is None else VampPrior((upper or [first])[-1], num_pseudo_inputs, below[-1])
        super().__init__(HierarchicalPrior(top, prior_layers, sizes), decoder, encoder, data_dim)
        self.sizes = sizes

    def latent_layers(self) -> dict[str, slice]:
        """z_1, …, z_L as slices of z's last dimension."""
        starts = [0, *accumulate(self.sizes)]
        return {f"z{layer + 1}": slice(starts[layer], starts[layer + 1]) for layer in range(len(self.sizes))}
