"""The latent variable model p_θ(x, z) = p(z) p_θ(x|z) with its amortized posterior q_φ(z|x)."""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from torch.func import functional_call

from lvm_lightning.errors import UsageError
from lvm_lightning.models.contracts import check_parts
from lvm_lightning.models.families import ExpressesDistributions, Family, StartsAtData, StartsNearStandard
from lvm_lightning.models.kmeans import KMeansStart
from lvm_lightning.models.units import Units


class Conditional(nn.Module):
    """A conditional distribution family(net(input)): encoders q_φ(z|x) and decoders p_θ(x|z) alike.

    As an encoder it is what per-point inference needs: ``params`` (unconstrained, [B, P]) for x,
    ``distribution`` for any such rows, and ``prior_params`` that make it a given prior. ``family`` is a ``Family``
    (models/families.py); the starts and ``prior_params`` use what more it declares.
    """

    def __init__(self, net: nn.Module, family: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.family = family
        self.bf16 = False  # the net's matrix products in bfloat16 (LatentVariableModel.networks_in_bf16)

    def params(self, inputs: Tensor) -> Tensor:
        """The family's unconstrained parameters for ``inputs``, shape [..., P], in float32 whatever precision the net ran in."""
        if not self.bf16:
            return self.net(inputs)
        # Only the net's products are rounded to bfloat16: the family's densities, and so every log-weight, log-sum-exp and
        # likelihood sum built on them, stay float32, as do the parameters and their gradients.
        with torch.autocast(inputs.device.type, dtype=torch.bfloat16):
            return self.net(inputs).float()

    def distribution(self, params: Tensor) -> Distribution:
        """The distribution with parameter rows ``params`` [..., P]."""
        return self.family(params)

    def prior_params(self, prior: Distribution) -> Tensor:
        """Parameters [P] for which ``distribution`` is ``prior`` (the start of per-point inference from the prior)."""
        if not isinstance(self.family, ExpressesDistributions):
            raise UsageError(
                f"a {type(self.family).__name__} has no parameters that make it a given distribution: start per-point inference from the encoder (init 'encoder')"
            )
        return self.family.params_of(prior)

    def forward(self, inputs: Tensor) -> Distribution:
        return self.distribution(self.params(inputs))

    def output_layer(self) -> Optional[nn.Linear]:
        """The net's last linear layer if it writes the family's parameters (a [P]-wide output), else None (a convolution)."""
        layers = [m for m in self.net.modules() if isinstance(m, nn.Linear)]
        return layers[-1] if layers and isinstance(self.family, Family) and layers[-1].out_features == self.family.num_params else None

    @torch.no_grad()
    def start_at_data(self, u: Tensor) -> None:
        """As a decoder: the output layer's bias set to the family's parameters for the rows ``u`` [N, D] (``family.data_params``),
        so that training starts from the data's own column means and spread, or pixel frequencies (Burda et al., 2016)."""
        layer = self.output_layer()
        if layer is not None and layer.bias is not None and isinstance(self.family, StartsAtData):
            layer.bias.copy_(self.family.data_params(u))

    @torch.no_grad()
    def start_near_standard(self) -> None:
        """As an encoder: the output rows that the family's ``standard_rows`` names (log σ, the flows' shapes) set to zero,
        weights and bias, so that q(z|x) starts as N(μ(x), I) whatever the inputs: no scale of e^(random · x) to explode."""
        layer = self.output_layer()
        if layer is not None and isinstance(self.family, StartsNearStandard):
            mask = self.family.standard_rows().to(layer.weight.device)
            layer.weight[mask] = 0
            if layer.bias is not None:
                layer.bias[mask] = 0


def _frozen(module: nn.Module) -> dict[str, Tensor]:
    return {name: p.detach() for name, p in module.named_parameters()}


class LatentVariableModel(nn.Module):
    """p_θ(x, z) = p(z) p_θ(x|z), with the amortized encoder q_φ(z|x).

    ``prior()`` returns p(z), ``decoder(z)`` p_θ(x|z) and ``encoder(x)`` q_φ(z|x), all torch
    distributions; the encoder is a ``Conditional`` (or offers its three methods) for per-point
    inference. Latent samples are shaped [K, B] (categorical) or [K, B, d] (continuous); data [B, D].
    Build one from your own modules in YAML with ``class_path: lvm_lightning.models.LatentVariableModel``.
    ``data_dim`` (linked from the data by the command line) is checked against the decoder's rows.

    ``units`` maps the data to the standard units the encoder reads and the decoder writes (the identity unless the
    data module asks for it, ``models/units.py``): read the model through ``likelihood``, ``posterior``,
    ``posterior_params``/``posterior_from`` and ``log_joint``, which work in the data's units, not through its parts.
    """

    common_scale = False  # whether the units must scale every column alike (a model with isotropic noise)

    def __init__(self, prior: nn.Module, decoder: nn.Module, encoder: nn.Module, data_dim: Optional[int] = None) -> None:
        super().__init__()
        self.prior = prior
        self.decoder = decoder
        self.encoder = encoder
        rows = check_parts(prior, decoder, encoder, data_dim)
        # Whether log p(x) = log Σ_z p(z) p(x|z) can be enumerated: asked of the prior, once.
        self.enumerable: bool = bool(prior().has_enumerate_support)
        # Whether z is continuous (what HMC, per-point inference by gradients and encodings need): asked of the prior's support.
        self.continuous: bool = not prior().support.is_discrete
        self.units = Units(math.prod(rows))
        # A mixture of diagonal Gaussians, shipped or built from parts, starts from k-means clusters of the data (initialize).
        self.kmeans: Optional[KMeansStart] = KMeansStart() if KMeansStart.applies(self) else None

    def networks_in_bf16(self, enabled: bool = True) -> None:
        """Runs the matrix products of every ``Conditional``'s network in bfloat16 (fast on GPUs' tensor cores and CPUs with
        AVX512-BF16 or AMX), the densities in float32."""
        for module in self.modules():
            if isinstance(module, Conditional):
                module.bf16 = enabled

    @contextmanager
    def bf16_networks(self, enabled: bool = True) -> Iterator[None]:
        """Within the block, the networks' matrix products in bfloat16 (``networks_in_bf16``), float32 again after it, an
        error included; ``enabled=False`` leaves them as they are."""
        if not enabled:
            yield
            return
        self.networks_in_bf16(True)
        try:
            yield
        finally:
            self.networks_in_bf16(False)

    def standardize(self, x: Tensor) -> None:
        """Fits ``units`` to the training rows ``x`` [N, D] (in the data's units), so that the networks see standard units."""
        with torch.no_grad():
            support = self.decoder(self.prior().sample((1,)).to(x.device)).support
        if getattr(support, "base_constraint", support) is not constraints.real:
            raise UsageError(
                f"the data are to be standardized, but the decoder's likelihood lives on {support}, not on the real line: "
                "pass --data.standardize false (binary or [0, 1] data), or a Gaussian likelihood"
            )
        self.units.fit(x, self.common_scale)

    def initialize(self, x: Tensor) -> None:
        """Sets parameters from the training rows ``x`` [N, D] (in the data's units) once, before training: q(z|x) starts as
        N(μ(x), I) and the decoder's output at the data where their parts can (``Conditional.start_near_standard``,
        ``Conditional.start_at_data``), a mixture from k-means. A model of your own may override it."""
        start_encoder, start_decoder = getattr(self.encoder, "start_near_standard", None), getattr(self.decoder, "start_at_data", None)
        if start_encoder is not None:
            start_encoder()
        if start_decoder is not None:
            start_decoder(self.units.standardize(x))
        if self.kmeans is not None:
            self.kmeans(self, self.units.standardize(x))

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

    def likelihood(self, z: Tensor, frozen: bool = False) -> Distribution:
        """p_θ(x|z) over the data's units; ``frozen`` treats θ as a constant (gradients reach z only)."""
        likelihood = functional_call(self.decoder, _frozen(self.decoder), (z,)) if frozen else self.decoder(z)
        return self.units.to_data(likelihood)

    def log_joint(self, x: Tensor, z: Tensor, frozen: bool = False) -> Tensor:
        """log p(z) + log p_θ(x|z), shape [K, B]; ``frozen`` treats θ as a constant (gradients reach z only)."""
        prior = functional_call(self.prior, _frozen(self.prior), ()) if frozen else self.prior()
        return prior.log_prob(z) + self.likelihood(z, frozen).log_prob(x)

    def posterior(self, x: Tensor, frozen: bool = False) -> Distribution:
        """The amortized q_φ(z|x), batch shape [B]; ``frozen`` treats φ as a constant (the density of the STL and DReG gradients)."""
        u = self.units.standardize(x)
        if frozen:
            return functional_call(self.encoder, _frozen(self.encoder), (u,))
        return self.encoder(u)

    def posterior_params(self, x: Tensor) -> Tensor:
        """The encoder's unconstrained parameter rows [B, P] for x: what per-point inference and refinement start from."""
        return self.encoder.params(self.units.standardize(x))

    def posterior_from(self, params: Tensor) -> Distribution:
        """q with the parameter rows ``params`` [..., P] in the encoder's family."""
        return self.encoder.distribution(params)

    def prior_params(self) -> Tensor:
        """Parameters [P] for which the encoder's family is the prior (UsageError where it cannot be)."""
        return self.encoder.prior_params(self.prior())

    @torch.no_grad()
    def nonfinite_terms(self, x: Tensor) -> list[str]:
        """Which of the weights, log q_φ(z|x), log p(z) and log p_θ(x|z) are NaN or infinite on the batch ``x``, at every z (enumerable) or one z ~ q_φ(z|x)."""
        if not all(bool(torch.isfinite(p).all()) for p in self.parameters()):
            return ["the weights"]
        q = self.posterior(x)
        z = self.support() if self.enumerable else q.sample()  # a categorical with NaN probabilities refuses to sample
        terms = {"log q(z|x)": q.log_prob(z), "log p(z)": self.prior().log_prob(z), "log p(x|z)": self.likelihood(z).log_prob(x)}
        return [name for name, value in terms.items() if not bool(torch.isfinite(value).all())]

    @torch.no_grad()
    def sample(self, num: int) -> Tensor:
        """x ~ p_θ(x) by ancestral sampling: z ~ p(z), x ~ p_θ(x|z); shape [num, D]."""
        return self.likelihood(self.prior().sample((num,))).sample()
