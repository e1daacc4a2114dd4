"""Base class for synthetic data drawn from a known distribution, so the true log-density is available."""

from typing import Optional

import torch
from torch import Tensor
from torch.distributions import Distribution

from lvm_lightning.data.in_memory import InMemoryDataModule
from lvm_lightning.errors import UsageError
from lvm_lightning.memory import check_fits


class SyntheticData(InMemoryDataModule):
    """Train/val/test rows drawn once, with ``seed``, from ``self.distribution`` (set by the subclass)."""

    distribution: Distribution

    @property
    def true_density(self) -> Distribution:
        """The generating distribution: log p_data(x) is known exactly."""
        return self.distribution

    def __init__(
        self, num_train: int, num_val: int, num_test: int, batch_size: int, eval_batch_size: int, seed: int, standardize: Optional[bool] = None
    ) -> None:
        super().__init__(batch_size, eval_batch_size, seed, standardize=standardize)
        if min(num_train, num_val, num_test) < 1:
            raise UsageError("num_train, num_val and num_test must be positive")
        self.sizes = [num_train, num_val, num_test]

    def check_size(self, dim: int, extra: int = 0) -> None:
        """Raises UsageError before anything is drawn when the splits of ``dim`` columns, plus ``extra`` floats, would not fit in memory."""
        points = sum(self.sizes)
        check_fits(4 * (points * dim + extra), f"{type(self).__name__} with {points:,} points of dimension {dim:,}", "lower the sizes or dim")

    @property
    def data_dim(self) -> int:
        return self.distribution.event_shape[0]

    def load_splits(self) -> dict[str, Tensor]:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            x = self.distribution.sample((sum(self.sizes),))
        return dict(zip(("train", "val", "test"), x.split(self.sizes)))
