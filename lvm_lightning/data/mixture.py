"""Synthetic data from a Gaussian mixture whose density is known exactly."""

import math
from typing import Literal, Optional

import torch
from torch import Tensor
from torch.distributions import Categorical, Independent, MixtureSameFamily, Normal

from lvm_lightning.data.synthetic import SyntheticData
from lvm_lightning.errors import UsageError


class GaussianMixtureData(SyntheticData):
    """x ~ Σ_c (1/C) N(μ_c, s² I): C clusters on a ring (first two axes) or at random in [−r, r]^D.

    Args:
        num_clusters: C, the clusters.
        dim: D, the dimension of a point.
        radius: r, the ring's radius (or the half-width of the cube of random centres).
        cluster_std: s, each cluster's standard deviation per axis.
        layout: ring (the centres evenly on a circle) or random (uniform in the cube, drawn with ``seed``).
        num_train: points of the training split.
        num_val: points of the validation split.
        num_test: points of the test split.
        batch_size: points per training batch.
        eval_batch_size: points per validation and test batch.
        seed: the seed of the points (and of random centres).
        standardize: whether the model works in standard units; default: yes unless every value lies in [0, 1].
    """

    def __init__(
        self,
        num_clusters: int = 8,
        dim: int = 2,
        radius: float = 4.0,
        cluster_std: float = 0.4,
        layout: Literal["ring", "random"] = "ring",
        num_train: int = 10_000,
        num_val: int = 2_000,
        num_test: int = 2_000,
        batch_size: int = 256,
        eval_batch_size: int = 2048,
        seed: int = 0,
        standardize: Optional[bool] = None,
    ) -> None:
        super().__init__(num_train, num_val, num_test, batch_size, eval_batch_size, seed, standardize)
        if num_clusters < 1 or dim < 1 or cluster_std <= 0:
            raise UsageError("num_clusters, dim and cluster_std must be positive")
        if layout == "ring" and dim < 2:
            raise UsageError("layout 'ring' needs dim >= 2: use --data.layout random for 1-D data")
        self.save_hyperparameters()
        self.check_size(dim, 2 * num_clusters * dim)
        self.distribution = MixtureSameFamily(
            Categorical(logits=torch.zeros(num_clusters)),
            Independent(Normal(self._centres(), torch.full((num_clusters, dim), cluster_std)), 1),
        )

    def _centres(self) -> Tensor:
        hp = self.hparams
        if hp.layout == "ring":
            angle = torch.arange(hp.num_clusters) * 2 * math.pi / hp.num_clusters
            centres = torch.zeros(hp.num_clusters, hp.dim)
            centres[:, 0], centres[:, 1] = hp.radius * angle.cos(), hp.radius * angle.sin()
            return centres
        generator = torch.Generator().manual_seed(hp.seed)
        return (torch.rand(hp.num_clusters, hp.dim, generator=generator) * 2 - 1) * hp.radius
