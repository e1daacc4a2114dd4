"""Estimators that say when they fail: the cross-checks between lower bounds, PSIS's k̂, the gap's unconverged q*, and a loss that
is NaN before the first update blaming the model's part."""

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from lvm_lightning.cross_check import cross_check
from lvm_lightning.errors import UsageError
from lvm_lightning.inference import AIS, LocalOptimizer, gap_summary, simulate
from lvm_lightning.models import LinearGaussian
from lvm_lightning.objectives import ELBO, Exact, ImportanceSampling, PriorSampling


@pytest.fixture
def bad_encoder_model():
    """A linear-Gaussian model (closed-form log p(x)) whose encoder is far off: posterior means shifted by 3, σ = e² too wide."""
    torch.manual_seed(3)
    model = LinearGaussian(data_dim=8, latent_dim=3, noise_std=0.3)
    with torch.no_grad():
        model.weight.mul_(2)
        encoder = model.encoder.net[0]
        encoder.weight.zero_()
        encoder.bias[:3] = 3.0
        encoder.bias[3:] = 2.0
    x, _ = simulate(model, 200)
    return model, x


def verdict_of(model, x, estimators):
    with torch.no_grad():
        estimates = {e.name: e.estimate(model, x) for e in estimators}
    return cross_check(
        estimators,
        {name: estimate.log_px for name, estimate in estimates.items()},
        {e.name: e.diagnostics(estimates[e.name]) for e in estimators},
    )


def test_a_starved_ais_is_called_out_and_a_sufficient_one_is_not(bad_encoder_model):
    """AIS with 5 steps from a bad start falls far below the exact value: one warning naming AIS and what to raise. With its
    default schedule it agrees with the closed form, and nothing is said of it."""
    model, x = bad_encoder_model
    starved = verdict_of(model, x, [Exact(), AIS(num_steps=5, num_chains=2)])
    assert starved.tightest == "exact"
    (line,) = [w for w in starved.warnings if w.startswith("warning: ais")]
    assert "below exact" in line and "--ais.num_steps" in line
    enough = verdict_of(model, x, [Exact(), AIS(num_steps=500, num_chains=4)])
    assert not [w for w in enough.warnings if w.startswith("warning: ais is")]


def test_loose_importance_sampling_and_heavy_tailed_weights_are_said(bad_encoder_model):
    """From a bad q, importance sampling at K = 100 is far below the exact value, and its weights' k̂ exceeds 0.7 on most points;
    the ELBO is a bound of its own kind and is not judged against log p(x)."""
    model, x = bad_encoder_model
    verdict = verdict_of(model, x, [Exact(), ImportanceSampling(100), ELBO(100), PriorSampling(100)])
    said = "\n".join(verdict.warnings)
    assert "importance_sampling is" in said and "Pareto k̂ > 0.7" in said and "raise its K" in said
    assert "elbo" not in said
    assert verdict.tightest == "exact" and abs(verdict.mean - float(model.marginal().log_prob(x).mean())) < 1e-4


def test_agreeing_estimators_say_nothing():
    """At the true posterior every importance weight is log p(x): importance sampling equals the exact value, its k̂ is not high."""
    torch.manual_seed(0)
    model = LinearGaussian(data_dim=4, latent_dim=2, noise_std=0.5, posterior="full")
    with torch.no_grad():  # the encoder set to the closed-form posterior N(Σ Wᵀ(x − b)/σ², Σ), Σ = (I + WᵀW/σ²)⁻¹
        W, b, sigma2 = model.weight, model.bias, model.noise_std**2
        covariance = torch.linalg.inv(torch.eye(2) + W.T @ W / sigma2)
        gain = covariance @ W.T / sigma2
        scale = torch.linalg.cholesky(covariance)
        rows, cols = torch.tril_indices(2, 2)
        entries = torch.where(rows == cols, scale[rows, cols].log(), scale[rows, cols])
        layer = model.encoder.net[0]
        layer.weight.zero_()
        layer.weight[:2] = gain
        layer.bias.copy_(torch.cat([-gain @ b, entries]))
    x, _ = simulate(model, 100)
    verdict = verdict_of(model, x, [Exact(), ImportanceSampling(50), ImportanceSampling(50)])
    assert not verdict.warnings


def test_a_gap_with_unconverged_q_star_is_flagged_and_with_enough_budget_is_not():
    torch.manual_seed(3)
    model = LinearGaussian(data_dim=8, latent_dim=3, noise_std=0.5)
    with torch.no_grad():  # an encoder a little off: every mean 0.5 too high, σ = e^0.5
        model.encoder.net[0].weight.zero_()
        model.encoder.net[0].bias.copy_(torch.tensor([0.5, 0.5, 0.5, 0.5, 0.5, 0.5]))
    x, _ = simulate(model, 50)
    short = gap_summary(model, x[:50], LocalOptimizer(max_steps=20, check_every=10), log_px_samples=100)
    assert "warning" in short and "--gap.max_steps" in short["warning"] and short["converged_fraction"] < 0.5
    enough = gap_summary(model, x[:50], LocalOptimizer(max_steps=3000), log_px_samples=100)
    assert "warning" not in enough and enough["converged_fraction"] >= 0.5
    assert enough["amortization_gap"] > short["amortization_gap"]  # the short run understated it
    assert all(value is not None and value >= 0 for value in enough["stderr"].values())  # paired standard errors


class NaNDecoder(nn.Module):
    """p(x|z) = N(NaN, 1) for every z: a decoder broken from the start."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 2)

    def forward(self, z):
        loc = self.net(z) * torch.nan
        return Independent(Normal(loc, torch.ones_like(loc)), 1)


def test_a_loss_that_is_nan_before_any_update_blames_the_part():
    import pytorch_lightning as pl

    from lvm_lightning import LVMModule
    from lvm_lightning.data import GaussianMixtureData
    from lvm_lightning.models import Conditional, DiagonalGaussian, LatentVariableModel, StandardNormalPrior

    model = LatentVariableModel(StandardNormalPrior(2), NaNDecoder(), Conditional(nn.Linear(2, 4), DiagonalGaussian(2)))
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0, accelerator="cpu")
    with pytest.raises(UsageError) as error:
        trainer.fit(LVMModule(model, ImportanceSampling(2)), datamodule=GaussianMixtureData(num_train=64, num_val=16, num_test=16, batch_size=32))
    message = str(error.value)
    assert "first step" in message and "the decoder" in message and "log p(x|z)" in message and "learning rate" in message and "Lower" not in message
