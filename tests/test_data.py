"""Data modules: deterministic splits, resumable shuffling, DDP sharding, the true density, clear errors."""

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from lvm_lightning.data import EpochPermutation, GaussianMixtureData, LinearGaussianData, NumpyData, load_array
from lvm_lightning.errors import UsageError


def test_epoch_permutation_covers_every_index_and_is_reproducible_per_epoch():
    sampler = EpochPermutation(103, 10, shuffle=True, seed=4)
    epoch0 = torch.cat(list(sampler))
    assert sorted(epoch0.tolist()) == list(range(103)) and len(sampler) == 11
    sampler.set_epoch(1)
    epoch1 = torch.cat(list(sampler))
    assert not torch.equal(epoch0, epoch1)
    resumed = EpochPermutation(103, 10, shuffle=True, seed=4)
    resumed.set_epoch(1)  # what Lightning does on resuming at epoch 1
    assert torch.equal(torch.cat(list(resumed)), epoch1)


def test_epoch_permutation_shards_are_disjoint_and_equal_under_ddp():
    shards = [EpochPermutation(103, 8, shuffle=True, seed=1, rank=r, world_size=3, drop_last=True) for r in range(3)]
    indices = [torch.cat(list(s)) for s in shards]
    assert len({len(s) for s in shards}) == 1 and all(len(i) == len(shards[0]) * 8 for i in indices)
    assert len(set(torch.cat(indices).tolist())) == sum(len(i) for i in indices)


def test_mixture_data_true_density_is_the_generating_mixture():
    data = GaussianMixtureData(num_clusters=5, dim=3, layout="random", num_train=100, num_val=10, num_test=20, seed=3)
    data.setup()
    assert {k: tuple(v.shape) for k, v in data.splits.items()} == {"train": (100, 3), "val": (10, 3), "test": (20, 3)}
    centres = data.distribution.component_distribution.base_dist.loc
    oracle = MixtureSameFamily(Categorical(torch.ones(5) / 5), Independent(Normal(centres, 0.4 * torch.ones(5, 3)), 1))
    x = data.splits["test"]
    torch.testing.assert_close(data.true_density.log_prob(x), oracle.log_prob(x))
    again = GaussianMixtureData(num_clusters=5, dim=3, layout="random", num_train=100, num_val=10, num_test=20, seed=3)
    again.setup()
    assert torch.equal(again.splits["train"], data.splits["train"])


def test_linear_gaussian_data_density():
    data = LinearGaussianData(dim=4, latent_dim=2, noise_std=0.3, num_train=20000, num_val=5, num_test=5)
    data.setup()
    x = data.splits["train"]
    torch.testing.assert_close(x.mean(0), data.bias, atol=0.1, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), data.weight @ data.weight.T + 0.09 * torch.eye(4), atol=0.15, rtol=0)


def test_numpy_data_split_is_deterministic_and_complete(tmp_path):
    array = np.random.default_rng(0).normal(size=(200, 3)).astype(np.float64)
    np.save(tmp_path / "x.npy", array)
    data = NumpyData(str(tmp_path / "x.npy"), val_fraction=0.1, test_fraction=0.2, seed=5)
    data.setup()
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 140, "val": 20, "test": 40} and data.data_dim == 3
    rows = torch.cat(list(data.splits.values()))
    assert sorted(map(tuple, rows.tolist())) == sorted(map(tuple, torch.from_numpy(array).float().tolist()))
    again = NumpyData(str(tmp_path / "x.npy"), val_fraction=0.1, test_fraction=0.2, seed=5)
    again.setup()
    assert torch.equal(again.splits["test"], data.splits["test"])


def test_numpy_data_separate_split_files(tmp_path):
    for name, n in (("tr", 30), ("va", 7), ("te", 9)):
        np.save(tmp_path / f"{name}.npy", np.ones((n, 2)))
    data = NumpyData(str(tmp_path / "tr.npy"), val_path=str(tmp_path / "va.npy"), test_path=str(tmp_path / "te.npy"))
    data.setup()
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 30, "val": 7, "test": 9}
    np.save(tmp_path / "wide.npy", np.ones((9, 3)))
    with pytest.raises(UsageError, match="different numbers of columns"):
        NumpyData(str(tmp_path / "tr.npy"), val_path=str(tmp_path / "va.npy"), test_path=str(tmp_path / "wide.npy"))


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        (np.ones(10), "shape"),
        (np.ones((2, 3, 4)), "shape"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), "NaN"),
        (np.array([[1.0, np.inf]]), "NaN or infinite"),
        (np.array([["a", "b"]]), "real numbers"),
    ],
)
def test_bad_arrays_raise_one_line_usage_errors(tmp_path, content, message):
    path = tmp_path / "bad.npy"
    if content is not None:
        np.save(path, content)
    with pytest.raises(UsageError, match=message) as error:
        load_array(str(path))
    assert "\n" not in str(error.value)
