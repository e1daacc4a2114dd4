"""SemiAmortized (SA-VAE) against its oracles: the base estimator at K = 0 and at step size 0, finite differences of the unrolled
refinement, and the closed-form ELBO of a linear-Gaussian model, which the refinement only raises."""

import math

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import MultivariateNormal, kl_divergence

from lvm_lightning.callbacks import AmortizationGap
from lvm_lightning.data import GaussianMixtureData
from lvm_lightning.errors import UsageError
from lvm_lightning.inference import LocalOptimizer, gap_decomposition
from lvm_lightning.models import VAE, HierarchicalVAE, LinearGaussian, MixtureModel
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import ELBO, DReG, Exact, ImportanceSampling, SemiAmortized

from conftest import quiet_trainer

pytestmark = pytest.mark.usefixtures("float64", "one_thread")


def surrogate_and_gradients(estimator, model, x: torch.Tensor, skip_draws: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The objective's surrogate [B] and its sum's gradient in every parameter, from torch's stream seeded by 1, after ``skip_draws``
    importance-sampling estimates of 2 samples (the draws a refinement of that many steps makes with a base of K = 2)."""
    torch.manual_seed(1)
    for _ in range(skip_draws):
        ImportanceSampling(2).estimate(model, x)
    surrogate = estimator.objective(model, x).surrogate
    return surrogate, list(torch.autograd.grad(surrogate.sum(), list(model.parameters())))


@pytest.mark.parametrize("model", [VAE(3, 2, (5,), (5,), activation="tanh"), HierarchicalVAE(3, [3, 2], [[5], [4]])], ids=["vae", "hierarchical"])
def test_no_steps_and_zero_step_size_are_the_base_estimator_exactly(model):
    """K = 0, and K = 3 steps of size 0 (their draws skipped in the base's stream): the same surrogate and the same gradient for θ and φ."""
    model = model.double()
    x = torch.randn(4, 3)
    base = ImportanceSampling(2)
    expected = surrogate_and_gradients(base, model, x)
    torch.testing.assert_close(surrogate_and_gradients(SemiAmortized(base, num_steps=0), model, x), expected, rtol=0, atol=0)
    base_after_three = surrogate_and_gradients(base, model, x, skip_draws=3)
    torch.testing.assert_close(surrogate_and_gradients(SemiAmortized(base, num_steps=3, step_size=0.0), model, x), base_after_three, rtol=0, atol=0)


def finite_differences(estimator, model, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central differences of the summed surrogate in every parameter, flattened in ``model.parameters()`` order, each on the same draws."""

    def value() -> float:
        torch.manual_seed(1)
        return estimator.objective(model, x).surrogate.sum().item()

    grads = []
    for p in model.parameters():
        flat = p.data.view(-1)
        for i in range(flat.numel()):
            flat[i] += h
            above = value()
            flat[i] -= 2 * h
            below = value()
            flat[i] += h
            grads.append((above - below) / (2 * h))
    return torch.tensor(grads)


def test_the_gradient_through_the_refinement_matches_finite_differences():
    """Three momentum steps with clipping on a tanh VAE: autograd through the unrolled steps (double backward) equals central differences
    of the refined bound in every weight of θ and φ; with the refinement held constant (through=False) θ's gradient misses the terms through λ_K."""
    model = VAE(3, 2, (4,), (4,), activation="tanh").double()
    x = torch.randn(5, 3)
    settings = dict(num_steps=3, step_size=0.3, momentum=0.5, max_grad_norm=2.0)
    through = SemiAmortized(ImportanceSampling(2), **settings)
    numeric = finite_differences(through, model, x)
    analytic = torch.cat([g.flatten() for g in surrogate_and_gradients(through, model, x)[1]])
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-6)
    decoder = torch.cat([torch.full((p.numel(),), name.startswith("decoder.")) for name, p in model.named_parameters()])
    stopped = torch.cat([g.flatten() for g in surrogate_and_gradients(SemiAmortized(ImportanceSampling(2), through=False, **settings), model, x)[1]])
    assert (stopped - numeric)[decoder].abs().max() > 1e-3


def linear_gaussian_with_a_wrong_encoder() -> tuple[LinearGaussian, torch.Tensor, MultivariateNormal, MultivariateNormal]:
    """A pPCA model with orthogonal columns of W (diagonal posterior), an encoder that is its posterior shifted by one standard deviation
    and twice as wide, and 16 points from it: (model, x, p(x), p(z|x))."""
    generator = torch.Generator().manual_seed(0)
    model = LinearGaussian(4, 2, noise_std=0.5)
    W = torch.linalg.qr(torch.randn(4, 2, generator=generator))[0] * torch.tensor([2.0, 0.7])
    b = torch.randn(4, generator=generator)
    cov = torch.linalg.inv(torch.eye(2) + W.T @ W / 0.25)
    gain = cov @ W.T / 0.25
    with torch.no_grad():
        model.decoder.net[0].weight.copy_(W)
        model.decoder.net[0].bias.copy_(b)
        model.encoder.net[0].weight.copy_(torch.cat([gain, 0 * gain]))
        model.encoder.net[0].bias.copy_(torch.cat([-gain @ b + cov.diagonal().sqrt(), (2 * cov.diagonal().sqrt()).log()]))
    x = model.sample(16)
    posterior = MultivariateNormal((x - b) @ gain.T, covariance_matrix=cov)
    return model, x, MultivariateNormal(b, covariance_matrix=W @ W.T + 0.25 * torch.eye(4)), posterior


def closed_form_elbo(q, marginal: MultivariateNormal, posterior: MultivariateNormal, x: torch.Tensor) -> torch.Tensor:
    """ELBO(q) = log p(x) − KL(q || p(z|x)) for a diagonal Gaussian q."""
    return marginal.log_prob(x) - kl_divergence(MultivariateNormal(q.mean, scale_tril=torch.diag_embed(q.stddev)), posterior)


def test_more_steps_never_bring_the_refined_elbo_below_the_amortized_one():
    """The closed-form ELBO of q_{λ_K} for K = 1 … 40 steps of size 0.02: at least the amortized ELBO for every point, rising with K on average."""
    model, x, marginal, posterior = linear_gaussian_with_a_wrong_encoder()
    amortized = closed_form_elbo(model.posterior(x), marginal, posterior, x)
    means = [amortized.mean()]
    for steps in (1, 2, 5, 10, 20, 40):
        refined = closed_form_elbo(SemiAmortized(ELBO(20), num_steps=steps, step_size=0.02).refined_posterior(model, x), marginal, posterior, x)
        assert (refined >= amortized).all(), steps
        means.append(refined.mean())
    assert all(later > earlier for earlier, later in zip(means, means[1:])) and means[-1] - means[0] > 0.5


def test_the_gap_decomposition_places_the_refined_elbo_between_the_amortized_and_the_optimal():
    model, x, marginal, posterior = linear_gaussian_with_a_wrong_encoder()
    refine = SemiAmortized(ELBO(20), num_steps=10, step_size=0.02)
    report = gap_decomposition(model, x, LocalOptimizer(lr=0.05, max_steps=400), elbo_samples=500, estimator=refine)
    amortized, semi, optimal = (report.elbo_amortized.mean(), report.elbo_semi_amortized.mean(), report.elbo_optimized.mean())
    assert amortized + 0.3 < semi < optimal + 0.01 and "elbo_semi_amortized" in report.per_point()
    assert gap_decomposition(model, x, LocalOptimizer(max_steps=1), estimator=ImportanceSampling(1)).elbo_semi_amortized is None


def test_sa_vae_trains_validates_and_reports_its_refined_elbo_beside_the_gaps(tmp_path):
    """One epoch of SA-VAE with the gap callback: train/ and val/log_px/semi_amortized, and gap/elbo_semi_amortized in TensorBoard."""
    pl.seed_everything(0)
    estimator = SemiAmortized(ImportanceSampling(1), num_steps=3, step_size=0.1)
    module = LVMModule(VAE(2, 2, (16,), (16,)), estimator, eval_num_samples=4, validation_estimators=[SemiAmortized(ImportanceSampling(4), 3, 0.1)])
    gap = AmortizationGap(every_n_epochs=1, num_points=16, optimizer=LocalOptimizer(max_steps=20), refine_steps=(0, 20), elbo_samples=8, log_px_samples=16)
    trainer = quiet_trainer(max_epochs=1, logger=TensorBoardLogger(str(tmp_path)), callbacks=[gap], enable_checkpointing=False, log_every_n_steps=1)
    trainer.fit(module, datamodule=GaussianMixtureData(num_clusters=4, num_train=256, num_val=64, num_test=16, batch_size=64))
    events = EventAccumulator(trainer.logger.log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/log_px/semi_amortized", "val/log_px/semi_amortized", "gap/elbo_semi_amortized"} <= tags
    assert math.isfinite(events.Scalars("gap/elbo_semi_amortized")[0].value)


def test_settings_it_cannot_take_say_what_to_change():
    with pytest.raises(UsageError, match="base gradient Reparameterized"):
        SemiAmortized(ImportanceSampling(4, gradient=DReG()))
    with pytest.raises(UsageError, match="num_steps >= 0"):
        SemiAmortized(ImportanceSampling(1), num_steps=-1)
    with pytest.raises(UsageError, match="continuous z"):
        LVMModule(MixtureModel(), SemiAmortized(ImportanceSampling(1)))
    assert Exact().refined_posterior(MixtureModel(), torch.zeros(1, 2)) is None
