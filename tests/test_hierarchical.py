"""The hierarchical model against a linear-Gaussian two-layer hierarchy, whose marginal and posterior are Gaussian in closed form."""

from typing import NamedTuple

import pytest
import pytorch_lightning as pl
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from lvm_lightning.callbacks import ActiveUnits
from lvm_lightning.data import GaussianMixtureData
from lvm_lightning.errors import UsageError
from lvm_lightning.inference import AIS, LocalOptimizer, gap_decomposition
from lvm_lightning.models import HierarchicalVAE
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import ELBO, STL, DReG, ImportanceSampling, PriorSampling, Reparameterized

from conftest import quiet_trainer

pytestmark = pytest.mark.usefixtures("float64", "one_thread")
NOISE = 0.5


class Hierarchy(NamedTuple):
    """The model, p(x), and the posterior's pieces: p(z_1|x) = N(gain x + offset, cov1), p(z_2|z_1) = N(slope (z_1 − a), cov2)."""

    model: HierarchicalVAE
    marginal: MultivariateNormal
    gain: torch.Tensor
    offset: torch.Tensor
    cov1: torch.Tensor
    slope: torch.Tensor
    a: torch.Tensor
    cov2: torch.Tensor

    def posterior(self, x: torch.Tensor) -> MultivariateNormal:
        """p(z_1, z_2 | x), joint."""
        return joint(x @ self.gain.T + self.offset, self.cov1, self.slope, -self.slope @ self.a, self.cov2)

    def encoder(self, x: torch.Tensor) -> MultivariateNormal:
        """The model's q(z_1, z_2 | x) as one Gaussian, read from its linear layers."""
        first, upper = self.model.encoder.first.net[0], self.model.encoder.conditionals[0].net[0]
        d1, d2 = self.cov1.shape[0], self.cov2.shape[0]
        std1, std2 = first.bias[d1:].exp(), upper.bias[d2:].exp()
        return joint(x @ first.weight[:d1].T + first.bias[:d1], torch.diag(std1**2), upper.weight[:d2], upper.bias[:d2], torch.diag(std2**2))


def joint(mean1: torch.Tensor, cov1: torch.Tensor, slope: torch.Tensor, shift: torch.Tensor, cov2: torch.Tensor) -> MultivariateNormal:
    """(z_1, z_2) for z_1 ~ N(mean1, cov1), z_2 | z_1 ~ N(slope z_1 + shift, cov2)."""
    mean = torch.cat([mean1, mean1 @ slope.T + shift], -1)
    cross = slope @ cov1
    cov = torch.cat([torch.cat([cov1, cross.T], 1), torch.cat([cross, cross @ slope.T + cov2], 1)])
    return MultivariateNormal(mean, covariance_matrix=cov)


def linear_hierarchy(structured: bool, inflate: float = 1.0, shift: float = 0.0, data_dim: int = 4, coupling: float = 1.0) -> Hierarchy:
    """z_2 ~ N(0, I), z_1 | z_2 ~ N(A z_2 + a, diag s²), x | z_1 ~ N(W z_1 + b, σ² I) as a HierarchicalVAE of linear layers, its encoder set to
    p(z_1|x) and p(z_2|z_1) with diagonal covariances, standard deviations × ``inflate`` and means moved by ``shift`` of them. ``structured``
    (A diagonal, W with orthogonal columns) makes both posteriors diagonal: then the encoder at inflate 1, shift 0 is p(z|x) exactly."""
    generator = torch.Generator().manual_seed(0)
    d2, d1 = (2, 2) if structured else (2, 3)
    if structured:
        A = coupling * torch.diag(torch.tensor([1.5, 0.8]))
        W = torch.linalg.qr(torch.randn(data_dim, d1, generator=generator))[0] * torch.tensor([2.0, 0.7])
    else:
        A, W = coupling * torch.randn(d1, d2, generator=generator), torch.randn(data_dim, d1, generator=generator)
    s = 0.5 + torch.rand(d1, generator=generator)
    a, b = torch.randn(d1, generator=generator), torch.randn(data_dim, generator=generator)
    marginal1 = A @ A.T + torch.diag(s**2)
    marginal = MultivariateNormal(W @ a + b, covariance_matrix=W @ marginal1 @ W.T + NOISE**2 * torch.eye(data_dim))
    precision1 = torch.linalg.inv(marginal1)
    cov1 = torch.linalg.inv(precision1 + W.T @ W / NOISE**2)
    gain, offset = cov1 @ W.T / NOISE**2, cov1 @ (precision1 @ a - W.T @ b / NOISE**2)
    cov2 = torch.linalg.inv(torch.eye(d2) + A.T @ torch.diag(s**-2) @ A)
    slope = cov2 @ A.T @ torch.diag(s**-2)
    model = HierarchicalVAE(data_dim, [d1, d2], [[], []], decoder_std=NOISE)
    std1, std2 = cov1.diagonal().sqrt(), cov2.diagonal().sqrt()
    with torch.no_grad():
        for layer, weight, bias in (
            (model.decoder.net[1][0], W, b),
            (model.prior.conditionals[0].net[0], torch.cat([A, 0 * A]), torch.cat([a, s.log()])),
            (model.encoder.first.net[0], torch.cat([gain, 0 * gain]), torch.cat([offset + shift * std1, (inflate * std1).log()])),
            (model.encoder.conditionals[0].net[0], torch.cat([slope, 0 * slope]), torch.cat([-slope @ a + shift * std2, (inflate * std2).log()])),
        ):
            layer.weight.copy_(weight)
            layer.bias.copy_(bias)
    return Hierarchy(model, marginal, gain, offset, cov1, slope, a, cov2)


def test_every_log_weight_is_log_px_when_q_is_the_posterior():
    """p(z_2) p(z_1|z_2) p(x|z_1) / q(z_1|x) q(z_2|z_1) = p(x) for every z when q = p(z|x): importance sampling, the ELBO and AIS alike."""
    hierarchy = linear_hierarchy(structured=True)
    model = hierarchy.model
    x = model.sample(20)
    truth = hierarchy.marginal.log_prob(x)
    q, posterior = hierarchy.encoder(x), hierarchy.posterior(x)
    torch.testing.assert_close((q.mean, q.covariance_matrix), (posterior.mean, posterior.covariance_matrix.expand_as(q.covariance_matrix)))
    for estimator in (ImportanceSampling(64), ELBO(8)):
        torch.testing.assert_close(estimator.estimate(model, x).log_weights, truth.expand(estimator.num_samples, -1), rtol=0, atol=1e-9)
    torch.testing.assert_close(AIS(num_steps=10, num_chains=4).estimate(model, x).log_px, truth, rtol=0, atol=1e-9)


@pytest.mark.parametrize("gradient", [STL, DReG])
def test_path_gradients_vanish_at_the_posterior_of_the_hierarchy(gradient):
    """At q = p(z|x) every ∂log w/∂z is 0: the STL and DReG encoder gradients are 0 through both layers' sampling paths, the reparameterized one is not."""
    model = linear_hierarchy(structured=True).model
    x = model.sample(6)
    encoder = list(model.encoder.parameters())
    for name, expect_zero in ((gradient(), True), (Reparameterized(), False)):
        surrogate = ImportanceSampling(4, gradient=name).objective(model, x).surrogate.sum()
        largest = max(g.abs().max() for g in torch.autograd.grad(surrogate, encoder))
        assert (largest < 1e-10) if expect_zero else (largest > 1e-3), (name, largest)


def test_estimators_and_ais_match_the_closed_form_marginal():
    """A correlated hierarchy (z_1 ∈ R³, z_2 ∈ R²) with a wrong encoder: IWAE at K = 5000 and prior sampling at K = 20,000 within
    4 standard errors of log p(x) per point (and their mean of the mean), the ELBO within 4 of log p(x) − KL(q || p(z|x)) (both joint Gaussians), AIS within 0.02 nats on average."""
    hierarchy = linear_hierarchy(structured=False, inflate=1.3, shift=0.5)
    model = hierarchy.model
    x = model.sample(30)
    truth = hierarchy.marginal.log_prob(x)
    for estimator in (ImportanceSampling(5000), PriorSampling(20_000)):
        estimate = estimator.estimate(model, x)
        error = estimate.log_px - truth
        stderr = estimator.stderr(estimate)
        assert (error.abs() < 4 * stderr + 1e-3).all(), estimator.name
        assert error.mean().abs() < 4 * stderr.square().mean().sqrt() / len(x) ** 0.5 + 1e-3, estimator.name
    elbo = ELBO(4000)
    estimate = elbo.estimate(model, x)
    expected = truth - kl_divergence(hierarchy.encoder(x), hierarchy.posterior(x))
    assert ((estimate.log_px - expected).abs() < 4 * elbo.stderr(estimate)).all()
    assert (expected < truth - 0.05).all()  # the encoder is wrong enough for the comparison to see
    ais = AIS(num_steps=500, num_chains=8)
    estimate = ais.estimate(model, x)
    error = estimate.log_px - truth
    assert error.mean().abs() < 0.02 and (error.abs() < 5 * ais.stderr(estimate) + 0.02).all()


def test_frozen_densities_hold_every_parameter_constant():
    """The chains' upper layers run after the frozen call has returned: log p(x, z) and log q(z|x) frozen give gradients to z alone."""
    model = linear_hierarchy(structured=False).model
    x = model.sample(5)
    z = model.posterior(x).sample((3,)).requires_grad_()
    (model.log_joint(x, z, frozen=True) + model.posterior(x, frozen=True).log_prob(z)).sum().backward()
    assert all(p.grad is None for p in model.parameters()) and z.grad.abs().sum() > 0
    (model.log_joint(x, z) + model.posterior(x).log_prob(z)).sum().backward()
    for upper in (model.prior.conditionals[0], model.encoder.conditionals[0]):
        assert upper.net[0].weight.grad.abs().sum() > 0


def test_per_point_inference_closes_the_amortization_gap():
    """An encoder with shifted means and inflated deviations on a hierarchy whose posterior the per-point family holds: the amortization gap is
    the closed-form KL(q_φ || p(z|x)), and q* (first layer free, upper layers shifted) reaches log p(x)."""
    hierarchy = linear_hierarchy(structured=True, inflate=1.5, shift=0.5)
    model = hierarchy.model
    x = model.sample(32)
    truth = hierarchy.marginal.log_prob(x)
    fit = LocalOptimizer(num_samples=10, lr=0.05, max_steps=1500, check_every=100, patience=3)
    report = gap_decomposition(model, x, fit, elbo_samples=400, refine_steps=(0,))
    kl = kl_divergence(hierarchy.encoder(x), hierarchy.posterior(x))
    assert (report.elbo_amortized - (truth - kl)).mean().abs() < 0.04 and kl.mean() > 0.3
    assert (truth - report.elbo_optimized).mean() < 0.01
    torch.testing.assert_close(report.log_px, truth, rtol=0, atol=2e-3)
    with pytest.raises(UsageError, match="init 'encoder'"):
        LocalOptimizer(init="prior").check(model)


def test_active_units_are_counted_per_layer():
    """z_2 independent of z_1 (A = 0): its posterior mean is 0 for every x, so of 2 + 2 units only z_1's 2 are active."""
    model = linear_hierarchy(structured=True, data_dim=2, coupling=0.0).model
    trainer = quiet_trainer(callbacks=[ActiveUnits()], logger=False)
    (metrics,) = trainer.validate(LVMModule(model, ImportanceSampling(1)), datamodule=GaussianMixtureData(num_train=64, num_val=256, num_test=16))
    assert {name: metrics[f"val/active_units{name}"] for name in ("", "/z1", "/z2")} == {"": 2, "/z1": 2, "/z2": 0}


def test_the_two_layer_model_trains_with_every_gradient_and_validates_with_ais():
    """A few steps of the default two-layer model under reparam, STL and DReG; validation adds prior sampling and AIS beside the bounds."""
    for gradient in (Reparameterized(), STL(), DReG()):
        pl.seed_everything(0)
        module = LVMModule(HierarchicalVAE(2), ImportanceSampling(4, gradient=gradient), validation_estimators=[AIS(num_steps=5, num_chains=2)])
        trainer = quiet_trainer(max_epochs=1, limit_train_batches=5, limit_val_batches=1, logger=False, enable_checkpointing=False)
        trainer.fit(module, datamodule=GaussianMixtureData(num_train=320, num_val=64, num_test=16, batch_size=64))
        logged = {name: float(value) for name, value in trainer.callback_metrics.items() if name.startswith("val/log_px/")}
        assert set(logged) == {f"val/log_px/{name}" for name in ("prior_sampling", "importance_sampling", "elbo", "ais")}
        assert all(torch.isfinite(torch.tensor(list(logged.values()))))


def test_bad_layer_settings_say_what_to_change():
    with pytest.raises(UsageError, match="one hidden list per layer"):
        HierarchicalVAE(2, latent_dims=[4, 2], hidden=[[8]])
