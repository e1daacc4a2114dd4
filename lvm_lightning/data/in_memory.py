"""Data that lives in one tensor: batches are slices by index, with no per-item Python.

The loader shuffles with a permutation seeded by (seed, epoch), so a run resumed from a checkpoint
sees the same batches it would have seen, and under DDP each rank takes every world_size-th index.
"""
from typing import Callable, Iterator, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor


class EpochPermutation:
    """Index batches of one epoch: a permutation seeded by seed + epoch (or 0..N−1), sharded by rank."""

    def __init__(
        self, size: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False
    ) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def indices(self) -> Tensor:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.arange(self.size)
        return order[self.rank : self._usable : self.world_size]

    @property
    def _usable(self) -> int:
        # Equal shard sizes keep DDP ranks in step during training.
        return self.size - self.size % self.world_size if self.drop_last else self.size

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.indices()[: len(self) * self.batch_size].split(self.batch_size))

    def __len__(self) -> int:
        shard = len(range(self.rank, self._usable, self.world_size))
        return shard // self.batch_size if self.drop_last else -(-shard // self.batch_size)


class TensorLoader:
    """Yields transform(data[indices]) for each index batch of ``sampler``; Lightning finds ``sampler.set_epoch``."""

    batch_sampler = None  # Lightning inspects DataLoader-like objects for these two attributes.

    def __init__(self, data: Tensor, sampler: EpochPermutation, transform: Optional[Callable[[Tensor], Tensor]] = None) -> None:
        self.data, self.sampler, self.transform = data, sampler, transform

    def __iter__(self) -> Iterator[Tensor]:
        for indices in self.sampler:
            batch = self.data[indices.to(self.data.device)]
            yield self.transform(batch) if self.transform is not None else batch

    def __len__(self) -> int:
        return len(self.sampler)


class InMemoryDataModule(pl.LightningDataModule):
    """Base class for data held as three tensors [N, D] (train, val, test), already on the CPU."""

    def __init__(self, batch_size: int = 256, eval_batch_size: int = 1024, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.eval_batch_size, self.seed = batch_size, eval_batch_size, seed
        self.splits: dict[str, Tensor] = {}

    @property
    def data_dim(self) -> int:
        """D, the dimension of one datapoint."""
        raise NotImplementedError

    def load_splits(self) -> dict[str, Tensor]:
        """{'train': [N, D], 'val': [N, D], 'test': [N, D]} as float tensors."""
        raise NotImplementedError

    def setup(self, stage: Optional[str] = None) -> None:
        if not self.splits:
            self.splits = self.load_splits()

    def _loader(self, split: str, shuffle: bool) -> TensorLoader:
        self.setup()
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        data = self.splits[split]
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        sampler = EpochPermutation(len(data), batch_size, shuffle, self.seed, rank, world, drop_last=shuffle and world > 1)
        return TensorLoader(data, sampler)

    def train_dataloader(self) -> TensorLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> TensorLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> TensorLoader:
        return self._loader("test", shuffle=False)
