"""Posterior families and likelihoods as classes: a short name and its class build the same model, a module that is not a
family is named at construction, a family class reloads from a checkpoint (a foreign one is refused), and a family of the
user's own, in a file outside the repository, trains through lvm-train and evaluates with --trust (--gap_family a class)."""

import copy
import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lvm_lightning import LVMModule
from lvm_lightning.checkpoints import load_module
from lvm_lightning.cli import build_module
from lvm_lightning.errors import UsageError
from lvm_lightning.inference import family_name, in_family
from lvm_lightning.models import (
    LIKELIHOODS,
    POSTERIORS,
    VAE,
    CouplingFlow,
    DiagonalGaussian,
    ExpressesDistributions,
    Family,
    FullCovarianceGaussian,
    HierarchicalVAE,
    MixtureModel,
)

from conftest import ROOT, run_tool

LAPLACE_MODULE = '''
"""A family of one's own: independent Laplace distributions, as q(z|x) and as p(x|z)."""
import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Laplace


class DiagonalLaplace(nn.Module):
    """Independent Laplace(mu, b) over R^dim from params [mu, log b], b floored at min_scale."""

    def __init__(self, dim: int, min_scale: float = 1e-3) -> None:
        super().__init__()
        self.dim, self.num_params, self.min_scale = dim, 2 * dim, min_scale

    def forward(self, params: Tensor) -> Distribution:
        loc, log_scale = params.chunk(2, -1)
        return Independent(Laplace(loc, log_scale.exp() + self.min_scale, validate_args=False), 1, validate_args=False)

    def standard_rows(self) -> Tensor:
        """log b is zero at unit scale: the encoder starts as Laplace(mu(x), 1)."""
        rows = torch.zeros(self.num_params, dtype=torch.bool)
        rows[self.dim :] = True
        return rows
'''

LAPLACE_CONFIG = """
trainer:
  max_steps: 4
model:
  lvm:
    class_path: lvm_lightning.models.VAE
    init_args:
      latent_dim: 2
      encoder_hidden: [16]
      decoder_hidden: [16]
      posterior: {class_path: laplace_family.DiagonalLaplace}
      likelihood: {class_path: laplace_family.DiagonalLaplace, init_args: {min_scale: 0.01}}
  estimator: {class_path: lvm_lightning.objectives.ImportanceSampling, init_args: {num_samples: 5}}
"""

QUICK = ["--trainer.enable_progress_bar", "false", "--data.num_train", "200", "--data.num_val", "100", "--data.num_test", "100",
         "--amortization_gap.every_n_epochs", "0", "--density_plot.every_n_epochs", "0"]  # fmt: skip


def test_every_shipped_family_is_a_family():
    """Each class the short names stand for makes a Family, and declares re-expression where per-point inference needs it."""
    for name, cls in {**POSTERIORS, **LIKELIHOODS}.items():
        family = cls(3)
        assert isinstance(family, Family) and isinstance(family, nn.Module), name
        assert family(torch.zeros(5, family.num_params)).batch_shape == (5,), name
    assert all(isinstance(POSTERIORS[name](3), ExpressesDistributions) for name in ("diagonal", "full", "local_flow"))


def test_a_short_name_and_its_class_build_the_same_model():
    """'full' and FullCovarianceGaussian, 'gaussian' with decoder_std 'shared' and DiagonalGaussian(std='shared'): the same weights from one seed."""
    torch.manual_seed(0)
    named = VAE(4, 2, posterior="full", likelihood="gaussian", decoder_std="shared")
    torch.manual_seed(0)
    classed = VAE(4, 2, posterior=FullCovarianceGaussian, likelihood=functools.partial(DiagonalGaussian, std="shared"))
    assert type(classed.encoder.family) is FullCovarianceGaussian and classed.decoder.family.isotropic
    assert named.state_dict().keys() == classed.state_dict().keys()
    for key, value in named.state_dict().items():
        assert torch.equal(value, classed.state_dict()[key]), key


def test_a_mixture_of_a_gaussian_family_class_starts_from_kmeans():
    """The k-means start follows the decoder's family object, not the likelihood's name."""
    assert MixtureModel(2, 4, likelihood=functools.partial(DiagonalGaussian, std=0.5)).init == "kmeans"
    assert MixtureModel(2, 4, likelihood="bernoulli", decoder_hidden=()).init == "random"


@pytest.mark.parametrize("part", ["posterior", "likelihood"])
def test_a_module_that_is_not_a_family_is_named_at_construction(part):
    with pytest.raises(UsageError, match=part):
        VAE(4, 2, **{part: nn.Identity})


def test_a_gaussian_sigma_for_another_likelihood_is_refused():
    with pytest.raises(UsageError, match="decoder_std"):
        HierarchicalVAE(4, [2], [[8]], likelihood="bernoulli", decoder_std=0.5)
    with pytest.raises(UsageError, match="decoder_std"):
        VAE(4, 2, likelihood=DiagonalGaussian, decoder_std="shared")


def test_a_second_family_for_q_star_is_given_as_a_class():
    """in_family takes a family class as it takes a short name; one with weights of its own is refused naming --gap_family."""
    model = VAE(4, 2).eval()
    x = torch.randn(6, 4)
    view = in_family(model, FullCovarianceGaussian)
    assert family_name(view, FullCovarianceGaussian) == "FullCovarianceGaussian" and family_name(view, "full") == "full"
    z = model.posterior(x).sample((3,))
    torch.testing.assert_close(view.posterior(x).log_prob(z), model.posterior(x).log_prob(z), rtol=0, atol=1e-4)
    with pytest.raises(UsageError, match="--gap_family"):
        in_family(model, CouplingFlow)


MODEL = {
    "lvm": {"class_path": "lvm_lightning.models.VAE", "init_args": {
        "latent_dim": 2, "encoder_hidden": [8], "decoder_hidden": [8],
        "posterior": {"class_path": "lvm_lightning.models.FullCovarianceGaussian"},
        "likelihood": {"class_path": "lvm_lightning.models.DiagonalGaussian", "init_args": {"std": "shared"}}}},
    "estimator": {"class_path": "lvm_lightning.objectives.ImportanceSampling", "init_args": {"num_samples": 2}},
}  # fmt: skip


def stored(model: dict[str, Any], **posterior: Any) -> dict[str, Any]:
    """What LightningCLI stores for ``model`` (data_dim linked in), with the posterior replaced where ``posterior`` is given."""
    section = copy.deepcopy(model)
    section["lvm"]["init_args"]["data_dim"] = 3
    if posterior:
        section["lvm"]["init_args"]["posterior"] = posterior
    return section


def test_a_family_class_reloads_from_a_checkpoint():
    module = build_module(MODEL, 3)
    loaded = load_module(LVMModule, {"state_dict": module.state_dict(), "hyper_parameters": stored(MODEL)}, "test")
    assert type(loaded.lvm.encoder.family) is FullCovarianceGaussian and loaded.lvm.decoder.family.std == "shared"
    for key, value in module.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.parametrize(
    "posterior, says",
    [
        ({"class_path": "evilmod.Evil"}, "--trust evilmod"),  # a module of the working folder, never imported
        ({"class_path": "torch.optim.Adam", "init_args": {}}, "Module"),  # a class of another kind
        ({"class_path": "lvm_lightning.models.VAE"}, "posterior"),  # an nn.Module of the package that is no family
    ],
)
def test_a_foreign_class_where_a_family_belongs_is_refused(tmp_path, monkeypatch, posterior, says):
    marker = tmp_path / "MARKER"
    (tmp_path / "evilmod.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Evil:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = build_module(MODEL, 3)
    with pytest.raises(UsageError, match=says):
        load_module(LVMModule, {"state_dict": module.state_dict(), "hyper_parameters": stored(MODEL, **posterior)}, "test")
    assert not marker.exists()


@pytest.fixture(scope="module")
def laplace_run(tmp_path_factory) -> Path:
    """A folder outside the repository with the user's family file and a config naming it, trained there for four steps."""
    folder = tmp_path_factory.mktemp("laplace")
    (folder / "laplace_family.py").write_text(LAPLACE_MODULE)
    (folder / "laplace.yaml").write_text(LAPLACE_CONFIG)
    result = run_tool([str(ROOT / "train.py"), "fit", "--config", "laplace.yaml", *QUICK], folder)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder


def test_a_family_of_ones_own_trains_and_evaluates_with_trust(laplace_run):
    checkpoint = laplace_run / "runs" / "default" / "version_0" / "checkpoints" / "last.ckpt"
    stored_lvm = torch.load(checkpoint, weights_only=True)["hyper_parameters"]["lvm"]["init_args"]
    assert stored_lvm["posterior"]["class_path"] == "laplace_family.DiagonalLaplace" and stored_lvm["likelihood"]["init_args"] == {"min_scale": 0.01}
    evaluate = ["-m", "lvm_lightning.evaluate", str(checkpoint), "--num_samples", "20", "--gap_points", "4", "--gap.max_steps", "5"]
    refused = run_tool(evaluate, laplace_run)
    assert refused.returncode == 2 and "'laplace_family.DiagonalLaplace'" in refused.stderr and "--trust laplace_family" in refused.stderr
    # q* also as a full-covariance Gaussian, a family given by its class, started from the Laplace q_φ's moments.
    result = run_tool(
        [*evaluate, "--trust", "laplace_family", "--gap_family", "lvm_lightning.models.FullCovarianceGaussian", "--output", "report.json"], laplace_run
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((laplace_run / "report.json").read_text())
    estimates = report["estimates"]
    assert all(math.isfinite(estimate["mean"]) for estimate in estimates.values())
    assert estimates["elbo"]["mean"] < estimates["importance_sampling"]["mean"] and report["gaps"]["num_points"] == 4
    assert report["gaps_in_family"]["family"] == "FullCovarianceGaussian" and math.isfinite(report["gaps_in_family"]["elbo_optimized"])
