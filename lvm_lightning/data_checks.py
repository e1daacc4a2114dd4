"""Data checked against the model they meet: the decoder's event shape and the support its likelihood declares."""

import torch
from torch import Tensor

from lvm_lightning.data.protocol import SplitData
from lvm_lightning.errors import UsageError
from lvm_lightning.models.families import check_support
from lvm_lightning.models.lvm import LatentVariableModel

TRAINING_HINT = (
    "choose a likelihood that holds the data (gaussian: any real values; continuous_bernoulli: [0, 1]), or binarize them (images: --data.binarization dynamic)"
)


def check_values(lvm: LatentVariableModel, x: Tensor, where: str, hint: str = TRAINING_HINT, standardized: bool = False) -> None:
    """Raises UsageError, ending with ``hint``, unless the rows of ``x`` have the decoder's event shape and lie in its likelihood's support;
    their magnitude matters only where the model sees them as they are (not ``standardized``, the model's units off)."""
    with torch.no_grad():
        likelihood = lvm.likelihood(lvm.prior().sample((1,)).to(next(lvm.parameters(), x).device))
    if tuple(x.shape[1:]) != tuple(likelihood.event_shape):
        raise UsageError(f"{where} has rows of shape {tuple(x.shape[1:])} but the model's decoder gives {tuple(likelihood.event_shape)}: {hint}")
    check_support(likelihood, x, where, hint, standardized or lvm.units.active)  # reads x alone: no copy to the model's device


def check_data(lvm: LatentVariableModel, data: SplitData) -> None:
    """``check_values`` on every stored split; a split with a per-batch transform (dynamic binarization) is skipped: its batches meet the model."""
    for name, split in data.splits.items():
        if data.transform(name) is None:
            check_values(lvm, split, f"the {name} split", standardized=getattr(data, "standardize", False))
