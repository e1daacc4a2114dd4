"""The Gaussian mixture's data-dependent start: k-means in torch, the table set in its unconstrained form, the optimum reached, seeded, never redone on resume."""

from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from sklearn.mixture import GaussianMixture
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from lvm_lightning.data import GaussianMixtureData
from lvm_lightning.data.synthetic import SyntheticData
from lvm_lightning.errors import UsageError
from lvm_lightning.models import VAE, LatentVariableModel, MixtureModel
from lvm_lightning.models.families import CategoricalFamily, DiagonalGaussian
from lvm_lightning.models.kmeans import DiagonalMixture, kmeans_plus_plus, lloyd
from lvm_lightning.models.lvm import Conditional
from lvm_lightning.models.networks import mlp
from lvm_lightning.models.priors import CategoricalPrior
from lvm_lightning.module import LVMModule
from lvm_lightning.objectives import Exact
from lvm_lightning.schedules import Adam

from conftest import quiet_trainer

pytestmark = pytest.mark.usefixtures("one_thread")


class KnownMixture(SyntheticData):
    """8 Gaussian clusters in 2-D with unequal weights and per-axis scales (anisotropic), means at random in [−6, 6]²."""

    def __init__(self, num_train: int = 8000, seed: int = 0) -> None:
        super().__init__(num_train, 4000, 4000, 256, 4096, seed)
        generator = torch.Generator().manual_seed(seed)
        means = (torch.rand(8, 2, generator=generator) * 2 - 1) * 6
        scales = 0.2 + 0.8 * torch.rand(8, 2, generator=generator)
        self.distribution = MixtureSameFamily(Categorical(logits=torch.randn(8, generator=generator)), Independent(Normal(means, scales), 1))


def trainer(epochs: int, **kwargs) -> pl.Trainer:
    return quiet_trainer(max_epochs=epochs, **{"logger": False, "enable_checkpointing": False, **kwargs})


def mean_log_px(module: LVMModule, x: torch.Tensor) -> float:
    return mean_log_px_of(module.lvm, x)


def mean_log_px_of(model, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(Exact().estimate(model, x).log_px.mean())


def test_kmeans_finds_separated_clusters_and_the_mixture_density_is_torchs():
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])
    x = (centres[:, None] + 0.5 * torch.randn(4, 500, 2)).reshape(-1, 2)
    assignment = lloyd(x, kmeans_plus_plus(x, 4))
    mixture = DiagonalMixture.of_clusters(x, assignment, 4)
    assert torch.cdist(mixture.means, centres).min(0).values.max() < 0.1  # each true centre found
    assert torch.allclose(mixture.variances, torch.full((4, 2), 0.25), rtol=0.15)
    assert torch.allclose(mixture.log_weights.exp(), torch.full((4,), 0.25))
    oracle = MixtureSameFamily(Categorical(logits=mixture.log_weights), Independent(Normal(mixture.means, mixture.variances.sqrt()), 1))
    assert torch.allclose(mixture.log_prob(x), oracle.log_prob(x), atol=1e-4)


def test_kmeans_plus_plus_survives_duplicate_rows():
    x = torch.ones(50, 3)
    assert torch.equal(kmeans_plus_plus(x, 4), torch.ones(4, 3))


@pytest.mark.parametrize("std", ["learned", "shared", 0.7])
def test_initialize_writes_the_clusters_into_the_table_in_unconstrained_form(std):
    x = KnownMixture(num_train=2000).load_splits()["train"]
    model = MixtureModel(2, 8, decoder_std=std, n_init=1)
    torch.manual_seed(3)
    model.initialize(x)
    torch.manual_seed(3)
    clusters = DiagonalMixture.of_clusters(x, lloyd(x, kmeans_plus_plus(x, 8)), 8)
    with torch.no_grad():
        components = model.decoder(model.support()[:, 0])  # p(x|z) for each z: batch [C]
    assert torch.allclose(components.mean, clusters.means)
    assert torch.allclose(model.prior().logits, clusters.log_weights.log_softmax(0), atol=1e-6)
    pooled = clusters.log_weights.exp() @ clusters.variances.mean(1)
    expected = {"learned": clusters.variances, "shared": pooled.expand(8, 2), 0.7: torch.full((8, 2), 0.49)}[std]
    assert torch.allclose(components.variance, expected, rtol=1e-5)


def test_kmeans_init_refused_where_there_is_no_gaussian_table():
    with pytest.raises(UsageError, match="init 'kmeans'"):
        MixtureModel(2, 4, decoder_hidden=[8], init="kmeans")
    with pytest.raises(UsageError, match="init 'kmeans'"):
        MixtureModel(2, 4, likelihood="bernoulli", init="kmeans")
    assert MixtureModel(2, 4, decoder_hidden=[8]).init == "random"  # 'auto' picks what applies
    assert MixtureModel(2, 4).init == "kmeans"


def test_trained_mixture_reaches_the_true_density_and_em():
    """Held-out log-likelihood within 0.02 nats per point of the generating mixture's, and of EM's (scikit-learn, k-means start, 5 restarts)."""
    pl.seed_everything(0)
    data = KnownMixture()
    module = LVMModule(MixtureModel(2, 8), Exact(), optimizer=partial(Adam, lr=0.01))
    trainer(15, limit_val_batches=0, num_sanity_val_steps=0).fit(module, datamodule=data)
    test = data.splits["test"]
    model, true = mean_log_px(module, test), float(data.true_density.log_prob(test).mean())
    em = GaussianMixture(8, covariance_type="diag", n_init=5, random_state=0).fit(data.splits["train"].double().numpy())
    em_score = float(em.score(test.double().numpy()))
    assert abs(model - true) < 0.02, (model, true)
    assert model > em_score - 0.02, (model, em_score)


def test_the_start_is_seeded_and_leaves_the_training_stream_alone():
    def started(seed: int, init: str = "kmeans") -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        pl.seed_everything(seed)
        data = GaussianMixtureData(num_train=500, num_val=100, num_test=100)
        module = LVMModule(MixtureModel(2, 8, init=init), Exact())
        trainer(1, limit_train_batches=0, limit_val_batches=0).fit(module, datamodule=data)
        return {k: v.clone() for k, v in module.state_dict().items()}, torch.get_rng_state()

    (first, stream), (again, _), (other, _), (_, without) = started(0), started(0), started(1), started(0, "random")
    assert all(torch.equal(v, again[k]) for k, v in first.items())
    assert not torch.equal(first["lvm.decoder.net.0.weight"], other["lvm.decoder.net.0.weight"])
    assert torch.equal(stream, without)  # the start drew from a fork: training draws what it would have without it


def test_the_start_is_not_redone_on_resume_or_after_loading(tmp_path, monkeypatch):
    pl.seed_everything(0)
    data = GaussianMixtureData(num_train=500, num_val=100, num_test=100)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    trained = LVMModule(MixtureModel(2, 8), Exact())
    trainer(2, enable_checkpointing=True, callbacks=[checkpoint]).fit(trained, datamodule=data)
    calls = []
    monkeypatch.setattr(MixtureModel, "initialize", lambda self, x: calls.append(len(x)))
    resumed = LVMModule(MixtureModel(2, 8), Exact())  # fresh weights, replaced by the checkpoint's
    trainer(3).fit(resumed, datamodule=data, ckpt_path=str(tmp_path / "last.ckpt"))
    loaded = LVMModule.load_from_checkpoint(tmp_path / "last.ckpt", lvm=MixtureModel(2, 8), estimator=Exact())
    trainer(3).fit(loaded, datamodule=data)
    assert calls == []
    fresh = LVMModule(MixtureModel(2, 8), Exact())
    trainer(1, limit_train_batches=0, limit_val_batches=0).fit(fresh, datamodule=data)
    assert calls == [500]  # a fresh module does start from the data


def test_a_mixture_built_from_parts_starts_from_kmeans_as_the_shipped_one():
    """The k-means start is the model's by its shape (categorical prior, a table of diagonal Gaussians), not by its class."""
    x = KnownMixture(num_train=2000).load_splits()["train"]
    shipped = MixtureModel(2, 8, encoder_hidden=(16,))
    parts = LatentVariableModel(
        CategoricalPrior(8, learn=True),
        Conditional(mlp(8, 4, (), categorical_input=True), DiagonalGaussian(2)),
        Conditional(mlp(2, 8, (16,)), CategoricalFamily(8)),
    )
    assert parts.kmeans is not None and VAE(2, 2).kmeans is None and MixtureModel(2, 8, init="random").kmeans is None
    for model in (shipped, parts):
        torch.manual_seed(5)
        model.initialize(x)
    assert torch.equal(parts.decoder.net[0].weight, shipped.decoder.net[0].weight)
    assert torch.equal(parts.prior.logits, shipped.prior.logits)
    assert mean_log_px_of(parts, x) > mean_log_px_of(MixtureModel(2, 8, init="random"), x) + 1  # the start, not the random weights
