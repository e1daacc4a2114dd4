"""The fused Bernoulli likelihood against torch's own Bernoulli (the oracle), in value and in first and second derivatives."""

import pytest
import torch
from torch.distributions import Bernoulli, Independent

from lvm_lightning.models.bernoulli import CHUNK_ELEMENTS, IndependentBernoulli


def torch_log_prob(logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return Independent(Bernoulli(logits=logits, validate_args=False), 1).log_prob(value)


@pytest.mark.parametrize(
    "logits_shape, value_shape",
    [((7, 5, 9), (5, 9)), ((5, 9), (3, 5, 9)), ((4, 1, 9), (1, 6, 9)), ((2, CHUNK_ELEMENTS // 100 + 3, 100), (CHUNK_ELEMENTS // 100 + 3, 100))],
)
def test_log_prob_matches_torch_in_float64_across_broadcasting_and_chunking(logits_shape: tuple, value_shape: tuple) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(logits_shape, generator=generator, dtype=torch.float64) * 6
    logits.view(-1)[:5] = torch.tensor([200.0, -200.0, 1e4, -1e4, 0.0], dtype=torch.float64)  # saturated and balanced pixels
    value = torch.bernoulli(torch.full(value_shape, 0.3, dtype=torch.float64), generator=generator)
    ours, oracle = IndependentBernoulli(logits).log_prob(value), torch_log_prob(logits, value)
    assert ours.shape == oracle.shape and ours.dtype == torch.float64
    assert torch.allclose(ours, oracle, rtol=1e-12, atol=1e-9)


def test_float32_error_is_that_of_torchs_own_bernoulli() -> None:
    """In fp32 both differ from the fp64 value by the rounding of summing 784 terms: ours by no more than 2× torch's own."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(16, 300, 784, generator=generator, dtype=torch.float64) * 5
    value = torch.bernoulli(torch.full((300, 784), 0.2, dtype=torch.float64), generator=generator)
    exact = torch_log_prob(logits, value)
    ours = IndependentBernoulli(logits.float()).log_prob(value.float()).double()
    theirs = torch_log_prob(logits.float(), value.float()).double()
    assert ours.dtype == torch.float64 and (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max()
    assert (ours - exact).mean().abs() < 1e-5


def test_a_confident_model_keeps_its_small_log_likelihood_in_float32() -> None:
    """A trained decoder's logits are large where it is sure (|l| of 10 to 30, term near 0): each pixel's term must be formed
    before the sum, else the row's Σ x·l and Σ softplus(l), thousands each, cancel with an error far above the answer.
    One huge logit (1e30, as sure as fp32 gets) beside ordinary ones must not swallow them."""
    generator = torch.Generator().manual_seed(4)
    value = torch.bernoulli(torch.full((64, 784), 0.4, dtype=torch.float64), generator=generator)
    logits = (2 * value - 1) * (10 + 20 * torch.rand(64, 784, generator=generator, dtype=torch.float64))
    logits[:, :5] = torch.randn(64, 5, generator=generator, dtype=torch.float64)  # a few uncertain pixels
    logits[0, 5] = 1e30 * (2 * value[0, 5] - 1)
    exact = torch_log_prob(logits, value)
    ours = IndependentBernoulli(logits.float()).log_prob(value.float()).double()
    theirs = torch_log_prob(logits.float(), value.float()).double()
    assert (ours - exact).abs().max() <= 2 * (theirs - exact).abs().max() + 1e-6
    assert (ours - exact).abs().max() < 1e-4


def test_first_and_second_derivatives_match_torchs() -> None:
    generator = torch.Generator().manual_seed(2)
    logits = (torch.randn(3, 4, 6, generator=generator, dtype=torch.float64) * 3).requires_grad_()
    value = torch.rand(4, 6, generator=generator, dtype=torch.float64).requires_grad_()  # a value gradient too
    torch.autograd.gradcheck(lambda a, v: IndependentBernoulli(a).log_prob(v), (logits, value))
    torch.autograd.gradgradcheck(lambda a, v: IndependentBernoulli(a).log_prob(v), (logits, value))
    weights = torch.randn(3, 4, dtype=torch.float64)
    ours = torch.autograd.grad((IndependentBernoulli(logits).log_prob(value) * weights).sum(), (logits, value))
    oracle = torch.autograd.grad((torch_log_prob(logits, value) * weights).sum(), (logits, value))
    assert all(torch.allclose(a, b) for a, b in zip(ours, oracle))


def test_low_precision_logits_are_summed_in_float32_also_under_autocast() -> None:
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(8, 20, 784, generator=generator) * 4
    value = torch.bernoulli(torch.full((20, 784), 0.5), generator=generator)
    half = IndependentBernoulli(logits.bfloat16()).log_prob(value)
    assert half.dtype == torch.float32
    assert torch.allclose(half.double(), torch_log_prob(logits.bfloat16().double(), value.double()), atol=1e-3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = IndependentBernoulli(logits).log_prob(value)
    assert under_autocast.dtype == torch.float32 and torch.equal(under_autocast, IndependentBernoulli(logits).log_prob(value))


def test_is_torchs_independent_bernoulli_otherwise() -> None:
    logits = torch.randn(5, 3)
    distribution = IndependentBernoulli(logits)
    assert isinstance(distribution, Independent) and distribution.event_shape == (3,) and distribution.batch_shape == (5,)
    assert torch.equal(distribution.mean, torch.sigmoid(logits))
    expanded = distribution.expand((2, 5))
    assert isinstance(expanded, IndependentBernoulli) and expanded.batch_shape == (2, 5)
    value = torch.bernoulli(torch.full((2, 5, 3), 0.5))
    assert torch.allclose(expanded.log_prob(value), torch_log_prob(logits.expand(2, 5, 3), value))


def test_vmap_and_functional_grad() -> None:
    logits, value = torch.randn(4, 6, 5), torch.bernoulli(torch.full((6, 5), 0.5))
    mapped = torch.func.vmap(lambda a: IndependentBernoulli(a).log_prob(value))(logits)
    assert torch.allclose(mapped, torch_log_prob(logits, value))
    gradient = torch.func.grad(lambda a: IndependentBernoulli(a).log_prob(value).sum())(logits)
    assert torch.allclose(gradient, value - torch.sigmoid(logits))
