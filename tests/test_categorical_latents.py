"""Several categorical variables z ∈ {0, …, C−1}^M: enumeration against a written-out sum while C^M is small, VIMCO where it is not."""

import itertools
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from lvm_lightning import evaluate
from lvm_lightning.errors import UsageError
from lvm_lightning.inference import AIS
from lvm_lightning.models import VAE, CategoricalVAE, LatentVariableModel
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import VIMCO, DReG, Exact, ImportanceSampling, PriorSampling

from conftest import ROOT, run_tool


def test_enumeration_sums_every_value_once():
    """log p(x) by the 'exact' estimator = log Σ over all C^M tuples, written out with itertools, of p(z) p_θ(x|z)."""
    torch.manual_seed(0)
    model = CategoricalVAE(data_dim=3, num_variables=3, num_categories=3, learn_prior=True, max_enumerate=27)
    with torch.no_grad():
        model.prior.logits.normal_()
    x = model.sample(4)
    terms = []
    for values in itertools.product(range(3), repeat=3):
        z = torch.tensor(values)[None, None]  # [1, 1, M]
        terms.append(model.prior().log_prob(z) + model.decoder(z).log_prob(x))
    expected = torch.cat(terms).logsumexp(0)
    assert model.enumerable and len(torch.unique(model.support()[:, 0], dim=0)) == 27
    torch.testing.assert_close(Exact().estimate(model, x).log_px, expected)
    # Both sampled estimators agree with it at large K (a check of the sampled path on a categorical z).
    for estimator in (PriorSampling(20_000), ImportanceSampling(20_000)):
        assert float((estimator.estimate(model, x).log_px - expected).abs().max()) < 0.05


def test_beyond_max_enumerate_the_latent_is_sampled_and_vimco_trains_it():
    """2^20 values: no exact estimator, the reparameterized options refuse with what to do, and 200 VIMCO steps raise the IWAE bound."""
    torch.manual_seed(1)
    model = CategoricalVAE(data_dim=4, num_variables=20, num_categories=2, encoder_hidden=[32], decoder_hidden=[32])
    x = CategoricalVAE(data_dim=4, num_variables=20, num_categories=2, encoder_hidden=[32], decoder_hidden=[32]).sample(128)
    assert not model.enumerable and not model.continuous
    with pytest.raises(UsageError, match="enumerable latent"):
        Exact().check(model)
    with pytest.raises(UsageError, match="continuous z"):
        AIS().check(model)
    with pytest.raises(UsageError, match="gradient VIMCO"):
        ImportanceSampling(5).objective(model, x)
    for estimator in (ImportanceSampling(5), PriorSampling(5)):  # neither could train the encoder
        with pytest.raises(UsageError, match="gradient VIMCO"):
            LVMModule(model, estimator)  # refused when the module is built, before any run folder

    estimator, evaluation = ImportanceSampling(5, gradient=VIMCO()), ImportanceSampling(200)
    torch.manual_seed(2)
    before = float(evaluation.estimate(model, x).log_px.mean())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        (-estimator.objective(model, x).surrogate.mean()).backward()
        optimizer.step()
    torch.manual_seed(2)
    after = float(evaluation.estimate(model, x).log_px.mean())
    assert after > before + 1.0, (before, after)


def test_train_py_with_vimco(tmp_path):
    """The command line: a categorical VAE with 2^16 values trained by VIMCO on the mixture data, validated by the sampled
    estimators; the amortization gap (per-point inference needs a continuous or enumerable z) is off, with the reason in one line."""
    args = [str(ROOT / "train.py"), "fit", "--model.lvm", "lvm_lightning.models.CategoricalVAE", "--model.lvm.num_variables", "16"]
    args += ["--model.lvm.num_categories", "2", "--model.estimator", "lvm_lightning.objectives.ImportanceSampling"]
    args += ["--model.estimator.num_samples", "4", "--model.estimator.gradient", "VIMCO", "--trainer.max_epochs", "2"]
    args += ["--trainer.enable_progress_bar", "false", "--data.num_train", "512", "--data.num_val", "256", "--data.num_test", "256"]
    result = run_tool(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    accumulator = EventAccumulator(str(tmp_path / "runs" / "default" / "version_0"))
    accumulator.Reload()
    tags = accumulator.Tags()["scalars"]
    assert {"val/log_px/prior_sampling", "val/log_px/importance_sampling", "val/log_px/elbo"} <= set(tags)
    assert "val/log_px/exact" not in tags
    assert all(math.isfinite(event.value) for event in accumulator.Scalars("val/log_px/importance_sampling"))
    assert "AmortizationGap is off for this run: per-point inference follows the ELBO's gradient" in result.stdout + result.stderr
    # lvm-evaluate: the sampled estimates, a note instead of the default gap, and BDMC (it needs a continuous z) refused before any estimate.
    checkpoint = str(tmp_path / "runs" / "default" / "version_0" / "checkpoints" / "last.ckpt")
    report = evaluate.evaluate_checkpoint(checkpoint, num_samples=20)
    assert set(report["estimates"]) == {"prior_sampling", "importance_sampling", "elbo"}
    assert "gaps" not in report and report["gaps_unavailable"].startswith("per-point inference")
    with pytest.raises(UsageError, match="continuous z"):
        evaluate.evaluate_checkpoint(checkpoint, num_samples=20, bdmc=5)


def test_a_continuous_prior_without_rsample_is_continuous():
    """A mixture-of-Gaussians prior (no rsample) over a continuous z: AIS, per-point inference and DReG still apply."""
    prior = type(
        "MixturePrior",
        (torch.nn.Module,),
        {
            "forward": lambda self: MixtureSameFamily(
                Categorical(torch.ones(2)), Independent(Normal(torch.tensor([[-2.0, 0.0], [2.0, 0.0]]), torch.ones(2, 2)), 1)
            )
        },
    )()
    vae = VAE(data_dim=3, latent_dim=2)
    model = LatentVariableModel(prior, vae.decoder, vae.encoder, data_dim=3)
    assert model.continuous and not model.enumerable
    AIS().check(model)
    LVMModule(model, ImportanceSampling(5, gradient=DReG()))
