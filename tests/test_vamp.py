"""The VampPrior against its definition: the average of the encoder's posteriors at the pseudo-inputs, one at a time, as torch's MixtureSameFamily."""

import math

import pytest
import pytorch_lightning as pl
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from lvm_lightning.data import GaussianMixtureData
from lvm_lightning.errors import UsageError
from lvm_lightning.inference import AIS
from lvm_lightning.models import VAE, HierarchicalVAE
from lvm_lightning.models.vamp import DiagonalGaussianMixture
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import ImportanceSampling

from conftest import quiet_trainer

pytestmark = pytest.mark.usefixtures("float64", "one_thread")


def test_the_density_is_the_average_of_the_encoders_posteriors_at_the_pseudo_inputs():
    """log p(z) = log (1/C) Σ_c q_φ(z|u_c), each q_φ(·|u_c) from its own encoder pass, and torch's MixtureSameFamily of those Gaussians."""
    model = VAE(3, 2, (5,), (5,), num_pseudo_inputs=6).double()
    with torch.no_grad():
        model.prior.pseudo_inputs.normal_()
    z = 2 * torch.randn(7, 4, 2)
    u = model.prior.pseudo_inputs
    components = [model.encoder(u[c : c + 1]) for c in range(len(u))]
    average = torch.stack([q.log_prob(z[..., None, :])[..., 0] for q in components]).logsumexp(0) - math.log(len(u))
    oracle = MixtureSameFamily(
        Categorical(probs=torch.full((len(u),), 1 / len(u))),
        Independent(Normal(torch.cat([q.mean for q in components]), torch.cat([q.stddev for q in components])), 1),
    )
    log_prior = model.prior().log_prob(z)
    torch.testing.assert_close(log_prior, average, rtol=0, atol=1e-12)
    torch.testing.assert_close(log_prior, oracle.log_prob(z), rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("expand", [False, True])
def test_the_matrix_product_density_is_torchs_mixture_with_its_gradients(dtype, expand):
    """DiagonalGaussianMixture's expanded square against MixtureSameFamily's differences: values and gradients in (z, μ, σ, weights),
    with narrow components and points far from them, in float32 too, and with the mixture expanded to a batch (as AIS's q₀)."""
    loc = (3 * torch.randn(9, 4, dtype=torch.float64)).requires_grad_()
    log_scale = (torch.randn(9, 4, dtype=torch.float64) - 2).requires_grad_()
    logits = torch.randn(9, dtype=torch.float64).requires_grad_()
    z = (4 * torch.randn(5, 3, 4, dtype=torch.float64)).requires_grad_()
    results = []
    for mixture in (MixtureSameFamily, DiagonalGaussianMixture):
        distribution = mixture(Categorical(logits=logits.to(dtype)), Independent(Normal(loc.to(dtype), log_scale.to(dtype).exp()), 1))
        if expand:
            distribution = distribution.expand((3,))
            assert isinstance(distribution, mixture)
        value = distribution.log_prob(z.to(dtype))
        results.append((value, torch.autograd.grad(value.sum(), (z, loc, log_scale, logits))))
    (value, grads), (oracle, oracle_grads) = results[1], results[0]
    assert value.dtype == dtype
    tolerance = {"rtol": 1e-5, "atol": 1e-3} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-9}
    torch.testing.assert_close(value, oracle, **tolerance)
    for grad, oracle_grad in zip(grads, oracle_grads):
        torch.testing.assert_close(grad, oracle_grad, **tolerance)


def test_the_vamp_prior_of_a_diagonal_encoder_takes_the_matrix_product_density():
    """The default (diagonal) encoder's VampPrior is a DiagonalGaussianMixture; a full-covariance one stays torch's mixture."""
    assert isinstance(VAE(3, 2, (5,), (5,), num_pseudo_inputs=4).prior(), DiagonalGaussianMixture)
    full = VAE(3, 2, (5,), (5,), posterior="full", num_pseudo_inputs=4).prior()
    assert isinstance(full, MixtureSameFamily) and not isinstance(full, DiagonalGaussianMixture)


def test_one_pseudo_input_at_a_point_is_that_points_posterior():
    """C = 1, u at x_0: p(z) = q_φ(z|x_0); in the hierarchy, u at v in z_1's space: p(z) = q(z_2 | z_1 = v) p(z_1 | z_2)."""
    vae = VAE(3, 2, (5,), (5,), num_pseudo_inputs=1).double()
    point, z = torch.randn(1, 3), torch.randn(6, 2)
    with torch.no_grad():
        vae.prior.pseudo_inputs.copy_(point)
    torch.testing.assert_close(vae.prior().log_prob(z), vae.encoder(point).log_prob(z), rtol=0, atol=1e-12)
    hierarchy = HierarchicalVAE(3, [3, 2], [[5], [4]], num_pseudo_inputs=1).double()
    below, z = torch.randn(1, 3), torch.randn(6, 5)
    with torch.no_grad():
        hierarchy.prior.top.pseudo_inputs.copy_(below)
    z1, z2 = z.split([3, 2], -1)
    expected = hierarchy.encoder.conditionals[0](below).log_prob(z2) + hierarchy.prior.conditionals[0](z2).log_prob(z1)
    torch.testing.assert_close(hierarchy.prior().log_prob(z), expected, rtol=0, atol=1e-12)


def test_the_shared_encoder_is_trained_once_frozen_with_the_prior_and_saved_and_loaded():
    model = VAE(3, 2, (5,), (5,), num_pseudo_inputs=4).double()
    assert model.continuous and not model.enumerable
    # φ is the prior's and the encoder's: listed once, so Adam steps it once.
    parts = [model.decoder, model.encoder]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for m in parts for p in m.parameters()) + 4 * 3
    x = torch.randn(5, 3)
    z = model.posterior(x).sample((2,)).requires_grad_()
    model.log_joint(x, z, frozen=True).sum().backward()
    assert all(p.grad is None for p in model.parameters()) and z.grad.abs().sum() > 0
    model.log_joint(x, z).sum().backward()
    assert model.prior.pseudo_inputs.grad.abs().sum() > 0 and model.encoder.net[0].weight.grad.abs().sum() > 0
    copy = VAE(3, 2, (5,), (5,), num_pseudo_inputs=4).double()
    copy.load_state_dict(model.state_dict())
    torch.testing.assert_close(copy.prior().log_prob(z), model.prior().log_prob(z), rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["vae", "hierarchical"])
def test_a_vamp_model_trains_and_anneals_from_its_prior(kind):
    """A few steps of a VampPrior VAE and of a two-layer model with one on top; validation with prior sampling and AIS from the prior
    (whitened by the mixture's moments, in plain coordinates for the hierarchy's chain) stays finite."""
    pl.seed_everything(0)
    model = VAE(2, 2, (16,), (16,), num_pseudo_inputs=8) if kind == "vae" else HierarchicalVAE(2, [3, 2], [[16], [8]], num_pseudo_inputs=8)
    module = LVMModule(model, ImportanceSampling(2), validation_estimators=[AIS(num_steps=5, init="prior")])
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=4, limit_val_batches=1, logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=GaussianMixtureData(num_train=256, num_val=64, num_test=16, batch_size=64))
    logged = {name: float(v) for name, v in trainer.callback_metrics.items() if name.startswith("val/log_px/")}
    assert {"val/log_px/prior_sampling", "val/log_px/ais"} <= set(logged) and all(map(math.isfinite, logged.values()))
    with pytest.raises(UsageError, match="num_pseudo_inputs >= 1"):
        VAE(2, 2, num_pseudo_inputs=0)
