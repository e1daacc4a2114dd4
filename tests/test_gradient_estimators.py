"""The encoder's gradient estimators of the importance-sampled bound: STL, DReG and VIMCO against the reparameterized
gradient, the true posterior and enumeration."""

import math

import pytest
import torch

from lvm_lightning.errors import UsageError
from lvm_lightning.models import LinearGaussian, MixtureModel
from lvm_lightning.objectives import ELBO, STL, VIMCO, DReG, ImportanceSampling, leave_one_out_bounds

pytestmark = pytest.mark.usefixtures("float64")  # exact zeros and CLT bounds read in double precision (tests/conftest.py)


def linear_gaussian(seed: int = 0, data_dim: int = 4, latent_dim: int = 2) -> tuple[LinearGaussian, torch.Tensor]:
    """A pPCA model whose W has orthogonal columns (so its posterior is a diagonal Gaussian), with 6 points drawn from it."""
    torch.manual_seed(seed)
    model = LinearGaussian(data_dim, latent_dim)
    with torch.no_grad():
        basis, _ = torch.linalg.qr(torch.randn(data_dim, latent_dim))
        model.decoder.net[0].weight.copy_(basis * torch.tensor([2.0, 0.7]))
        model.decoder.net[0].bias.copy_(torch.randn(data_dim))
        model.decoder.family.log_std.fill_(math.log(0.5))
    return model, model.sample(6)


def set_true_posterior(model: LinearGaussian) -> None:
    """Encoder weights for q_φ(z|x) = p_θ(z|x) = N(Σ Wᵀ(x − b)/σ², Σ), Σ = (I + WᵀW/σ²)⁻¹, diagonal here."""
    W, b, var = model.weight, model.bias, model.noise_std**2
    sigma = torch.linalg.inv(torch.eye(W.shape[1]) + W.T @ W / var)
    assert torch.allclose(sigma, torch.diag(torch.diagonal(sigma)), atol=1e-12)
    layer = model.encoder.net[0]
    with torch.no_grad():
        gain = sigma @ W.T / var
        layer.weight.copy_(torch.cat([gain, torch.zeros_like(gain)]))
        layer.bias.copy_(torch.cat([-gain @ b, 0.5 * torch.diagonal(sigma).log()]))


def gradients(estimator: ImportanceSampling, model, x: torch.Tensor, num: int, seed: int) -> dict[str, torch.Tensor]:
    """``num`` gradient estimates of the mean surrogate, by part: {'encoder': [num, P_φ], 'decoder': [num, P_θ]}."""
    parts = {"encoder": list(model.encoder.parameters()), "decoder": list(model.decoder.parameters())}
    torch.manual_seed(seed)
    rows = {name: [] for name in parts}
    for _ in range(num):
        surrogate = estimator.objective(model, x).surrogate.mean()
        grads = torch.autograd.grad(surrogate, parts["encoder"] + parts["decoder"])
        rows["encoder"].append(torch.cat([g.flatten() for g in grads[: len(parts["encoder"])]]))
        rows["decoder"].append(torch.cat([g.flatten() for g in grads[len(parts["encoder"]) :]]))
    return {name: torch.stack(value) for name, value in rows.items()}


@pytest.mark.parametrize("gradient, k", [(STL, 1), (DReG, 1), (DReG, 8)])
def test_stl_and_dreg_equal_the_reparameterized_gradient_in_expectation(gradient, k):
    """1500 paired estimates (the same draws z_k): their mean difference from 'reparam' lies within 5 standard errors for every
    encoder weight, while the expected gradient itself is many standard errors from zero (the comparison can fail)."""
    model, x = linear_gaussian()
    reference = gradients(ImportanceSampling(k), model, x, 1500, seed=1)["encoder"]
    other = gradients(ImportanceSampling(k, gradient=gradient()), model, x, 1500, seed=1)["encoder"]
    assert float(paired_z(reference, other).max()) < 5.0
    assert float((reference.mean(0).abs() / reference.std(0) * math.sqrt(len(reference))).max()) > 20


def paired_z(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|mean(a − b)| in standard errors of that mean, per parameter, for estimates [M, P] paired by row."""
    difference = a - b
    return difference.mean(0).abs() / (difference.std(0) / math.sqrt(len(difference)))


def test_stl_is_biased_for_k_above_one():
    """Tucker et al. (2018): the path derivative alone is not the IWAE bound's gradient once K > 1 (here K = 8)."""
    model, x = linear_gaussian()
    reference = gradients(ImportanceSampling(8), model, x, 1500, seed=1)["encoder"]
    stl = gradients(ImportanceSampling(8, gradient=STL()), model, x, 1500, seed=1)["encoder"]
    assert float(paired_z(reference, stl).max()) > 10


@pytest.mark.parametrize("gradient", [STL, DReG])
@pytest.mark.parametrize("k", [1, 10])
def test_path_gradients_vanish_at_the_true_posterior(gradient, k):
    """With q_φ = p_θ(z|x), log w_k = log p(x) for every z: STL's and DReG's encoder gradients are exactly zero, the
    reparameterized one (score term included) is not."""
    model, x = linear_gaussian()
    set_true_posterior(model)
    weights = ImportanceSampling(k).estimate(model, x).log_weights
    assert float((weights - model.marginal().log_prob(x)).abs().max()) < 1e-10  # the oracle: every log w_k is the closed-form log p(x)
    path = gradients(ImportanceSampling(k, gradient=gradient()), model, x, 5, seed=3)["encoder"]
    reparam = gradients(ImportanceSampling(k), model, x, 5, seed=3)["encoder"]
    assert float(path.abs().max()) < 1e-10
    assert float(reparam.abs().max()) > 1e-3


@pytest.mark.parametrize("gradient", [STL, DReG, VIMCO])
def test_the_decoder_keeps_the_iwae_gradient(gradient):
    """θ's gradient is Σ_k w̃_k ∇_θ log w_k under every encoder option: from the same draws it equals the reparameterized bound's."""
    model, x = linear_gaussian()
    reference = gradients(ImportanceSampling(5), model, x, 3, seed=4)["decoder"]
    other = gradients(ImportanceSampling(5, gradient=gradient()), model, x, 3, seed=4)["decoder"]
    torch.testing.assert_close(other, reference)


def test_dreg_with_a_frozen_encoder_trains_the_decoder_alone():
    """An encoder whose weights do not learn (requires_grad False): DReG leaves z without a hook and θ gets the IWAE gradient."""
    model, x = linear_gaussian()
    reference = gradients(ImportanceSampling(5), model, x, 1, seed=8)["decoder"]
    model.encoder.requires_grad_(False)
    torch.manual_seed(8)
    surrogate = ImportanceSampling(5, gradient=DReG()).objective(model, x).surrogate.mean()
    grads = torch.autograd.grad(surrogate, list(model.decoder.parameters()))
    torch.testing.assert_close(torch.cat([g.flatten() for g in grads]), reference[0])


def test_dreg_with_recomputed_chunks_gives_the_same_gradient():
    """DReG's per-sample gradient scaling survives ``recompute`` (chunks' graphs rebuilt in the backward pass) and chunking."""
    model, x = linear_gaussian()
    whole = gradients(ImportanceSampling(12, gradient=DReG()), model, x, 2, seed=5)
    chunked = gradients(ImportanceSampling(12, chunk_size=4 * len(x), recompute=True, gradient=DReG()), model, x, 2, seed=5)
    for name in whole:
        torch.testing.assert_close(chunked[name], whole[name])


def test_leave_one_out_bounds_match_direct_sums():
    """L̂_{−k} against the K × K sum written out, including weights that differ by hundreds of nats (one dominant w_k)."""
    torch.manual_seed(6)
    log_weights = torch.randn(7, 5) * torch.tensor([1.0, 10.0, 100.0, 300.0, 0.0])
    k = log_weights.shape[0]
    expected = torch.empty_like(log_weights)
    for i in range(k):
        others = torch.cat([log_weights[:i], log_weights[i + 1 :]])
        replaced = torch.cat([others, others.mean(0, keepdim=True)])
        expected[i] = replaced.logsumexp(0) - math.log(k)
    torch.testing.assert_close(leave_one_out_bounds(log_weights), expected, rtol=1e-12, atol=1e-12)
    # A weight of 0: the others' geometric mean is 0 for every other sample, and its own baseline is finite, not NaN.
    with_zero = torch.tensor([[0.0], [-math.inf], [1.0]])
    expected = torch.tensor([[math.log(math.e / 3)], [math.log((1 + math.e + math.exp(0.5)) / 3)], [math.log(1 / 3)]])
    torch.testing.assert_close(leave_one_out_bounds(with_zero), expected)


def test_vimco_trains_a_categorical_encoder_to_the_posterior():
    """On a fixed 8-component mixture decoder VIMCO (K = 5, sampled z, no enumeration in the gradient) brings
    KL(q_φ(z|x) || p_θ(z|x)), enumerated, from its start to below 0.05 nats per point."""
    torch.manual_seed(7)
    model = MixtureModel(2, 8, learn_prior=False, encoder_hidden=[32])
    with torch.no_grad():
        angles = torch.arange(8) * 2 * math.pi / 8
        model.decoder.net[0].weight.copy_(torch.cat([2.0 * torch.stack([angles.cos(), angles.sin()], 1), torch.full((8, 2), math.log(0.6))], 1))
    x = model.sample(256)

    def kl() -> float:
        with torch.no_grad():
            log_joint = model.log_joint(x, model.support())
            log_posterior = log_joint - log_joint.logsumexp(0)
            q = model.posterior(x).logits.T  # [C, B], normalized
            return float((q.exp() * (q - log_posterior)).sum(0).mean())

    start = kl()
    estimator = ImportanceSampling(5, gradient=VIMCO())
    optimizer = torch.optim.Adam(model.encoder.parameters(), lr=1e-2)
    for _ in range(600):
        optimizer.zero_grad()
        (-estimator.objective(model, x).surrogate.mean()).backward()
        optimizer.step()
    assert start > 0.5
    assert kl() < 0.05


def test_gradient_options_refuse_what_they_cannot_do():
    """One-line errors: an unknown option, VIMCO with one sample, DReG on the ELBO, a path gradient through a categorical q."""
    with pytest.raises(UsageError, match="takes gradient"):
        ImportanceSampling(5, gradient="rebar")
    with pytest.raises(UsageError, match="num_samples >= 2"):
        ImportanceSampling(1, gradient=VIMCO())
    with pytest.raises(UsageError, match=r"Reparameterized\(\) or STL\(\)"):
        ELBO(5, gradient=DReG())
    model = MixtureModel(2, 3)
    with pytest.raises(UsageError, match="needs a continuous z.*VIMCO"):
        ImportanceSampling(5, gradient=STL()).check(model)
    with pytest.raises(UsageError, match="cannot be reparameterized.*VIMCO"):
        ImportanceSampling(5, gradient=DReG()).objective(model, model.sample(4))
