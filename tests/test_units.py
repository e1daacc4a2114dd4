"""The data's own units: a model trains in standard units and reports log p(x) in the data's, the log-Jacobian included;
the same data in other units give the same held-out log p(x); the map survives the checkpoint and evaluation of a new file;
every shipped encoder starts at σ = 1 and every decoder's output at the data."""

import json
import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from lvm_lightning import LVMModule, evaluate
from lvm_lightning.cli import main
from lvm_lightning.models import VAE, LinearGaussian, MixtureModel
from lvm_lightning.models.units import AffineDistribution, Units

from conftest import ROOT

SCALE = np.array([100.0, 0.01])  # a change of units with log-Jacobian log 100 + log 0.01 = 0 ...
SHIFT = np.array([1000.0, -5.0])
OTHER_SCALE = np.array([100.0, 2.0])  # ... and one whose log-Jacobian is log 200


def test_an_affine_distribution_is_the_gaussian_that_the_map_makes(float64):
    """Oracle: u ~ N(μ, Σ) and x = m + s ⊙ u give x ~ N(m + s ⊙ μ, S Σ S), S = diag(s)."""
    loc, covariance = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([[1.0, 0.3, 0.0], [0.3, 2.0, -0.5], [0.0, -0.5, 1.5]])
    m, s = torch.tensor([10.0, -3.0, 0.0]), torch.tensor([100.0, 0.01, 3.0])
    mapped = AffineDistribution(MultivariateNormal(loc, covariance), m, s)
    oracle = MultivariateNormal(m + s * loc, torch.diag(s) @ covariance @ torch.diag(s))
    x = oracle.sample((50,))
    torch.testing.assert_close(mapped.log_prob(x), oracle.log_prob(x))
    torch.testing.assert_close(mapped.mean, oracle.mean)
    torch.testing.assert_close(mapped.stddev, oracle.stddev)


def test_units_fit_standardizes_and_keep_to_the_checkpoint(float64):
    x = torch.randn(400, 2, dtype=torch.float64) * torch.tensor(SCALE) + torch.tensor(SHIFT)
    units = Units(2).double()
    units.fit(x)
    u = units.standardize(x)
    torch.testing.assert_close(u.mean(0), torch.zeros(2), atol=1e-9, rtol=0)
    torch.testing.assert_close(u.std(0), torch.ones(2))
    base = Independent(Normal(torch.zeros(2), torch.ones(2)), 1)
    torch.testing.assert_close(units.to_data(base).log_prob(x), base.log_prob(u) - units.scale.log().sum())
    again = Units(2).double()
    again.load_state_dict(units.state_dict())
    assert again.active and torch.equal(again.scale, units.scale)
    common = Units(2).double()
    common.fit(x, common_scale=True)
    assert common.scale[0] == common.scale[1]  # isotropic noise stays isotropic


def test_a_checkpoint_from_before_the_map_loads_as_the_identity():
    model = VAE(3, 2)
    state = {key: value for key, value in model.state_dict().items() if not key.startswith("units.")}
    fresh = VAE(3, 2)
    fresh.load_state_dict(state)
    assert not fresh.units.active


@pytest.fixture(scope="module")
def clusters(tmp_path_factory):
    """Six 2-D clusters of unequal spread, as unit-scale rows and in two other units, saved as .npy files."""
    folder = tmp_path_factory.mktemp("units")
    rng = np.random.default_rng(7)
    centres, labels = rng.uniform(-4, 4, size=(6, 2)), rng.integers(0, 6, size=1500)
    points = centres[labels] + rng.normal(size=(1500, 2)) * rng.uniform(0.2, 0.8, size=(6, 2))[labels]
    np.save(folder / "unit.npy", points.astype(np.float32))
    np.save(folder / "raw.npy", (points * SCALE + SHIFT).astype(np.float32))
    np.save(folder / "other.npy", (points * OTHER_SCALE).astype(np.float32))
    np.save(folder / "new.npy", (rng.normal(size=(50, 2)) * SCALE + SHIFT).astype(np.float32))
    return folder


def train_and_score(folder, monkeypatch, name: str, *model: str) -> dict:
    monkeypatch.chdir(folder)
    run = f"{name}_{'_'.join(model)[-30:].replace('.', '')}"
    main(["fit", "--config", str(ROOT / "configs" / "numpy_file.yaml"), "--data.path", f"{name}.npy", "--trainer.max_steps", "600",
          "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.name", run, *model])  # fmt: skip
    checkpoint = folder / "runs" / run / "version_0" / "checkpoints" / "last.ckpt"
    evaluate.main([str(checkpoint), "--data_path", f"{name}.npy", "--num_samples", "200", "--gap_points", "0", "--output", f"{run}.json"])
    return json.loads((folder / f"{run}.json").read_text())


@pytest.mark.parametrize(
    "model",
    [
        (),  # the config's VAE
        ("--model.lvm", "lvm_lightning.models.MixtureModel", "--model.lvm.num_components", "6", "--model.estimator", "lvm_lightning.objectives.Exact"),
    ],
    ids=["VAE", "MixtureModel"],
)
def test_the_same_data_in_other_units_give_the_same_log_px(clusters, monkeypatch, capsys, model):
    """log p(x) in units x' = a ⊙ x + c is log p(x) − Σ log a: trained on each, the held-out values agree to Monte Carlo error."""
    reports = {name: train_and_score(clusters, monkeypatch, name, *model) for name in ("unit", "raw", "other")}
    capsys.readouterr()
    unit = reports["unit"]["tightest"]
    for name, scale in (("raw", SCALE), ("other", OTHER_SCALE)):
        report = reports[name]
        assert report["data"]["the_runs_file"] and report["data"]["split"] == "test"  # the run's own test split, found by its rows
        mapped = report["tightest"]["mean"] + np.log(scale).sum()
        assert abs(mapped - unit["mean"]) < 0.02 + 3 * unit["stderr"] / 10, (name, mapped, unit["mean"])


def test_the_map_survives_the_checkpoint_and_scores_a_new_file(clusters, monkeypatch, capsys):
    """A file the run never saw: every row scored in its own units by the checkpoint's map; samples come out in the data's units."""
    train_and_score(clusters, monkeypatch, "raw")
    checkpoint = clusters / "runs" / "raw_" / "version_0" / "checkpoints" / "last.ckpt"
    module = LVMModule.load_from_checkpoint(checkpoint)
    spread = torch.from_numpy(np.load(clusters / "raw.npy")).std(0)  # the training split's, within sampling error
    assert module.lvm.units.active and torch.allclose(module.lvm.units.scale, spread, rtol=0.1)
    evaluate.main([str(checkpoint), "--data_path", "new.npy", "--num_samples", "100", "--gap_points", "0", "--output", "new.json"])
    report = json.loads((clusters / "new.json").read_text())
    assert report["data"] == {"path": "new.npy", "split": "all rows", "the_runs_file": False}
    assert report["estimates"]["importance_sampling"]["num_points"] == 50 and math.isfinite(report["estimates"]["importance_sampling"]["mean"])
    samples = module.lvm.sample(2000)
    assert samples[:, 0].mean().sub(1000).abs() < 300 and samples[:, 1].mean().add(5).abs() < 0.03


def test_the_linear_gaussian_marginal_is_in_the_datas_units(float64):
    """pPCA fitted in standard units with one scale for all columns is pPCA in the data's: the closed form maps with the Jacobian."""
    model = LinearGaussian(3, 1).double()
    x = torch.randn(500, 3, dtype=torch.float64) * torch.tensor([10.0, 0.1, 3.0]) + 7
    model.standardize(x)
    assert model.units.scale.unique().numel() == 1  # common_scale: isotropic noise stays isotropic
    u = model.units.standardize(x)
    W, b, s2 = model.weight, model.bias, model.noise_std**2
    standard = MultivariateNormal(b, W @ W.T + s2 * torch.eye(3))
    torch.testing.assert_close(model.marginal().log_prob(x), standard.log_prob(u) - model.units.scale.log().sum())


def test_every_shipped_encoder_starts_at_unit_spread_and_the_decoder_at_the_data():
    """After ``initialize``: q(z|x) has σ = 1 at every x (no e^(random · x) scales), the Gaussian decoder's output bias is the
    columns' mean and log spread, and a Bernoulli decoder's the logit of each pixel's frequency (Burda et al., 2016)."""
    x = torch.randn(300, 4) * torch.tensor([5.0, 1.0, 0.2, 30.0]) + 3
    for posterior in ("diagonal", "full", "local_flow"):
        model = VAE(4, 2, posterior=posterior)
        model.standardize(x)
        model.initialize(x)
        q = model.posterior(x * 100)
        sample = q.sample((2000,))
        assert torch.allclose(sample.std(0), torch.ones(2), atol=0.1), posterior  # σ = 1 even for inputs far from the data
        u = model.units.standardize(x)
        bias = model.decoder.output_layer().bias
        torch.testing.assert_close(bias[:4], u.mean(0), atol=1e-5, rtol=0)
        torch.testing.assert_close(bias[4:], u.std(0).log(), atol=1e-5, rtol=0)
    bits = (torch.rand(500, 6) < torch.tensor([0.05, 0.2, 0.5, 0.5, 0.8, 0.95])).float()
    model = VAE(6, 2, likelihood="bernoulli")
    model.initialize(bits)
    torch.testing.assert_close(model.decoder.output_layer().bias, torch.logit(bits.mean(0).clamp(1e-3, 1 - 1e-3)))
    mixture = MixtureModel(4, 3)  # a k-means start of its own, after the common one
    mixture.standardize(x)
    mixture.initialize(x)
    assert mixture.units.active and mixture.decoder.net[0].weight.abs().max() < 10  # the table in standard units


def test_binary_and_grey_data_are_left_in_their_units(tmp_path, monkeypatch):
    """Standardizing would break a Bernoulli likelihood's support: data in [0, 1] stay as they are unless asked."""
    from lvm_lightning.data import NumpyData

    np.save(tmp_path / "bits.npy", (np.random.default_rng(0).random((100, 5)) < 0.3).astype(np.float32))
    np.save(tmp_path / "reals.npy", np.random.default_rng(0).normal(size=(100, 5)).astype(np.float32))
    for name, expected in (("bits", False), ("reals", True)):
        data = NumpyData(str(tmp_path / f"{name}.npy"))
        data.setup()
        assert data.standardize is expected
    forced = NumpyData(str(tmp_path / "reals.npy"), standardize=False)
    forced.setup()
    assert forced.standardize is False
