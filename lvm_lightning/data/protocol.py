"""What the module, the callbacks and ``evaluate`` read from a data module, as one typed protocol."""

from typing import Callable, Optional, Protocol, runtime_checkable

from torch import Tensor
from torch.distributions import Distribution


@runtime_checkable
class SplitData(Protocol):
    """Data held as tensors: ``splits`` {'train', 'val', 'test'} of rows [N, D] once set up, and what the pictures need.

    ``labels`` per split (may be empty), ``image_shape`` (C, H, W) of a flattened row or None,
    ``true_density`` the data's own distribution where known (synthetic data) or None, and
    ``transform(split)``, applied to every batch drawn from a split (None: batches are the stored values).
    ``InMemoryDataModule`` implements it; a data module of your own can too. A class attribute ``machine_arguments``
    {name: value} lists the constructor arguments that are the machine's rather than the run's (folders, files, downloads):
    rebuilt from a checkpoint, the data module takes those values (or the user's), never the stored ones. An attribute
    ``standardize`` (True) asks the model to work in standard units (``LatentVariableModel.standardize``), its map fitted to
    the training split at the start of training.
    """

    splits: dict[str, Tensor]
    labels: dict[str, Tensor]
    image_shape: Optional[tuple[int, ...]]
    true_density: Optional[Distribution]
    eval_batch_size: int

    def transform(self, split: str) -> Optional[Callable[[Tensor], Tensor]]: ...


def true_log_prob(density: Distribution, x: Tensor) -> Tensor:
    """log p_data(x) [B] on x's device (a data module keeps its true density on the CPU)."""
    return density.log_prob(x.cpu()).to(x)


# In a data module's ``machine_arguments``: an argument with no default on another machine, which the user must give.
REQUIRED = object()
