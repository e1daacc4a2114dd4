"""Data that lives in one tensor: batches are slices by index, with no per-item Python.

The training loader shuffles with a permutation seeded by (seed, epoch), so a run resumed from a checkpoint
sees the same batches it would have seen, and under DDP each rank takes every world_size-th index. Evaluation
loaders deal whole batches instead: rank r of W takes batches r, r + W, r + 2W, … of the one-process sequence, so
each batch holds the points, and (seeded by its global index, ``dealing.dealt_index``) the draws, it has on one device
(a split of fewer batches than ranks is cut into one batch per rank instead).
When a trainer is attached the tensors move to its device in ``setup``; ``in_memory=False`` keeps them on the CPU,
served through a plain DataLoader for training, for data too large for the device.
"""

from functools import partial
from typing import Any, Callable, ClassVar, Iterator, Optional, Union

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.distributions import Distribution
from torch.utils.data import DataLoader

from lvm_lightning.dealing import deal, dealt_count
from lvm_lightning.errors import UsageError

Transform = Callable[[Tensor], Tensor]


class EpochPermutation:
    """Index batches of one epoch: a permutation seeded by seed + epoch, sharded by point (training); or 0..N−1 in batches dealt to ranks whole (evaluation)."""

    def __init__(self, size: int, batch_size: int, shuffle: bool, seed: int = 0, rank: int = 0, world_size: int = 1, drop_last: bool = False) -> None:
        self.size, self.batch_size, self.shuffle, self.seed = size, batch_size, shuffle, seed
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch = 0
        if not shuffle and size < world_size:
            raise UsageError(f"an evaluation split of {size} points cannot be shared among {world_size} processes: use at most {size} devices")

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning at the start of every epoch."""
        self.epoch = epoch

    def indices(self) -> Tensor:
        """This rank's indices of the epoch, in the order its batches take them."""
        if not self.shuffle:
            return torch.cat(self.batches())
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return deal(torch.randperm(self.size, generator=generator)[: self._usable], self.rank, self.world_size)

    @property
    def _usable(self) -> int:
        # Equal shard sizes keep DDP ranks in step during training.
        return self.size - self.size % self.world_size if self.drop_last else self.size

    def batches(self, device: Optional[torch.device] = None) -> tuple[Tensor, ...]:
        """This epoch's index batches, on ``device`` after one copy of the whole permutation (or range)."""
        if not self.shuffle:
            batches = torch.arange(self.size, device=device).split(self.batch_size)
            if len(batches) < self.world_size:
                # Lightning skips the validation of a rank without batches, and with it the epoch-end reduction that the
                # others wait in: fewer batches than ranks become one batch per rank, of N/W points (whose sampled
                # estimates then draw other samples than one process's batches of batch_size).
                batches = torch.arange(self.size, device=device).tensor_split(self.world_size)
            return deal(batches, self.rank, self.world_size)
        return self.indices().to(device)[: len(self) * self.batch_size].split(self.batch_size)

    def __iter__(self) -> Iterator[Tensor]:
        return iter(self.batches())

    def __len__(self) -> int:
        if not self.shuffle:
            return max(1, dealt_count(-(-self.size // self.batch_size), self.rank, self.world_size))  # one each when fewer
        shard = dealt_count(self._usable, self.rank, self.world_size)
        return shard // self.batch_size if self.drop_last else -(-shard // self.batch_size)


class TensorLoader:
    """Yields transform(data[indices]) for each index batch of ``sampler``; Lightning finds ``sampler.set_epoch``."""

    batch_sampler = None  # Lightning inspects DataLoader-like objects for these two attributes.

    def __init__(self, data: Tensor, sampler: EpochPermutation, transform: Optional[Transform] = None) -> None:
        self.data, self.sampler, self.transform = data, sampler, transform

    def __iter__(self) -> Iterator[Tensor]:
        for indices in self.sampler.batches(self.data.device):
            batch = self.data[indices]
            yield self.transform(batch) if self.transform is not None else batch

    def __len__(self) -> int:
        return len(self.sampler)


def _stack(rows: list[Tensor], transform: Optional[Transform]) -> Tensor:
    batch = torch.stack(rows)
    return transform(batch) if transform is not None else batch


class InMemoryDataModule(pl.LightningDataModule):
    """Base class for data held as three tensors [N, D] (train, val, test): on the training device, or on the CPU behind a DataLoader."""

    image_shape: Optional[tuple[int, ...]] = None  # (C, H, W) when a row is a flattened image
    # Arguments that belong to the machine, not the run (folders, files, downloads), with the values they take when the data
    # module is rebuilt from someone's checkpoint (data.protocol.REQUIRED: the user must give it).
    machine_arguments: ClassVar[dict[str, Any]] = {}
    true_density: Optional[Distribution] = None  # the data's own distribution, where known

    def __init__(self, batch_size: int = 256, eval_batch_size: int = 1024, seed: int = 0, in_memory: bool = True, standardize: Optional[bool] = False) -> None:
        super().__init__()
        # Whether the model should work in standard units (models/units.py); None: yes unless every value is in [0, 1] (binary or grey
        # levels, which the Bernoulli likelihoods need as they are). Resolved once the splits are loaded.
        self.standardize = standardize
        if batch_size < 1 or eval_batch_size < 1:
            raise UsageError(f"batch sizes must be >= 1, got batch_size={batch_size} and eval_batch_size={eval_batch_size}")
        self.batch_size, self.eval_batch_size, self.seed, self.in_memory = batch_size, eval_batch_size, seed, in_memory
        self.splits: dict[str, Tensor] = {}
        self.labels: dict[str, Tensor] = {}

    @property
    def data_dim(self) -> int:
        """D, the dimension of one datapoint."""
        raise NotImplementedError

    def load_splits(self) -> dict[str, Tensor]:
        """{'train': [N, D], 'val': [N, D], 'test': [N, D]} as float tensors."""
        raise NotImplementedError

    def transform(self, split: str) -> Optional[Transform]:
        """Applied to every batch of ``split`` as it is drawn (on the device for in-memory data); None keeps batches as stored."""
        return None

    def setup(self, stage: Optional[str] = None) -> None:
        if not self.splits:
            self.splits = self.load_splits()
            if self.standardize is None:
                train = self.splits["train"]
                self.standardize = not bool(((train >= 0) & (train <= 1)).all())
        if self.in_memory and self.trainer is not None:
            device = self.trainer.strategy.root_device
            self.splits = {name: split.to(device) for name, split in self.splits.items()}

    def _loader(self, split: str, shuffle: bool) -> Union[TensorLoader, DataLoader]:
        self.setup()
        data = self.splits[split]
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        if shuffle and not self.in_memory:
            # Lightning adds a DistributedSampler under DDP and copies each batch to the device. Not for evaluation: the
            # sampler would pad the split with repeated points and split batches by point; a TensorLoader over the CPU
            # tensor deals whole batches, and Lightning copies each to the device all the same.
            return DataLoader(data, batch_size, shuffle=shuffle, collate_fn=partial(_stack, transform=self.transform(split)))
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = EpochPermutation(len(data), batch_size, shuffle, self.seed, rank, world, drop_last=shuffle and world > 1)
        return TensorLoader(data, sampler, self.transform(split))

    def train_dataloader(self) -> Union[TensorLoader, DataLoader]:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> Union[TensorLoader, DataLoader]:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> Union[TensorLoader, DataLoader]:
        return self._loader("test", shuffle=False)
