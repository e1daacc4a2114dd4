"""The estimators against oracles: torch's MixtureSameFamily and MultivariateNormal, true posteriors, K → ∞."""

import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Independent, MixtureSameFamily, MultivariateNormal, Normal, kl_divergence

from lvm_lightning.errors import UsageError
from lvm_lightning.estimates import estimate_all
from lvm_lightning.models import VAE, LinearGaussian, MixtureModel
from lvm_lightning.objectives import (
    ELBO,
    Exact,
    ImportanceSampling,
    PriorSampling,
    amortized_elbo,
    wake_objective,
)

pytestmark = pytest.mark.usefixtures("float64")  # oracle comparisons to 1e-9 (tests/conftest.py)


def mixture_model(num_components: int = 6, dim: int = 2):
    """A categorical-latent model with no decoder hidden layers (a Gaussian mixture), with spread-out random parameters."""
    model = MixtureModel(dim, num_components, learn_prior=True, decoder_hidden=[])
    with torch.no_grad():
        table = model.decoder.net[0].weight  # [C, 2D]: means, then log-stds
        table[:, :dim] = 3 * torch.randn(num_components, dim)
        table[:, dim:] = 0.3 * torch.randn(num_components, dim)
        model.prior.logits.copy_(torch.randn(num_components))
    return model


def oracle_mixture(model, dim: int = 2) -> MixtureSameFamily:
    """The same mixture, built directly from the parameters with torch.distributions."""
    table, bias = model.decoder.net[0].weight, 0
    means, log_stds = table[:, :dim] + bias, table[:, dim:]
    return MixtureSameFamily(Categorical(logits=model.prior.logits), Independent(Normal(means, log_stds.exp()), 1))


class TruePosterior(nn.Module):
    """q(z|x) ∝ p_θ(z|x)^temperature by enumeration: at temperature 1 the zero-variance importance proposal."""

    def __init__(self, model, temperature: float = 1.0) -> None:
        super().__init__()
        self.model = [model]  # a list, so the model is not registered as a submodule
        self.temperature = temperature

    def forward(self, x):
        model = self.model[0]
        log_joint = model.log_joint(x, model.support()).detach()
        return Categorical(logits=self.temperature * (log_joint - log_joint.logsumexp(0)).T)


def test_exact_equals_mixture_same_family():
    model = mixture_model()
    x = 3 * torch.randn(50, 2)
    expected = oracle_mixture(model).log_prob(x)
    torch.testing.assert_close(Exact().estimate(model, x).log_px, expected, rtol=0, atol=1e-10)


def test_exact_equals_mixture_same_family_for_an_mlp_decoder_with_bernoulli_likelihood():
    model = MixtureModel(5, 4, decoder_hidden=[8], likelihood="bernoulli")
    x = torch.randint(0, 2, (30, 5)).double()
    z = torch.arange(4)
    logits = model.decoder.net(z)  # one row of Bernoulli logits per component
    oracle = MixtureSameFamily(Categorical(logits=model.prior.logits), Independent(torch.distributions.Bernoulli(logits=logits), 1))
    torch.testing.assert_close(Exact().estimate(model, x).log_px, oracle.log_prob(x), rtol=0, atol=1e-10)


def test_importance_weights_are_constant_when_q_is_the_true_posterior():
    model = mixture_model()
    model.encoder = TruePosterior(model)
    x = 3 * torch.randn(40, 2)
    estimate = ImportanceSampling(num_samples=64).estimate(model, x)
    log_px = oracle_mixture(model).log_prob(x)
    torch.testing.assert_close(estimate.log_weights, log_px.expand(64, -1), rtol=0, atol=1e-9)
    torch.testing.assert_close(estimate.log_px, log_px, rtol=0, atol=1e-9)
    assert torch.allclose(estimate.effective_sample_size(), torch.full_like(log_px, 64.0))


@pytest.mark.parametrize("estimator_class", [PriorSampling, ImportanceSampling])
def test_sampled_estimates_converge_to_exact_as_k_grows(estimator_class):
    model = mixture_model()
    model.encoder = TruePosterior(model, temperature=0.3)  # a proposal that is right in shape but wrong in detail
    x = 3 * torch.randn(20, 2)
    exact = oracle_mixture(model).log_prob(x)
    errors = {k: (estimator_class(k).estimate(model, x).log_px - exact).abs().mean() for k in (4, 64, 4096)}
    assert errors[4096] < errors[64] < errors[4]
    assert errors[4096] < 0.02


@pytest.mark.parametrize("estimator_class", [PriorSampling, ImportanceSampling])
def test_exp_of_estimate_is_unbiased_for_px(estimator_class):
    """E[exp(log p̂)] = p(x): the mean over R repeats lies within 4 standard errors (CLT, fixed seed)."""
    model = mixture_model(num_components=4)
    x = oracle_mixture(model).sample((3,))
    repeats = 4000
    x_rep = x.repeat(repeats, 1)  # [R·B, D]: R independent estimates of each point in one batch
    p_hat = estimator_class(3).estimate(model, x_rep).log_px.exp().view(repeats, -1)
    p_true = oracle_mixture(model).log_prob(x).exp()
    stderr = p_hat.std(0) / math.sqrt(repeats)
    assert ((p_hat.mean(0) - p_true).abs() < 4 * stderr).all()
    # … while log p̂ itself is biased low (Jensen): its mean lies below log p(x).
    assert (p_hat.log().mean(0) < p_true.log()).all()


def test_with_fewer_samples_than_clusters_prior_sampling_is_loose_and_importance_sampling_is_tight():
    """The seed's point: with K < C, most z_k ~ p(z) fall on the wrong cluster, while z_k ~ q(z|x) ≈ p(z|x) do not."""
    clusters, k = 8, 4
    model = MixtureModel(2, clusters, learn_prior=False, decoder_hidden=[])
    angle = torch.arange(clusters) * 2 * math.pi / clusters
    with torch.no_grad():  # 8 clusters of std 0.4 on a ring of radius 4, as the default data
        model.decoder.net[0].weight.copy_(torch.stack([4 * angle.cos(), 4 * angle.sin(), *[torch.full((clusters,), math.log(0.4))] * 2], 1))
    model.encoder = TruePosterior(model, temperature=0.8)  # near the posterior, not equal to it
    x = oracle_mixture(model).sample((2000,))
    exact = oracle_mixture(model).log_prob(x)
    prior_gap = (exact - PriorSampling(k).estimate(model, x).log_px).mean()
    importance_gap = (exact - ImportanceSampling(k).estimate(model, x).log_px).mean()
    assert prior_gap > 5.0  # P(no z_k on x's cluster) = (7/8)^4 ≈ 0.59, and a neighbouring cluster costs ~29 nats
    assert abs(importance_gap) < 0.01


def linear_gaussian_model(dim: int = 6, latent_dim: int = 3, orthogonal: bool = False):
    model = LinearGaussian(dim, latent_dim, noise_std="shared", encoder_hidden=[])
    linear = model.decoder.net[0]
    with torch.no_grad():
        weight = torch.randn(dim, latent_dim)
        if orthogonal:
            weight = torch.linalg.qr(weight).Q * torch.tensor([2.0, 1.5, 1.0][:latent_dim])
        linear.weight.copy_(weight)
        linear.bias.copy_(torch.randn(dim))
        model.decoder.family.log_std.fill_(math.log(0.7))
    return model


def oracle_marginal(model) -> MultivariateNormal:
    """p(x) = N(b, WWᵀ + σ²I), from the decoder's parameters."""
    linear, sigma = model.decoder.net[0], model.decoder.family.log_std.exp()
    return MultivariateNormal(linear.bias, linear.weight @ linear.weight.T + sigma**2 * torch.eye(linear.weight.shape[0]))


def test_linear_gaussian_exact_is_the_closed_form():
    model = linear_gaussian_model()
    x = oracle_marginal(model).sample((25,))
    torch.testing.assert_close(Exact().estimate(model, x).log_px, oracle_marginal(model).log_prob(x), rtol=0, atol=1e-10)


def test_linear_gaussian_iwae_at_large_k_matches_the_closed_form():
    """IWAE with K = 5000 and a diagonal q (true means and marginal variances) against log N(x; b, WWᵀ + σ²I):
    every point within 4 delta-method standard errors, the mean over 64 points within 0.005 nats."""
    model = linear_gaussian_model()
    oracle = oracle_marginal(model)
    x = oracle.sample((256,))
    linear, sigma2 = model.decoder.net[0], model.decoder.family.log_std.exp() ** 2
    W, b = linear.weight, linear.bias
    precision = torch.eye(3) + W.T @ W / sigma2
    covariance = torch.linalg.inv(precision)
    mean_map = W @ covariance / sigma2  # posterior mean = (x − b) @ mean_map
    with torch.no_grad():  # the linear encoder set to the posterior's means and marginal variances
        encoder = model.encoder.net[0]
        encoder.weight[:3] = mean_map.T
        encoder.bias[:3] = -b @ mean_map
        encoder.weight[3:] = 0
        encoder.bias[3:] = 0.5 * covariance.diagonal().log()
        estimator = ImportanceSampling(5000, chunk_size=2**15)
        iwae = estimator.estimate(model, x[:64])
        elbo = ELBO(100).estimate(model, x[:64]).log_px
    truth = oracle.log_prob(x[:64])
    error = iwae.log_px - truth
    stderr = estimator.stderr(iwae)
    assert (error.abs() < 4 * stderr + 1e-3).all()
    assert error.mean().abs() < 0.005
    assert stderr.max() < 0.03
    assert (elbo - truth).mean() < -0.01  # a diagonal q cannot match the full-covariance posterior: the ELBO is looser


def test_orthogonal_linear_gaussian_with_true_posterior_has_zero_variance_weights():
    """With orthogonal columns of W the posterior is a diagonal Gaussian; as q, every log-weight is log p(x)."""
    model = linear_gaussian_model(orthogonal=True)
    linear, sigma2 = model.decoder.net[0], model.decoder.family.log_std.exp() ** 2
    W, b = linear.weight, linear.bias
    precision = 1 + (W * W).sum(0) / sigma2  # diagonal of I + WᵀW/σ²
    x = oracle_marginal(model).sample((30,))

    class Posterior(nn.Module):
        def forward(self, x):
            return Independent(Normal((x - b) @ W / sigma2 / precision, precision.rsqrt()), 1)

    model.encoder = Posterior()
    estimate = ImportanceSampling(32).estimate(model, x)
    truth = oracle_marginal(model).log_prob(x)
    torch.testing.assert_close(estimate.log_weights, truth.expand(32, -1), rtol=0, atol=1e-9)


def test_chunking_bounds_the_batch_but_keeps_every_sample():
    model = mixture_model()
    model.encoder = TruePosterior(model, temperature=0.3)
    x = 3 * torch.randn(10, 2)
    calls = []
    estimator = ImportanceSampling(1000, chunk_size=300)  # at most 30 samples × 10 points per chunk
    draw = estimator.sampler

    def counting_sampler(model, x):
        inner = draw(model, x)
        return lambda k: calls.append(k) or inner(k)

    estimator.sampler = counting_sampler
    estimate = estimator.estimate(model, x)
    assert estimate.log_weights.shape == (1000, 10)
    assert max(calls) == 30 and sum(calls) == 1000
    exact = oracle_mixture(model).log_prob(x)
    assert (estimate.log_px - exact).abs().max() < 0.05


def test_elbo_is_below_importance_sampling_is_below_exact():
    model = mixture_model()
    x = 3 * torch.randn(200, 2)
    exact = Exact().estimate(model, x).log_px.mean()
    iwae = ImportanceSampling(50).estimate(model, x).log_px.mean()
    elbo = ELBO(50).estimate(model, x).log_px.mean()
    assert elbo < iwae < exact + 1e-3


def test_encoder_objectives_against_closed_form_kl():
    """ELBO = log p(x) − KL(q || p(z|x)) and the wake objective = −KL(p(z|x) || q) − H[p(z|x)], with torch's KL."""
    model = mixture_model()
    x = 3 * torch.randn(15, 2)
    q = model.posterior(x)
    posterior = TruePosterior(model)(x)
    log_px = oracle_mixture(model).log_prob(x)
    torch.testing.assert_close(amortized_elbo(model, x), log_px - kl_divergence(q, posterior), rtol=0, atol=1e-9)
    torch.testing.assert_close(wake_objective(model, x), -kl_divergence(posterior, q) - posterior.entropy(), rtol=0, atol=1e-9)


def test_encoder_objective_trains_only_the_encoder():
    for model in (MixtureModel(3, 4, decoder_hidden=[8]), VAE(3, 4, decoder_hidden=[8])):
        amortized_elbo(model, torch.randn(7, 3)).sum().backward()
        assert all(p.grad is None or not p.grad.any() for n, p in model.named_parameters() if not n.startswith("encoder."))
        assert any(p.grad is not None and p.grad.any() for p in model.encoder.parameters())


def test_configuration_errors():
    with pytest.raises(UsageError, match="num_samples >= 1"):
        ImportanceSampling(0)
    with pytest.raises(UsageError, match="enumerable latent"):
        Exact().check(VAE(2, 2, decoder_hidden=[4]))
    with pytest.raises(UsageError, match="'wake' needs an enumerable latent"):
        ImportanceSampling(4, encoder_objective="wake").check(VAE(2, 2))


def test_importance_sampling_and_the_elbo_share_one_set_of_draws():
    """In the evaluation core the IWAE bound and the ELBO reduce the same K samples of q: one decoder pass per proposal, and ELBO ≤ IWAE on every point (Jensen)."""
    model = VAE(3, 2, decoder_hidden=[8])
    calls = []
    model.decoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    x = torch.randn(40, 3)
    results = estimate_all(model, x, [PriorSampling(16), ImportanceSampling(16), ELBO(16)])
    assert calls == [16, 16]  # prior sampling's draws, then q's, shared by the ELBO
    assert (results["elbo"].log_px <= results["importance_sampling"].log_px).all()
    assert results["elbo"].num_samples == 16 and set(results["elbo"].diagnostics) == {"log_weight_std", "log_px_stderr"}


def test_an_estimator_with_its_own_sampler_draws_its_own_samples():
    """Draws are shared by what draws them, not by a name: a subclass of ImportanceSampling whose sampler draws from the prior gets
    its own decoder pass, and its values are prior sampling's, not importance sampling's."""

    class FromThePrior(ImportanceSampling):
        name = "from_the_prior"

        def sampler(self, model, x):
            return PriorSampling(self.num_samples).sampler(model, x)

    model = VAE(3, 2, decoder_hidden=[8])
    calls = []
    model.decoder.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    x = torch.randn(40, 3)
    torch.manual_seed(0)
    results = estimate_all(model, x, [ImportanceSampling(16), FromThePrior(16)])
    torch.manual_seed(0)
    ImportanceSampling(16).estimate(model, x)
    prior = PriorSampling(16).estimate(model, x).log_px
    assert calls == [16, 16, 16, 16]
    torch.testing.assert_close(results["from_the_prior"].log_px, prior, rtol=0, atol=1e-12)


def test_recomputed_chunks_give_the_same_value_and_gradient_with_a_fraction_of_the_memory():
    """``recompute``: each chunk's graph is rebuilt in the backward pass from the same draws; the tensors kept for backward shrink to about one chunk's."""
    model = VAE(20, 4, encoder_hidden=[32], decoder_hidden=[64])
    x = torch.randn(8, 20)

    def step(recompute: bool):
        torch.manual_seed(1)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
            objective = ImportanceSampling(256, chunk_size=32 * 8, recompute=recompute).objective(model, x)  # 8 chunks of 32 samples
        model.zero_grad()
        (-objective.surrogate.mean()).backward()
        return objective.log_px.detach(), [p.grad.clone() for p in model.parameters()], sum(saved)

    value, grads, saved = step(recompute=False)
    value_again, grads_again, saved_again = step(recompute=True)
    assert torch.equal(value, value_again)
    for plain, recomputed in zip(grads, grads_again):
        torch.testing.assert_close(recomputed, plain, rtol=1e-10, atol=1e-12)
    assert saved_again < saved / 5
