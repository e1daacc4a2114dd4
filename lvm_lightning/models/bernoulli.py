"""The Bernoulli likelihood of many pixels as one autograd node: log p(x|l) = Σ_d x_d l_d − softplus(l_d).

Evaluation at large K spends most of its time here, not in the networks: torch's Bernoulli goes through
``binary_cross_entropy_with_logits``, whose log-sigmoid calls a scalar ``log1p`` per element and keeps several
temporaries for its backward. Here softplus(l) = max(l, 0) + log(1 + e^{−|l|}) uses the vectorized ``exp`` and ``log``
(1 + u for u = e^{−|l|} ∈ (0, 1] loses at most half an ulp of 1, the rounding every fp32 term carries anyway), each
pixel's term is formed before the sum, in chunks that stay in the CPU's cache, and the backward, x − σ(l), is one fused
line from the saved logits.
"""

from typing import Any, Optional

import torch
from torch import Size, Tensor
from torch.distributions import Bernoulli, Independent

CHUNK_ELEMENTS = 1 << 18  # a CPU core's share of cache: the passes over a chunk stay there, not in memory


def _log_likelihood(logits: Tensor, value: Tensor) -> Tensor:
    # Each pixel's term before any sum: x·l − max(l, 0) is exact for x in {0, 1}, so a confident pixel (|l| large, term
    # near 0) adds its own small value, not the difference of two large sums over the row.
    terms = (logits * value).sub_(logits.clamp(min=0))
    return terms.sub_(logits.abs().neg_().exp_().add_(1).log_()).sum(-1)


def log_likelihood(logits: Tensor, value: Tensor) -> Tensor:
    """Σ_d x_d l_d − softplus(l_d) over the last dimension, softplus(l) = max(l, 0) + log(1 + e^{−|l|}); on a CPU in chunks
    of the leading dimension of the broadcast shape."""
    logits, value = torch.broadcast_tensors(logits, value)  # views: an expanded value is not copied
    if logits.device.type != "cpu" or logits.numel() <= CHUNK_ELEMENTS or logits.dim() < 2:  # a GPU streams it in one pass
        return _log_likelihood(logits, value)
    rows = max(1, CHUNK_ELEMENTS // logits[0].numel())
    return torch.cat([_log_likelihood(a, b) for a, b in zip(logits.split(rows), value.split(rows))])


class BernoulliLogLikelihood(torch.autograd.Function):
    """Σ_d x_d l_d − softplus(l_d) over the last dimension (logits and values broadcast); ∂/∂l_d = x_d − σ(l_d), ∂/∂x_d = l_d."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits: Tensor, value: Tensor) -> Tensor:
        with torch.autocast(logits.device.type, enabled=False):  # the sums stay in the logits' own precision
            return log_likelihood(logits, value)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, Tensor], output: Tensor) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], Optional[Tensor]]:
        logits, value = ctx.saved_tensors
        grad = grad.unsqueeze(-1)
        grad_logits = (grad * (value - torch.sigmoid(logits))).sum_to_size(logits.shape) if ctx.needs_input_grad[0] else None
        grad_value = (grad * logits).sum_to_size(value.shape) if ctx.needs_input_grad[1] else None
        return grad_logits, grad_value


class IndependentBernoulli(Independent):
    """Independent Bernoulli(σ(l_d)) over the last dimension of ``logits``: torch's, with log p(x) = Σ_d x_d l_d − softplus(l_d) fused."""

    def __init__(self, logits: Tensor) -> None:
        super().__init__(Bernoulli(logits=logits, validate_args=False), 1, validate_args=False)

    def expand(self, batch_shape: Size, _instance: Optional["IndependentBernoulli"] = None) -> "IndependentBernoulli":
        return IndependentBernoulli(self.base_dist.logits.expand(*batch_shape, *self.event_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        logits = self.base_dist.logits
        dtype = torch.promote_types(logits.dtype, torch.float32)  # bf16 logits (mixed precision) are summed in fp32
        return BernoulliLogLikelihood.apply(logits.to(dtype), value.to(dtype))
