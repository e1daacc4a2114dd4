"""Per-point inference and the gap decomposition against closed forms (linear-Gaussian) and on a trained mixture."""

import functools
import json

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from lvm_lightning.errors import UsageError
from lvm_lightning.inference import LocalOptimizer, gap_decomposition, gap_summary, summarize_sums
from lvm_lightning.models import VAE, LinearGaussian, MixtureModel
from lvm_lightning.models.lvm import LatentVariableModel
from lvm_lightning.objectives import ELBO, Exact, Reparameterized, amortized_elbo

pytestmark = pytest.mark.usefixtures("one_thread")


SIGMA = 0.5
SCALES = torch.tensor([2.0, 1.0, 0.7])


def linear_gaussian(data_dim: int = 6) -> tuple[LatentVariableModel, torch.Tensor, torch.Tensor]:
    """x = Wz + b + ε with orthogonal columns of W, so p(z|x) is a diagonal Gaussian; returns (model, W, b)."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.linalg.qr(torch.randn(data_dim, len(SCALES), generator=generator))[0] * SCALES
    bias = torch.randn(data_dim, generator=generator)
    model = LinearGaussian(data_dim, len(SCALES), noise_std="shared", encoder_hidden=())
    with torch.no_grad():
        model.decoder.net[0].weight.copy_(weight)
        model.decoder.net[0].bias.copy_(bias)
        model.decoder.family.log_std.fill_(torch.log(torch.tensor(SIGMA)))
    return model, weight, bias


def closed_form(weight: torch.Tensor, bias: torch.Tensor, x: torch.Tensor) -> tuple[MultivariateNormal, MultivariateNormal]:
    """(p(x) = N(b, WWᵀ + σ²I), p(z|x) = N(Σ Wᵀ(x − b)/σ², Σ) with Σ = (I + WᵀW/σ²)⁻¹), from W, b, σ alone."""
    eye_x, eye_z = torch.eye(weight.shape[0]), torch.eye(weight.shape[1])
    marginal = MultivariateNormal(bias, covariance_matrix=weight @ weight.T + SIGMA**2 * eye_x)
    cov = torch.linalg.inv(eye_z + weight.T @ weight / SIGMA**2)
    return marginal, MultivariateNormal((x - bias) @ weight @ cov / SIGMA**2, covariance_matrix=cov)


def as_mvn(params: torch.Tensor) -> MultivariateNormal:
    """A diagonal Gaussian with params [μ, log σ] as a MultivariateNormal, for kl_divergence against a full one."""
    loc, log_std = params.chunk(2, dim=-1)
    return MultivariateNormal(loc, scale_tril=torch.diag_embed(log_std.exp()))


FIT = LocalOptimizer(num_samples=10, lr=0.05, max_steps=2000, check_every=100, patience=3)


def test_per_point_optimization_reaches_closed_form_log_px():
    torch.manual_seed(0)
    model, weight, bias = linear_gaussian()
    x = model.sample(64)
    report = gap_decomposition(model, x, FIT, elbo_samples=200)
    marginal, posterior = closed_form(weight, bias, x)
    torch.testing.assert_close(report.log_px, marginal.log_prob(x), atol=1e-4, rtol=0)
    gap = report.log_px - report.elbo_optimized
    assert gap.mean() < 0.01 and gap.max() < 0.03
    # The gap is KL(q* || p(z|x)); check it independently of the Monte Carlo ELBO.
    assert kl_divergence(as_mvn(report.optimized.params), posterior).mean() < 0.01


def test_amortization_gap_of_a_fixed_wrong_encoder_is_the_kl_difference():
    torch.manual_seed(1)
    model, weight, bias = linear_gaussian()
    wrong = torch.tensor([0.5, -0.5, 0.3, -1.0, 0.2, 0.0])  # μ and log σ, the same for every x
    with torch.no_grad():
        model.encoder.net[0].weight.zero_()
        model.encoder.net[0].bias.copy_(wrong)
    x = model.sample(64)
    report = gap_decomposition(model, x, FIT, elbo_samples=2000)
    _, posterior = closed_form(weight, bias, x)
    # The diagonal family holds p(z|x) here, so ELBO(q*) = log p(x) and the gap is KL(q_wrong || p(z|x)), in closed form.
    expected = kl_divergence(as_mvn(wrong.expand(len(x), -1)), posterior)
    measured = report.elbo_optimized - report.elbo_amortized
    stderr = (measured - expected).std() / len(x) ** 0.5
    assert expected.mean() > 1.0  # the encoder is far off: the check has something to measure
    # 0.01: what q* may still lack of the posterior after its steps (the test above).
    assert (measured - expected).mean().abs() < 3 * stderr + 0.01


@functools.lru_cache
def train_mixture(latent: str) -> tuple[LatentVariableModel, torch.Tensor]:
    """A small model fit for a few hundred Adam steps to a 4-cluster mixture; returns it and held-out points."""
    torch.manual_seed(0)
    angle = torch.arange(4) * torch.pi / 2
    centres = 3 * torch.stack([angle.cos(), angle.sin()], 1)
    data = centres[torch.randint(4, (1100,))] + 0.4 * torch.randn(1100, 2)
    if latent == "categorical":
        model = MixtureModel(2, 6, encoder_hidden=(32,), decoder_hidden=())
        objective = lambda x: Exact().estimate(model, x).log_px + amortized_elbo(model, x)  # noqa: E731
    else:
        model = VAE(2, 2, encoder_hidden=(32,), decoder_hidden=(32,))
        objective = lambda x: ELBO().estimate(model, x).log_px  # noqa: E731
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        batch = data[torch.randint(1000, (128,))]
        loss = -objective(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model, data[1000:]


@pytest.mark.parametrize("latent, lr", [("categorical", 0.1), ("gaussian", 0.01)])
def test_both_gaps_are_nonnegative_on_a_trained_mixture(latent, lr):
    model, x = train_mixture(latent)
    report = gap_decomposition(model, x, LocalOptimizer(lr=lr, max_steps=300), elbo_samples=500, log_px_samples=2000, refine_steps=(0, 100, 300))
    summary = summarize_sums(report.sums())
    for gap in ("amortization_gap", "approximation_gap"):
        assert summary[gap] > -3 * summary[f"{gap}_stderr"] - 1e-4, (gap, summary)
    # Refinement from the encoder climbs towards q*: k = 0 is the amortized ELBO, the last k is q* itself.
    assert summary["refined_elbo/k=300"] > summary["refined_elbo/k=0"] - 3 * summary["refined_elbo/k=0_stderr"]
    if latent == "categorical":
        torch.testing.assert_close(report.refined[0], report.elbo_amortized)  # enumerated: no Monte Carlo error
        # KL(q* || p(z|x)) ≥ 0 exactly, and ≈ 0: the categorical family holds the exact posterior.
        assert (report.log_px - report.elbo_optimized).min() > -1e-4 and summary["approximation_gap"] < 1e-3
        assert summary["amortization_gap"] > 0.1  # the encoder, trained on the reverse KL, misses mass


def test_bfloat16_steps_reach_the_same_optimum_within_monte_carlo_error():
    model, x = train_mixture("gaussian")
    torch.manual_seed(0)
    optimized = {p: gap_decomposition(model, x, LocalOptimizer(max_steps=300, precision=p), elbo_samples=500).elbo_optimized for p in ("32", "bf16")}
    difference = optimized["bf16"] - optimized["32"]
    assert difference.mean().abs() < 3 * difference.std() / len(difference) ** 0.5 + 1e-3


def test_per_point_stopping_freezes_converged_points_and_batch_stopping_stops_all_at_once():
    torch.manual_seed(0)
    model, _, _ = linear_gaussian()
    x = model.sample(32)
    common = dict(num_samples=4, lr=0.05, max_steps=3000, check_every=20, patience=3)
    per_point = LocalOptimizer(**common, stopping="point").fit(model, x, record_at=(0, 20, 5000))
    assert per_point.converged.all() and per_point.steps.max() < 3000
    assert per_point.steps.min() < per_point.steps.max()  # points stop at their own plateaus
    torch.testing.assert_close(per_point.snapshots[0], model.encoder.net(x).detach())
    torch.testing.assert_close(per_point.snapshots[5000], per_point.params)  # beyond the last step: the final λ
    whole = LocalOptimizer(**common, stopping="batch").fit(model, x)
    assert (whole.steps == whole.steps[0]).all() and whole.converged.all()


def test_local_optimization_leaves_the_model_untouched_and_gradient_free():
    torch.manual_seed(0)
    model, _, _ = linear_gaussian()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    LocalOptimizer(max_steps=20, bound="iwae", gradient=Reparameterized()).fit(model, model.sample(8))
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert all(p.grad is None for p in model.parameters())


def test_prior_initialization_and_usage_errors():
    torch.manual_seed(0)
    model, _, _ = linear_gaussian()
    x = model.sample(4)
    assert torch.equal(LocalOptimizer(init="prior").initial_params(model, x), torch.zeros(4, 6))
    categorical = MixtureModel(2, 5)
    logits = LocalOptimizer(init="prior").initial_params(categorical, torch.zeros(3, 2))
    torch.testing.assert_close(logits.softmax(-1), torch.full((3, 5), 0.2))
    with pytest.raises(UsageError, match="iwae"):
        LocalOptimizer(bound="iwae").fit(categorical, torch.zeros(3, 2))
    with pytest.raises(UsageError, match="stopping"):
        LocalOptimizer(stopping="never")


def test_the_best_start_is_per_point_the_nearer_of_encoder_and_prior():
    """init 'best': the encoder's rows where q_φ is the exact posterior (Fisher divergence 0), the prior's where the encoder is far off;
    refused for a categorical z, which has no Fisher divergence."""
    torch.manual_seed(0)
    model, weight, bias = linear_gaussian()
    x = model.sample(8)
    cov = closed_form(weight, bias, x)[1].covariance_matrix[0]  # the same for every point
    gain = cov @ weight.T / SIGMA**2
    layer = model.encoder.net[0]
    with torch.no_grad():
        layer.weight.copy_(torch.cat([gain, torch.zeros_like(gain)]))
        layer.bias.copy_(torch.cat([-gain @ bias, 0.5 * torch.diagonal(cov).log()]))
    best = LocalOptimizer(init="best")
    assert torch.equal(best.initial_params(model, x), LocalOptimizer().initial_params(model, x))
    with torch.no_grad():
        layer.bias[:3] += 50.0
    assert torch.equal(best.initial_params(model, x), torch.zeros(8, 6))
    with pytest.raises(UsageError, match="continuous z"):
        best.fit(MixtureModel(2, 5), torch.zeros(3, 2))


@pytest.mark.parametrize("gradient", [None, Reparameterized()])
def test_the_gap_summary_is_json_and_names_the_gradient(gradient):
    """The summary lvm-evaluate writes: q*'s settings as plain values, its gradient estimator by class name (STL by default)."""
    torch.manual_seed(0)
    model, _, _ = linear_gaussian()
    bound = "elbo" if gradient is None else "iwae"
    summary = gap_summary(model, model.sample(4), LocalOptimizer(max_steps=5, bound=bound, gradient=gradient), elbo_samples=10, log_px_samples=10)
    assert json.loads(json.dumps(summary))["local_optimizer"]["gradient"] == ("STL" if gradient is None else "Reparameterized")
